//! The HTTP server: who may talk to it, routes, JSON error answers, body limits,
//! connection limits, and the thread and runtime it runs on.
//!
//! Owns the mapping from HTTP to [`JobService`] calls and from [`ServiceError`] to
//! status codes, and the API's access rules ([`ServeOptions`], [`Access`]): the
//! Host header must name this server (against DNS rebinding), a request that
//! changes anything must be `application/json` (a browser cannot send that
//! cross-site without a CORS preflight, which this server never grants), an
//! optional bearer token (required to serve beyond loopback), an idle timeout
//! and a cap on open connections. It must not hold job state or decide anything
//! about jobs: every answer comes from the service. Every answer it sends is
//! JSON, errors included (Flink's `{"errors": ["..."]}`), whoever produced
//! them (a handler, a rejected extractor, the router's 404/405, the guard).

use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
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
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::sync::{Semaphore, oneshot, watch};

use serde::de::DeserializeOwned;

use crate::model::{
    DashboardConfig, ErrorBody, JobIdWithStatus, JobIdsWithStatus, JobService, MultipleJobs,
    SavepointRequest, SavepointStatusBody, SavepointTrigger, ServiceError, StopRequest,
    TriggerResponse,
};

/// The largest request body the API accepts (anything larger: 413).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Default of [`ServeOptions::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Default of [`ServeOptions::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// How long [`RestServer::shutdown`] lets requests in flight finish before it drops
/// their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Pause after a failed `accept` (e.g. out of file descriptors), so that the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Most error bodies produced by axum itself are short texts; longer ones are cut.
const MAX_REWRAPPED_ERROR_BYTES: usize = 4096;

/// The longest Host value quoted back in an error answer.
const MAX_QUOTED_HOST_CHARS: usize = 100;

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
    /// A non-loopback address without a token, and not explicitly allowed.
    #[error(
        "refusing to serve the HTTP API on {addr} without a bearer token: it is not a \
         loopback address, so anyone who can reach it could stop the job"
    )]
    Unprotected { addr: String },
    /// An option is unusable (e.g. an empty token).
    #[error("invalid HTTP API option: {0}")]
    InvalidOption(String),
}

