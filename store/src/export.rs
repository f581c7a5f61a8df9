//! Exports of the event log, read from a backend: the log raw in global
//! order (bodies as stored, never decoded and re-encoded, so a changed byte
//! stays changed), written in the `slipway-export/1` format, and the chains
//! verified as they stream out of the database. The format itself and the
//! offline verification of a file live in `slipway_verify::export` (no
//! database), re-exported here.

use std::io::{self, Write};

use chrono::{DateTime, SecondsFormat, Utc};
use futures::future::FutureExt;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use sqlx::{Pool, Row};

pub use slipway_verify::export::*;

use crate::chain::{self, ChainRow, VerifyReport};
use crate::dialect::{db, parse_tx, Dialect};
use crate::event_store::{Position, StoreError};
use crate::{PgStore, SqliteStore};

/// Every event in global order, raw, as one streamed query (it holds a
/// connection until the last row is read: the CLI's checkpoints use it;
/// exports read `paged_log`). Like `stream_all` it reads only what is safe
/// to read now, so a checkpoint over its first N events stays comparable.
pub fn postgres_log(store: &PgStore) -> BoxStream<'_, Result<LogRow, StoreError>> {
    log(store.pool())
}

pub fn sqlite_log(store: &SqliteStore) -> BoxStream<'_, Result<LogRow, StoreError>> {
    log(store.pool())
}

fn log<DB: Dialect>(pool: &Pool<DB>) -> BoxStream<'_, Result<LogRow, StoreError>>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'r> String: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> i64: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
{
    sqlx::query(DB::LOG).fetch(pool).map(|row| log_row(&row.map_err(read_error::<DB>)?).map_err(read_error::<DB>)).boxed()
}

/// `EventStore::log_page` on either backend: up to `limit` events after
/// `after` in global order, raw, gap-safe as `log`.
pub(crate) async fn log_page<DB: Dialect>(pool: &Pool<DB>, after: Position, limit: usize) -> Result<Vec<LogRow>, StoreError>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
{
    let rows = sqlx::query(DB::LOG_PAGE)
        .bind(after.tx.to_string())
        .bind(after.seq)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await
        .map_err(read_error::<DB>)?;
    rows.iter().map(|row| log_row(row).map_err(read_error::<DB>)).collect()
}

/// Events an export reads per page (`EventStore::log_page`): each page is
/// one short query, and the connection goes back to the pool before any of
/// its rows is written, so a client that stops reading holds none.
pub const LOG_PAGE: usize = 1_000;

/// The log in global order from the start, read a page of `page` events at
/// a time, up to and including `upto` when given (events appended after it
/// are left out). At most one page is in memory; no connection is held
/// between pages.
pub fn paged_log(store: &dyn crate::EventStore, page: usize, upto: Option<Position>) -> BoxStream<'_, Result<LogRow, StoreError>> {
    let rows = paged(Position::START, page, move |after, n| store.log_page(after, n), |row: &LogRow| row.position);
    rows.try_take_while(move |row| std::future::ready(Ok(upto.is_none_or(|last| row.position <= last)))).boxed()
}

/// Rows read a page at a time: `fetch(after, n)` returns up to `n` rows
/// after the place `after`, in order, and `place` says where a row is, for
/// the next page. A short page is the last.
fn paged<'a, K, R, F>(start: K, page: usize, fetch: F, place: fn(&R) -> K) -> BoxStream<'a, Result<R, StoreError>>
where
    K: Clone + Send + 'a,
    R: Send + 'a,
    F: Fn(K, usize) -> futures::future::BoxFuture<'a, Result<Vec<R>, StoreError>> + Send + Sync + 'a,
{
    struct Pages<K, R> {
        after: K,
        rows: std::vec::IntoIter<R>,
        done: bool,
    }
    let page = page.max(1);
    let fetch = std::sync::Arc::new(fetch);
    let start = Pages { after: start, rows: Vec::new().into_iter(), done: false };
    futures::stream::try_unfold(start, move |mut pages| {
        let fetch = fetch.clone();
        async move {
            loop {
                if let Some(row) = pages.rows.next() {
                    return Ok(Some((row, pages)));
                }
                if pages.done {
                    return Ok(None);
                }
                let rows = fetch(pages.after.clone(), page).await?;
                pages.done = rows.len() < page;
                match rows.last() {
                    Some(last) => pages.after = place(last),
                    None => return Ok(None),
                }
                pages.rows = rows.into_iter();
            }
        }
    })
    .boxed()
}

