//! Who may call what. Every route but `/healthz` and the push webhooks
//! (`/api/hooks/...`, authenticated by their signature) needs `Authorization:
//! Bearer <token>`; the token is checked against the tokens stream and its
//! scope against the one the route table gives the route. The caller's
//! token name becomes the actor `token:<name>` of the events the request
//! records; no header can claim another.
//!
//! A token of the wrong form is refused before any database work. The
//! tokens projection is cached and folded again only when the stream's
//! version moved (one indexed read per request, so a revocation still
//! holds from the very next request, on every API process). A client
//! address that keeps presenting refused tokens is answered 429 for a
//! while without any database work (`attempts`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use slipway_proto::event::TokenScope;
use slipway_store::EventStore;

use super::attempts::Attempts;
use super::error::ApiError;
use crate::requests;
use crate::tokens::{self, Refused, Tokens};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token (only the health check).
    Open,
    /// No token: the handler verifies the request's webhook signature
    /// against the project's webhook secret (`/api/hooks/...`).
    Signature,
    /// A token of at least this scope.
    Scope(TokenScope),
}

impl Access {
    pub fn scope(self) -> Option<TokenScope> {
        match self {
            Access::Open | Access::Signature => None,
            Access::Scope(s) => Some(s),
        }
    }
}

/// The authenticated caller, put in the request's extensions by the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub scope: TokenScope,
}

impl Caller {
    /// The actor recorded on the events this caller's requests cause.
    pub fn actor(&self) -> String {
        tokens::actor(&self.name)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        // Only a route registered without its guard gets here without one:
        // fail closed, it is a bug in the route table.
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::Internal(format!("route {} has no access check; this is a bug in Slipway's route table", parts.uri.path()))
        })
    }
}

/// The tokens projection and the stream version it was folded at.
type CachedTokens = Arc<Mutex<Option<(u64, Arc<Tokens>)>>>;

/// What every guarded route shares: the store, the cached tokens
/// projection (with the stream version it was folded at) and the failed
/// attempts per client.
#[derive(Clone)]
pub struct Gate {
    store: Arc<dyn EventStore>,
    tokens: CachedTokens,
    attempts: Arc<Mutex<Attempts>>,
}

impl Gate {
    pub fn new(store: Arc<dyn EventStore>) -> Gate {
        Gate { store, tokens: Arc::default(), attempts: Arc::default() }
    }

    /// The tokens projection as of now: the cached one while the stream's
    /// version is unchanged.
    async fn tokens(&self) -> Result<Arc<Tokens>, ApiError> {
        let version = self.store.stream_version(slipway_proto::event::TOKENS_STREAM).await?;
        if let Some((at, tokens)) = self.tokens.lock().ok().and_then(|c| c.clone()) {
            if at == version {
                return Ok(tokens);
            }
        }
        let folded = Arc::new(requests::load_tokens(&*self.store).await?);
        if let Ok(mut cache) = self.tokens.lock() {
            *cache = Some((version, folded.clone()));
        }
        Ok(folded)
    }
}

#[derive(Clone)]
struct Guard {
    gate: Gate,
    scope: TokenScope,
}

/// `route` behind a check for a token of at least `access`'s scope.
pub fn guard(route: MethodRouter<Arc<dyn EventStore>>, gate: &Gate, access: Access) -> MethodRouter<Arc<dyn EventStore>> {
    match access {
        Access::Open | Access::Signature => route,
        Access::Scope(scope) => route.route_layer(middleware::from_fn_with_state(Guard { gate: gate.clone(), scope }, check)),
    }
}

async fn check(State(guard): State<Guard>, mut request: Request, next: Next) -> Response {
    let client = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let now = Instant::now();
    let blocked = client.and_then(|ip| guard.gate.attempts.lock().ok().and_then(|a| a.blocked(ip, now)));
    if let Some(until) = blocked {
        let seconds = until.saturating_duration_since(now).as_secs().max(1);
        let mut refused =
            ApiError::TooManyRequests(format!("too many refused tokens from this address; try again in {seconds} s")).into_response();
        refused.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(seconds));
        return refused;
    }
    let header = request.headers().get(AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
    match authorize(&guard.gate, header, guard.scope).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => {
            if let (ApiError::Unauthorized(_), Some(ip)) = (&e, client) {
                if let Ok(mut attempts) = guard.gate.attempts.lock() {
                    attempts.failed(ip, now);
                }
            }
            e.into_response()
        }
    }
}

/// The caller presenting `header`, if its token is valid and its scope
/// covers `required`. A value that is not of a token's form is refused
/// before the store is asked anything.
pub async fn authorize(gate: &Gate, header: Option<&str>, required: TokenScope) -> Result<Caller, ApiError> {
    let presented = tokens::bearer(header).map_err(unauthorized)?;
    if !tokens::is_well_formed(presented) {
        return Err(unauthorized(Refused::Malformed));
    }
    let tokens = gate.tokens().await?;
    let token = tokens.authenticate(presented, chrono::Utc::now()).map_err(unauthorized)?;
    if token.scope < required {
        return Err(ApiError::Forbidden(format!("this needs scope {required}; token `{}` has {}", token.name, token.scope)));
    }
    Ok(Caller { name: token.name.clone(), scope: token.scope })
}

fn unauthorized(refused: Refused) -> ApiError {
    ApiError::Unauthorized(refused.to_string())
}
