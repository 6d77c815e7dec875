//! `/admin/audit` shapes: the page query, checked so a 400 names its `param`, and the page.

use passerelle_store::{AuditEvent, MAX_AUDIT_PAGE};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Events a page holds when the query names no `limit`.
pub const DEFAULT_AUDIT_PAGE: usize = 100;

/// `GET /admin/audit?since_id=&limit=`, as sent: strings, parsed by [`AuditQuery::page`] so a
/// bad number is our 400 rather than the framework's.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    pub since_id: Option<String>,
    pub limit: Option<String>,
}

/// A checked [`AuditQuery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPageRequest {
    /// Events after this id; `None` for the latest `limit` events.
    pub since_id: Option<u64>,
    /// 1 to [`MAX_AUDIT_PAGE`].
    pub limit: usize,
}

impl AuditQuery {
    /// The page asked for, or a 400 naming `since_id` or `limit`.
    pub fn page(&self) -> Result<AuditPageRequest, ApiError> {
        let since_id = match self.since_id.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(text.parse::<u64>().map_err(|_| {
                ApiError::invalid_param(
                    "since_id",
                    format!("`since_id` must be an event id (a whole number), got {text:?}."),
                )
            })?),
        };
        let limit = match self.limit.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_AUDIT_PAGE,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|limit| (1..=MAX_AUDIT_PAGE).contains(limit))
                .ok_or_else(|| {
                    ApiError::invalid_param(
                        "limit",
                        format!("`limit` must be between 1 and {MAX_AUDIT_PAGE}, got {text:?}."),
                    )
                })?,
        };
        Ok(AuditPageRequest { since_id, limit })
    }
}

/// One page of the audit log, oldest first.
#[derive(Debug, Serialize)]
pub struct AuditPage {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<AuditEvent>,
    /// Where to continue: the last event's id, else the `since_id` asked with (else 0), so a
    /// client that keeps passing it back sees every event once.
    pub next_since_id: u64,
}

impl AuditPage {
    pub fn new(data: Vec<AuditEvent>, asked: AuditPageRequest) -> Self {
        let next_since_id = data
            .last()
            .map(|event| event.id)
            .or(asked.since_id)
            .unwrap_or(0);
        Self {
            object: "list",
            data,
            next_since_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(since_id: Option<&str>, limit: Option<&str>) -> AuditQuery {
        AuditQuery {
            since_id: since_id.map(str::to_owned),
            limit: limit.map(str::to_owned),
        }
    }

    fn param(query: AuditQuery) -> Option<String> {
        match query.page() {
            Err(ApiError::InvalidRequest { param, .. }) => param,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_bounds() {
        assert_eq!(
            AuditQuery::default().page().unwrap(),
            AuditPageRequest {
                since_id: None,
                limit: DEFAULT_AUDIT_PAGE
            }
        );
        let page = query(Some("7"), Some("1000")).page().unwrap();
        assert_eq!((page.since_id, page.limit), (Some(7), MAX_AUDIT_PAGE));
        for limit in ["0", "1001", "-1", "ten"] {
            assert_eq!(
                param(query(None, Some(limit))).as_deref(),
                Some("limit"),
                "{limit}"
            );
        }
        assert_eq!(param(query(Some("-3"), None)).as_deref(), Some("since_id"));
    }

    #[test]
    fn the_next_page_starts_after_the_last_event_seen() {
        let event = |id| AuditEvent {
            id,
            at: 0,
            actor: "a".into(),
            action: passerelle_store::AuditAction::AdminAction,
            target: None,
            client_addr: None,
            detail: None,
        };
        let asked = |since_id| AuditPageRequest {
            since_id,
            limit: 10,
        };
        assert_eq!(
            AuditPage::new(vec![event(3), event(4)], asked(Some(2))).next_since_id,
            4
        );
        assert_eq!(AuditPage::new(vec![], asked(Some(9))).next_since_id, 9);
        assert_eq!(AuditPage::new(vec![], asked(None)).next_since_id, 0);
    }
}
