//! The JSON every command prints with `--json`, in one envelope built here:
//! `{"schema": 1, "command": "<command>", ...}`, the command's fields after those two. A
//! changed field is a breaking change (the CHANGELOG says so); new fields are not.

use serde::Serialize;
use serde_json::{Map, Value};

/// The version of every command's JSON.
pub(crate) const SCHEMA: u64 = 1;

/// `body`'s fields (it must serialize to an object) after `schema` and `command`.
pub(crate) fn envelope(command: &str, body: impl Serialize) -> Value {
    let mut out = Map::new();
    out.insert("schema".into(), SCHEMA.into());
    out.insert("command".into(), command.into());
    match value(body) {
        Value::Object(fields) => {
            for (k, v) in fields {
                if k != "schema" && k != "command" {
                    out.insert(k, v);
                }
            }
        }
        other => panic!("a JSON document's body is an object, not {other}"),
    }
    Value::Object(out)
}

/// The envelope, pretty-printed with a final newline: what `--json` prints.
pub(crate) fn document(command: &str, body: impl Serialize) -> String {
    pretty(&envelope(command, body))
}

/// A document pretty-printed with a final newline.
pub(crate) fn pretty(doc: &Value) -> String {
    let mut s = serde_json::to_string_pretty(doc).expect("plain data");
    s.push('\n');
    s
}

/// A report's data as a JSON value (reports are plain data: serializing cannot fail).
pub(crate) fn value(body: impl Serialize) -> Value {
    serde_json::to_value(body).expect("reports serialize to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_and_command_come_first() {
        let d = document(
            "sim",
            serde_json::json!({"rows": [1], "command": "x", "a": 2}),
        );
        assert_eq!(
            d,
            "{\n  \"schema\": 1,\n  \"command\": \"sim\",\n  \"rows\": [\n    1\n  ],\n  \"a\": 2\n}\n"
        );
    }
}
