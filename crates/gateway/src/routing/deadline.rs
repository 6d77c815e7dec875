//! A relayed request's deadline: one timer from sending to the end of the answer.
//!
//! `tokio::time::timeout_at` around each wait (the send, then the body) would make a timer per
//! wait, each held inside the wait's future. Here the timer is made once, registered with the
//! runtime at the first wait that has to wait, and each wait holds a borrow of it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// The deadline passed before the awaited work finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// The instant a relayed request must be done by, and its timer. Boxed, so that it can move
/// from the request into the body of a streamed answer without being registered again.
#[derive(Debug)]
pub(crate) struct Deadline {
    timer: Pin<Box<Sleep>>,
}

impl Deadline {
    pub(crate) fn at(instant: Instant) -> Self {
        Self {
            timer: Box::pin(tokio::time::sleep_until(instant)),
        }
    }

    /// `work`'s output, or [`Elapsed`] when the deadline passes first. Work that is ready when
    /// the deadline has passed still counts, as with `tokio::time::timeout`.
    pub(crate) fn within<F: Future>(&mut self, work: F) -> Within<'_, F> {
        Within {
            work,
            timer: self.timer.as_mut(),
        }
    }

    /// Completes when the deadline passes.
    pub(crate) async fn passed(&mut self) {
        self.timer.as_mut().await;
    }
}

pin_project_lite::pin_project! {
    /// [`Deadline::within`]'s future: the work and a borrow of the timer, nothing more (an
    /// `async fn` would hold the work twice, and the work here is a whole upstream exchange).
    pub(crate) struct Within<'a, F> {
        #[pin]
        work: F,
        timer: Pin<&'a mut Sleep>,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.work.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        this.timer.as_mut().poll(cx).map(|()| Err(Elapsed))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_deadline_bounds_every_wait() {
        let mut deadline = Deadline::at(Instant::now() + Duration::from_secs(10));
        let first = deadline
            .within(tokio::time::sleep(Duration::from_secs(4)))
            .await;
        assert_eq!(first, Ok(()));
        // Six seconds are left, not ten.
        let second = deadline
            .within(tokio::time::sleep(Duration::from_secs(7)))
            .await;
        assert_eq!(second, Err(Elapsed));
        assert_eq!(deadline.within(async { 1 }).await, Ok(1));
        deadline.passed().await;
    }

    #[tokio::test(start_paused = true)]
    async fn work_done_in_time_is_not_cut_short() {
        let mut deadline = Deadline::at(Instant::now() + Duration::from_secs(1));
        let answer = deadline
            .within(async {
                tokio::time::sleep(Duration::from_millis(999)).await;
                "done"
            })
            .await;
        assert_eq!(answer, Ok("done"));
    }
}
