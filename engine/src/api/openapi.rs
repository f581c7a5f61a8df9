//! The API's OpenAPI 3.1 document, served at `/openapi.json`: the
//! operations and schemas from the handlers' `#[utoipa::path]` attributes,
//! then, from the route table (the one place scopes are declared), the
//! bearer security scheme and each operation's required scope — in its
//! description and as its security requirement.

use std::sync::OnceLock;

use axum::http::Method;
use axum::Json;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::OpenApi;

use super::{
    admin, audit, certificates, deployments, domains, environments, error, hooks, live, notifications, overview, previews, projects,
    protection, routes, Access,
};

const SCHEME: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Slipway",
        description = "Slipway's HTTP API. Every route but /healthz and the push webhooks (/api/hooks/..., signed with the project's webhook secret) needs `Authorization: Bearer <token>` \
(`slipway token create NAME --scope read|deploy|admin`); scopes nest: read < deploy < admin. Errors are \
`{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        super::health,
        document,
        projects::list,
        projects::create,
        projects::show,
        projects::change_source,
        overview::list,
        environments::status,
        environments::settings,
        environments::change_settings,
        environments::releases,
        environments::deployments,
        environments::rollback,
        environments::migrate,
        environments::promote,
        deployments::request,
        deployments::list,
        deployments::show,
        deployments::cancel,
        deployments::replay,
        deployments::events,
        deployments::history,
        deployments::logs,
        deployments::diff,
        live::stream,
        audit::export,
        audit::verify,
        admin::workers,
        admin::whoami,
        admin::metrics,
        admin::tokens,
        admin::issue_token,
        admin::revoke_token,
        hooks::receive,
        hooks::rotate_secret,
        hooks::rules,
        hooks::set_rule,
        hooks::remove_rule,
        previews::rules,
        previews::set_rule,
        previews::remove_rule,
        previews::approve,
        previews::remove,
        previews::add,
        previews::remove_project,
        protection::protect,
        protection::set_freeze,
        protection::remove_freeze,
        domains::list,
        domains::add,
        domains::remove,
        domains::redirect,
        certificates::list,
        certificates::add,
        certificates::remove,
        deployments::approve,
        deployments::reject,
        notifications::list,
        notifications::subscribe,
        notifications::unsubscribe,
        notifications::deliveries,
        notifications::redeliver,
        notifications::replay,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail))
)]
struct ApiDoc;

/// The document, built once.
pub fn openapi() -> &'static Document {
    static DOC: OnceLock<Document> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        let scheme = SecurityScheme::Http(Http::builder().scheme(HttpAuthScheme::Bearer).bearer_format("slw_<64 hex>").build());
        doc.components.get_or_insert_with(Default::default).security_schemes.insert(SCHEME.into(), scheme.into());
        for route in routes() {
            if let Some(op) = operation(&mut doc, &route.method, route.path) {
                let note = match route.access {
                    Access::Open => "No token needed.".to_string(),
                    Access::Signature => {
                        "No token: the provider's signature header, made with the project's webhook secret, authenticates the request."
                            .to_string()
                    }
                    Access::Scope(s) => format!("Required scope: `{s}`."),
                };
                op.description = Some(match op.description.take() {
                    Some(d) if !d.is_empty() => format!("{d}\n\n{note}"),
                    _ => note,
                });
                if let Access::Scope(_) = route.access {
                    op.security = Some(vec![SecurityRequirement::new(SCHEME, Vec::<String>::new())]);
                }
            }
        }
        doc
    })
}

/// The operation for `method` on `path`, if the document has one.
pub fn operation<'a>(doc: &'a mut Document, method: &Method, path: &str) -> Option<&'a mut Operation> {
    let item = doc.paths.paths.get_mut(path)?;
    match http_method(method)? {
        HttpMethod::Get => item.get.as_mut(),
        HttpMethod::Post => item.post.as_mut(),
        HttpMethod::Put => item.put.as_mut(),
        HttpMethod::Delete => item.delete.as_mut(),
        HttpMethod::Patch => item.patch.as_mut(),
        HttpMethod::Head => item.head.as_mut(),
        HttpMethod::Options => item.options.as_mut(),
        HttpMethod::Trace => item.trace.as_mut(),
    }
}

fn http_method(method: &Method) -> Option<HttpMethod> {
    Some(match *method {
        Method::GET => HttpMethod::Get,
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::DELETE => HttpMethod::Delete,
        Method::PATCH => HttpMethod::Patch,
        Method::HEAD => HttpMethod::Head,
        Method::OPTIONS => HttpMethod::Options,
        Method::TRACE => HttpMethod::Trace,
        _ => return None,
    })
}

/// Every (method, path) the document describes.
pub fn operations(doc: &Document) -> Vec<(Method, String)> {
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        let ops = [
            (Method::GET, &item.get),
            (Method::POST, &item.post),
            (Method::PUT, &item.put),
            (Method::DELETE, &item.delete),
            (Method::PATCH, &item.patch),
            (Method::HEAD, &item.head),
            (Method::OPTIONS, &item.options),
            (Method::TRACE, &item.trace),
        ];
        out.extend(ops.into_iter().filter(|(_, op)| op.is_some()).map(|(m, _)| (m, path.clone())));
    }
    out
}

#[utoipa::path(get, path = "/openapi.json", tag = "health", summary = "This document",
    responses((status = 200, body = Object, description = "OpenAPI 3.1")))]
pub async fn document() -> Json<&'static Document> {
    Json(openapi())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_route_is_documented_and_every_operation_is_routed() {
        let routed: BTreeSet<(String, String)> = routes().iter().map(|r| (r.method.to_string(), r.path.to_string())).collect();
        assert_eq!(routed.len(), routes().len(), "a route is declared twice");
        let documented: BTreeSet<(String, String)> = operations(openapi()).into_iter().map(|(m, p)| (m.to_string(), p)).collect();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(undocumented.is_empty(), "routes missing from the OpenAPI document: {undocumented:?}");
        assert!(unrouted.is_empty(), "documented operations with no route: {unrouted:?}");
    }

    #[test]
    fn each_operation_states_its_scope_and_scoped_ones_need_the_bearer_scheme() {
        let mut doc = openapi().clone();
        assert!(doc.components.as_ref().is_some_and(|c| c.security_schemes.contains_key(SCHEME)));
        for route in routes() {
            let op = operation(&mut doc, &route.method, route.path).unwrap_or_else(|| panic!("{} {}", route.method, route.path));
            let description = op.description.clone().unwrap_or_default();
            match route.access {
                Access::Open => {
                    assert!(description.contains("No token needed"), "{}: {description}", route.path);
                    assert!(op.security.is_none());
                }
                Access::Signature => {
                    assert!(description.ends_with("authenticates the request."), "{}: {description}", route.path);
                    assert!(op.security.is_none());
                }
                Access::Scope(s) => {
                    assert!(description.ends_with(&format!("Required scope: `{s}`.")), "{} {}: {description}", route.method, route.path);
                    assert!(op.security.as_ref().is_some_and(|s| s.len() == 1), "{} {}", route.method, route.path);
                }
            }
        }
    }
}
