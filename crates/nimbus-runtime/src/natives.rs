//! Native helpers behind the web globals of the prelude (`URL`, `crypto`): the parts that
//! must be exact (WHATWG URL parsing, digests) or secret (random bytes) are done in Rust.
//! Each returns `o<json>` or `e<message>`, as the syscall bridge does.

use serde_json::json;
use sha2::Digest as _;

use crate::action::latin1_bytes;

/// Parses `input` against an optional `base` (empty: none) as the URL standard does.
pub(crate) fn url_parse(input: &str, base: &str) -> String {
    let parsed = if base.is_empty() {
        url::Url::parse(input)
    } else {
        url::Url::parse(base).and_then(|base| base.join(input))
    };
    match parsed {
        Ok(url) => format!("o{}", url_parts(&url)),
        Err(e) => format!("eInvalid URL {input:?}: {e}"),
    }
}

/// Sets one component of `href` and returns the new parts (a setter given a value it
/// cannot take leaves the URL unchanged, as browsers do).
pub(crate) fn url_set(href: &str, field: &str, value: &str) -> String {
    let mut url = match url::Url::parse(href) {
        Ok(url) => url,
        Err(e) => return format!("eInvalid URL {href:?}: {e}"),
    };
    let strip = |prefix: char| value.strip_prefix(prefix).unwrap_or(value);
    match field {
        "href" => match url::Url::parse(value) {
            Ok(new) => url = new,
            Err(e) => return format!("eInvalid URL {value:?}: {e}"),
        },
        "protocol" => {
            let _ = url.set_scheme(value.trim_end_matches(':'));
        }
        "username" => {
            let _ = url.set_username(value);
        }
        "password" => {
            let _ = url.set_password(Some(value).filter(|v| !v.is_empty()));
        }
        "host" => {
            let (host, port) = match value.rsplit_once(':') {
                Some((host, port)) if !host.ends_with(']') || value.starts_with('[') => {
                    (host, port.parse::<u16>().ok())
                }
                _ => (value, None),
            };
            if url.set_host(Some(host)).is_ok() && port.is_some() {
                let _ = url.set_port(port);
            }
        }
        "hostname" => {
            let _ = url.set_host(Some(value));
        }
        "port" => {
            let _ = url.set_port(if value.is_empty() {
                None
            } else {
                value.parse().ok()
            });
        }
        "pathname" => url.set_path(value),
        "search" => url.set_query(Some(strip('?')).filter(|q| !q.is_empty())),
        "hash" => url.set_fragment(Some(strip('#')).filter(|f| !f.is_empty())),
        other => return format!("eURL has no settable field {other:?}"),
    }
    format!("o{}", url_parts(&url))
}

fn url_parts(url: &url::Url) -> serde_json::Value {
    let host = url.host_str().unwrap_or_default();
    let host_port = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    json!({
        "href": url.as_str(),
        "protocol": format!("{}:", url.scheme()),
        "username": url.username(),
        "password": url.password().unwrap_or_default(),
        "host": host_port,
        "hostname": host,
        "port": url.port().map(|p| p.to_string()).unwrap_or_default(),
        "pathname": url.path(),
        "search": url.query().map(|q| format!("?{q}")).unwrap_or_default(),
        "hash": url.fragment().map(|f| format!("#{f}")).unwrap_or_default(),
        "origin": url.origin().ascii_serialization(),
    })
}

/// `crypto.subtle.digest`: the hex digest of binary-string `data`.
pub(crate) fn digest(algorithm: &str, data: &str) -> String {
    let bytes = match latin1_bytes(data) {
        Ok(bytes) => bytes,
        Err(message) => return format!("e{message}"),
    };
    let hex = match algorithm.to_ascii_uppercase().as_str() {
        "SHA-1" => hex::encode(sha1::Sha1::digest(&bytes)),
        "SHA-256" => hex::encode(sha2::Sha256::digest(&bytes)),
        "SHA-384" => hex::encode(sha2::Sha384::digest(&bytes)),
        "SHA-512" => hex::encode(sha2::Sha512::digest(&bytes)),
        other => {
            return format!(
                "eUnrecognized algorithm name {other:?}: digest supports SHA-1, SHA-256, SHA-384 and SHA-512"
            )
        }
    };
    format!("o{hex}")
}

/// Most random bytes one call hands out (the Web Crypto limit of `getRandomValues`).
const MAX_RANDOM_BYTES: usize = 65_536;

/// Hex of `n` bytes from the operating system's generator.
pub(crate) fn random_hex(n: usize) -> String {
    if n > MAX_RANDOM_BYTES {
        return format!(
            "eThe ArrayBufferView's byte length ({n}) exceeds the number of bytes of entropy available via this API ({MAX_RANDOM_BYTES})"
        );
    }
    let mut bytes = vec![0u8; n];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    format!("o{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_resolve_and_set_as_the_standard_says() {
        let parts: serde_json::Value =
            serde_json::from_str(&url_parse("../b?x=1#h", "HTTP://Example.COM:80/a/c")[1..])
                .unwrap_or_default();
        assert_eq!(parts["href"], "http://example.com/b?x=1#h");
        assert_eq!(parts["port"], "");
        assert_eq!(parts["origin"], "http://example.com");
        assert!(url_parse("not a url", "").starts_with("eInvalid URL"));
        let moved: serde_json::Value =
            serde_json::from_str(&url_set("http://a.test/x", "host", "b.test:8080")[1..])
                .unwrap_or_default();
        assert_eq!(moved["href"], "http://b.test:8080/x");
    }

    #[test]
    fn digests_match_known_vectors() {
        assert_eq!(
            digest("SHA-256", "abc"),
            "oba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            digest("sha-1", "abc"),
            "oa9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert!(digest("MD5", "abc").starts_with("eUnrecognized"));
        assert!(random_hex(1 << 20).starts_with('e'));
        assert_eq!(random_hex(16).len(), 33);
    }
}
