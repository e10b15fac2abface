//! The HTTP server: routes, JSON error answers, body limits, and the thread and
//! runtime it runs on.
//!
//! Owns the mapping from HTTP to [`JobService`] calls and from [`ServiceError`] to
//! status codes. It must not hold job state or decide anything about jobs: every
//! answer comes from the service. Every answer it sends is JSON, errors included
//! (`{"error": "...", "status": N}`), whoever produced them (a handler, a rejected
//! extractor, the router's 404/405).

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::model::{
    ErrorBody, JobList, JobService, SavepointRequest, ServiceError, TriggerResponse,
};

/// The largest request body the API accepts (anything larger: 413).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long [`RestServer::shutdown`] lets requests in flight finish before it drops
/// their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Most error bodies produced by axum itself are short texts; longer ones are cut.
const MAX_REWRAPPED_ERROR_BYTES: usize = 4096;

type Service = Arc<dyn JobService>;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("cannot listen for the HTTP API on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the HTTP API server: {0}")]
    Start(#[source] std::io::Error),
}

/// A running HTTP API. Stops (gracefully, bounded) on [`RestServer::shutdown`] or drop.
pub struct RestServer {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RestServer {
    /// The address it listens on (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets requests in flight finish (at most a short grace period)
    /// and joins the server thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic on the server thread has been reported by the panic hook already.
            let _ = thread.join();
        }
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

impl std::fmt::Debug for RestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// Binds `addr` (e.g. `127.0.0.1:8081`; port 0 picks a free port) now, so that a bad
/// or occupied address is an immediate error, and serves `service` on a thread of its
/// own until the returned server is shut down or dropped.
pub fn serve(addr: &str, service: Arc<dyn JobService>) -> Result<RestServer, RestError> {
    let bind_error = |source| RestError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(4)
        .thread_name("flowstate-rest-call")
        .build()
        .map_err(RestError::Start)?;
    let listener = {
        let _context = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(bind_error)?
    };
    let app = router(service);
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("flowstate-rest".into())
        .spawn(move || {
            runtime.block_on(async move {
                let (grace, graceful) = oneshot::channel::<()>();
                let server = tokio::spawn(
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = graceful.await;
                        })
                        .into_future(),
                );
                // A dropped sender (the server handle forgotten) also stops the server.
                let _ = stopped.await;
                let _ = grace.send(());
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, server).await;
            });
            // Dropping the runtime drops connections still open after the grace period.
            drop(runtime);
        })
        .map_err(RestError::Start)?;
    Ok(RestServer {
        local_addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// The routes, with their JSON error handling. Public so that it can be mounted
/// elsewhere or tested without a socket.
pub fn router(service: Arc<dyn JobService>) -> Router {
    Router::new()
        .route("/jobs", get(list_jobs))
        .route("/jobs/{id}", get(job_details).patch(patch_job))
        .route("/jobs/{id}/checkpoints", get(checkpoints))
        .route("/jobs/{id}/savepoints", post(trigger_savepoint))
        .route("/jobs/{id}/savepoints/{request_id}", get(savepoint_status))
        .route("/jobs/{id}/stop", post(stop_with_savepoint))
        .route("/jobs/{id}/cancel", post(cancel))
        .fallback(no_route)
        .layer(middleware::from_fn(json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
}

/// An error answer.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        let status = match &error {
            ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::Conflict(_) => StatusCode::CONFLICT,
            ServiceError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServiceError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, error.to_string())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::new(rejection.status(), rejection.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                format!("request body larger than {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::new(status, rejection.body_text())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json(
            self.status,
            &ErrorBody {
                error: self.message,
                status: self.status.as_u16(),
            },
        )
    }
}

/// A JSON answer. Serialising these documents cannot fail (string keys, no maps with
/// other keys); should it ever, the answer is a 500 in the same JSON shape.
fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let (status, bytes) = match serde_json::to_vec(body) {
        Ok(bytes) => (status, bytes),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({
                "error": format!("cannot serialise the answer: {error}"),
                "status": 500,
            })
            .to_string()
            .into_bytes(),
        ),
    };
    let mut response = (status, bytes).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Runs a service call on the blocking pool: the service takes locks, and a slow call
/// must not stall the server's one runtime thread.
async fn call<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ServiceError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(error) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the job service failed: {error}"),
        )),
    }
}

