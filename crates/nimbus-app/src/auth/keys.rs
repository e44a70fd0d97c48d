//! Providers' public keys (JWKS): fetched over HTTP(S) under the egress policy, parsed, and
//! cached per tenant with bounded refreshes.
//!
//! Bounds: a key set document of at most [`MAX_JWKS_BYTES`] with at most [`MAX_KEYS`] usable
//! keys; one cached set per provider (a tenant has at most 16); a set is refetched after
//! [`KEYS_TTL`], or sooner when a token names a key it lacks (a provider rotated its keys),
//! but such early fetches happen at most once per [`MIN_REFETCH_INTERVAL`] per provider, so
//! a stream of tokens with made-up key IDs cannot make the server hammer the provider.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use parking_lot::Mutex;
use serde_json::Value as Json;

use super::providers::{Algorithm, AuthProvider};
use crate::egress::{EgressPolicy, EgressResolver};

/// Largest key set or discovery document read from a provider.
pub(crate) const MAX_JWKS_BYTES: usize = 256 << 10;
/// Most keys kept from one key set (further ones are ignored).
pub(crate) const MAX_KEYS: usize = 64;
/// How long a fetched key set is used before it is fetched again.
pub(crate) const KEYS_TTL: Duration = Duration::from_secs(3600);
/// Least time between two early fetches of one provider's keys (for unknown key IDs).
pub(crate) const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// A provider's answer must arrive within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Smallest RSA modulus accepted.
const MIN_RSA_BITS: usize = 2048;

/// A public key of a key set.
#[derive(Debug, Clone)]
pub(crate) enum PublicKey {
    Rsa(Box<rsa::RsaPublicKey>),
    Es256(p256::ecdsa::VerifyingKey),
}

