//! Keeping values alive for as long as a response body is, and reading a body whole.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::response::Response;
use bytes::BytesMut;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;

/// All of `body`'s data, its trailers ignored. A body that comes in one frame, as most JSON
/// bodies do, is returned as it came, where `http_body_util`'s `collect` first queues every
/// frame in a list of its own (an allocation per body).
pub(crate) async fn read_all<B>(body: B) -> Result<Bytes, B::Error>
where
    B: HttpBody<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut first = Bytes::new();
    let mut joined = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if first.is_empty() {
            first = data;
        } else {
            if joined.is_empty() {
                joined.extend_from_slice(&first);
            }
            joined.extend_from_slice(&data);
        }
    }
    Ok(if joined.is_empty() {
        first
    } else {
        joined.freeze()
    })
}

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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures::stream;
    use http_body_util::StreamBody;

    use super::*;

    fn frames(
        chunks: &[&'static str],
    ) -> StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
        let frames = chunks
            .iter()
            .map(|chunk| Ok(Frame::data(Bytes::from_static(chunk.as_bytes()))))
            .collect::<Vec<_>>();
        StreamBody::new(stream::iter(frames))
    }

    #[tokio::test]
    async fn one_frame_is_returned_as_it_came() {
        let read = read_all(frames(&["{\"a\":1}"])).await.unwrap();
        assert_eq!(read, "{\"a\":1}");
        let empty = read_all(frames(&[])).await.unwrap();
        assert!(empty.is_empty());
    }

    #[tokio::test]
    async fn frames_are_joined_in_order() {
        let read = read_all(frames(&["", "{\"a\"", "", ":", "1}"]))
            .await
            .unwrap();
        assert_eq!(read, "{\"a\":1}");
    }

    #[tokio::test]
    async fn an_error_ends_the_read() {
        let failing = StreamBody::new(stream::iter([
            Ok(Frame::data(Bytes::from_static(b"{"))),
            Err("cut short"),
        ]));
        assert_eq!(read_all(failing).await.unwrap_err(), "cut short");
    }
}
