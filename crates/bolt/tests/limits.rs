//! A broken or hostile server gets a one-line error naming the cap it broke, never a hang or
//! unbounded memory: a fake Bolt 5.2 server over an in-memory pipe (`tokio::io::duplex`)
//! sends an endless message, endless records, or large records.

use std::time::Duration;

use memgraph_bolt::packstream::{self, Value};
use memgraph_bolt::{BoltAddress, BoltError, ConnectOptions, Connection, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const SUCCESS: u8 = 0x70;
const RECORD: u8 = 0x71;

fn address() -> BoltAddress {
    BoltAddress {
        host: "fake".into(),
        port: 7687,
    }
}

fn chunked(tag: u8, fields: Vec<Value>) -> Vec<u8> {
    let mut body = Vec::new();
    packstream::encode(&Value::Struct { tag, fields }, &mut body).unwrap();
    let mut out = Vec::new();
    for chunk in body.chunks(0xFFFF) {
        out.extend((chunk.len() as u16).to_be_bytes());
        out.extend(chunk);
    }
    out.extend([0, 0]);
    out
}

/// Reads one client message and returns its tag.
async fn read_message(io: &mut DuplexStream) -> u8 {
    let mut body = Vec::new();
    loop {
        let len = io.read_u16().await.unwrap() as usize;
        if len == 0 {
            break;
        }
        let start = body.len();
        body.resize(start + len, 0);
        io.read_exact(&mut body[start..]).await.unwrap();
    }
    match packstream::decode(&body).unwrap() {
        Value::Struct { tag, .. } => tag,
        other => panic!("not a message: {other:?}"),
    }
}

/// Handshake (agrees on 5.2), HELLO and LOGON succeed, then reads RUN and PULL.
async fn up_to_pull(io: &mut DuplexStream) {
    let mut preamble = [0u8; 20];
    io.read_exact(&mut preamble).await.unwrap();
    assert_eq!(preamble[..4], [0x60, 0x60, 0xB0, 0x17]);
    io.write_all(&[0, 0, 2, 5]).await.unwrap();
    assert_eq!(read_message(io).await, 0x01, "HELLO");
    io.write_all(&chunked(
        SUCCESS,
        vec![Value::map([("server", Value::str("fake"))])],
    ))
    .await
    .unwrap();
    assert_eq!(read_message(io).await, 0x6A, "LOGON");
    io.write_all(&chunked(SUCCESS, vec![])).await.unwrap();
    assert_eq!(read_message(io).await, 0x10, "RUN");
    assert_eq!(read_message(io).await, 0x3F, "PULL");
    let fields = Value::List(vec![Value::str("n")]);
    io.write_all(&chunked(SUCCESS, vec![Value::map([("fields", fields)])]))
        .await
        .unwrap();
}

/// Runs `RETURN 1` against a fake server; `serve` plays the server after RUN and PULL until
/// the client hangs up (its writes then fail, which ends it).
async fn query_against<F, Fut>(limits: Limits, serve: F) -> Result<usize, BoltError>
where
    F: FnOnce(DuplexStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        up_to_pull(&mut server).await;
        serve(server).await;
    });
    let options = ConnectOptions {
        timeout: Duration::from_secs(20),
        limits,
        ..ConnectOptions::default()
    };
    let result = async {
        let mut conn = Connection::over(client, &address(), &options).await?;
        let result = conn.run("RETURN 1 AS n").await?;
        Ok(result.records.len())
    }
    .await;
    // The client is gone: the server's next write fails and it ends.
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("the fake server ends once the client hangs up")
        .ok();
    result
}

#[tokio::test]
async fn a_well_behaved_result_is_read_whole() {
    let n = query_against(Limits::default(), |mut io| async move {
        for i in 0..3 {
            let record = chunked(RECORD, vec![Value::List(vec![Value::Int(i)])]);
            io.write_all(&record).await.unwrap();
        }
        io.write_all(&chunked(SUCCESS, vec![])).await.unwrap();
        let _ = io.read_u8().await;
    })
    .await
    .unwrap();
    assert_eq!(n, 3);
}

#[tokio::test]
async fn an_endless_message_stops_at_the_default_16_mib_cap() {
    let err = query_against(Limits::default(), |mut io| async move {
        // Full chunks, never the 0x0000 end marker.
        let mut chunk = vec![0xFF, 0xFF];
        chunk.extend(std::iter::repeat_n(0x01, 0xFFFF));
        while io.write_all(&chunk).await.is_ok() {}
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, BoltError::MessageTooLarge { limit, .. } if limit == 16 * 1024 * 1024),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("16777216 bytes"), "{text}");
    assert!(text.contains("max_message_bytes"), "{text}");
    assert_eq!(text.lines().count(), 1);
}

#[tokio::test]
async fn a_smaller_message_cap_holds_across_chunks() {
    let limits = Limits {
        max_message_bytes: 100_000,
        ..Limits::default()
    };
    // Chunks of 65,535 and ~54,500 bytes: each under the cap, together over it.
    let err = query_against(limits, |mut io| async move {
        let record = chunked(
            RECORD,
            vec![Value::List(vec![Value::str("x".repeat(120_000))])],
        );
        let _ = io.write_all(&record).await;
        let _ = io.read_u8().await;
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, BoltError::MessageTooLarge { limit: 100_000, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn endless_records_stop_at_the_default_100000_cap() {
    let err = query_against(Limits::default(), |mut io| async move {
        let record = chunked(RECORD, vec![Value::List(vec![Value::Int(1)])]);
        // A batch per write, so that the test does not spend its time in tiny writes.
        let batch: Vec<u8> = record.repeat(1000);
        while io.write_all(&batch).await.is_ok() {}
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, BoltError::TooManyRecords { limit: 100_000, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("100000 records") && text.contains("max_records"),
        "{text}"
    );
}

#[tokio::test]
async fn large_records_stop_at_the_result_cap() {
    let limits = Limits {
        max_result_bytes: 1_000_000,
        ..Limits::default()
    };
    let err = query_against(limits, |mut io| async move {
        let record = chunked(
            RECORD,
            vec![Value::List(vec![Value::str("x".repeat(10_000))])],
        );
        while io.write_all(&record).await.is_ok() {}
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            BoltError::ResultTooLarge {
                limit: 1_000_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("max_result_bytes"), "{err}");
}
