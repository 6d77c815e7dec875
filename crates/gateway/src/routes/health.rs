//! Liveness and readiness, for orchestrators and load balancers. No key needed.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use crate::llm::Readiness;
use crate::state::AppState;

#[derive(Debug, Serialize)]
pub(crate) struct Health {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dependencies: Option<Dependencies>,
}

#[derive(Debug, Serialize)]
struct Dependencies {
    llm: DependencyStatus,
}

#[derive(Debug, Serialize)]
struct DependencyStatus {
    ready: bool,
    status: String,
}

/// `GET /health/live`: the process is up and serving HTTP.
pub(crate) async fn live() -> Json<Health> {
    Json(Health {
        status: "ok",
        dependencies: None,
    })
}

/// `GET /health/ready`: 200 only when the llm service reports SERVING; otherwise 503 naming
/// the dependency that is not ready and why.
pub(crate) async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let (ready, status) = match state.llm().readiness().await {
        Readiness::Serving => (true, "serving".to_owned()),
        Readiness::NotServing(why) => (false, why),
        Readiness::Unreachable(why) => (false, why),
    };
    let body = Health {
        status: if ready { "ready" } else { "not_ready" },
        dependencies: Some(Dependencies {
            llm: DependencyStatus { ready, status },
        }),
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}
