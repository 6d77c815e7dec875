//! `DELETE /v1/users/{id}/data` shapes.

use passerelle_store::ErasureReport;
use serde::{Deserialize, Serialize};

/// The query: whether to revoke the principal's keys as well.
#[derive(Debug, Default, Deserialize)]
pub struct ErasureQuery {
    /// `true` also revokes every active key the principal owns.
    #[serde(default)]
    pub revoke_keys: bool,
}

/// What an erasure removed. Names the principal only by its pseudonym.
#[derive(Debug, Serialize)]
pub struct ErasureOut {
    /// Always `user.data.erased`.
    pub object: &'static str,
    /// The stand-in now found in the audit log where the principal was.
    pub pseudonym: String,
    pub prompts_removed: u64,
    pub feedback_removed: u64,
    pub audit_entries_anonymized: u64,
    /// Keys revoked because `revoke_keys=true` was asked; 0 otherwise.
    pub keys_revoked: u64,
}

impl ErasureOut {
    pub fn new(pseudonym: String, report: ErasureReport, keys_revoked: u64) -> Self {
        Self {
            object: "user.data.erased",
            pseudonym,
            prompts_removed: report.prompts_removed,
            feedback_removed: report.feedback_removed,
            audit_entries_anonymized: report.audit_entries_anonymized,
            keys_revoked,
        }
    }
}
