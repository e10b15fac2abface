//! `GET /metrics`: the Prometheus scrape endpoint.
//!
//! Owns the route's answer: the service's text, sent as it is with the
//! Prometheus text format's content type. It must not build or parse the
//! text (the service renders it) nor know where the figures come from.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::model::JobService;
use crate::server::{ApiError, call};

/// The content type of the Prometheus text exposition format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) async fn prometheus(
    State(service): State<Arc<dyn JobService>>,
) -> Result<Response, ApiError> {
    let text = call(move || Ok(service.prometheus_text())).await?;
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
    );
    Ok(response)
}
