//! The HTTP API of a running flowstate job, shaped like Flink's REST API where it
//! fits, and its blocking client.
//!
//! Owns the wire format (`model`), the server (`server`) and the client (`client`).
//! **Architecture Invariant:** it knows nothing of the runtime: the process that runs
//! jobs implements [`JobService`], and this crate only translates between HTTP and
//! that trait. It must never depend on the runtime, checkpoint or state crates.
//!
//! Routes (JSON in and out; every error is `{"error": "...", "status": N}`):
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /jobs` | `{"jobs": [JobSummary]}` |
//! | `GET /jobs/{id}` | [`JobDetails`] |
//! | `GET /jobs/{id}/checkpoints` | [`CheckpointHistory`] |
//! | `POST /jobs/{id}/savepoints` (optional [`SavepointRequest`]) | 202 [`TriggerResponse`] |
//! | `GET /jobs/{id}/savepoints/{request_id}` | [`SavepointStatus`] |
//! | `POST /jobs/{id}/stop` (optional [`SavepointRequest`]) | 202 [`TriggerResponse`] |
//! | `POST /jobs/{id}/cancel`, `PATCH /jobs/{id}?mode=cancel` | 202 `{}` |
//! | `GET /metrics` | every job's metrics, Prometheus text format 0.0.4 (`text/plain; version=0.0.4`) |
//!
//! Errors: 400 bad request or body, 401 missing or wrong bearer token, 403 a Host
//! that is not this server's or a savepoint target that is not allowed, 404
//! unknown job/request/route (naming no job), 405 wrong method, 408 a request not
//! complete within the idle timeout, 409 conflict (e.g. a savepoint in flight),
//! 413 body over [`MAX_BODY_BYTES`], 415 a POST/PUT/PATCH/DELETE that is not
//! `application/json`, 503 unavailable.
//!
//! Access ([`ServeOptions`]): the Host header must name the bound address (on
//! loopback also `localhost`, `127.0.0.1`, `[::1]`, with the port) or an allowed
//! host; an optional bearer token, required to serve beyond loopback; at most
//! [`DEFAULT_MAX_CONNECTIONS`] connections, each closed after
//! [`DEFAULT_IDLE_TIMEOUT`] without a request.

pub mod client;
mod metrics;
pub mod model;
pub mod server;

pub use client::{ClientError, RestClient};
pub use model::*;
pub use server::{
    Access, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, MAX_BODY_BYTES, RestError, RestServer,
    ServeOptions, check_exposure, router, serve, serve_with,
};
