//! The audit log: an append-only record of who did what to whom.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::StoreError;

/// Most events one [`AuditLog::audit_events`] call returns, whatever the caller asks for.
pub const MAX_AUDIT_PAGE: usize = 1000;

/// What happened. Serialized snake_case (`"key_created"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// An API key was created.
    KeyCreated,
    /// An API key was revoked.
    KeyRevoked,
    /// An API key's limits were changed.
    KeyUpdated,
    /// Any other change made through the admin API.
    AdminAction,
    /// A request was refused by policy (safety filter, scope, budget).
    RequestBlocked,
    /// Authentication failed.
    AuthFailed,
    /// A principal's data was erased.
    DataErased,
    /// A principal's data was exported.
    DataExported,
}

/// An event to append; the store assigns its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAuditEvent {
    /// Seconds since the epoch.
    pub at: u64,
    /// The principal who acted (`cli` for the command line).
    pub actor: String,
    pub action: AuditAction,
    /// What was acted on: a key id, a principal, a model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The client's address, when the action came over the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    /// Free text. Never put secrets or prompt text here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl NewAuditEvent {
    /// An event at the current time with no target, address or detail.
    pub fn now(actor: impl Into<String>, action: AuditAction) -> Self {
        Self {
            at: crate::time::unix_now(),
            actor: actor.into(),
            action,
            target: None,
            client_addr: None,
            detail: None,
        }
    }

    /// Sets the target.
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Sets the client address.
    pub fn client_addr(mut self, addr: impl Into<String>) -> Self {
        self.client_addr = Some(addr.into());
        self
    }

    /// Sets the client address when one is known.
    pub fn client_addr_if_known(self, addr: Option<&str>) -> Self {
        match addr {
            Some(addr) => self.client_addr(addr),
            None => self,
        }
    }

    /// Sets the detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        crate::keys::validate_label("actor", &self.actor)?;
        Ok(())
    }

    pub(crate) fn with_id(self, id: u64) -> AuditEvent {
        AuditEvent {
            id,
            at: self.at,
            actor: self.actor,
            action: self.action,
            target: self.target,
            client_addr: self.client_addr,
            detail: self.detail,
        }
    }

    /// Replaces `principal` as actor and target by its pseudonym; whether anything changed.
    pub(crate) fn anonymize(&mut self, principal: &str) -> bool {
        let alias = pseudonym(principal);
        let mut changed = false;
        if self.actor == principal {
            self.actor.clone_from(&alias);
            changed = true;
        }
        if self.target.as_deref() == Some(principal) {
            self.target = Some(alias);
            changed = true;
        }
        changed
    }
}

/// An appended event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Assigned by the store: 1, 2, 3, ... in append order.
    pub id: u64,
    pub at: u64,
    pub actor: String,
    pub action: AuditAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditEvent {
    pub(crate) fn into_new(self) -> (u64, NewAuditEvent) {
        let new = NewAuditEvent {
            at: self.at,
            actor: self.actor,
            action: self.action,
            target: self.target,
            client_addr: self.client_addr,
            detail: self.detail,
        };
        (self.id, new)
    }
}

/// The stable stand-in for an erased principal: `erased:` and the first 12 hex digits of the
/// SHA-256 of its name. Log it (as the target of a `DataErased` event, say) instead of the name.
pub fn pseudonym(principal: &str) -> String {
    let digest = Sha256::digest(principal.as_bytes());
    format!("erased:{}", &hex::encode(digest)[..12])
}

/// The append-only audit log. Entries change only through erasure, which pseudonymizes them.
#[async_trait::async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Appends an event and returns its id, one more than the previous event's.
    async fn append_audit(&self, event: NewAuditEvent) -> Result<u64, StoreError>;

    /// Events oldest first (newest last). With `since_id`, the first `limit` events after that
    /// id, for paging forward; without, the latest `limit` events. `limit` is capped at
    /// [`MAX_AUDIT_PAGE`].
    async fn audit_events(
        &self,
        since_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_and_short() {
        // SHA-256("alice") = 2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90
        assert_eq!(pseudonym("alice"), "erased:2bd806c97f0e");
        assert_ne!(pseudonym("alice"), pseudonym("bob"));
    }

    #[test]
    fn actions_serialize_snake_case() {
        let json = serde_json::to_string(&AuditAction::RequestBlocked).unwrap();
        assert_eq!(json, "\"request_blocked\"");
    }

    #[test]
    fn anonymizing_touches_only_the_principal() {
        let mut event = NewAuditEvent::now("alice", AuditAction::KeyCreated).target("alicia");
        assert!(event.anonymize("alice"));
        assert_eq!(event.actor, pseudonym("alice"));
        assert_eq!(event.target.as_deref(), Some("alicia"));
        assert!(!event.anonymize("alice"));
    }
}
