//! What a function call and a push carry: arguments (`[{...}]` or `{...}`) as the HTTP API
//! and the sync protocol pass them, and the validators and schemas of pushed code. Any
//! input is refused cleanly or accepted; accepted arguments are checked against any
//! accepted validator without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nimbus_types::schema::Schema;
use nimbus_types::validator::{IdCheck, Validator};

/// Every string is an ID of every table: the widest acceptance, the most code checked.
struct AnyIds;

impl IdCheck for AnyIds {
    fn is_id_of_table(&self, _id: &str, _table: &str) -> bool {
        true
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `<validator JSON>\n<arguments JSON>`, or one document tried as everything.
    let (first, second) = text.split_once('\n').unwrap_or((text, text));
    let _ = Schema::parse_text(first);
    let validator = Validator::parse_text(first);
    let Ok(json) = serde_json::from_str::<serde_json::Value>(second) else {
        return;
    };
    if let (Ok(validator), Ok(args)) = (validator, nimbus_app::parse_args(&json)) {
        let _ = validator.check(&args, &AnyIds);
    }
});
