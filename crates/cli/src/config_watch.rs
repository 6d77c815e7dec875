//! Reload of the routing table when the configuration file changes, besides SIGHUP.
//!
//! The file is read every [`POLL`] and compared with the content the table was last built from,
//! rather than watched through the OS: a poll of one small file costs nothing, sees every way
//! of changing it (in place, by rename, a Kubernetes ConfigMap's symlink swap, a network file
//! system), and needs no platform-specific code. A change is applied once the content has
//! stayed the same for one poll, so a file caught half-written is not loaded; one that fails to
//! load keeps the table in force, with a warning, until the file changes again.

use std::path::PathBuf;
use std::time::Duration;

use crate::routing::{self, RoutingSource};

/// How often the configuration file is read.
pub const POLL: Duration = Duration::from_secs(1);

/// What the watcher knows of the file. Each poll feeds it what was read (`None` when the file
/// could not be read) and learns whether to reload.
#[derive(Debug)]
struct Watch {
    /// The content the table in force was built from, or last failed to build from.
    applied: Option<Vec<u8>>,
    /// Different content seen at the previous poll, waiting to settle.
    settling: Option<Option<Vec<u8>>>,
}

impl Watch {
    fn new(initial: Option<Vec<u8>>) -> Self {
        Self {
            applied: initial,
            settling: None,
        }
    }

    /// Whether to reload now: the content differs from the applied one and is what the
    /// previous poll saw too. A reload is asked for once per change.
    fn poll(&mut self, seen: Option<Vec<u8>>) -> bool {
        if seen == self.applied {
            self.settling = None;
            return false;
        }
        if self.settling.as_ref() == Some(&seen) {
            self.settling = None;
            self.applied = seen;
            return true;
        }
        self.settling = Some(seen);
        false
    }
}

/// Rebuilds the routing table into `state` whenever the configuration file changes; nothing
/// without a file, or with watching turned off (`--watch-config false`).
pub fn reload_on_change(state: passerelle_gateway::AppState, source: RoutingSource) {
    let Some(path) = source.config_path.clone().filter(|_| source.watch_file) else {
        return;
    };
    tokio::spawn(async move {
        let mut watch = Watch::new(read(&path).await);
        let mut ticks = tokio::time::interval(POLL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if watch.poll(read(&path).await) {
                routing::reload(&state, &source, "the configuration file changed");
            }
        }
    });
}

async fn read(path: &PathBuf) -> Option<Vec<u8>> {
    tokio::fs::read(path).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(text: &str) -> Option<Vec<u8>> {
        Some(text.as_bytes().to_vec())
    }

    #[test]
    fn a_change_is_applied_once_it_has_settled() {
        let mut watch = Watch::new(content("a"));
        assert!(!watch.poll(content("a")), "unchanged");
        assert!(
            !watch.poll(content("ab")),
            "just changed: may be half-written"
        );
        assert!(!watch.poll(content("abc")), "still changing");
        assert!(watch.poll(content("abc")), "settled");
        assert!(!watch.poll(content("abc")), "applied once");
    }

    #[test]
    fn a_change_undone_before_it_settled_is_not_applied() {
        let mut watch = Watch::new(content("a"));
        assert!(!watch.poll(content("b")));
        assert!(!watch.poll(content("a")));
        assert!(!watch.poll(content("a")));
    }

    #[test]
    fn a_missing_file_is_a_change_and_so_is_its_return() {
        let mut watch = Watch::new(content("a"));
        assert!(!watch.poll(None));
        assert!(watch.poll(None), "tried, so the failure is logged once");
        assert!(!watch.poll(None));
        assert!(!watch.poll(content("a")));
        assert!(watch.poll(content("a")));
    }
}
