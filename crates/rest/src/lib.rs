//! The HTTP API of a running flowstate job, Flink's REST API, and its blocking
//! client.
//!
//! Owns the wire format (`model`), the server (`server`) and the client (`client`).
//! **Architecture Invariant:** it knows nothing of the runtime: the process that runs
//! jobs implements [`JobService`], and this crate only translates between HTTP and
//! that trait. It must never depend on the runtime, checkpoint or state crates.
//!
//! Apache Flink's REST API (2.x), so that tools written for it (Flink's own
//! CLI, dashboards, operators) can drive a flowstate job. Every route is also
//! served under `/v1` (Flink's client calls `/v1/...`). JSON in and out; every
//! error is Flink's `{"errors": ["..."]}`. Durations and timestamps are integer
//! ms, sizes bytes; job, vertex and request ids are 32 hex digits.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /config` | [`DashboardConfig`] |
//! | `GET /overview` | [`ClusterOverview`] |
//! | `GET /jobs` | [`JobIdsWithStatus`] |
//! | `GET /jobs/overview` | [`MultipleJobs`] (Flink's `MultipleJobsDetails`) |
//! | `GET /jobs/{id}` | [`JobDetails`]: vertices with metrics, plan |
//! | `GET /jobs/{id}/vertices/{vertex}/backpressure` | [`BackPressure`] |
//! | `GET /jobs/{id}/checkpoints` | [`CheckpointingStatistics`] (history most recent first) |
//! | `GET /jobs/{id}/checkpoints/config` | [`CheckpointConfig`] |
//! | `GET /jobs/{id}/checkpoints/details/{checkpoint}` | [`CheckpointStatistics`] with per-vertex `tasks` |
//! | `GET /jobs/{id}/checkpoints/details/{checkpoint}/subtasks/{vertex}` | [`TaskCheckpointDetails`] |
//! | `GET /jobs/{id}/exceptions` | [`JobExceptions`]: restarts and their causes |
//! | `POST /jobs/{id}/savepoints` (optional [`SavepointRequest`]: `target-directory`, `cancel-job`, `formatType`, `triggerId`) | 202 [`TriggerResponse`] (`request-id`) |
//! | `GET /jobs/{id}/savepoints/{request_id}` | [`SavepointStatusBody`] |
//! | `POST /jobs/{id}/stop` (optional [`StopRequest`]: `targetDirectory`, `drain`) | 202 [`TriggerResponse`] |
//! | `PATCH /jobs/{id}?mode=cancel`, `POST /jobs/{id}/cancel` | 202 `{}` |
//! | `GET /`, `GET /assets/{name}` | the web UI (`ui`): a page and its files, embedded |
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
//! [`DEFAULT_IDLE_TIMEOUT`] without a request. The web UI's static files are the
//! one thing served without the token (the Host check still applies): a browser
//! cannot attach a token to a page load, so the page asks for it and sends it with
//! every API call it makes.

pub mod client;
mod metrics;
pub mod model;
pub mod server;
mod ui;

pub use client::{ClientError, RestClient};
pub use model::*;
pub use server::{
    Access, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, MAX_BODY_BYTES, RestError, RestServer,
    ServeOptions, check_exposure, router, serve, serve_with,
};
