//! Parameter extraction on arbitrary query strings, content types and
//! bodies: errors are fine, panics are not.
#![no_main]

use chatroom::http::params;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Option<String>, Option<Vec<u8>>, Vec<u8>)| {
    let (query, content_type, body) = input;
    if let Ok(found) = params::extract(query.as_deref(), content_type.as_deref(), &body) {
        let _ = found.get("user_tel");
    }
});
