//! A bound on concurrent `/v1` requests, streams included. Beyond it the gateway answers 503
//! with `Retry-After` at once instead of queueing, so overload is visible to clients and load
//! balancers rather than turning into latency and memory growth.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Permits for in-flight requests. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Admission(Arc<Semaphore>);

impl Admission {
    pub(crate) fn new(max_concurrent: usize) -> Self {
        Self(Arc::new(Semaphore::new(max_concurrent.max(1))))
    }
}

impl Admission {
    /// A permit if one is free, to hold until the response body ends; else 503 at once.
    pub(crate) fn try_admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.0)
            .try_acquire_owned()
            .map_err(|_| ApiError::GatewayBusy)
    }
}
