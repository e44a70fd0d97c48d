//! User authentication: JWTs from the providers a tenant lists in `auth.config.ts`
//! (OpenID Connect and custom JWT issuers), checked against the providers' published keys,
//! and the identity `ctx.auth.getUserIdentity()` returns.
//!
//! - `providers`: the push-time configuration;
//! - `keys`: key sets, fetched under the egress policy and cached per tenant with bounds;
//! - `token`: a token's form, signature and claims.

mod keys;
mod providers;
mod token;

use std::sync::Arc;

use nimbus_types::{Object, Value};
use serde_json::{Map, Value as Json};

pub(crate) use keys::KeyCache;
pub use keys::KeyFetcher;
pub use providers::{Algorithm, AuthConfig, AuthProvider};

use crate::error::AppError;
use crate::tenant::Tenant;

/// Claims that never reach the identity (Convex drops them too).
const DROPPED_CLAIMS: [&str; 5] = ["iss", "sub", "jti", "nbf", "fva"];

/// Standard OpenID Connect claims and the names Convex's `UserIdentity` gives them.
const RENAMED_CLAIMS: [(&str, &str); 17] = [
    ("name", "name"),
    ("given_name", "givenName"),
    ("family_name", "familyName"),
    ("nickname", "nickname"),
    ("preferred_username", "preferredUsername"),
    ("profile", "profileUrl"),
    ("picture", "pictureUrl"),
    ("email", "email"),
    ("email_verified", "emailVerified"),
    ("gender", "gender"),
    ("birthdate", "birthday"),
    ("zoneinfo", "timezone"),
    ("locale", "language"),
    ("phone_number", "phoneNumber"),
    ("phone_number_verified", "phoneNumberVerified"),
    ("address", "address"),
    ("updated_at", "updatedAt"),
];

/// An authenticated user, as `ctx.auth.getUserIdentity()` returns it.
#[derive(Debug)]
pub struct UserIdentity {
    value: Value,
    /// The identity as canonical convex-JSON text: what tells two identities apart in
    /// cached results and shared live queries.
    text: String,
    token_identifier: String,
    /// The token's `exp`, in seconds since the epoch.
    expires_at_secs: f64,
}

impl PartialEq for UserIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for UserIdentity {}