fn log_row<'r, R: Row>(row: &'r R) -> Result<LogRow, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(LogRow {
        position: Position { tx: parse_tx(&row.try_get::<String, _>(0)?), seq: row.try_get(1)? },
        stream: row.try_get(2)?,
        version: u64::try_from(row.try_get::<i64, _>(3)?).unwrap_or(0),
        body: row.try_get(4)?,
        prev_hash: row.try_get(5)?,
        hash: row.try_get(6)?,
        recorded_at: row.try_get(7)?,
    })
}

/// Every stored event's chain fields, ordered by stream then version, as
/// one streamed query: `slipway audit verify` reads it (a CLI may hold a
/// connection for as long as it takes; the API reads `paged_chains`).
pub fn postgres_chains(store: &PgStore) -> BoxStream<'_, Result<ChainRow, StoreError>> {
    chains(store.pool())
}

pub fn sqlite_chains(store: &SqliteStore) -> BoxStream<'_, Result<ChainRow, StoreError>> {
    chains(store.pool())
}

/// The chain fields `chain::verify` reads, in `chain_row`'s order.
macro_rules! select_chain_columns {
    () => {
        "SELECT stream, version, body, prev_hash, hash FROM events "
    };
}

fn chains<DB: Dialect>(pool: &Pool<DB>) -> BoxStream<'_, Result<ChainRow, StoreError>>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'r> String: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> i64: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
{
    sqlx::query(concat!(select_chain_columns!(), "ORDER BY stream, version"))
        .fetch(pool)
        .map(|row| chain_row(&row.map_err(chain_error::<DB>)?).map_err(chain_error::<DB>))
        .boxed()
}

/// `EventStore::chain_page` on either backend: `(stream, version) > after`
/// walks the `UNIQUE (stream, version)` index, in the same collation as
/// the `ORDER BY` (row values compare alike on both), so consecutive pages
/// are consecutive parts of the order. The first page is after `("", 0)`:
/// no stream is named "".
pub(crate) async fn chain_page<DB: Dialect>(pool: &Pool<DB>, after: Option<(&str, u64)>, limit: usize) -> Result<Vec<ChainRow>, StoreError>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'r> String: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
{
    const SQL: &str = concat!(select_chain_columns!(), "WHERE (stream, version) > ($1, $2) ORDER BY stream, version LIMIT $3");
    let (stream, version) = after.unwrap_or(("", 0));
    let rows = sqlx::query(SQL)
        .bind(stream)
        .bind(i64::try_from(version).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await
        .map_err(chain_error::<DB>)?;
    rows.iter().map(|row| chain_row(row).map_err(chain_error::<DB>)).collect()
}

/// Events per page of `paged_chains`.
pub const CHAIN_PAGE: usize = 1_000;

/// Every event's chain fields, ordered by stream then version, read a page
/// of `page` events at a time (`EventStore::chain_page`): at most one page
/// in memory and no connection held between pages. `verify_chains` over it
/// is what the HTTP API's verification runs.
pub fn paged_chains(store: &(impl crate::EventStore + ?Sized), page: usize) -> BoxStream<'_, Result<ChainRow, StoreError>> {
    let fetch = move |after: Option<(String, u64)>, n| {
        async move { store.chain_page(after.as_ref().map(|(stream, version)| (stream.as_str(), *version)), n).await }.boxed()
    };
    paged(None, page, fetch, |row: &ChainRow| Some((row.stream.clone(), row.version)))
}

