//! The gateway's write-behind to the store: usage, audit and prompt records are queued and
//! written by one background task that retries until the store takes them, so a store outage
//! delays records but never loses one a request already produced, and never fails or slows the
//! request. On shutdown the gateway flushes the queue before it exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use passerelle_store::{NewAuditEvent, PromptRecord, Store, StoreError, UsageRecord};
use tokio::sync::{Notify, mpsc};

/// Records waiting at most; past it new records are dropped and counted, because holding
/// requests back for the store is worse than a gap in accounting during a long outage.
const QUEUE_CAPACITY: usize = 100_000;
/// Most records taken off the queue at once. Consecutive usage records among them go to the
/// store in one call: under load one transaction (and one sync to disk) carries many requests.
const BATCH: usize = 512;
/// Pause after writing a batch that emptied the queue, so that under steady load one
/// transaction (and one sync to disk) carries every request of the pause rather than a few.
/// Without it the writer woke for nearly every request and the store's commits cost about a tenth
/// of the gateway's CPU time per proxied request.
const LINGER: Duration = Duration::from_millis(20);
/// Longest pause between two attempts at a record the store refused.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One record for the store.
#[derive(Debug, Clone)]
enum Record {
    Audit(NewAuditEvent),
    Usage(UsageRecord),
    Prompt(PromptRecord),
}

impl Record {
    async fn write(&self, store: &dyn Store) -> Result<(), StoreError> {
        match self {
            Record::Audit(event) => store.append_audit(event.clone()).await.map(drop),
            // Both are idempotent per response id, so a retry after a lost reply counts once.
            Record::Usage(usage) => store.record_usage(usage).await,
            Record::Prompt(prompt) => store.record_prompt(prompt).await,
        }
    }
}

/// The queue's sending side. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Ledger {
    sender: mpsc::Sender<Record>,
    progress: Arc<Progress>,
    dropped: prometheus::IntCounter,
}

/// Records queued and not yet written, shared with the writer. The writer holds no sender, so
/// once every ledger is gone it writes what is left, ends, and lets go of the store (an
/// embedded store's file lock with it).
#[derive(Default)]
struct Progress {
    outstanding: AtomicUsize,
    drained: Notify,
}

impl Progress {
    /// `count` records were written or given up.
    fn finished(&self, count: usize) {
        if self.outstanding.fetch_sub(count, Ordering::AcqRel) == count {
            self.drained.notify_waiters();
        }
    }
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field(
                "outstanding",
                &self.progress.outstanding.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Starts the writer task on the current runtime.
    pub(crate) fn spawn(
        store: Arc<dyn Store>,
        registry: &prometheus::Registry,
    ) -> Result<Self, prometheus::Error> {
        let dropped = prometheus::IntCounter::new(
            "passerelle_ledger_dropped_total",
            "Records for the store dropped because the write queue was full",
        )?;
        registry.register(Box::new(dropped.clone()))?;
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let progress = Arc::new(Progress::default());
        tokio::spawn(write_all(progress.clone(), store, receiver));
        Ok(Self {
            sender,
            progress,
            dropped,
        })
    }

    pub(crate) fn audit(&self, event: NewAuditEvent) {
        self.enqueue(Record::Audit(event));
    }

    pub(crate) fn usage(&self, record: UsageRecord) {
        self.enqueue(Record::Usage(record));
    }

    pub(crate) fn prompt(&self, record: PromptRecord) {
        self.enqueue(Record::Prompt(record));
    }

    /// Waits until every queued record is written, or `deadline` passes. Returns how many are
    /// left.
    pub(crate) async fn flush(&self, deadline: Duration) -> usize {
        let progress = &self.progress;
        let wait = async {
            loop {
                let drained = progress.drained.notified();
                if progress.outstanding.load(Ordering::Acquire) == 0 {
                    return;
                }
                drained.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        progress.outstanding.load(Ordering::Acquire)
    }

    fn enqueue(&self, record: Record) {
        self.progress.outstanding.fetch_add(1, Ordering::AcqRel);
        if let Err(err) = self.sender.try_send(record) {
            self.progress.finished(1);
            self.dropped.inc();
            tracing::error!(error = %err, "ledger queue full; a record was dropped");
        }
    }
}

async fn write_all(
    progress: Arc<Progress>,
    store: Arc<dyn Store>,
    mut receiver: mpsc::Receiver<Record>,
) {
    let mut taken = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut taken, BATCH).await > 0 {
        let drained = taken.len() < BATCH;
        let mut records = taken.drain(..).peekable();
        while let Some(record) = records.next() {
            let Record::Usage(first) = record else {
                persist(store.as_ref(), &record).await;
                progress.finished(1);
                continue;
            };
            let mut usages = vec![first];
            while let Some(Record::Usage(usage)) =
                records.next_if(|r| matches!(r, Record::Usage(_)))
            {
                usages.push(usage);
            }
            persist_usages(store.as_ref(), usages.as_slice()).await;
            progress.finished(usages.len());
        }
        if drained {
            tokio::time::sleep(LINGER).await;
        }
    }
}

/// Writes usage records in one call, retrying while the store is unavailable; a batch the
/// store refuses is written record by record, so only the records at fault are lost.
async fn persist_usages(store: &dyn Store, usages: &[UsageRecord]) {
    if usages.len() == 1 {
        persist(store, &Record::Usage(usages[0].clone())).await;
        return;
    }
    if let Err(err) = retrying(|| store.record_usages(usages)).await {
        tracing::debug!(error = %err, "store refused a usage batch; writing it record by record");
        for usage in usages {
            persist(store, &Record::Usage(usage.clone())).await;
        }
    }
}

/// Writes one record, retrying while the store is unavailable; a record it refuses is dropped.
async fn persist(store: &dyn Store, record: &Record) {
    if let Err(err) = retrying(|| record.write(store)).await {
        // A record the store refuses for what it is will never be taken.
        tracing::error!(error = %err, "store refused a record; dropped");
    }
}

/// Runs `write` until it succeeds or fails for another reason than the store being unavailable.
async fn retrying<F, Fut>(mut write: F) -> Result<(), StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut backoff = Duration::from_millis(50);
    loop {
        match write().await {
            Ok(()) => return Ok(()),
            Err(err) if err.is_unavailable() => {
                tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "store unavailable; record kept for retry");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(err) => return Err(err),
        }
    }
}
