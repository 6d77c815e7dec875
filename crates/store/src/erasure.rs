//! Erasing a principal's personal data on request.

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// What [`Erasure::erase_principal`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ErasureReport {
    pub prompts_removed: u64,
    pub feedback_removed: u64,
    pub audit_entries_anonymized: u64,
}

/// Erasure of a principal's personal data.
#[async_trait::async_trait]
pub trait Erasure: Send + Sync + 'static {
    /// Deletes the principal's logged prompts and its feedback, and replaces it as actor or
    /// target of audit events by [`crate::pseudonym`]. Usage aggregates stay: they are
    /// accounting and hold no text. Erasing again finds nothing more to do.
    async fn erase_principal(&self, principal: &str) -> Result<ErasureReport, StoreError>;
}
