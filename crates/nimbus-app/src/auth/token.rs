//! Checking a user's JWT: its form, its signature by a key of the provider that issued it,
//! and its claims (spec §6.6). Every refusal says why, without echoing the token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value as Json};

use super::keys::{KeySet, PublicKey};
use super::providers::{same_issuer, Algorithm, AuthProvider};

/// Longest token accepted.
pub(crate) const MAX_TOKEN_BYTES: usize = 16 << 10;
/// Clock skew allowed on `exp` and `nbf`.
pub(crate) const CLOCK_SKEW_SECS: f64 = 60.0;

/// A token taken apart, not yet trusted.
pub(crate) struct ParsedToken<'a> {
    pub algorithm: Algorithm,
    pub kid: Option<String>,
    pub claims: Map<String, Json>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

fn part(text: &str, what: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| format!("the token's {what} is not base64url"))
}

fn json_object(bytes: &[u8], what: &str) -> Result<Map<String, Json>, String> {
    match serde_json::from_slice(bytes) {
        Ok(Json::Object(map)) => Ok(map),
        _ => Err(format!("the token's {what} is not a JSON object")),
    }
}

/// Splits and decodes a compact JWS. Only RS256 and ES256 pass: `none` and symmetric
/// algorithms are refused before any key is looked at.
pub(crate) fn parse(token: &str) -> Result<ParsedToken<'_>, String> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!("the token is longer than {MAX_TOKEN_BYTES} bytes"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the token is not a JWT (three base64url parts separated by dots)".into());
    };
    let header = json_object(&part(header, "header")?, "header")?;
    let algorithm = match header.get("alg").and_then(Json::as_str) {
        Some(name) => Algorithm::parse(name).ok_or_else(|| {
            format!("the token's algorithm {name:?} is not accepted (RS256 and ES256 are)")
        })?,
        None => return Err("the token's header has no `alg`".into()),
    };
    let kid = header.get("kid").and_then(Json::as_str).map(str::to_string);
    let claims = json_object(&part(payload, "payload")?, "payload")?;
    let signature = part(signature, "signature")?;
    let signing_input = &token[..token.len() - signature_len(token)];
    Ok(ParsedToken {
        algorithm,
        kid,
        claims,
        signing_input,
        signature,
    })
}

/// Length of `.<signature>` at the end of a three-part token.
fn signature_len(token: &str) -> usize {
    token.rfind('.').map_or(0, |dot| token.len() - dot)
}

impl ParsedToken<'_> {
    pub(crate) fn issuer(&self) -> Result<&str, String> {
        self.claims
            .get("iss")
            .and_then(Json::as_str)
            .ok_or_else(|| "the token has no `iss` claim".into())
    }

    /// Whether a key of `keys` signed this token (with the key named by `kid` when there is
    /// one).
    pub(crate) fn verify_signature(&self, keys: &KeySet) -> Result<(), String> {
        let candidates = keys.keys.iter().filter(|jwk| {
            jwk.key.algorithm() == self.algorithm
                && match (&self.kid, &jwk.kid) {
                    (Some(wanted), Some(kid)) => wanted == kid,
                    (Some(_), None) => false,
                    (None, _) => true,
                }
        });
        let mut tried = false;
        for jwk in candidates {
            tried = true;
            if verify(&jwk.key, self.signing_input.as_bytes(), &self.signature) {
                return Ok(());
            }
        }
        match (&self.kid, tried) {
            (Some(kid), false) => Err(format!(
                "the token's key {kid:?} is not among the provider's {} keys",
                self.algorithm.name()
            )),
            _ => Err("the token's signature is invalid".into()),
        }
    }

    /// The claims a provider requires: `sub`, `exp` in the future and `nbf` in the past
    /// (each with [`CLOCK_SKEW_SECS`]), and the audience.
    pub(crate) fn check_claims(
        &self,
        provider: &AuthProvider,
        now_secs: f64,
    ) -> Result<(), String> {
        if !self.claims.get("sub").is_some_and(Json::is_string) {
            return Err("the token has no `sub` claim".into());
        }
        let Some(exp) = self.claims.get("exp").and_then(Json::as_f64) else {
            return Err("the token has no `exp` claim".into());
        };
        if now_secs > exp + CLOCK_SKEW_SECS {
            return Err("the token has expired".into());
        }
        if let Some(nbf) = self.claims.get("nbf").and_then(Json::as_f64) {
            if now_secs + CLOCK_SKEW_SECS < nbf {
                return Err("the token is not valid yet (`nbf`)".into());
            }
        }
        let audience = match provider {
            AuthProvider::Oidc { application_id, .. } => Some(application_id),
            AuthProvider::CustomJwt { application_id, .. } => application_id.as_ref(),
        };
        if let Some(wanted) = audience {
            let matches = match self.claims.get("aud") {
                Some(Json::String(aud)) => aud == wanted,
                Some(Json::Array(list)) => list.iter().any(|a| a.as_str() == Some(wanted)),
                _ => false,
            };
            if !matches {
                return Err(format!("the token's audience is not {wanted:?}"));
            }
        }
        Ok(())
    }
}

