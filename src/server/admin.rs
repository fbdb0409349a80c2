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
use axum::routing::get;

use super::Ctx;

/// The admin routes.
pub(crate) fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready))
        .route("/v1/status", get(status))
        .route("/v1/metrics", get(metrics))
        .route("/metrics", get(metrics))
        .with_state(ctx)
}

async fn health(State(ctx): State<Arc<Ctx>>) -> Response {
    let (code, state) = if ctx.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    } else {
        (StatusCode::OK, "ok")
    };
    let body = serde_json::json!({
        "status": state,
        "node_id": ctx.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": ctx.started.elapsed().as_secs(),
    });
    (code, Json(body)).into_response()
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