impl PublicKey {
    pub(crate) fn algorithm(&self) -> Algorithm {
        match self {
            PublicKey::Rsa(_) => Algorithm::Rs256,
            PublicKey::Es256(_) => Algorithm::Es256,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Jwk {
    pub kid: Option<String>,
    pub key: PublicKey,
}

/// The usable keys of a provider's key set.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeySet {
    pub keys: Vec<Jwk>,
}

fn b64url(field: &Json, name: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(field.get(name)?.as_str()?.trim_end_matches('='))
        .ok()
}

impl KeySet {
    /// Parses a JWKS document (`{keys: [...]}`). Keys that are not RSA or P-256 signature
    /// keys are skipped; a document with none usable is an error.
    pub(crate) fn parse(bytes: &[u8]) -> Result<KeySet, String> {
        let json: Json =
            serde_json::from_slice(bytes).map_err(|e| format!("the key set is not JSON: {e}"))?;
        let Some(Json::Array(list)) = json.get("keys") else {
            return Err("the key set has no `keys` array".into());
        };
        let mut keys = Vec::new();
        for jwk in list {
            if keys.len() == MAX_KEYS {
                break;
            }
            if jwk
                .get("use")
                .and_then(Json::as_str)
                .is_some_and(|u| u != "sig")
            {
                continue;
            }
            let key = match jwk.get("kty").and_then(Json::as_str) {
                Some("RSA") => {
                    let (Some(n), Some(e)) = (b64url(jwk, "n"), b64url(jwk, "e")) else {
                        continue;
                    };
                    let key = rsa::RsaPublicKey::new(
                        rsa::BigUint::from_bytes_be(&n),
                        rsa::BigUint::from_bytes_be(&e),
                    );
                    match key {
                        Ok(key) if n.len() * 8 >= MIN_RSA_BITS => PublicKey::Rsa(Box::new(key)),
                        _ => continue,
                    }
                }
                Some("EC") if jwk.get("crv").and_then(Json::as_str) == Some("P-256") => {
                    let coordinate = |name| {
                        let bytes: [u8; 32] = b64url(jwk, name)?.try_into().ok()?;
                        Some(p256::FieldBytes::from(bytes))
                    };
                    let (Some(x), Some(y)) = (coordinate("x"), coordinate("y")) else {
                        continue;
                    };
                    let point = p256::EncodedPoint::from_affine_coordinates(&x, &y, false);
                    match p256::ecdsa::VerifyingKey::from_encoded_point(&point) {
                        Ok(key) => PublicKey::Es256(key),
                        Err(_) => continue,
                    }
                }
                _ => continue,
            };
            let kid = jwk.get("kid").and_then(Json::as_str).map(str::to_string);
            keys.push(Jwk { kid, key });
        }
        if keys.is_empty() {
            return Err("the key set has no RS256 or ES256 signature key".into());
        }
        Ok(KeySet { keys })
    }

    pub(crate) fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// Fetches providers' documents; one per instance.
pub struct KeyFetcher {
    client: reqwest::Client,
    policy: EgressPolicy,
}

impl std::fmt::Debug for KeyFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFetcher")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl KeyFetcher {
    pub fn new(policy: EgressPolicy) -> Result<KeyFetcher, String> {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(EgressResolver::new(policy.clone())))
            .no_proxy()
            // A redirect could lead anywhere; providers serve their documents directly.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .user_agent("nimbus")
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(KeyFetcher { client, policy })
    }

    /// GETs a provider document of at most [`MAX_JWKS_BYTES`].
    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("bad URL {url:?}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("{url}: only http(s) URLs are fetched"));
        }
        self.policy.check_literal(&parsed)?;
        let mut response = self
            .client
            .get(parsed)
            .send()
            .await
            .map_err(|e| format!("fetching {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("fetching {url}: HTTP {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading {url}: {e}"))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("{url}: larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The provider's current key set.
    async fn fetch(&self, provider: &AuthProvider) -> Result<KeySet, String> {
        match provider {
            AuthProvider::Oidc { domain, .. } => {
                let discovery_url = format!(
                    "{}/.well-known/openid-configuration",
                    domain.trim_end_matches('/')
                );
                let discovery: Json = serde_json::from_slice(&self.get(&discovery_url).await?)
                    .map_err(|e| format!("{discovery_url}: not JSON: {e}"))?;
                let Some(jwks_uri) = discovery.get("jwks_uri").and_then(Json::as_str) else {
                    return Err(format!("{discovery_url} has no jwks_uri"));
                };
                KeySet::parse(&self.get(jwks_uri).await?).map_err(|e| format!("{jwks_uri}: {e}"))
            }
            AuthProvider::CustomJwt { jwks, .. } => match jwks.strip_prefix("data:") {
                Some(data) => KeySet::parse(&decode_data_uri(data)?)
                    .map_err(|e| format!("the jwks data URI: {e}")),
                None => KeySet::parse(&self.get(jwks).await?).map_err(|e| format!("{jwks}: {e}")),
            },
        }
    }
}

/// The bytes of a `data:` URI (after `data:`): `[<media type>][;base64],<data>`.
fn decode_data_uri(rest: &str) -> Result<Vec<u8>, String> {
    let Some((meta, data)) = rest.split_once(',') else {
        return Err("the jwks data URI has no `,`".into());
    };
    if meta.ends_with(";base64") {
        STANDARD
            .decode(data)
            .or_else(|_| URL_SAFE_NO_PAD.decode(data.trim_end_matches('=')))
            .map_err(|e| format!("the jwks data URI is not base64: {e}"))
    } else {
        percent_decode(data)
    }
}

fn percent_decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("the jwks data URI has a bad %-escape")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

struct Cached {
    keys: Arc<KeySet>,
    fetched_at: Instant,
    /// Whether this set was fetched before the TTL because a token named an unknown key.
    early: bool,
}

#[derive(Default)]
struct CacheState {
    sets: HashMap<String, Cached>,
    /// The last failed fetch per provider: retried only after [`MIN_REFETCH_INTERVAL`], so
    /// tokens naming a provider that is down do not each send a request to it.
    failures: HashMap<String, (Instant, String)>,
}

/// A tenant's cached key sets, one per provider (keyed by issuer and key source).
#[derive(Default)]
pub(crate) struct KeyCache {
    state: Mutex<CacheState>,
    /// Held while fetching: concurrent tokens of a provider wait for one fetch and use its
    /// result instead of each fetching.
    fetching: tokio::sync::Mutex<()>,
}

fn cache_key(provider: &AuthProvider) -> String {
    match provider {
        AuthProvider::Oidc { domain, .. } => format!("oidc {domain}"),
        AuthProvider::CustomJwt { issuer, jwks, .. } => format!("jwt {issuer} {jwks}"),
    }
}

impl KeyCache {
    /// The provider's keys, fetched when none are cached, when they are older than the
    /// TTL, or when they lack `kid` and no early fetch happened in the refetch interval.
    pub(crate) async fn keys(
        &self,
        fetcher: &KeyFetcher,
        provider: &AuthProvider,
        kid: Option<&str>,
    ) -> Result<Arc<KeySet>, String> {
        let key = cache_key(provider);
        if let Some(keys) = self.cached(&key, kid)? {
            return Ok(keys);
        }
        let _fetching = self.fetching.lock().await;
        // Whoever held the lock before may have fetched what this token needs.
        if let Some(keys) = self.cached(&key, kid)? {
            return Ok(keys);
        }
        // A refetch of a set still within its TTL (for an unknown key) is an early one.
        let early = self
            .state
            .lock()
            .sets
            .get(&key)
            .is_some_and(|cached| cached.fetched_at.elapsed() < KEYS_TTL);
        let fetched = fetcher.fetch(provider).await;
        let mut state = self.state.lock();
        let keys = match fetched {
            Ok(keys) => Arc::new(keys),
            Err(error) => {
                if state.failures.len() >= super::providers::MAX_PROVIDERS {
                    state.failures.clear();
                }
                state.failures.insert(key, (Instant::now(), error.clone()));
                return Err(error);
            }
        };
        state.failures.remove(&key);
        // Providers of a deployment are few (at most 16), but pushes can change them:
        // keep the map from growing past that with sets of removed providers.
        if state.sets.len() >= super::providers::MAX_PROVIDERS && !state.sets.contains_key(&key) {
            state.sets.clear();
        }
        state.sets.insert(
            key,
            Cached {
                keys: keys.clone(),
                fetched_at: Instant::now(),
                early,
            },
        );
        Ok(keys)
    }

    /// `Ok(Some)`: cached keys to use; `Ok(None)`: fetch; `Err`: the last fetch failed less
    /// than the refetch interval ago.
    fn cached(&self, key: &str, kid: Option<&str>) -> Result<Option<Arc<KeySet>>, String> {
        let state = self.state.lock();
        if let Some((at, error)) = state.failures.get(key) {
            if at.elapsed() < MIN_REFETCH_INTERVAL {
                return Err(format!(
                    "{error} (not retried for {} s)",
                    MIN_REFETCH_INTERVAL.as_secs()
                ));
            }
        }
        let Some(cached) = state.sets.get(key) else {
            return Ok(None);
        };
        let age = cached.fetched_at.elapsed();
        if age >= KEYS_TTL {
            return Ok(None);
        }
        let has_kid = kid.is_none_or(|kid| cached.keys.has_kid(kid));
        let recently_refetched = cached.early && age < MIN_REFETCH_INTERVAL;
        if has_kid || recently_refetched {
            return Ok(Some(cached.keys.clone()));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_uris_decode_base64_and_percent_escapes() {
        assert_eq!(
            decode_data_uri("text/plain;base64,e30=").ok(),
            Some(b"{}".to_vec())
        );
        assert_eq!(
            decode_data_uri("application/json,%7B%7D").ok(),
            Some(b"{}".to_vec())
        );
        assert!(decode_data_uri("no comma").is_err());
    }

    #[test]
    fn a_key_set_without_usable_keys_is_refused() {
        assert!(KeySet::parse(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).is_err());
        assert!(KeySet::parse(br#"{"nokeys": []}"#).is_err());
        assert!(KeySet::parse(b"not json").is_err());
    }
}
