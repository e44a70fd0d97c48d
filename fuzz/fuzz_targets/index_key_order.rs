//! Index keys: the byte order of two values' encodings is their order as values, so index
//! ranges find exactly the documents they should.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nimbus_types::index_key::encode_value;
use nimbus_types::json::decode;

fuzz_target!(|data: &[u8]| {
    // Two JSON documents separated by a newline.
    let Some(split) = data.iter().position(|&b| b == b'\n') else {
        return;
    };
    let value = |bytes: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|json| decode(&json).ok())
    };
    let (Some(a), Some(b)) = (value(&data[..split]), value(&data[split + 1..])) else {
        return;
    };
    let (mut ka, mut kb) = (Vec::new(), Vec::new());
    encode_value(&a, &mut ka);
    encode_value(&b, &mut kb);
    assert_eq!(
        ka.cmp(&kb),
        a.cmp(&b),
        "key order vs value order: {a:?} / {b:?}"
    );
    // No encoding is a prefix of another one (keys of several fields compare field by field).
    if ka != kb {
        assert!(
            !ka.starts_with(&kb) && !kb.starts_with(&ka),
            "prefix: {a:?} / {b:?}"
        );
    }
});
