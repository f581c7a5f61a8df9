//! The log for auditors: an export (the same JSON Lines as `slipway
//! export`, from `slipway_store::export`) and a verification of every
//! stream's hash chain (as `slipway audit verify` over the database).
//! Signed checkpoints live outside the database, on the auditor's side, so
//! checking against them stays with the CLI.

use std::io;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use slipway_store::export;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::extract::QueryParams;
use super::quota::{Long, Quotas};
use super::{require_project, ApiResult, Caller, Store};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Only this project's streams (each complete).
    project: Option<String>,
    /// Only events recorded at or after this RFC 3339 time.
    since: Option<String>,
}

/// Streamed as it is read (a few hundred events at a time, in constant
/// memory). A failure half-way cuts the body short: the export then lacks
/// its end line, and `slipway audit verify --file` says the file was cut.
#[utoipa::path(get, path = "/api/export", tag = "audit",
    summary = "The event log as JSON Lines (slipway-export/1), for offline verification",
    description = "The same file as `slipway export`; check it with `slipway audit verify --file`.",
    params(ExportQuery),
    responses((status = 200, content_type = "application/x-ndjson", body = String), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "The token holds as many exports as it may")))]
pub async fn export(
    State(store): Store,
    caller: Caller,
    Extension(quotas): Extension<Arc<Quotas>>,
    QueryParams(q): QueryParams<ExportQuery>,
) -> ApiResult<Response> {
    let held = quotas.take(&caller.name, Long::Export)?;
    let since = match &q.since {
        Some(text) => Some(
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| ApiError::BadRequest(format!("since `{text}` is not an RFC 3339 time such as 2025-01-31T00:00:00Z ({e})")))?,
        ),
        None => None,
    };
    if let Some(project) = &q.project {
        require_project(&*store, project).await?;
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Vec<u8>>>(4);
    tokio::spawn(async move {
        // Held until the export is sent, fails, or the client stops reading.
        let _held = held;
        let send = |chunk: Vec<u8>| -> futures::future::BoxFuture<'static, io::Result<()>> {
            let tx = tx.clone();
            Box::pin(async move {
                let gone = |_| io::Error::new(io::ErrorKind::BrokenPipe, "the client stopped reading the export");
                tx.send(Ok(chunk)).await.map_err(gone)
            })
        };
        if let Err(e) = export::stream_export(&*store, q.project.as_deref(), since, send).await {
            tracing::warn!(error = %e, "the export over the API stopped");
            let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
        }
    });
    let chunks = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) });
    let headers = [(CONTENT_TYPE, "application/x-ndjson"), (CONTENT_DISPOSITION, "attachment; filename=\"slipway-export.jsonl\"")];
    Ok((headers, Body::from_stream(chunks)).into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyReport {
    events: u64,
    streams: u64,
    /// No finding.
    intact: bool,
    /// The first break of each tampered stream.
    findings: Vec<Finding>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Finding {
    stream: String,
    version: u64,
    /// "changed", "removed" or "reordered".
    kind: String,
    detail: String,
}

#[utoipa::path(post, path = "/api/audit/verify", tag = "audit",
    summary = "Check every stream's hash chain",
    description = "As `slipway audit verify` over the database. A removed stream tail needs signed checkpoints, which the CLI checks.",
    responses((status = 200, body = VerifyReport), (status = 429, body = ErrorBody, description = "The token is verifying already")))]
pub async fn verify(State(store): Store, caller: Caller, Extension(quotas): Extension<Arc<Quotas>>) -> ApiResult<Json<VerifyReport>> {
    let _held = quotas.take(&caller.name, Long::Verify)?;
    // Page by page (each page one short statement, under the API pool's
    // statement_timeout), holding one stream's rows at a time.
    let report = export::verify_chains(export::paged_chains(store.as_ref(), export::CHAIN_PAGE)).await?;
    Ok(Json(VerifyReport {
        events: report.events,
        streams: report.streams,
        intact: report.is_intact(),
        findings: report
            .findings
            .into_iter()
            .map(|f| Finding { stream: f.stream, version: f.version, kind: f.kind.to_string(), detail: f.detail })
            .collect(),
    }))
}