fn chain_row<'r, R: Row>(row: &'r R) -> Result<ChainRow, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ChainRow {
        stream: row.try_get(0)?,
        version: u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0),
        body: row.try_get(2)?,
        prev_hash: row.try_get(3)?,
        hash: row.try_get(4)?,
    })
}

/// `chain::verify` over rows ordered by stream then version, one stream at
/// a time: the same report as over all the rows at once.
pub async fn verify_chains(mut rows: BoxStream<'_, Result<ChainRow, StoreError>>) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let mut stream: Vec<ChainRow> = Vec::new();
    let mut absorb = |rows: &[ChainRow]| {
        let one = chain::verify(rows);
        report.streams += one.streams;
        report.events += one.events;
        report.findings.extend(one.findings);
    };
    while let Some(row) = rows.try_next().await? {
        if stream.last().is_some_and(|last| last.stream != row.stream) {
            absorb(&stream);
            stream.clear();
        }
        stream.push(row);
    }
    absorb(&stream);
    Ok(report)
}

fn chain_error<DB: Dialect>(source: sqlx::Error) -> StoreError {
    db::<DB>("reading the hash chains")(source)
}

fn read_error<DB: Dialect>(source: sqlx::Error) -> StoreError {
    db::<DB>("reading the log in global order")(source)
}

/// Why an export could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export: {0}")]
    Write(#[from] io::Error),
}

/// Writes an export of `store`'s log to `out` — the whole log, or only
/// `project`'s streams (a first pass over the log finds them), or only
/// events recorded at or after `since` — and returns `out` and the number
/// of events written. `slipway export` uses it.
pub async fn write_export<W: Write>(
    store: &dyn crate::EventStore,
    project: Option<&str>,
    since: Option<DateTime<Utc>>,
    mut out: W,
) -> Result<(W, u64), ExportError> {
    let events = stream_export(store, project, since, |chunk| Box::pin(std::future::ready(out.write_all(&chunk)))).await?;
    out.flush()?;
    Ok((out, events))
}

/// Events written between two chunks of `stream_export`.
const CHUNK_EVENTS: u64 = 256;

/// `write_export` in chunks: `send` gets the bytes written every few
/// hundred events and at the end, so a caller can pass them on (an HTTP
/// response) while the log is still being read, in constant memory. An
/// error from `send` (the reader went away) stops the export. Returns the
/// number of events.
pub async fn stream_export(
    store: &dyn crate::EventStore,
    project: Option<&str>,
    since: Option<DateTime<Utc>>,
    mut send: impl FnMut(Vec<u8>) -> futures::future::BoxFuture<'static, io::Result<()>>,
) -> Result<u64, ExportError> {
    // A project's export reads the log twice; the second pass stops where
    // the first did, so a stream of the project created in between (which
    // the first pass could not see) cannot leave half its events out.
    let (streams, upto) = match project {
        Some(project) => {
            let mut streams = ProjectStreams::new(project);
            let mut last = Position::START;
            let mut rows = paged_log(store, LOG_PAGE, None);
            while let Some(row) = rows.try_next().await? {
                streams.consider(&row.stream, row.version, &row.body);
                last = row.position;
            }
            (Some(streams.finish()), Some(last))
        }
        None => (None, None),
    };
    let header = Header {
        slipway_export: FORMAT.into(),
        exported_at: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        backend: store.backend().into(),
        project: project.map(str::to_string),
        since: since.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    };
    let mut writer = ExportWriter::new(Vec::with_capacity(1 << 16), &header)?;
    let mut rows = paged_log(store, LOG_PAGE, upto);
    while let Some(row) = rows.try_next().await? {
        let wanted = streams.as_ref().is_none_or(|s| s.contains(&row.stream)) && since.is_none_or(|t| row.recorded_at >= t);
        if wanted {
            writer.event(&row)?;
            if writer.events() % CHUNK_EVENTS == 0 {
                send(writer.take_output()).await?;
            }
        }
    }
    let (rest, events) = writer.finish()?;
    send(rest).await?;
    Ok(events)
}
