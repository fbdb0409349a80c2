//! The admin HTTP endpoint (data port + 1 by default): health, readiness, status and metrics.
//!
//! Owns: the HTTP surface operators and orchestrators read. Never exposes the cluster key or the
//! license token; `/v1/status` carries only the license summary.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};

use super::Ctx;

/// The admin routes.
pub(crate) fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready))
        .route("/v1/status", get(status))
        .route("/v1/flush", post(flush))
        .route("/v1/metrics", get(metrics))
        .route("/metrics", get(metrics))
        .with_state(ctx)
}

/// 200 while serving, also when degraded (a drive is offline: the node still serves DRAM and
/// its other drives); 503 while shutting down.
async fn health(State(ctx): State<Arc<Ctx>>) -> Response {
    let state = ctx.health_state();
    let code = if state == "shutting_down" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let mut body = serde_json::json!({
        "status": state,
        "node_id": ctx.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": ctx.started.elapsed().as_secs(),
    });
    if let Some(t) = &ctx.tier {
        body["drives"] = serde_json::Value::Array(t.drives_json());
    }
    (code, Json(body)).into_response()
}

/// Forces every write acknowledged before the call onto stable storage (any durability).
async fn flush(State(ctx): State<Arc<Ctx>>) -> Response {
    let Some(t) = &ctx.tier else {
        let msg = "this node keeps objects in DRAM only (no --data-dir): there is nothing to flush";
        return (StatusCode::CONFLICT, Json(serde_json::json!({"flushed": false, "error": msg}))).into_response();
    };
    match t.flush().await {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"flushed": true}))).into_response(),
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, Json(serde_json::json!({"flushed": false, "error": e}))).into_response()
        }
    }
}

async fn ready(State(ctx): State<Arc<Ctx>>) -> Response {
    if ctx.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"ready": false, "reason": "shutting down"})))
            .into_response()
    } else {
        (StatusCode::OK, Json(serde_json::json!({"ready": true}))).into_response()
    }
}

async fn status(State(ctx): State<Arc<Ctx>>) -> Json<serde_json::Value> {
    Json(ctx.status())
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], ctx.metrics_text()).into_response()
}
