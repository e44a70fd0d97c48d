//! Serialized queries and filter expressions from pushed code's syscalls: parsing and
//! evaluating any input fails cleanly, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nimbus_types::query::{Expr, SerializedQuery};

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = SerializedQuery::parse(&json);
    if let Ok(expr) = Expr::parse(&json) {
        let doc = nimbus_types::value::Object::new();
        let _ = expr.evaluate(&doc);
        let _ = expr.matches(&doc);
    }
    if let Some(filter) = json.get("filter") {
        if let Ok(expr) = Expr::parse(filter) {
            let _ = expr.matches(&nimbus_types::value::Object::new());
        }
    }
});
