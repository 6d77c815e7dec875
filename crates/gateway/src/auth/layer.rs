//! The access checks as a tower layer. Hand-written rather than `axum::middleware::from_fn`,
//! which per request boxes a clone of the route's service, boxes that service's future again,
//! and splits and rebuilds the request to extract its state: here only the checks' own future
//! is boxed, and the route's future is polled in place.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use tower::{Layer, Service};

use super::{Cleared, Hold, clear};
use crate::edge::RouteName;
use crate::state::AppState;

/// Wraps each route it is applied to in [`AuthService`].
#[derive(Clone)]
pub(crate) struct AuthLayer {
    state: AppState,
    route: Option<&'static str>,
}

impl AuthLayer {
    /// For the router's routes: each request's route is the one the router matched.
    pub(crate) fn new(state: AppState) -> Self {
        Self { state, route: None }
    }

    /// For a route served without the router (see `direct`).
    pub(crate) fn direct(state: AppState, route: &'static str) -> Self {
        Self {
            state,
            route: Some(route),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            state: self.state.clone(),
            route: self.route,
        }
    }
}

/// The access checks (see the module docs of `auth`), then the route.
#[derive(Clone)]
pub(crate) struct AuthService<S> {
    inner: S,
    state: AppState,
    route: Option<&'static str>,
}

impl<S> Service<Request> for AuthService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = AuthFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The route is called once the checks pass: take the service made ready, leaving a
        // clone to be made ready for the next request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        AuthFuture {
            inner: Some(inner),
            phase: Phase::Checking {
                check: Box::pin(clear(
                    self.state.clone(),
                    RouteName::of(self.route, &req),
                    req,
                )),
            },
        }
    }
}

type Check = Pin<Box<dyn Future<Output = Result<Cleared, Response>> + Send>>;

pin_project_lite::pin_project! {
    /// [`AuthService`]'s future: the checks, then the route's future.
    pub(crate) struct AuthFuture<S: Service<Request>> {
        inner: Option<S>,
        #[pin]
        phase: Phase<S::Future>,
    }
}

pin_project_lite::pin_project! {
    #[project = PhaseProj]
    enum Phase<F> {
        Checking { check: Check },
        Running {
            #[pin]
            route: F,
            hold: Option<Hold>,
        },
    }
}

impl<S> Future for AuthFuture<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.phase.as_mut().project() {
                PhaseProj::Checking { check } => {
                    let Cleared { req, hold } = match std::task::ready!(check.as_mut().poll(cx)) {
                        Ok(cleared) => cleared,
                        Err(refused) => return Poll::Ready(Ok(refused)),
                    };
                    let Some(mut inner) = this.inner.take() else {
                        // Only after the future was polled past its end.
                        return Poll::Pending;
                    };
                    let route = inner.call(req);
                    this.phase.set(Phase::Running {
                        route,
                        hold: Some(hold),
                    });
                }
                PhaseProj::Running { route, hold } => {
                    let Ok(response) = std::task::ready!(route.poll(cx));
                    return Poll::Ready(Ok(match hold.take() {
                        Some(hold) => hold.attach(response),
                        None => response,
                    }));
                }
            }
        }
    }
}
