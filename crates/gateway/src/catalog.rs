//! The models the services serve, fetched through ListModels and reused for a short while, and
//! the routing table's upstream models and aliases beside them.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::embeddings::EmbeddingsBackend;
use crate::llm::{BackendError, LlmBackend, ModelEntry};
use crate::routing::Routes;

/// `owned_by` of the models the routing table adds.
const ROUTED_OWNER: &str = "passerelle-upstream";

/// A briefly cached view of the service's model list. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ModelCatalog {
    inner: Arc<Inner>,
}

struct Inner {
    llm: LlmBackend,
    embeddings: Option<EmbeddingsBackend>,
    routes: Routes,
    ttl: Duration,
    /// The last successful list. A std lock: held only to copy an `Arc` in or out, never
    /// across an await.
    cached: RwLock<Option<(Instant, Arc<[ModelEntry]>)>>,
    /// Held across the fetch, so concurrent misses make one ListModels call, not one each.
    refresh: tokio::sync::Mutex<()>,
}

impl ModelCatalog {
    pub(crate) fn new(
        llm: LlmBackend,
        embeddings: Option<EmbeddingsBackend>,
        routes: Routes,
        ttl: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                llm,
                embeddings,
                routes,
                ttl,
                cached: RwLock::new(None),
                refresh: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The current list, from cache when fresh.
    pub(crate) async fn models(&self) -> Result<Arc<[ModelEntry]>, BackendError> {
        if let Some(models) = self.fresh() {
            return Ok(models);
        }
        let _refreshing = self.inner.refresh.lock().await;
        if let Some(models) = self.fresh() {
            return Ok(models);
        }
        let table = self.inner.routes.current();
        let mut models = match self.inner.llm.list_models().await {
            Ok(models) => models,
            // With upstreams configured the llm service is one backend among others: its
            // absence hides its models rather than failing the list.
            Err(err) if !table.is_empty() => {
                tracing::warn!(error = %err, "llm service did not list its models");
                Vec::new()
            }
            Err(err) => return Err(err),
        };
        for name in table.names() {
            if !models.iter().any(|m| m.id == name) {
                models.push(ModelEntry {
                    id: name.to_owned(),
                    created: 0,
                    owned_by: ROUTED_OWNER.to_owned(),
                    context_length: 0,
                });
            }
        }
        if let Some(embeddings) = &self.inner.embeddings {
            // The chat models are the gateway's core: an embeddings service that is down hides
            // its models rather than failing the whole list.
            match embeddings.list_models().await {
                Ok(more) => models.extend(more),
                Err(err) => {
                    tracing::warn!(error = %err, "embeddings service did not list its models")
                }
            }
        }
        let models: Arc<[ModelEntry]> = models.into();
        *self.write() = Some((Instant::now(), Arc::clone(&models)));
        Ok(models)
    }

    /// Whether the last list fetched had this id. Never calls the service: used for metric
    /// labels, where a stale answer is fine and a network call is not.
    pub(crate) fn is_known(&self, id: &str) -> bool {
        self.read()
            .as_ref()
            .is_some_and(|(_, models)| models.iter().any(|m| m.id == id))
    }

    /// Forgets the cached list, so the next request sees a new routing table.
    pub(crate) fn invalidate(&self) {
        *self.write() = None;
    }

    fn fresh(&self) -> Option<Arc<[ModelEntry]>> {
        match &*self.read() {
            Some((at, models)) if at.elapsed() < self.inner.ttl => Some(Arc::clone(models)),
            _ => None,
        }
    }

    // A poisoned lock only means a panic while swapping an Option; the data is still whole.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<(Instant, Arc<[ModelEntry]>)>> {
        self.inner
            .cached
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<(Instant, Arc<[ModelEntry]>)>> {
        self.inner
            .cached
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
