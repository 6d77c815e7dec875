//! Keeping values alive for as long as a response body is.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::response::Response;
use http_body::{Frame, SizeHint};

pin_project_lite::pin_project! {
    /// A response body that holds `guard` until it is finished or abandoned, and is polled
    /// inside `span`, so what streaming logs stays in its request's span.
    pub(crate) struct Guarded<G> {
        #[pin]
        inner: Body,
        guard: G,
        span: tracing::Span,
    }
}

impl<G> HttpBody for Guarded<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let _entered = this.span.enter();
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Returns `response` with `guard` tied to its body: the guard drops when the body is finished
/// or abandoned (client gone), not when the handler returns. Streams hold their permits and
/// timers this way. The body's size hint is kept, so `Content-Length` responses stay so.
pub(crate) fn attach_to_body<G: Send + 'static>(response: Response, guard: G) -> Response {
    attach_in_span(response, guard, tracing::Span::none())
}

/// [`attach_to_body`], the body also polled inside `span`.
pub(crate) fn attach_in_span<G: Send + 'static>(
    response: Response,
    guard: G,
    span: tracing::Span,
) -> Response {
    let (parts, inner) = response.into_parts();
    Response::from_parts(parts, Body::new(Guarded { inner, guard, span }))
}
