//! The HTTP health and metrics endpoints: `/healthz` (the agent is running; 503 once the
//! datapath stopped), `/readyz` (synced at least once; see `SharedStatus::readiness`) and
//! Prometheus `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use super::{AgentError, SharedStatus};

pub async fn bind(address: SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| AgentError::Health { address, source })
}

pub(crate) async fn serve(listener: TcpListener, shared: Arc<SharedStatus>) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared);
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "health endpoint stopped");
    }
}

async fn healthz(State(shared): State<Arc<SharedStatus>>) -> impl IntoResponse {
    if shared.datapath_stopped() {
        (StatusCode::SERVICE_UNAVAILABLE, "the datapath stopped\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn readyz(State(shared): State<Arc<SharedStatus>>) -> impl IntoResponse {
    match shared.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn metrics(State(shared): State<Arc<SharedStatus>>) -> impl IntoResponse {
    match shared.snapshot() {
        Ok(status) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            crate::metrics::render(
                &status,
                shared.readiness().is_ok(),
                shared.keys.read().ok().and_then(|k| k.clone()).as_ref(),
                shared.apply_failures.load(Ordering::Relaxed),
            ),
        )
            .into_response(),
        Err(reason) => (StatusCode::INTERNAL_SERVER_ERROR, reason).into_response(),
    }
}
