//! `GET /metrics`: everything on the registry the gateway was given, in Prometheus text.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use passerelle_telemetry::metrics::{TEXT_CONTENT_TYPE, encode_text};

use crate::state::AppState;

pub(crate) async fn render(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)],
        encode_text(state.registry()),
    )
}
