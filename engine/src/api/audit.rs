//! The log for auditors: an export (the same JSON Lines as `slipway
//! export`, from `slipway_store::export`) and a verification of every
//! stream's hash chain (as `slipway audit verify` over the database).
//! Signed checkpoints live outside the database, on the auditor's side, so
//! checking against them stays with the CLI.

use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::HeaderName;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use slipway_store::chain;
use slipway_store::export::{self, ExportError};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::extract::QueryParams;
use super::{require_project, ApiResult, Store};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Only this project's streams (each complete).
    project: Option<String>,
    /// Only events recorded at or after this RFC 3339 time.
    since: Option<String>,
}

/// The export is built in memory before it is sent: fine for logs of a few
/// hundred thousand events; `slipway export` streams to a file for more.
#[utoipa::path(get, path = "/api/export", tag = "audit",
    summary = "The event log as JSON Lines (slipway-export/1), for offline verification",
    description = "The same file as `slipway export`; check it with `slipway audit verify --file`.",
    params(ExportQuery),
    responses((status = 200, content_type = "application/x-ndjson", body = String), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn export(
    State(store): Store,
    QueryParams(q): QueryParams<ExportQuery>,
) -> ApiResult<([(HeaderName, &'static str); 2], Vec<u8>)> {
    let since = match &q.since {
        Some(text) => Some(DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|e| {
            ApiError::BadRequest(format!("since `{text}` is not an RFC 3339 time such as 2025-01-31T00:00:00Z ({e})"))
        })?),
        None => None,
    };
    if let Some(project) = &q.project {
        require_project(&*store, project).await?;
    }
    let (bytes, _) = export::write_export(&*store, q.project.as_deref(), since, Vec::new()).await.map_err(|e| match e {
        ExportError::Store(e) => ApiError::Store(e),
        ExportError::Write(e) => ApiError::Internal(format!("writing the export: {e}")),
    })?;
    let headers = [(CONTENT_TYPE, "application/x-ndjson"), (CONTENT_DISPOSITION, "attachment; filename=\"slipway-export.jsonl\"")];
    Ok((headers, bytes))
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
    responses((status = 200, body = VerifyReport)))]
pub async fn verify(State(store): Store) -> ApiResult<Json<VerifyReport>> {
    let report = chain::verify(&store.chain_rows().await?);
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
