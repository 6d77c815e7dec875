//! Liveness and readiness, for orchestrators and load balancers. No key needed.
//!
//! Readiness asks every dependency afresh, all at once, each within its own bound (the control
//! timeout for the model services and the store, the limiter's timeout for its backend), so the
//! answer is current and never hangs. Only the backends configured count: the llm service unless
//! the gateway fronts upstreams only, the embeddings and safety services when set, each upstream
//! model of the routing table. A model service that is not serving makes the gateway not ready;
//! an upstream model whose replicas are all ejected makes it degraded. A shared backend that cannot be reached (the Redis rate limiter, the store) follows the
//! failure policy: with `open` the gateway keeps serving, unchecked by limits and budgets, with
//! keys it verified within the stale-if-error window, and says `degraded` with a 200, because
//! taking every replica out of rotation for an outage of the one Redis they share would turn a
//! partial outage into a total one; with `closed` such requests are refused, so it is not ready
//! (503). A store that answers with an error (misconfigured, corrupt) is never tolerated.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use passerelle_store::StoreError;
use serde::Serialize;

use crate::llm::Readiness;
use crate::ratelimit::FailurePolicy;
use crate::state::AppState;

#[derive(Debug, Serialize)]
pub(crate) struct Health {
    /// `ok` (live); `ready`, `degraded` or `not_ready` (ready).
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dependencies: Option<Dependencies>,
}

#[derive(Debug, Serialize)]
struct Dependencies {
    /// Absent on a gateway in front of upstreams only.
    #[serde(skip_serializing_if = "Option::is_none")]
    llm: Option<DependencyStatus>,
    /// The routing table's upstream models, by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    upstreams: Vec<UpstreamStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    embeddings: Option<DependencyStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    safety: Option<DependencyStatus>,
    rate_limiter: LimiterStatus,
    store: DependencyStatus,
}

/// One dependency: whether it answers as it should, and in a word or two what it said.
#[derive(Debug, Serialize)]
struct DependencyStatus {
    ready: bool,
    status: String,
}

/// One upstream model: how many of its replicas are in rotation. Read from the balancer (a
/// replica is ejected after consecutive failures), not probed: requests are the probe.
#[derive(Debug, Serialize)]
struct UpstreamStatus {
    model: String,
    ready: bool,
    /// `serving`, or `ejected` while every replica is.
    status: &'static str,
    replicas: usize,
    in_rotation: usize,
}

impl UpstreamStatus {
    /// A model whose replicas are all ejected degrades the gateway rather than take it out of
    /// rotation: every replica of the gateway shares the upstream, and ejection ends by itself.
    fn impact(&self) -> Impact {
        if self.ready {
            Impact::None
        } else {
            Impact::Degraded
        }
    }
}

#[derive(Debug, Serialize)]
struct LimiterStatus {
    ready: bool,
    /// `up` or `unreachable`.
    status: &'static str,
    /// `in_process` or `redis`.
    backend: &'static str,
    /// `open` or `closed`: what happens to requests while the backend is unreachable.
    failure_policy: &'static str,
}

/// What a dependency's state means for the gateway as a whole, mildest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Impact {
    None,
    /// Serving, with something missing: a 200 that says `degraded`.
    Degraded,
    /// Not ready: a 503.
    NotReady,
}

impl Impact {
    /// The impact of a shared backend being unreachable under `policy`.
    fn of_outage(policy: FailurePolicy) -> Self {
        match policy {
            FailurePolicy::Open => Impact::Degraded,
            FailurePolicy::Closed => Impact::NotReady,
        }
    }

