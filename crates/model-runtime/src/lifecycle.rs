//! Where a model is in its lifecycle, published by the thread that loads it.

use std::sync::Arc;

use tokio::sync::watch;

/// Loading, ready with the loaded model's description `M`, or failed and why.
#[derive(Debug)]
pub enum ModelState<M> {
    Loading,
    Ready(Arc<M>),
    Failed(Arc<str>),
}

// Written out so that `M` itself need not be `Clone`: only the `Arc`s are cloned.
impl<M> Clone for ModelState<M> {
    fn clone(&self) -> Self {
        match self {
            Self::Loading => Self::Loading,
            Self::Ready(model) => Self::Ready(Arc::clone(model)),
            Self::Failed(why) => Self::Failed(Arc::clone(why)),
        }
    }
}

/// Why waiting for a model ended without one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitError {
    /// The load failed, for this reason.
    Failed(Arc<str>),
    /// The loading thread is gone without saying either way.
    Stopped,
}

/// Waits until the model is ready or has failed.
pub async fn wait_ready<M>(state: &watch::Receiver<ModelState<M>>) -> Result<Arc<M>, WaitError> {
    let mut state = state.clone();
    loop {
        match state.borrow_and_update().clone() {
            ModelState::Ready(model) => return Ok(model),
            ModelState::Failed(why) => return Err(WaitError::Failed(why)),
            ModelState::Loading => {}
        }
        state.changed().await.map_err(|_| WaitError::Stopped)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_through_loading_to_the_outcome() {
        let (sender, receiver) = watch::channel(ModelState::<u32>::Loading);
        let waiting = tokio::spawn(async move { wait_ready(&receiver).await });
        sender.send(ModelState::Ready(Arc::new(7))).unwrap();
        assert_eq!(*waiting.await.unwrap().unwrap(), 7);

        let (sender, receiver) = watch::channel(ModelState::<u32>::Loading);
        sender.send(ModelState::Failed("bad file".into())).unwrap();
        assert_eq!(
            wait_ready(&receiver).await.unwrap_err(),
            WaitError::Failed("bad file".into())
        );

        let (sender, receiver) = watch::channel(ModelState::<u32>::Loading);
        drop(sender);
        assert_eq!(wait_ready(&receiver).await.unwrap_err(), WaitError::Stopped);
    }
}
