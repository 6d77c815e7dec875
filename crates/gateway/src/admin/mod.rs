//! The operator API's request and response shapes (the handlers are in `routes`): [`keys`]
//! for `/admin/keys`, [`audit`] for `/admin/audit`, [`erasure`] for `/v1/users/{id}/data`,
//! and [`AdminAudit`], which records what an operator did.

pub mod audit;
pub mod erasure;
pub mod keys;

use passerelle_store::{AuditAction, NewAuditEvent};

use crate::auth::{ClientAddr, Principal};

/// Who acted and from where, to stamp on the audit events of one admin request.
#[derive(Debug, Clone)]
pub struct AdminAudit {
    actor: String,
    client: Option<String>,
}

impl AdminAudit {
    /// The caller of this request.
    pub fn new(principal: &Principal, client: &ClientAddr) -> Self {
        Self {
            actor: principal.id().to_owned(),
            client: client.text(),
        }
    }

    /// An event of `action` by the caller, from its address, at the current time.
    pub fn event(&self, action: AuditAction) -> NewAuditEvent {
        NewAuditEvent::now(&self.actor, action).client_addr_if_known(self.client.as_deref())
    }
}
