//! TLS certificates over HTTP: list them (never a key), upload one (its
//! PEM chain and key in the body, checked and stored by
//! `certificates::store_certificate`, the key into the sealed value table
//! only) and remove one. What `slipway cert` does against the store, for
//! `--server`.

use axum::extract::State;
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use slipway_proto::event::CertificateSource;
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::extract::{JsonBody, Params};
use super::{load_error, ApiResult, Caller, Store};
use crate::certificates;
use crate::queries::{self, CertificateView};

#[utoipa::path(get, path = "/api/certificates", tag = "certificates",
    summary = "Every domain's certificate: valid until, source, renewal state and redirect (never a key)",
    responses((status = 200, body = [CertificateView])))]
pub async fn list(State(store): Store) -> ApiResult<Json<Vec<CertificateView>>> {
    Ok(Json(queries::certificates(&*store).await.map_err(load_error)?))
}

/// A certificate to upload.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    /// The PEM chain, leaf first.
    chain: String,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1); kept sealed in the
    /// value table, never shown again.
    key: String,
}

/// A certificate now serving.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Stored {
    pub domain: String,
    /// The DNS names it covers.
    pub names: Vec<String>,
    /// RFC 3339.
    pub not_after: String,
    pub fingerprint: String,
}

#[utoipa::path(put, path = "/api/certificates/{domain}", tag = "certificates",
    summary = "Serve a domain over HTTPS with an uploaded certificate",
    description = "The chain and key are checked (the key belongs to the leaf, its names cover the domain, it has not \
expired); every router serves it from its next handshake. A refusal says why and never quotes the key.",
    params(("domain" = String, Path, description = "An exact name or `*.example.com`")),
    request_body = Upload,
    responses((status = 200, body = Stored), (status = 400, body = ErrorBody)))]
pub async fn add(
    State(store): Store,
    caller: Caller,
    Params(domain): Params<String>,
    JsonBody(upload): JsonBody<Upload>,
) -> ApiResult<Json<Stored>> {
    let stored = certificates::store_certificate(
        &*store,
        &caller.actor(),
        &domain,
        &upload.chain,
        &upload.key,
        CertificateSource::Uploaded,
        Utc::now(),
    )
    .await??;
    Ok(Json(Stored {
        domain: stored.domain,
        names: stored.names,
        not_after: stored.not_after.to_rfc3339(),
        fingerprint: stored.fingerprint,
    }))
}

/// A certificate that serves no more.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Removed {
    pub domain: String,
    pub fingerprint: String,
}

#[utoipa::path(delete, path = "/api/certificates/{domain}", tag = "certificates",
    summary = "Stop serving a domain's certificate",
    description = "Routers stop serving it from their next handshake. A domain still added to an environment gets a \
new certificate over ACME when the engine orders certificates; remove the domain first to stop that.",
    params(("domain" = String, Path, description = "The domain")),
    responses((status = 200, body = Removed), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove(State(store): Store, caller: Caller, Params(domain): Params<String>) -> ApiResult<Json<Removed>> {
    let removed = certificates::remove_certificate(&*store, &caller.actor(), &domain).await??;
    Ok(Json(Removed { domain: removed.domain, fingerprint: removed.fingerprint }))
}
