//! A tenant's auth providers, from the default export of its `auth.config.ts`, evaluated
//! at push time (`{providers: [...]}`, spec §6.6).

use serde_json::{json, Value as Json};

/// Most providers one tenant may configure.
pub(crate) const MAX_PROVIDERS: usize = 16;

/// Longest string field of a provider (a `jwks` data URI holds the keys themselves).
const MAX_FIELD_BYTES: usize = 64 << 10;

/// Signature algorithms Nimbus verifies. Symmetric ones (HS256) and `none` never are: a
/// token must be signed by its issuer's private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Rs256,
    Es256,
}

impl Algorithm {
    pub(crate) fn parse(name: &str) -> Option<Algorithm> {
        match name {
            "RS256" => Some(Algorithm::Rs256),
            "ES256" => Some(Algorithm::Es256),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
        }
    }
}

/// One entry of `providers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthProvider {
    /// OpenID Connect: tokens from `domain` (their `iss`), for `application_id` (their
    /// `aud`); keys found through `<domain>/.well-known/openid-configuration`.
    Oidc {
        domain: String,
        application_id: String,
    },
    /// `type: "customJwt"`: tokens from `issuer`, signed with `algorithm` by a key of
    /// `jwks` (a URL, or a `data:` URI holding the key set); `aud` checked only when
    /// `application_id` is set.
    CustomJwt {
        issuer: String,
        jwks: String,
        algorithm: Algorithm,
        application_id: Option<String>,
    },
}

impl AuthProvider {
    /// The `iss` its tokens carry.
    pub(crate) fn issuer(&self) -> &str {
        match self {
            AuthProvider::Oidc { domain, .. } => domain,
            AuthProvider::CustomJwt { issuer, .. } => issuer,
        }
    }

    /// The provider as the push response's `appAuth` lists it.
    fn to_json(&self) -> Json {
        match self {
            AuthProvider::Oidc {
                domain,
                application_id,
            } => json!({"domain": domain, "applicationID": application_id}),
            AuthProvider::CustomJwt {
                issuer,
                jwks,
                algorithm,
                application_id,
            } => json!({
                "type": "customJwt", "issuer": issuer, "jwks": jwks,
                "algorithm": algorithm.name(), "applicationID": application_id,
            }),
        }
    }
}

/// Every provider of a deployment; empty when the project has no `auth.config.ts`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    pub providers: Vec<AuthProvider>,
}

/// Issuers compare without a trailing slash (`https://a.example/` is `https://a.example`).
pub(crate) fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

impl AuthConfig {
    /// Parses the JSON of `auth.config.ts`'s default export. The message of an error says
    /// which provider and field is wrong, for the push that carried it.
    pub fn parse(text: &str) -> Result<AuthConfig, String> {
        let json: Json = serde_json::from_str(text)
            .map_err(|e| format!("auth.config.ts: the default export is not JSON: {e}"))?;
        let providers = match &json {
            Json::Null => return Ok(AuthConfig::default()),
            Json::Object(fields) => match fields.get("providers") {
                None | Some(Json::Null) => return Ok(AuthConfig::default()),
                Some(Json::Array(list)) => list,
                Some(_) => return Err("auth.config.ts: `providers` must be an array".into()),
            },
            _ => return Err("auth.config.ts must `export default { providers: [...] }`".into()),
        };
        if providers.len() > MAX_PROVIDERS {
            return Err(format!(
                "auth.config.ts: {} providers; at most {MAX_PROVIDERS} are allowed",
                providers.len()
            ));
        }
        let providers = providers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                parse_provider(p).map_err(|e| format!("auth.config.ts: provider {i}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AuthConfig { providers })
    }

    /// `appAuth` of the push response.
    pub fn to_json(&self) -> Json {
        Json::Array(self.providers.iter().map(AuthProvider::to_json).collect())
    }
}

fn string_field(provider: &Json, name: &str) -> Result<Option<String>, String> {
    match provider.get(name) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if s.len() > MAX_FIELD_BYTES => {
            Err(format!("`{name}` is longer than {MAX_FIELD_BYTES} bytes"))
        }
        Some(Json::String(s)) if s.is_empty() => Err(format!("`{name}` is empty")),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("`{name}` must be a string, got {other}")),
    }
}

fn required(provider: &Json, name: &str) -> Result<String, String> {
    string_field(provider, name)?.ok_or_else(|| {
        format!(
            "`{name}` is missing (when it comes from `process.env`, note that Nimbus has no \
             environment variables yet)"
        )
    })
}

fn check_url(name: &str, url: &str) -> Result<(), String> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(())
    } else {
        Err(format!("`{name}` must be an http(s) URL, got {url:?}"))
    }
}

fn parse_provider(provider: &Json) -> Result<AuthProvider, String> {
    if !provider.is_object() {
        return Err("must be an object".into());
    }
    match provider.get("type").and_then(Json::as_str) {
        Some("customJwt") => {
            let issuer = required(provider, "issuer")?;
            let jwks = required(provider, "jwks")?;
            if !jwks.starts_with("data:") {
                check_url("jwks", &jwks)?;
            }
            let algorithm_name = required(provider, "algorithm")?;
            let algorithm = Algorithm::parse(&algorithm_name).ok_or_else(|| {
                format!("`algorithm` must be \"RS256\" or \"ES256\", got {algorithm_name:?}")
            })?;
            Ok(AuthProvider::CustomJwt {
                issuer,
                jwks,
                algorithm,
                application_id: string_field(provider, "applicationID")?,
            })
        }
        Some(other) => Err(format!(
            "unknown provider type {other:?} (\"customJwt\", or none for OpenID Connect)"
        )),
        None => {
            let domain = required(provider, "domain")?;
            check_url("domain", &domain)?;
            Ok(AuthProvider::Oidc {
                domain,
                application_id: required(provider, "applicationID")?,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_parse_and_bad_ones_say_what_is_wrong() {
        let config = AuthConfig::parse(
            r#"{"providers": [
                {"domain": "https://issuer.example/", "applicationID": "convex"},
                {"type": "customJwt", "issuer": "https://a.example", "jwks": "https://a.example/jwks",
                 "algorithm": "ES256"}
            ]}"#,
        );
        let Ok(config) = config else {
            panic!("{config:?}");
        };
        assert_eq!(config.providers.len(), 2);
        assert_eq!(config.providers[1].issuer(), "https://a.example");
        assert!(same_issuer(
            config.providers[0].issuer(),
            "https://issuer.example"
        ));
        assert_eq!(AuthConfig::parse("null"), Ok(AuthConfig::default()));
        assert_eq!(AuthConfig::parse("{}"), Ok(AuthConfig::default()));
        let error = |text: &str| AuthConfig::parse(text).err().unwrap_or_default();
        assert!(error(r#"{"providers": [{"applicationID": "x"}]}"#).contains("`domain` is missing"));
        assert!(
            error(r#"{"providers": [{"domain": "issuer", "applicationID": "x"}]}"#)
                .contains("http(s) URL")
        );
        assert!(error(
            r#"{"providers": [{"type": "customJwt", "issuer": "i", "jwks": "https://j", "algorithm": "HS256"}]}"#
        )
        .contains("RS256"));
        assert!(error(r#"{"providers": [{"type": "saml"}]}"#).contains("unknown provider type"));
        assert!(error(r#"{"providers": 3}"#).contains("must be an array"));
        let many = format!(
            r#"{{"providers": [{}]}}"#,
            vec![r#"{"domain": "https://a", "applicationID": "b"}"#; MAX_PROVIDERS + 1].join(",")
        );
        assert!(error(&many).contains("at most"));
    }
}
