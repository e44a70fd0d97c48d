//! convex-JSON from clients: whatever decodes must encode and decode back to the same value,
//! in both the JSON and the text encoding, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nimbus_types::json::{decode, encode, encode_text};

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(value) = decode(&json) else {
        return;
    };
    let _ = nimbus_types::value::check_limits(&value, 64);
    let again = decode(&encode(&value)).expect("an encoded value decodes");
    assert_eq!(
        again.cmp(&value),
        std::cmp::Ordering::Equal,
        "JSON round trip"
    );
    let text = encode_text(&value);
    let parsed: serde_json::Value = serde_json::from_str(&text).expect("encoded text is JSON");
    let from_text = decode(&parsed).expect("encoded text decodes");
    assert_eq!(
        from_text.cmp(&value),
        std::cmp::Ordering::Equal,
        "text round trip"
    );
});
