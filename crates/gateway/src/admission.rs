//! A bound on concurrent `/v1` requests, streams included. Beyond it the gateway answers 503
//! with `Retry-After` at once instead of queueing, so overload is visible to clients and load
//! balancers rather than turning into latency and memory growth.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::Semaphore;

use crate::body::attach_to_body;
use crate::error::ApiError;

/// Permits for in-flight requests. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Admission(Arc<Semaphore>);

impl Admission {
    pub(crate) fn new(max_concurrent: usize) -> Self {
        Self(Arc::new(Semaphore::new(max_concurrent.max(1))))
    }
}

/// Admits a request if a permit is free; the permit is held until the response body ends.
pub(crate) async fn admit(
    State(admission): State<Admission>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let permit = Arc::clone(&admission.0)
        .try_acquire_owned()
        .map_err(|_| ApiError::GatewayBusy)?;
    Ok(attach_to_body(next.run(req).await, permit))
}
