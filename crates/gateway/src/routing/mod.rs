//! Routing: which backend answers a model name. Most names go to the llm service; the
//! operator's table adds external OpenAI-compatible upstreams (several replicas each, balanced
//! and ejected when they fail), aliases, fallbacks and small-to-large cascades.
//!
//! [`config`] is what the operator writes; `table` builds it into pools of replicas and
//! resolves names; `balancer` is the pure policy (pick, eject, recover); `upstream` sends one
//! request with its retries, over `client`'s pooled connections; `relay` passes the answer back
//! (JSON, or SSE event by event) and accounts its usage, send and answer bounded by one
//! `deadline`; `inspect` screens and records a relayed answer when output checks or the
//! semantic cache are on, and `cache` keys and replays it; `dispatch` ties them to the chat and
//! completion handlers; `cascade` answers a virtual model with a small model or, when its
//! answer is not confident, a large one.

mod balancer;
mod cache;
mod cascade;
mod client;
pub mod config;
mod deadline;
pub(crate) mod dispatch;
mod forward;
mod inspect;
mod relay;
mod sse_split;
pub(crate) mod table;
mod upstream;

use std::sync::{Arc, PoisonError, RwLock};

pub(crate) use client::UpstreamClient;
pub use config::{CascadeConfig, DEFAULT_REFUSAL_PHRASES, RoutingConfig, UpstreamConfig};
pub use table::RoutingError;
pub use upstream::UpstreamRejection;

use table::RouteTable;

/// The routing table in force, replaceable while the gateway runs. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct Routes {
    /// A std lock: held only to clone or swap an `Arc`.
    current: Arc<RwLock<Arc<RouteTable>>>,
}

impl Routes {
    pub(crate) fn new(config: &RoutingConfig) -> Result<Self, RoutingError> {
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(RouteTable::new(config)?))),
        })
    }

    /// The table now; a request keeps the one it started with.
    pub(crate) fn current(&self) -> Arc<RouteTable> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts a new table in force. Replica health starts afresh.
    pub(crate) fn replace(&self, config: &RoutingConfig) -> Result<(), RoutingError> {
        let table = Arc::new(RouteTable::new(config)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = table;
        Ok(())
    }
}
