//! Whether the store answers right now, for readiness probes.

use crate::StoreError;

/// A cheap round trip to the backend.
#[async_trait::async_trait]
pub trait StoreHealth: Send + Sync + 'static {
    /// Asks the backend for nothing but an answer (a Redis `PING`, an embedded read
    /// transaction), within the backend's own operation timeout. An unreachable Redis fails
    /// with an error for which [`StoreError::is_unavailable`] holds.
    async fn ping(&self) -> Result<(), StoreError>;
}
