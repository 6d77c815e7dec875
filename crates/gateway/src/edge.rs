//! The layer in front of every route: the request id (the client's when it is fit to log, else
//! a fresh UUID, echoed on the response), the request's span (its parent from the W3C trace
//! context headers), the response's log line, and the per-request metrics (counted when the head
//! is ready, timed until the body ends or is abandoned).
//!
//! One tower service with one future and one body wrapper: each `Router::layer` call boxes its
//! service and future again per request, and the separate layers this replaces (request-id
//! sanitising, setting and echoing, tracing, metrics) were a measurable share of the gateway's
//! own CPU time per proxied request.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use tower::{Layer, Service};

use crate::body::attach_in_span;
use crate::extract::{REQUEST_ID_HEADER, new_request_id};
use crate::metrics::{GatewayMetrics, InFlight, RequestTimer};

/// Longest client-supplied request id we keep; longer or non-printable ones are replaced, since
/// the id goes into logs, traces and the service's request.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The route label of requests no route matched.
const UNMATCHED: &str = "unmatched";

/// Wraps every route in [`EdgeService`].
#[derive(Clone)]
pub(crate) struct EdgeLayer {
    metrics: GatewayMetrics,
    route: Option<&'static str>,
}

impl EdgeLayer {
    /// For the router's routes: each request's route is the one the router matched.
    pub(crate) fn new(metrics: GatewayMetrics) -> Self {
        Self {
            metrics,
            route: None,
        }
    }

    /// For a route served without the router (see `direct`).
    pub(crate) fn direct(metrics: GatewayMetrics, route: &'static str) -> Self {
        Self {
            metrics,
            route: Some(route),
        }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> EdgeService<S> {
        EdgeService {
            inner,
            metrics: self.metrics.clone(),
            route: self.route,
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub(crate) struct EdgeService<S> {
    inner: S,
    metrics: GatewayMetrics,
    route: Option<&'static str>,
}

impl<S> Service<Request> for EdgeService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let request_id = request_id(&mut req);
        let route = RouteName::of(self.route, &req);
        let span = request_span(&req, route.as_ref(), &request_id);
        let in_flight = InFlight::enter(&self.metrics);
        let started = Instant::now();
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        EdgeFuture {
            inner,
            pending: Some(Pending {
                metrics: self.metrics.clone(),
                route,
                request_id,
                span,
                started,
                in_flight,
            }),
        }
    }
}

/// What the response needs from its request.
struct Pending {
    metrics: GatewayMetrics,
    route: Option<RouteName>,
    request_id: HeaderValue,
    span: tracing::Span,
    started: Instant,
    in_flight: InFlight,
}

pin_project_lite::pin_project! {
    /// [`EdgeService`]'s future: the route's, polled in the request's span.
    pub(crate) struct EdgeFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.pending.as_ref() {
            Some(pending) => {
                let _entered = pending.span.enter();
                std::task::ready!(this.inner.poll(cx))
            }
            None => std::task::ready!(this.inner.poll(cx)),
        };
        let Ok(mut response) = result;
        let Some(pending) = this.pending.take() else {
            return Poll::Ready(Ok(response));
        };
        let Pending {
            metrics,
            route,
            request_id,
            span,
            started,
            in_flight,
        } = pending;
        let status = response.status();
        log_response(&span, status, started);
        let route = route.as_ref().map_or(UNMATCHED, RouteName::as_str);
        let timer = RequestTimer::start(&metrics, route, &response, started, in_flight);
        response
            .headers_mut()
            .entry(&REQUEST_ID_HEADER)
            .or_insert(request_id);
        Poll::Ready(Ok(attach_in_span(response, timer, span)))
    }
}

/// The route template a request is served by, for metric labels, spans and access rules.
#[derive(Debug, Clone)]
pub(crate) enum RouteName {
    /// A route served without the router (see `direct`).
    Direct(&'static str),
    /// The route the router matched.
    Matched(MatchedPath),
}

impl RouteName {
    /// `direct` when the layer serves one route, else what the router matched, if anything.
    pub(crate) fn of(direct: Option<&'static str>, req: &Request) -> Option<Self> {
        match direct {
            Some(route) => Some(Self::Direct(route)),
            None => req
                .extensions()
                .get::<MatchedPath>()
                .cloned()
                .map(Self::Matched),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Direct(route) => route,
            Self::Matched(matched) => matched.as_str(),
        }
    }
}

/// The client's `x-request-id` when it is fit to log, else a fresh UUID, set on the request
/// either way so handlers read it from there.
fn request_id(req: &mut Request) -> HeaderValue {
    if let Some(id) = req.headers().get(&REQUEST_ID_HEADER)
        && is_fit(id)
    {
        return id.clone();
    }
    let id = new_request_id();
    req.headers_mut().insert(&REQUEST_ID_HEADER, id.clone());
    id
}

fn is_fit(id: &HeaderValue) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id.as_bytes().iter().all(|b| b.is_ascii_graphic())
}

/// The span every request runs in. It names the route template, not the raw path, and never
/// headers: `Authorization` must not reach the logs. `key_id` is filled in by the access layer.
fn request_span(
    req: &Request,
    route: Option<&RouteName>,
    request_id: &HeaderValue,
) -> tracing::Span {
    let route = route.map_or(UNMATCHED, RouteName::as_str);
    let request_id = request_id.to_str().unwrap_or_default();
    let span = tracing::info_span!(
        "http_request",
        method = %req.method(),
        route,
        request_id,
        key_id = tracing::field::Empty,
    );
    // Reading the trace context headers is wasted on a span nothing records.
    if !span.is_disabled() {
        passerelle_telemetry::propagation::set_parent_from(&span, req.headers());
    }
    span
}

/// The response's log line: `info` for every response, and `warn` for server errors, as
/// tower-http's trace layer wrote them.
fn log_response(span: &tracing::Span, status: StatusCode, started: Instant) {
    if status.is_server_error() {
        tracing::warn!(
            parent: span,
            classification = %format_args!("Status code: {status}"),
            latency = %format_args!("{} ms", started.elapsed().as_millis()),
            "response failed"
        );
    }
    tracing::info!(
        parent: span,
        latency = %format_args!("{} ms", started.elapsed().as_millis()),
        status = status.as_u16(),
        "finished processing request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_printable_short_ids_are_kept() {
        assert!(is_fit(&HeaderValue::from_static("abc-123")));
        assert!(!is_fit(&HeaderValue::from_static("")));
        assert!(!is_fit(&HeaderValue::from_static("a b")));
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        assert!(!is_fit(&HeaderValue::from_str(&long).unwrap()));
    }
}
