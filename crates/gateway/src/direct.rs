//! The two completion routes, `POST /v1/chat/completions` and `POST /v1/completions`, served
//! without the router; every other request goes through it.
//!
//! Through the router a request costs a path match, the matched path, original URI and path
//! parameters put into its extensions, and for each layer a clone of the route's boxed service
//! and a box for its future: 6% of a relayed request's instructions (docs/benchmarks.md). Here
//! the same handlers sit in the same edge and access layers as concrete types, so a request
//! costs one box, the handler's.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::Request;
use axum::handler::Handler;
use axum::http::Method;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use tower::{Layer, Service};

use crate::auth::{AuthLayer, AuthService};
use crate::edge::{EdgeLayer, EdgeService};
use crate::routes;
use crate::state::AppState;

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

/// A route served directly: its handler in the edge and access layers.
pub(crate) trait DirectRoute:
    Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> DirectRoute for S where
    S: Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The gateway's service: the direct routes, then the router.
#[derive(Clone)]
pub(crate) struct Routes<C, P> {
    chat: C,
    completions: P,
    router: Router,
}

/// [`crate::app`]'s routes, its two completion routes served directly.
pub(crate) fn routes(state: AppState) -> Routes<impl DirectRoute, impl DirectRoute> {
    Routes {
        chat: direct(&state, CHAT, routes::chat::create.with_state(state.clone())),
        completions: direct(
            &state,
            COMPLETIONS,
            routes::completions::create.with_state(state.clone()),
        ),
        router: crate::app(state),
    }
}

/// `handler` in the layers the router puts the route in.
fn direct<H>(state: &AppState, route: &'static str, handler: H) -> EdgeService<AuthService<H>> {
    let edge = EdgeLayer::direct(state.metrics().clone(), route);
    edge.layer(AuthLayer::direct(state.clone(), route).layer(handler))
}

impl<C: DirectRoute, P: DirectRoute> Routes<C, P> {
    /// Serves `req`. Every service here is always ready.
    pub(crate) fn call(&self, req: Request) -> RoutesFuture<C::Future, P::Future> {
        if req.method() == Method::POST {
            match req.uri().path() {
                CHAT => {
                    let future = self.chat.clone().call(req);
                    return RoutesFuture::Chat { future };
                }
                COMPLETIONS => {
                    let future = self.completions.clone().call(req);
                    return RoutesFuture::Completions { future };
                }
                _ => {}
            }
        }
        let future = self.router.clone().call(req);
        RoutesFuture::Router { future }
    }
}

pin_project_lite::pin_project! {
    /// [`Routes`]' future: the one of the service that took the request.
    #[project = RoutesFutureProj]
    pub(crate) enum RoutesFuture<C, P> {
        Chat { #[pin] future: C },
        Completions { #[pin] future: P },
        Router { #[pin] future: RouteFuture<Infallible> },
    }
}

impl<C, P> Future for RoutesFuture<C, P>
where
    C: Future<Output = Result<Response, Infallible>>,
    P: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RoutesFutureProj::Chat { future } => future.poll(cx),
            RoutesFutureProj::Completions { future } => future.poll(cx),
            RoutesFutureProj::Router { future } => future.poll(cx),
        }
    }
}