impl std::hash::Hash for UserIdentity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl UserIdentity {
    pub fn value(&self) -> &Value {
        &self.value
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// `<issuer>|<subject>`.
    pub fn token_identifier(&self) -> &str {
        &self.token_identifier
    }

    pub fn expires_at_secs(&self) -> f64 {
        self.expires_at_secs
    }

    /// Whether the token that proved this identity has expired (past the clock skew
    /// tokens are accepted with).
    pub fn expired(&self) -> bool {
        now_secs() > self.expires_at_secs + token::CLOCK_SKEW_SECS
    }

    /// Builds the identity of verified claims (spec §6.6): `tokenIdentifier`, `subject`,
    /// `issuer`, the standard claims under Convex's names, and every other claim under its
    /// own name, nested objects flattened with dots.
    fn from_claims(claims: &Map<String, Json>) -> UserIdentity {
        let issuer = claims.get("iss").and_then(Json::as_str).unwrap_or_default();
        let subject = claims.get("sub").and_then(Json::as_str).unwrap_or_default();
        let token_identifier = format!("{issuer}|{subject}");
        let mut fields = Object::new();
        fields.insert(
            "tokenIdentifier".into(),
            Value::String(token_identifier.clone()),
        );
        fields.insert("subject".into(), Value::String(subject.into()));
        fields.insert("issuer".into(), Value::String(issuer.into()));
        for (name, claim) in claims {
            if DROPPED_CLAIMS.contains(&name.as_str()) {
                continue;
            }
            match RENAMED_CLAIMS.iter().find(|(from, _)| from == name) {
                Some((_, to)) => {
                    let value = match (*to, claim) {
                        // `address` is an object whose `formatted` member is the address.
                        ("address", Json::Object(address)) => {
                            address.get("formatted").map_or(Value::Null, to_value)
                        }
                        // Convex gives `updatedAt` as RFC 3339 text; seconds are kept as
                        // they came when they are not a number.
                        ("updatedAt", Json::Number(n)) => n
                            .as_f64()
                            .and_then(rfc3339)
                            .map_or_else(|| to_value(claim), Value::String),
                        _ => to_value(claim),
                    };
                    fields.insert((*to).to_string(), value);
                }
                None => flatten_into(&mut fields, name, claim),
            }
        }
        let value = Value::Object(fields);
        let text = nimbus_types::json::encode_text(&value);
        UserIdentity {
            value,
            text,
            token_identifier,
            expires_at_secs: claims.get("exp").and_then(Json::as_f64).unwrap_or(0.0),
        }
    }
}

fn flatten_into(fields: &mut Object, name: &str, claim: &Json) {
    match claim {
        Json::Object(members) => {
            for (member, value) in members {
                flatten_into(fields, &format!("{name}.{member}"), value);
            }
        }
        other => {
            fields.insert(name.to_string(), to_value(other));
        }
    }
}

fn to_value(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => Value::Float64(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Value::String(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(to_value).collect()),
        Json::Object(members) => Value::Object(
            members
                .iter()
                .map(|(k, v)| (k.clone(), to_value(v)))
                .collect(),
        ),
    }
}

/// Seconds since the epoch as RFC 3339 UTC (`2026-12-02T12:00:00Z`).
fn rfc3339(secs: f64) -> Option<String> {
    if !(0.0..253_402_300_800.0).contains(&secs) {
        return None;
    }
    let secs = secs as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = nimbus_types::timestamp::civil_date(days);
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

/// Everything [`Tenant::authenticate_user`] checks, against one provider and a key set
/// given as bytes instead of fetched: for fuzzing and tests.
pub fn check_token_offline(
    token: &str,
    provider: &AuthProvider,
    key_set: &[u8],
    now_secs: f64,
) -> Result<UserIdentity, String> {
    let parsed = token::parse(token)?;
    let issuer = parsed.issuer()?;
    if token::providers_for(std::slice::from_ref(provider), issuer, parsed.algorithm)
        .next()
        .is_none()
    {
        return Err(format!(
            "the provider does not accept tokens from {issuer:?}"
        ));
    }
    accept(&parsed, provider, &keys::KeySet::parse(key_set)?, now_secs)
}

/// The identity a parsed token proves when a key of `keys` signed it and `provider`
/// accepts its claims.
fn accept(
    parsed: &token::ParsedToken<'_>,
    provider: &AuthProvider,
    keys: &keys::KeySet,
    now_secs: f64,
) -> Result<UserIdentity, String> {
    parsed.verify_signature(keys)?;
    parsed.check_claims(provider, now_secs)?;
    Ok(UserIdentity::from_claims(&parsed.claims))
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Tenant {
    /// Checks a user's token against the auth providers of the tenant's current deployment
    /// and returns the identity it proves. Refusals are `InvalidAuthToken` with the reason.
    pub async fn authenticate_user(&self, token: &str) -> Result<Arc<UserIdentity>, AppError> {
        let refuse = |reason: String| AppError::InvalidAuthToken(reason);
        let parsed = token::parse(token.trim()).map_err(refuse)?;
        let issuer = parsed.issuer().map_err(refuse)?.to_string();
        let deployment = self.deployment();
        let providers = &deployment.auth.providers;
        if providers.is_empty() {
            return Err(refuse(
                "this tenant has no auth providers (convex/auth.config.ts)".into(),
            ));
        }
        let mut last_error = format!(
            "no auth provider of this tenant accepts {} tokens from issuer {issuer:?}",
            parsed.algorithm.name()
        );
        for provider in token::providers_for(providers, &issuer, parsed.algorithm) {
            let keys = match self
                .auth_keys
                .keys(&self.key_fetcher, provider, parsed.kid.as_deref())
                .await
            {
                Ok(keys) => keys,
                Err(error) => {
                    tracing::warn!(tenant = self.name(), %issuer, %error, "auth provider keys unavailable");
                    last_error =
                        format!("the keys of issuer {issuer:?} could not be fetched: {error}");
                    continue;
                }
            };
            match accept(&parsed, provider, &keys, now_secs()) {
                Ok(identity) => return Ok(Arc::new(identity)),
                Err(error) => last_error = error,
            }
        }
        Err(refuse(last_error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_use_convex_names_and_flatten_custom_claims() {
        let claims: Map<String, Json> = match serde_json::json!({
            "iss": "https://i.example", "sub": "u1", "aud": "app", "exp": 2000000000,
            "jti": "drop me", "nbf": 1, "email": "a@b.c", "given_name": "Ada",
            "updated_at": 0, "address": {"formatted": "1 Main St"},
            "org": {"id": "o1", "role": "admin"}, "plan": "pro",
        }) {
            Json::Object(map) => map,
            _ => Map::new(),
        };
        let identity = UserIdentity::from_claims(&claims);
        assert_eq!(identity.token_identifier(), "https://i.example|u1");
        let Value::Object(fields) = identity.value() else {
            panic!("not an object");
        };
        let text = |name: &str| match fields.get(name) {
            Some(Value::String(s)) => s.clone(),
            other => format!("{other:?}"),
        };
        assert_eq!(text("tokenIdentifier"), "https://i.example|u1");
        assert_eq!(text("subject"), "u1");
        assert_eq!(text("issuer"), "https://i.example");
        assert_eq!(text("email"), "a@b.c");
        assert_eq!(text("givenName"), "Ada");
        assert_eq!(text("updatedAt"), "1970-01-01T00:00:00Z");
        assert_eq!(text("address"), "1 Main St");
        assert_eq!(text("org.role"), "admin");
        assert_eq!(text("plan"), "pro");
        for dropped in ["jti", "nbf", "iss", "sub", "given_name"] {
            assert!(!fields.contains_key(dropped), "{dropped}");
        }
        assert_eq!(identity.expires_at_secs(), 2e9);
        assert_eq!(
            rfc3339(1_796_212_800.0).as_deref(),
            Some("2026-12-02T12:00:00Z")
        );
    }
}
