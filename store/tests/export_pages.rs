//! Exports read the log a page at a time and give the connection back
//! between pages: an export larger than a page is byte for byte what one
//! streamed query over the whole log writes, and verifies; a client that
//! opened an export and stopped reading holds none of the store's
//! connections. A store opened with a statement timeout cancels a statement
//! past it (under its writer role) and says so (`StoreError::is_timeout`),
//! and a second store on the same database keeps its own pool.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

mod common;

use std::io;
use std::time::{Duration, Instant};

use common::*;
use futures::future::BoxFuture;
use futures::TryStreamExt;
use slipway_store::export::{self, ExportWriter, Header, LogRow};
use slipway_store::postgres::PgOptions;
use slipway_store::{EventStore, ExpectedVersion, PgStore, StoreError};
use uuid::Uuid;

/// Events in the test log: more than two pages.
const EVENTS: u64 = 2 * export::LOG_PAGE as u64 + 500;

/// `EVENTS` events over 25 streams, appended in batches of 100.
async fn fill(store: &dyn EventStore) {
    let per_stream = EVENTS / 25;
    for s in 0..25 {
        let stream = format!("filler-{s}");
        for batch in (0..per_stream).step_by(100) {
            let expected = if batch == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exactly(batch) };
            store.append(&stream, expected, &events(&stream, batch..(batch + 100).min(per_stream)), &[]).await.unwrap().unwrap();
        }
    }
}

/// What an export of `rows` writes under `header`: the old way, every row
/// of one streamed query through the same writer.
fn reference(rows: &[LogRow], header: &Header) -> Vec<u8> {
    let mut writer = ExportWriter::new(Vec::new(), header).unwrap();
    rows.iter().for_each(|row| writer.event(row).unwrap());
    writer.finish().unwrap().0
}

fn header_of(export: &[u8]) -> Header {
    let first = export.split(|b| *b == b'\n').next().unwrap();
    serde_json::from_slice(first).unwrap()
}

fn assert_verifies(bytes: &[u8], events: u64) {
    let report = export::verify(|| Ok(bytes), None).unwrap();
    assert!(report.is_intact() && report.lines.is_empty() && report.file.is_empty(), "{:?} {:?}", report.file, report.lines);
    assert_eq!(report.events, events);
}

/// `stream_export` into a channel of one chunk, as the HTTP API sends it.
fn export_into_channel(store: PgStore) -> (tokio::sync::mpsc::Receiver<Vec<u8>>, tokio::task::JoinHandle<u64>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let task = tokio::spawn(async move {
        let send = |chunk: Vec<u8>| -> BoxFuture<'static, io::Result<()>> {
            let tx = tx.clone();
            Box::pin(async move { tx.send(chunk).await.map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe)) })
        };
        export::stream_export(&store, None, None, send).await.unwrap()
    });
    (rx, task)
}

#[tokio::test]
async fn postgres_a_paused_export_holds_no_connection_and_writes_what_one_query_would() {
    let schema = format!("t_{}", Uuid::now_v7().simple());
    // Two connections, one of them the LISTEN connection: one for queries.
    let options = PgOptions { schema: Some(schema.clone()), max_connections: 2, migrate: true, ..Default::default() };
    let store = PgStore::connect(&pg_url(), options).await.unwrap();
    fill(&store).await;
    // Gap-safe reads stop below transactions open anywhere in the cluster:
    // wait until the whole log is readable (it then stays so).
    let rows: Vec<LogRow> = eventually("the whole log readable", Duration::from_secs(20), || async {
        let rows: Vec<LogRow> = export::postgres_log(&store).try_collect().await.unwrap();
        (rows.len() as u64 == EVENTS).then_some(rows)
    })
    .await;

    let (mut chunks, task) = export_into_channel(store.clone());
    let mut bytes = chunks.recv().await.unwrap();
    // The client stops reading: the export waits on its channel with a page
    // read. Queries on the same one-connection pool still get a connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "the export should be waiting for its reader");
    let started = Instant::now();
    for n in 0..5 {
        let version = tokio::time::timeout(Duration::from_secs(5), store.stream_version("filler-0"))
            .await
            .unwrap_or_else(|_| panic!("query {n} waited 5 s for a connection the paused export holds"))
            .unwrap();
        assert_eq!(version, EVENTS / 25);
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    while let Some(chunk) = chunks.recv().await {
        bytes.extend(chunk);
    }
    assert_eq!(task.await.unwrap(), EVENTS);
    assert_eq!(bytes, reference(&rows, &header_of(&bytes)), "the paged export differs from one query's");
    assert_verifies(&bytes, EVENTS);
    drop_schema(&schema).await;
}

#[tokio::test]
async fn sqlite_an_export_larger_than_a_page_writes_what_one_query_would() {
    let store = sqlite_store().await;
    fill(&store).await;
    let rows: Vec<LogRow> = export::sqlite_log(&store).try_collect().await.unwrap();
    assert_eq!(rows.len() as u64, EVENTS);
    let (bytes, events) = export::write_export(&store, None, None, Vec::new()).await.unwrap();
    assert_eq!(events, EVENTS);
    assert_eq!(bytes, reference(&rows, &header_of(&bytes)));
    assert_verifies(&bytes, EVENTS);
}

#[tokio::test]
async fn postgres_a_statement_past_the_timeout_is_cancelled_in_its_own_pool() {
    let schema = format!("t_{}", Uuid::now_v7().simple());
    let engine =
        PgStore::connect(&pg_url(), PgOptions { schema: Some(schema.clone()), max_connections: 2, ..Default::default() }).await.unwrap();
    let options = PgOptions {
        schema: Some(schema.clone()),
        max_connections: 2,
        migrate: false,
        statement_timeout: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let api = PgStore::connect(&pg_url(), options).await.unwrap();

    // Set on every connection, and kept under the writer role.
    let (role, timeout): (String, String) =
        sqlx::query_as("SELECT current_user::text, current_setting('statement_timeout')").fetch_one(api.pool()).await.unwrap();
    assert_eq!((role.as_str(), timeout.as_str()), ("slipway_writer", "100ms"));
    let started = Instant::now();
    let error = sqlx::query("SELECT pg_sleep(1)").execute(api.pool()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(900), "the statement ran to its end");
    let error = StoreError::Database { backend: "postgres", context: "sleeping".into(), source: error };
    assert!(error.is_timeout(), "{error}");
    assert!(!error.is_unreachable());
    // The connection is usable again, and the store's own reads work.
    assert_eq!(api.stream_version("nothing").await.unwrap(), 0);

    // The engine's store is another pool, without the limit: the API's
    // connections all held do not hold it up, and its statements run on.
    assert!(!engine.pool().connect_options().get_options().unwrap_or_default().contains("statement_timeout"));
    let _held = api.pool().acquire().await.unwrap();
    let (timeout,): (String,) = sqlx::query_as("SELECT current_setting('statement_timeout')").fetch_one(engine.pool()).await.unwrap();
    assert_eq!(timeout, "0");
    tokio::time::timeout(Duration::from_secs(5), sqlx::query("SELECT pg_sleep(0.3)").execute(engine.pool())).await.unwrap().unwrap();
    drop_schema(&schema).await;
}