/// How the API is protected and bounded. `Default` is loopback-only use: no token,
/// Host checked against the bound address, the default idle timeout and cap.
#[derive(Clone)]
pub struct ServeOptions {
    /// A bearer token every request must carry (`Authorization: Bearer <token>`);
    /// visible ASCII, no spaces. Required to bind anything but loopback unless
    /// `allow_unprotected_remote`.
    pub token: Option<String>,
    /// Host header values accepted besides those of the bound address: `host`
    /// (any port) or `host:port` (e.g. a name behind a reverse proxy).
    pub allowed_hosts: Vec<String>,
    /// Serve a non-loopback address without a token (the caller should warn).
    pub allow_unprotected_remote: bool,
    /// A connection is closed when no complete request head arrives within this
    /// (from its start, or since the previous answer), and a request whose body
    /// and answer take longer is answered 408.
    pub idle_timeout: Duration,
    /// Open connections at most; further ones are closed at once.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            token: None,
            allowed_hosts: Vec::new(),
            allow_unprotected_remote: false,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself: options end up in logs.
        f.debug_struct("ServeOptions")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("allowed_hosts", &self.allowed_hosts)
            .field("allow_unprotected_remote", &self.allow_unprotected_remote)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl ServeOptions {
    fn validate(&self) -> Result<(), RestError> {
        if let Some(token) = &self.token
            && (token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(RestError::InvalidOption(
                "the bearer token must be non-empty visible ASCII without spaces".into(),
            ));
        }
        // At most u32::MAX: shutdown waits for all permits with `acquire_many(u32)`.
        let most = Semaphore::MAX_PERMITS.min(u32::MAX as usize);
        if self.max_connections == 0 || self.max_connections > most {
            return Err(RestError::InvalidOption(format!(
                "the connection limit {} is not between 1 and {most}",
                self.max_connections
            )));
        }
        if self.idle_timeout.is_zero() {
            return Err(RestError::InvalidOption(
                "the idle timeout must be longer than zero".into(),
            ));
        }
        for host in &self.allowed_hosts {
            if parse_host(host).is_none() {
                return Err(RestError::InvalidOption(format!(
                    "allowed host '{host}' is not host or host:port"
                )));
            }
        }
        Ok(())
    }
}

/// Checks, before anything is bound, that serving on `addr` with `options` is
/// allowed: every address `addr` resolves to is loopback, or a token is set, or
/// unprotected remote access is explicitly allowed. [`serve_with`] checks the
/// bound address again.
pub fn check_exposure(addr: &str, options: &ServeOptions) -> Result<(), RestError> {
    use std::net::ToSocketAddrs;
    options.validate()?;
    let resolved = addr.to_socket_addrs().map_err(|source| RestError::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    for resolved in resolved {
        exposure(addr, resolved, options)?;
    }
    Ok(())
}

fn exposure(given: &str, addr: SocketAddr, options: &ServeOptions) -> Result<(), RestError> {
    if addr.ip().is_loopback() || options.token.is_some() || options.allow_unprotected_remote {
        Ok(())
    } else {
        Err(RestError::Unprotected {
            addr: given.to_owned(),
        })
    }
}

/// The access rules of one server: which Host values it answers, and its token.
#[derive(Clone)]
pub struct Access {
    /// `(host, port)`; `None` port: any.
    hosts: Vec<(String, Option<u16>)>,
    /// Bound to every address: any IP literal with this port is the server itself
    /// (an IP literal cannot be rebound, only a name can).
    any_ip_on_port: Option<u16>,
    token: Option<String>,
    idle_timeout: Duration,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("hosts", &self.hosts)
            .field("any_ip_on_port", &self.any_ip_on_port)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Access {
    /// The rules of a server bound to `bound`: Host values naming the bound address
    /// (on loopback also `localhost`, `127.0.0.1` and `[::1]`) with its port, plus
    /// `options.allowed_hosts`.
    pub fn new(bound: SocketAddr, options: &ServeOptions) -> Result<Self, RestError> {
        options.validate()?;
        let port = bound.port();
        let mut hosts = vec![(ip_host(bound.ip()), Some(port))];
        let any_ip_on_port = bound.ip().is_unspecified().then_some(port);
        if bound.ip().is_loopback() || bound.ip().is_unspecified() {
            for name in ["localhost", "127.0.0.1", "[::1]"] {
                hosts.push((name.to_owned(), Some(port)));
            }
        }
        for host in &options.allowed_hosts {
            hosts.extend(parse_host(host));
        }
        Ok(Self {
            hosts,
            any_ip_on_port,
            token: options.token.clone(),
            idle_timeout: options.idle_timeout,
        })
    }

    /// Whether a Host (or request-target authority) value names this server.
    fn allows_host(&self, value: &str) -> bool {
        let Some((host, port)) = parse_host(value) else {
            return false;
        };
        // Without a port, a Host value means HTTP's default port.
        let port = port.unwrap_or(80);
        if let Some(bound) = self.any_ip_on_port
            && port == bound
            && is_ip_literal(&host)
        {
            return true;
        }
        self.hosts
            .iter()
            .any(|(h, p)| *h == host && p.is_none_or(|p| p == port))
    }

    fn token_matches(&self, presented: &str) -> bool {
        match &self.token {
            None => true,
            Some(token) => bool::from(token.as_bytes().ct_eq(presented.as_bytes())),
        }
    }
}

/// `host` as a Host header spells it: IPv6 in brackets.
fn ip_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn is_ip_literal(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok()
}

/// `host[:port]` (IPv6 in brackets) as a lower-case host and its port, if any.
/// `None` if it is not that shape.
fn parse_host(value: &str) -> Option<(String, Option<u16>)> {
    let value = value.trim().to_ascii_lowercase();
    let (host, port) = if value.starts_with('[') {
        let close = value.find(']')?;
        let (host, rest) = value.split_at(close + 1);
        match rest {
            "" => (host.to_owned(), None),
            _ => (host.to_owned(), Some(rest.strip_prefix(':')?)),
        }
    } else {
        match value.split_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (value.clone(), None),
        }
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    let host_ok = !host.is_empty()
        && if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            inner.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            host.chars().all(valid)
        };
    if !host_ok {
        return None;
    }
    // A canonical spelling of IPv6, so `[0:0::1]` matches `[::1]`.
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) => format!("[{}]", inner.parse::<std::net::Ipv6Addr>().ok()?),
        None => host,
    };
    let port = match port {
        None => None,
        Some(port) => Some(port.parse::<u16>().ok()?),
    };
    Some((host, port))
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

/// [`serve_with`] with the default options (loopback use without a token).
pub fn serve(addr: &str, service: Arc<dyn JobService>) -> Result<RestServer, RestError> {
    serve_with(addr, service, &ServeOptions::default())
}

/// Binds `addr` (e.g. `127.0.0.1:8081`; port 0 picks a free port) now, so that a bad
/// or occupied address is an immediate error, and serves `service` on a thread of its
/// own until the returned server is shut down or dropped. Refuses a non-loopback
/// address without a token unless `options.allow_unprotected_remote`.
pub fn serve_with(
    addr: &str,
    service: Arc<dyn JobService>,
    options: &ServeOptions,
) -> Result<RestServer, RestError> {
    options.validate()?;
    let bind_error = |source| RestError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    exposure(addr, local_addr, options)?;
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
    let app = router(service, Access::new(local_addr, options)?);
    let (stop, stopped) = oneshot::channel::<()>();
    let (idle_timeout, max_connections) = (options.idle_timeout, options.max_connections);
    let thread = std::thread::Builder::new()
        .name("flowstate-rest".into())
        .spawn(move || {
            runtime.block_on(accept_loop(
                listener,
                app,
                stopped,
                idle_timeout,
                max_connections,
            ));
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

/// Accepts connections until `stopped` fires (or its sender is dropped), each served
/// on a task of its own while it holds one of `max_connections` permits; a
/// connection beyond the cap is closed at once. Then lets the connections finish
/// what they are answering, for at most [`SHUTDOWN_GRACE`].
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    stopped: oneshot::Receiver<()>,
    idle_timeout: Duration,
    max_connections: usize,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        // Also the wait for the next request on a kept-alive connection: hyper
        // starts it whenever it waits for a request head.
        .header_read_timeout(idle_timeout);
    let (closing, closed) = watch::channel(false);
    let mut stopped = pin!(stopped);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            // Over the cap: closed without a word (the client sees the connection end).
            drop(stream);
            continue;
        };
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let mut closed = closed.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut connection = pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = closed.changed() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    drop(listener);
    let _ = closing.send(true);
    // Every permit back means every connection has ended.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, permits.acquire_many(all)).await;
}

/// The routes, with their JSON error handling, behind the access rules. Every
/// route is served both at its path and under `/v1` (Flink's client calls
/// `/v1/...`). Public so that it can be mounted elsewhere or tested without a
/// socket.
pub fn router(service: Arc<dyn JobService>, access: Access) -> Router {
    Router::new()
        .merge(routes())
        .nest("/v1", routes())
        // The web UI: at the root only (`/`, `/assets/...`), not under `/v1`.
        .merge(crate::ui::routes())
        // Prometheus scrapes: at the root only.
        .route("/metrics", get(crate::metrics::prometheus))
        .fallback(no_route)
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(Arc::new(access), guard))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
}

fn routes() -> Router<Service> {
    Router::new()
        .route("/config", get(config))
        .route("/overview", get(overview))
        .route("/jobs", get(list_jobs))
        .route("/jobs/overview", get(jobs_overview))
        .route("/jobs/{id}", get(job_details).patch(patch_job))
        .route(
            "/jobs/{id}/vertices/{vertex}/backpressure",
            get(backpressure),
        )
        .route("/jobs/{id}/checkpoints", get(checkpoints))
        .route("/jobs/{id}/checkpoints/config", get(checkpoint_config))
        .route(
            "/jobs/{id}/checkpoints/details/{checkpoint}",
            get(checkpoint_details),
        )
        .route(
            "/jobs/{id}/checkpoints/details/{checkpoint}/subtasks/{vertex}",
            get(checkpoint_subtasks),
        )
        .route("/jobs/{id}/exceptions", get(exceptions))
        .route("/jobs/{id}/savepoints", post(trigger_savepoint))
        .route("/jobs/{id}/savepoints/{request_id}", get(savepoint_status))
        .route("/jobs/{id}/stop", post(stop_with_savepoint))
        .route("/jobs/{id}/cancel", post(cancel))
}

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    /// A 401: says `WWW-Authenticate: Bearer`.
    authenticate: bool,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            authenticate: false,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        let status = match &error {
            ServiceError::UnknownJob
            | ServiceError::UnknownSavepointRequest
            | ServiceError::UnknownCheckpoint
            | ServiceError::UnknownVertex => StatusCode::NOT_FOUND,
            ServiceError::Conflict(_) => StatusCode::CONFLICT,
            ServiceError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServiceError::Forbidden(_) => StatusCode::FORBIDDEN,
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
        let mut response = json(
            self.status,
            &ErrorBody {
                errors: vec![self.message],
            },
        );
        if self.authenticate {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
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
                "errors": [format!("cannot serialise the answer: {error}")],
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
pub(crate) async fn call<T, F>(f: F) -> Result<T, ApiError>
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
/// all defaults; anything else must be a JSON object of type `T`.
fn optional_body<T: DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
    example: &str,
) -> Result<T, ApiError> {
    let body = body?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let invalid =
        |error: serde_json::Error| ApiError::bad_request(format!("invalid request body: {error}"));
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(invalid)?;
    // serde would also take a struct from an array (`["/dir"]`): only an object is a request.
    if !value.is_object() {
        return Err(ApiError::bad_request(format!(
            "invalid request body: expected a JSON object like {example}"
        )));
    }
    serde_json::from_value(value).map_err(invalid)
}

/// flowstate's savepoints are canonical; `NATIVE` cannot be had.
fn check_format(format: Option<&str>) -> Result<(), ApiError> {
    match format {
        None | Some("CANONICAL") | Some("DEFAULT") => Ok(()),
        Some(other) => Err(ApiError::bad_request(format!(
            "savepoint format '{}' is not supported: flowstate writes CANONICAL savepoints",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

async fn config() -> Response {
    json(StatusCode::OK, &DashboardConfig::default())
}

async fn overview(State(service): State<Service>) -> Result<Response, ApiError> {
    let overview = call(move || Ok(service.overview())).await?;
    Ok(json(StatusCode::OK, &overview))
}

async fn list_jobs(State(service): State<Service>) -> Result<Response, ApiError> {
    let jobs = call(move || Ok(service.jobs())).await?;
    let jobs = jobs
        .into_iter()
        .map(|j| JobIdWithStatus {
            id: j.jid,
            status: j.state,
        })
        .collect();
    Ok(json(StatusCode::OK, &JobIdsWithStatus { jobs }))
}

async fn jobs_overview(State(service): State<Service>) -> Result<Response, ApiError> {
    let jobs = call(move || Ok(service.jobs())).await?;
    Ok(json(StatusCode::OK, &MultipleJobs { jobs }))
}

async fn job_details(
    State(service): State<Service>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let details = call(move || service.details(&id)).await?;
    Ok(json(StatusCode::OK, &details))
}

async fn backpressure(
    State(service): State<Service>,
    ids: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((id, vertex)) = ids?;
    let answer = call(move || service.backpressure(&id, &vertex)).await?;
    Ok(json(StatusCode::OK, &answer))
}

async fn checkpoints(
    State(service): State<Service>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let history = call(move || service.checkpoints(&id)).await?;
    Ok(json(StatusCode::OK, &history))
}

async fn checkpoint_config(
    State(service): State<Service>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let answer = call(move || service.checkpoint_config(&id)).await?;
    Ok(json(StatusCode::OK, &answer))
}

async fn checkpoint_details(
    State(service): State<Service>,
    ids: Result<Path<(String, u64)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((id, checkpoint)) = ids?;
    let answer = call(move || service.checkpoint(&id, checkpoint)).await?;
    Ok(json(StatusCode::OK, &answer))
}

async fn checkpoint_subtasks(
    State(service): State<Service>,
    ids: Result<Path<(String, u64, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((id, checkpoint, vertex)) = ids?;
    let answer = call(move || service.checkpoint_subtasks(&id, checkpoint, &vertex)).await?;
    Ok(json(StatusCode::OK, &answer))
}

async fn exceptions(
    State(service): State<Service>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let answer = call(move || service.exceptions(&id)).await?;
    Ok(json(StatusCode::OK, &answer))
}

async fn trigger(
    service: Service,
    id: Result<Path<String>, PathRejection>,
    request: SavepointTrigger,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let request_id = call(move || service.trigger_savepoint(&id, request)).await?;
    Ok(json(StatusCode::ACCEPTED, &TriggerResponse { request_id }))
}

/// Flink's `POST /jobs/{id}/savepoints`; `cancel-job: true` stops the job
/// with the savepoint.
async fn trigger_savepoint(
    State(service): State<Service>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: SavepointRequest =
        optional_body(body, r#"{"target-directory": "/dir", "cancel-job": false}"#)?;
    check_format(request.format_type.as_deref())?;
    let asked = SavepointTrigger {
        target_directory: request.target_directory,
        stop: request.cancel_job,
        request_id: request.trigger_id,
    };
    trigger(service, id, asked).await
}

/// Flink's `POST /jobs/{id}/stop`: stop-with-savepoint.
async fn stop_with_savepoint(
    State(service): State<Service>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: StopRequest =
        optional_body(body, r#"{"targetDirectory": "/dir", "drain": false}"#)?;
    check_format(request.format_type.as_deref())?;
    let asked = SavepointTrigger {
        target_directory: request.target_directory,
        stop: true,
        request_id: request.trigger_id,
    };
    trigger(service, id, asked).await
}

async fn savepoint_status(
    State(service): State<Service>,
    ids: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((id, request_id)) = ids?;
    let status = call(move || service.savepoint_status(&id, &request_id)).await?;
    Ok(json(StatusCode::OK, &SavepointStatusBody::from(&status)))
}

async fn cancel_job(service: Service, id: String) -> Result<Response, ApiError> {
    call(move || service.cancel(&id)).await?;
    Ok(json(StatusCode::ACCEPTED, &serde_json::Map::new()))
}

/// flowstate's `POST /jobs/{id}/cancel` (as `PATCH /jobs/{id}?mode=cancel`).
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

/// The access rules, before anything else looks at a request: the Host (and a
/// request target's authority) must name this server (403), the bearer token must
/// be presented when one is set (401), and a method that changes anything must
/// send `application/json` (415). Then the request must be answered within the
/// idle timeout (408). Every answer says `nosniff`.
async fn guard(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    let mut response = match admit(&access, &request) {
        Err(refusal) => refusal.into_response(),
        Ok(()) => match tokio::time::timeout(access.idle_timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request was not complete and answered within {:?}",
                    access.idle_timeout
                ),
            )
            .into_response(),
        },
    };
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn admit(access: &Access, request: &Request) -> Result<(), ApiError> {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|value| value.to_str().unwrap_or("\u{fffd}"));
    let Some(host) = host else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the request has no Host header",
        ));
    };
    let authority = request.uri().authority().map(|a| a.as_str());
    if let Some(refused) = [Some(host), authority]
        .into_iter()
        .flatten()
        .find(|value| !access.allows_host(value))
    {
        let quoted: String = refused.chars().take(MAX_QUOTED_HOST_CHARS).collect();
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("host '{quoted}' is not an address this HTTP API answers to"),
        ));
    }
    // The web UI's static files need no token (see `ui::is_public_asset`).
    let public = matches!(*request.method(), Method::GET | Method::HEAD)
        && crate::ui::is_public_asset(request.uri().path());
    if access.token.is_some() && !public {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let refusal = match presented {
            None => Some("this HTTP API needs a bearer token (Authorization: Bearer <token>)"),
            Some(token) if !access.token_matches(token) => Some("wrong bearer token"),
            Some(_) => None,
        };
        if let Some(message) = refusal {
            return Err(ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: message.to_owned(),
                authenticate: true,
            });
        }
    }
    let changes = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if changes && !is_json_content(request.headers().get(header::CONTENT_TYPE)) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "{} requests must have Content-Type: application/json",
                request.method()
            ),
        ));
    }
    Ok(())
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json_content(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
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