    fn status(self) -> (StatusCode, &'static str) {
        match self {
            Impact::None => (StatusCode::OK, "ready"),
            Impact::Degraded => (StatusCode::OK, "degraded"),
            Impact::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
        }
    }
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

impl DependencyStatus {
    /// Model services are required.
    fn impact(&self) -> Impact {
        if self.ready {
            Impact::None
        } else {
            Impact::NotReady
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

/// `GET /health/ready`: 200 `ready` when every dependency answers, 200 `degraded` when a shared
/// backend is unreachable and the failure policy is open, else 503 `not_ready`; the body names
/// each dependency's state (see the module docs).
pub(crate) async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let embeddings = async {
        match state.embeddings() {
            Some(embeddings) => Some(DependencyStatus::from(embeddings.readiness().await)),
            None => None,
        }
    };
    // A safety service that is down refuses every prompt under the closed policy (not ready);
    // under the open one prompts pass unchecked (degraded).
    let safety = async {
        match state.safety() {
            Some(safety) => {
                let status = DependencyStatus::from(safety.readiness().await);
                let impact = if status.ready {
                    Impact::None
                } else {
                    Impact::of_outage(safety.failure_policy())
                };
                Some((status, impact))
            }
            None => None,
        }
    };
    let llm = async {
        if state.config().llm_service {
            Some(DependencyStatus::from(state.llm().readiness().await))
        } else {
            None
        }
    };
    let (llm, embeddings, safety_state, (rate_limiter, limiter_impact), (store, store_impact)) =
        tokio::join!(llm, embeddings, safety, limiter(&state), store(&state),);
    let upstreams = upstreams(&state);
    let impact = [
        llm.as_ref().map_or(Impact::None, DependencyStatus::impact),
        upstreams
            .iter()
            .map(UpstreamStatus::impact)
            .max()
            .unwrap_or(Impact::None),
        embeddings
            .as_ref()
            .map_or(Impact::None, DependencyStatus::impact),
        safety_state
            .as_ref()
            .map_or(Impact::None, |(_, impact)| *impact),
        limiter_impact,
        store_impact,
    ]
    .into_iter()
    .max()
    .unwrap_or(Impact::None);
    let (code, status) = impact.status();
    let safety = safety_state.map(|(status, _)| status);
    let body = Health {
        status,
        dependencies: Some(Dependencies {
            llm,
            upstreams,
            embeddings,
            safety,
            rate_limiter,
            store,
        }),
    };
    (code, Json(body))
}

fn upstreams(state: &AppState) -> Vec<UpstreamStatus> {
    let table = state.routes();
    table
        .pools()
        .into_iter()
        .map(|pool| {
            let (in_rotation, replicas) = pool.in_rotation();
            let ready = in_rotation > 0;
            UpstreamStatus {
                model: pool.model.clone(),
                ready,
                status: if ready { "serving" } else { "ejected" },
                replicas,
                in_rotation,
            }
        })
        .collect()
}

/// Pings the limiter's backend now, within its timeout (which also refreshes its health flag and
/// the `passerelle_ratelimit_backend_up` gauge).
async fn limiter(state: &AppState) -> (LimiterStatus, Impact) {
    let limiter = state.limiter();
    let policy = limiter.failure_policy();
    let up = limiter.probe().await;
    let status = LimiterStatus {
        ready: up,
        status: if up { "up" } else { "unreachable" },
        backend: limiter.backend_name(),
        failure_policy: policy.as_str(),
    };
    let impact = if up {
        Impact::None
    } else {
        Impact::of_outage(policy)
    };
    (status, impact)
}

/// Pings the store within the control timeout. Unreachable is tolerated like the limiter's
/// backend, under the same policy (as budget checks are); any other error is not.
async fn store(state: &AppState) -> (DependencyStatus, Impact) {
    let bound = state.config().control_timeout;
    let result = match tokio::time::timeout(bound, state.store().ping()).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Timeout(bound)),
    };
    let (status, impact) = match result {
        Ok(()) => ("up", Impact::None),
        Err(err) if err.is_unavailable() => {
            tracing::debug!(error = %err, "readiness: the store is unreachable");
            (
                "unreachable",
                Impact::of_outage(state.limiter().failure_policy()),
            )
        }
        Err(err) => {
            tracing::warn!(error = %err, "readiness: the store failed");
            ("error", Impact::NotReady)
        }
    };
    let status = DependencyStatus {
        ready: impact == Impact::None,
        status: status.to_owned(),
    };
    (status, impact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_shared_backend_degrades_when_open_and_fails_when_closed() {
        assert_eq!(Impact::of_outage(FailurePolicy::Open), Impact::Degraded);
        assert_eq!(Impact::of_outage(FailurePolicy::Closed), Impact::NotReady);
    }

    #[test]
    fn degraded_is_still_a_200_and_not_ready_a_503() {
        assert_eq!(Impact::None.status(), (StatusCode::OK, "ready"));
        assert_eq!(Impact::Degraded.status(), (StatusCode::OK, "degraded"));
        assert_eq!(
            Impact::NotReady.status(),
            (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
        );
    }

    #[test]
    fn the_worst_dependency_decides() {
        let worst = [
            Impact::Degraded,
            Impact::None,
            Impact::NotReady,
            Impact::Degraded,
        ]
        .into_iter()
        .max();
        assert_eq!(worst, Some(Impact::NotReady));
        assert!(Impact::None < Impact::Degraded);
    }

    #[test]
    fn model_services_are_required() {
        let serving = DependencyStatus::from(Readiness::Serving);
        assert_eq!(serving.impact(), Impact::None);
        let loading = DependencyStatus::from(Readiness::NotServing("not_serving".into()));
        assert_eq!(loading.impact(), Impact::NotReady);
        assert_eq!(loading.status, "not_serving");
    }
}
