//! Keeping values alive for as long as a response body is.

use axum::body::Body;
use axum::response::Response;
use http_body_util::BodyExt as _;

/// Returns `response` with `guard` tied to its body: the guard drops when the body is finished
/// or abandoned (client gone), not when the handler returns. Streams hold their permits and
/// timers this way. The body's size hint is kept, so `Content-Length` responses stay so.
pub(crate) fn attach_to_body<G: Send + 'static>(response: Response, guard: G) -> Response {
    let (parts, body) = response.into_parts();
    let body = body.map_frame(move |frame| {
        let _alive = &guard;
        frame
    });
    Response::from_parts(parts, Body::new(body))
}
