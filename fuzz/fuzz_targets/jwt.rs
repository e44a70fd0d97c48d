//! User tokens and providers' key sets: parsing and checking any token against any key set
//! fails with a reason, never panics, and never accepts what no key signed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nimbus_app::{check_token_offline, AuthProvider};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `<key set JSON>\n<token>`; without a newline, the input is the token and the key set
    // is empty.
    let (key_set, token) = text.split_once('\n').unwrap_or(("{\"keys\": []}", text));
    let providers = [
        AuthProvider::Oidc {
            domain: "https://issuer.example".into(),
            application_id: "convex".into(),
        },
        AuthProvider::CustomJwt {
            issuer: "https://issuer.example".into(),
            jwks: "data:,".into(),
            algorithm: nimbus_app::AuthAlgorithm::Es256,
            application_id: None,
        },
    ];
    for provider in &providers {
        let _ = check_token_offline(token, provider, key_set.as_bytes(), 1_800_000_000.0);
    }
});
