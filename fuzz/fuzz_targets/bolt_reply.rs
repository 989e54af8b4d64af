//! One Bolt server message, as the client reads it after joining the chunks: the PackStream
//! decoding, the message kinds, and what the client then reads out of them (ROUTE's `rt`,
//! RUN's `fields`, a RECORD's row, a FAILURE's code and message).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memgraph_bolt::client::{decode_message, QueryResult, ServerMessage};
use memgraph_bolt::packstream::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = decode_message(data) else {
        return;
    };
    match message {
        ServerMessage::Success(meta) => {
            if let Some(rt) = meta.get("rt") {
                let _ = rt.get("ttl").and_then(Value::as_int);
                for server in rt
                    .get("servers")
                    .and_then(Value::as_list)
                    .unwrap_or_default()
                {
                    let _ = server.get("role").and_then(Value::as_str);
                    let _ = server.get("addresses").and_then(Value::as_list);
                }
            }
            let fields: Vec<String> = meta
                .get("fields")
                .and_then(Value::as_list)
                .unwrap_or_default()
                .iter()
                .map(|f| f.as_str().unwrap_or_default().to_string())
                .collect();
            let result = QueryResult {
                fields,
                records: vec![],
            };
            let _ = result.rows();
            let _ = meta.display();
        }
        ServerMessage::Record(values) => {
            let result = QueryResult {
                fields: (0..values.len()).map(|i| format!("c{i}")).collect(),
                records: vec![values],
            };
            assert_eq!(result.rows().count(), 1);
        }
        ServerMessage::Failure { code, message } => {
            let _ = (code.len(), message.len());
        }
        ServerMessage::Ignored => {}
    }
});
