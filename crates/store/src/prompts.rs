//! The prompt log: prompts and completions kept for review, only when the operator enables it.

use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::keys::validate_label;

/// One exchange as logged. The gateway redacts personal data before it gets here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptRecord {
    pub response_id: String,
    pub principal: String,
    /// Seconds since the epoch.
    pub at: u64,
    pub prompt: String,
    pub completion: String,
}

impl PromptRecord {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        validate_label("response id", &self.response_id)?;
        validate_label("principal", &self.principal)?;
        Ok(())
    }
}

/// Stored prompts, for review and for answering a principal's access request.
#[async_trait::async_trait]
pub trait PromptLog: Send + Sync + 'static {
    /// Stores one exchange; a second record for the same response and principal replaces it.
    async fn record_prompt(&self, record: &PromptRecord) -> Result<(), StoreError>;

    /// Every stored exchange of one principal, oldest first.
    async fn prompts_of(&self, principal: &str) -> Result<Vec<PromptRecord>, StoreError>;
}