/// The optional body of a savepoint or stop request: absent/empty/whitespace means
/// all defaults; anything else must be a valid [`SavepointRequest`].
fn savepoint_request(body: Result<Bytes, BytesRejection>) -> Result<SavepointRequest, ApiError> {
    let body = body?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(SavepointRequest::default());
    }
    let invalid =
        |error: serde_json::Error| ApiError::bad_request(format!("invalid request body: {error}"));
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(invalid)?;
    // serde would also take a struct from an array (`["/dir"]`): only an object is a request.
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid request body: expected a JSON object like {\"target_directory\": \"/dir\"}",
        ));
    }
    serde_json::from_value(value).map_err(invalid)
}

async fn list_jobs(State(service): State<Service>) -> Result<Response, ApiError> {
    let jobs = call(move || Ok(service.list())).await?;
    Ok(json(StatusCode::OK, &JobList { jobs }))
}

async fn job_details(
    State(service): State<Service>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let details = call(move || service.details(&id)).await?;
    Ok(json(StatusCode::OK, &details))
}

async fn checkpoints(
    State(service): State<Service>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let history = call(move || service.checkpoints(&id)).await?;
    Ok(json(StatusCode::OK, &history))
}

async fn trigger(
    service: Service,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
    stop: bool,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let request = savepoint_request(body)?;
    let request_id =
        call(move || service.trigger_savepoint(&id, request.target_directory, stop)).await?;
    Ok(json(StatusCode::ACCEPTED, &TriggerResponse { request_id }))
}

async fn trigger_savepoint(
    State(service): State<Service>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    trigger(service, id, body, false).await
}

async fn stop_with_savepoint(
    State(service): State<Service>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    trigger(service, id, body, true).await
}

async fn savepoint_status(
    State(service): State<Service>,
    ids: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((id, request_id)) = ids?;
    let status = call(move || service.savepoint_status(&id, &request_id)).await?;
    Ok(json(StatusCode::OK, &status))
}

async fn cancel_job(service: Service, id: String) -> Result<Response, ApiError> {
    call(move || service.cancel(&id)).await?;
    Ok(json(StatusCode::ACCEPTED, &serde_json::Map::new()))
}

async fn cancel(
    State(service): State<Service>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    cancel_job(service, id).await
}

/// Flink's `PATCH /jobs/{id}?mode=cancel`.
async fn patch_job(
    State(service): State<Service>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let mode = query.as_deref().unwrap_or("").split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == "mode").then_some(value)
    });
    match mode {
        Some("cancel") => cancel_job(service, id).await,
        Some(other) => Err(ApiError::bad_request(format!(
            "unsupported mode '{other}' (PATCH /jobs/{{id}} supports only mode=cancel)"
        ))),
        None => Err(ApiError::bad_request("PATCH /jobs/{id} needs ?mode=cancel")),
    }
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}

/// Rejects a declared body over the limit before any handler runs, whatever the route,
/// and turns every error answer that is not JSON yet (the router's 405, hyper-level
/// rejections passing through axum) into the JSON error shape, keeping its headers
/// (e.g. `Allow`).
async fn json_errors(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {MAX_BODY_BYTES} bytes"),
        )
        .into_response();
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        format!("method {method} not allowed on {path}")
    } else {
        let text = axum::body::to_bytes(body, MAX_REWRAPPED_ERROR_BYTES)
            .await
            .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
            .unwrap_or_default();
        if text.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("request failed")
                .to_owned()
        } else {
            text
        }
    };
    let rewrapped = ApiError::new(status, message).into_response();
    let (new_parts, new_body) = rewrapped.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in &new_parts.headers {
        parts.headers.insert(name, value.clone());
    }
    Response::from_parts(parts, new_body)
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"))
}
