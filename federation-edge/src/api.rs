//! The bridge API (loopback by default) and Prometheus metrics.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /api/v1/bridge/status` | version, uptime, router connection, destinations and their state |
//! | `GET /api/v1/bridge/routes` | the routes, as a list (the form `POST` takes back) |
//! | `POST /api/v1/bridge/routes` | add or replace one route (object) or several (list) |
//! | `DELETE /api/v1/bridge/routes/{server_name}` | remove a route |
//! | `GET /api/v1/bridge/mycelium/status` | the router's node info, peers and selected routes |
//! | `GET /api/v1/bridge/metrics` | counters as JSON |
//! | `GET /metrics` | counters in Prometheus text |
//!
//! When the API listens on a non-loopback address, `POST` and `DELETE` need
//! `Authorization: Bearer <api_token>`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::auth::constant_time_eq;
use crate::edge::Edge;
use crate::router_api::router_get;
use crate::routes::{Entry, Route};

/// Largest request body the API takes.
const MAX_BODY: usize = 4 << 20;

/// The API's router.
pub fn router(edge: Arc<Edge>) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/bridge/status", get(status))
        .route("/api/v1/bridge/routes", get(list).post(add))
        .route("/api/v1/bridge/routes/{server_name}", delete(remove))
        .route("/api/v1/bridge/mycelium/status", get(mycelium))
        .route("/api/v1/bridge/metrics", get(metrics_json))
        .route("/metrics", get(metrics_prom))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(edge)
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({"error": msg.into()}))).into_response()
}

fn authorized(edge: &Edge, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(token) = &edge.config.api_token else {
        return Ok(());
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.trim().as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(Box::new(err(StatusCode::FORBIDDEN, "wrong API token"))),
        None => Err(Box::new(err(
            StatusCode::UNAUTHORIZED,
            "changes need Authorization: Bearer <api_token>",
        ))),
    }
}

async fn status(State(edge): State<Arc<Edge>>) -> Json<Value> {
    let destinations: Vec<Value> = edge
        .routes
        .list()
        .into_iter()
        .map(|r| {
            let down = Entry::from_route(&r).is_ok_and(|e| edge.is_down(&e.pubkey));
            json!({
                "server_name": r.server_name,
                "pubkey": r.pubkey,
                "fallback": r.fallback,
                "state": if down { "down" } else { "up" },
            })
        })
        .collect();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": edge.uptime().as_secs(),
        "proxy": edge.config.proxy.to_string(),
        "router": {
            "address": edge.overlay.addr().to_string(),
            "connected": edge.overlay.connected(),
        },
        "server_names": edge.config.homeserver.server_names,
        "in_flight": edge.active(),
        "destinations": destinations,
    }))
}

async fn list(State(edge): State<Arc<Edge>>) -> Json<Vec<Route>> {
    Json(edge.routes.list())
}

async fn add(State(edge): State<Arc<Edge>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorized(&edge, &headers) {
        return *r;
    }
    let routes: Vec<Route> = match serde_json::from_slice::<Value>(&body) {
        Ok(v @ Value::Array(_)) => match serde_json::from_value(v) {
            Ok(r) => r,
            Err(e) => return err(StatusCode::BAD_REQUEST, format!("invalid routes: {e}")),
        },
        Ok(v) => match serde_json::from_value(v) {
            Ok(r) => vec![r],
            Err(e) => return err(StatusCode::BAD_REQUEST, format!("invalid route: {e}")),
        },
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let before: Vec<Option<Arc<Entry>>> = routes
        .iter()
        .map(|r| edge.routes.get(&r.server_name))
        .collect();
    if let Err(e) = edge.routes.upsert(&routes) {
        let status = if e.starts_with("cannot persist") {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::BAD_REQUEST
        };
        return err(status, e);
    }
    for old in before.into_iter().flatten() {
        edge.forget(old.pubkey);
    }
    edge.metrics.inc(&edge.metrics.route_changes);
    tracing::info!("routes added or replaced: {}", routes.len());
    Json(edge.routes.list()).into_response()
}

async fn remove(
    State(edge): State<Arc<Edge>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = authorized(&edge, &headers) {
        return *r;
    }
    let old = edge.routes.get(&name);
    match edge.routes.remove(&name) {
        Ok(true) => {
            if let Some(e) = old {
                edge.forget(e.pubkey);
            }
            edge.metrics.inc(&edge.metrics.route_changes);
            tracing::info!("route removed: {name}");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => err(StatusCode::NOT_FOUND, format!("no route for {name}")),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn mycelium(State(edge): State<Arc<Edge>>) -> Response {
    let addr = edge.config.router_api;
    let mut out = serde_json::Map::new();
    for (key, path) in [
        ("node", "/api/v1/admin"),
        ("peers", "/api/v1/admin/peers"),
        ("routes", "/api/v1/admin/routes/selected"),
    ] {
        match router_get(addr, path).await {
            Some(v) => {
                out.insert(key.to_owned(), v);
            }
            None => {
                return err(
                    StatusCode::BAD_GATEWAY,
                    format!("the router's API at {addr} did not answer {path}"),
                );
            }
        }
    }
    Json(Value::Object(out)).into_response()
}

fn gauges(edge: &Edge) -> Vec<(&'static str, u64)> {
    vec![
        ("in_flight", edge.active() as u64),
        ("routes", edge.routes.len() as u64),
        ("router_connected", u64::from(edge.overlay.connected())),
    ]
}

async fn metrics_json(State(edge): State<Arc<Edge>>) -> Json<Value> {
    let all = edge.metrics.all(&edge.relay_stats(), &edge.overlay.stats());
    Json(crate::metrics::json(&all, &gauges(&edge)))
}

async fn metrics_prom(State(edge): State<Arc<Edge>>) -> Response {
    let all = edge.metrics.all(&edge.relay_stats(), &edge.overlay.stats());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::prometheus(&all, &gauges(&edge)),
    )
        .into_response()
}