fn verify(key: &PublicKey, input: &[u8], signature: &[u8]) -> bool {
    use sha2::Digest as _;
    match key {
        PublicKey::Rsa(key) => {
            let digest = sha2::Sha256::digest(input);
            key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, signature)
                .is_ok()
        }
        PublicKey::Es256(key) => {
            use p256::ecdsa::signature::Verifier as _;
            match p256::ecdsa::Signature::from_slice(signature) {
                Ok(signature) => key.verify(input, &signature).is_ok(),
                Err(_) => false,
            }
        }
    }
}

/// The providers that issue tokens with this `iss` (and, for custom ones, this algorithm).
pub(crate) fn providers_for<'p>(
    providers: &'p [AuthProvider],
    issuer: &str,
    algorithm: Algorithm,
) -> impl Iterator<Item = &'p AuthProvider> {
    let issuer = issuer.to_string();
    providers.iter().filter(move |p| {
        same_issuer(p.issuer(), &issuer)
            && match p {
                AuthProvider::CustomJwt { algorithm: a, .. } => *a == algorithm,
                AuthProvider::Oidc { .. } => true,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn malformed_and_unaccepted_tokens_are_refused_with_a_reason() {
        let error = |token: &str| parse(token).err().unwrap_or_default();
        assert!(error("abc").contains("not a JWT"));
        assert!(error("a.b.c.d").contains("not a JWT"));
        assert!(error("!!.e30.").contains("base64url"));
        let none = format!(
            "{}.{}.",
            encode(r#"{"alg":"none"}"#),
            encode(r#"{"sub":"x"}"#)
        );
        assert!(error(&none).contains("\"none\" is not accepted"));
        let hs = format!("{}.{}.c2ln", encode(r#"{"alg":"HS256"}"#), encode("{}"));
        assert!(error(&hs).contains("\"HS256\" is not accepted"));
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(error(&long).contains("longer than"));
        let ok = format!(
            "{}.{}.c2ln",
            encode(r#"{"alg":"RS256","kid":"k"}"#),
            encode(r#"{"iss":"i"}"#)
        );
        let parsed = parse(&ok);
        assert!(parsed.is_ok());
        if let Ok(parsed) = parsed {
            assert_eq!(parsed.kid.as_deref(), Some("k"));
            assert_eq!(parsed.issuer().ok(), Some("i"));
            assert_eq!(parsed.signing_input, &ok[..ok.rfind('.').unwrap_or(0)]);
        }
    }

    #[test]
    fn claims_are_checked_against_the_provider() {
        let provider = AuthProvider::Oidc {
            domain: "https://i.example".into(),
            application_id: "app".into(),
        };
        let token =
            |claims: &str| format!("{}.{}.c2ln", encode(r#"{"alg":"RS256"}"#), encode(claims));
        let check = |claims: &str| {
            let text = token(claims);
            let parsed = parse(&text).map_err(|e| e.to_string());
            parsed.and_then(|p| p.check_claims(&provider, 1_000_000.0))
        };
        assert_eq!(check(r#"{"sub":"u","exp":1000100,"aud":"app"}"#), Ok(()));
        assert_eq!(
            check(r#"{"sub":"u","exp":1000100,"aud":["x","app"]}"#),
            Ok(())
        );
        assert!(
            check(r#"{"sub":"u","exp":999000,"aud":"app"}"#).is_err_and(|e| e.contains("expired"))
        );
        assert_eq!(
            check(r#"{"sub":"u","exp":999950,"aud":"app"}"#),
            Ok(()),
            "within the skew"
        );
        assert!(check(r#"{"sub":"u","exp":1000100,"aud":"other"}"#)
            .is_err_and(|e| e.contains("audience")));
        assert!(check(r#"{"exp":1000100,"aud":"app"}"#).is_err_and(|e| e.contains("`sub`")));
        assert!(check(r#"{"sub":"u","aud":"app"}"#).is_err_and(|e| e.contains("`exp`")));
        assert!(
            check(r#"{"sub":"u","exp":1000100,"nbf":1000500,"aud":"app"}"#)
                .is_err_and(|e| e.contains("nbf"))
        );
    }
}
