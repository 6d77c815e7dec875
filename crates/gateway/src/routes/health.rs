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
    #[serde(skip_serializing_if = "Option::is_none")]
    embeddings: Option<DependencyStatus>,
}

#[derive(Debug, Serialize)]
struct DependencyStatus {
    ready: bool,
    status: String,
}

impl From<Readiness> for DependencyStatus {
    fn from(readiness: Readiness) -> Self {
        match readiness {
            Readiness::Serving => DependencyStatus {
                ready: true,
                status: "serving".to_owned(),
            },
            Readiness::NotServing(why) | Readiness::Unreachable(why) => DependencyStatus {
                ready: false,
                status: why,
            },
        }
    }
}

/// `GET /health/live`: the process is up and serving HTTP.
pub(crate) async fn live() -> Json<Health> {
    Json(Health {
        status: "ok",
        dependencies: None,
    })
}

/// `GET /health/ready`: 200 only when every configured model service reports SERVING;
/// otherwise 503 naming the dependency that is not ready and why.
pub(crate) async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let llm = DependencyStatus::from(state.llm().readiness().await);
    let embeddings = match state.embeddings() {
        Some(embeddings) => Some(DependencyStatus::from(embeddings.readiness().await)),
        None => None,
    };
    let ready = llm.ready && embeddings.as_ref().is_none_or(|e| e.ready);
    let body = Health {
        status: if ready { "ready" } else { "not_ready" },
        dependencies: Some(Dependencies { llm, embeddings }),
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}
