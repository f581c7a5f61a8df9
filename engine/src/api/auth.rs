//! Who may call what. Every route but `/healthz` and the push webhooks
//! (`/api/hooks/...`, authenticated by their signature) needs `Authorization:
//! Bearer <token>`; the token is checked against the tokens stream (folded
//! per request: the stream is small, and a revocation then holds from the
//! very next request, on every API process) and its scope against the one
//! the route table gives the route. The caller's token name becomes the
//! actor `token:<name>` of the events the request records; no header can
//! claim another.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use slipway_proto::event::TokenScope;
use slipway_store::EventStore;

use super::error::ApiError;
use crate::requests;
use crate::tokens::{self, Refused};

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

#[derive(Clone)]
struct Guard {
    store: Arc<dyn EventStore>,
    scope: TokenScope,
}

/// `route` behind a check for a token of at least `access`'s scope.
pub fn guard(
    route: MethodRouter<Arc<dyn EventStore>>,
    store: &Arc<dyn EventStore>,
    access: Access,
) -> MethodRouter<Arc<dyn EventStore>> {
    match access {
        Access::Open | Access::Signature => route,
        Access::Scope(scope) => {
            route.route_layer(middleware::from_fn_with_state(Guard { store: store.clone(), scope }, check))
        }
    }
}

async fn check(State(guard): State<Guard>, mut request: Request, next: Next) -> Response {
    let header = request.headers().get(AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
    match authorize(&*guard.store, header, guard.scope).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

/// The caller presenting `header`, if its token is valid and its scope
/// covers `required`.
pub async fn authorize(store: &dyn EventStore, header: Option<&str>, required: TokenScope) -> Result<Caller, ApiError> {
    let presented = tokens::bearer(header).map_err(unauthorized)?;
    let tokens = requests::load_tokens(store).await?;
    let token = tokens.authenticate(presented).map_err(unauthorized)?;
    if token.scope < required {
        return Err(ApiError::Forbidden(format!(
            "this needs scope {required}; token `{}` has {}",
            token.name, token.scope
        )));
    }
    Ok(Caller { name: token.name.clone(), scope: token.scope })
}

fn unauthorized(refused: Refused) -> ApiError {
    ApiError::Unauthorized(refused.to_string())
}
