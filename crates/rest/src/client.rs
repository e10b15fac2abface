//! The blocking client of the HTTP API, used by the CLI's `list`, `savepoint`, `stop`
//! and `cancel`.
//!
//! Owns URLs, timeouts, the bearer token and the translation of HTTP outcomes into
//! [`ClientError`]. It
//! speaks only the documents of `model`; it must not interpret job states beyond
//! returning them (polling and waiting are the caller's).

use std::time::Duration;

use ureq::http::header::AUTHORIZATION;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::{
    CheckpointingStatistics, ErrorBody, JobDetails, JobExceptions, JobOverview, MultipleJobs,
    SavepointRequest, SavepointStatus, SavepointStatusBody, StopRequest, TriggerResponse,
};

/// The port assumed when an address names none.
pub const DEFAULT_PORT: u16 = 8081;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address given is not `host:port` or `http://host:port`.
    #[error("invalid HTTP API address '{addr}': {reason}")]
    InvalidAddress { addr: String, reason: String },
    /// No connection could be made (or it broke before an answer came).
    #[error(
        "cannot reach the flowstate HTTP API at {addr}: {reason} (is the job running with --rest {addr}?)"
    )]
    Unreachable { addr: String, reason: String },
    /// No complete answer within the call's timeout.
    #[error("the flowstate HTTP API at {addr} did not answer within {seconds:.1}s")]
    Timeout { addr: String, seconds: f64 },
    /// The server answered with an error status; `message` is its `errors`, joined.
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    /// The server answered something that is not the expected document.
    #[error("unexpected answer from the flowstate HTTP API at {addr}: {reason}")]
    Protocol { addr: String, reason: String },
}

impl ClientError {
    /// The HTTP status of an error answer from the server.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the server could not be talked to at all (not running, gone, silent).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. } | ClientError::Timeout { .. }
        )
    }
}

/// A blocking client of one flowstate HTTP API. Every call is bounded by the timeout.
pub struct RestClient {
    /// As the user gave it, for messages.
    addr: String,
    /// `http://host:port`.
    base: String,
    timeout: Duration,
    agent: ureq::Agent,
    /// Sent as `Authorization: Bearer <token>` with every call.
    token: Option<String>,
}

impl std::fmt::Debug for RestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestClient")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RestClient {
    /// Timeout of each call made by a client from [`RestClient::new`].
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// A client of the API at `addr`: `host:port`, `http://host:port` (a trailing `/`
    /// is fine), or a bare host (port 8081).
    pub fn new(addr: &str) -> Result<Self, ClientError> {
        Self::with_timeout(addr, Self::DEFAULT_TIMEOUT)
    }

    /// Like [`RestClient::new`], with `timeout` bounding each call (connect included).
    pub fn with_timeout(addr: &str, timeout: Duration) -> Result<Self, ClientError> {
        let base = base_url(addr)?;
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // The API is on this machine or a LAN: an HTTP_PROXY meant for the
            // internet must not capture it.
            .proxy(None)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(5))))
            // A fresh connection per call: a kept-alive one the server has
            // just closed fails the next call with "peer disconnected" (seen in
            // CI: `cancel` after an error answer), and a non-idempotent call
            // cannot be retried blindly. The client makes a few calls, on
            // loopback or a LAN: the connects cost nothing that matters.
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .build();
        Ok(RestClient {
            addr: addr.trim().to_owned(),
            base,
            timeout,
            agent: ureq::Agent::new_with_config(config),
            token: None,
        })
    }

    /// Sends `token` as a bearer token with every call (for a server started with
    /// one).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// The address as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `GET /jobs/overview`.
    pub fn list(&self) -> Result<Vec<JobOverview>, ClientError> {
        let list: MultipleJobs = self.get("/jobs/overview")?;
        Ok(list.jobs)
    }

    /// `GET /jobs/{id}`.
    pub fn details(&self, job: &str) -> Result<JobDetails, ClientError> {
        self.get(&format!("/jobs/{}", segment(job)))
    }

    /// `GET /jobs/{id}/checkpoints`.
    pub fn checkpoints(&self, job: &str) -> Result<CheckpointingStatistics, ClientError> {
        self.get(&format!("/jobs/{}/checkpoints", segment(job)))
    }

    /// `GET /jobs/{id}/exceptions`.
    pub fn exceptions(&self, job: &str) -> Result<JobExceptions, ClientError> {
        self.get(&format!("/jobs/{}/exceptions", segment(job)))
    }

    /// `POST /jobs/{id}/savepoints`: starts a savepoint; returns its request id.
    pub fn trigger_savepoint(
        &self,
        job: &str,
        target_directory: Option<&str>,
    ) -> Result<String, ClientError> {
        let body = SavepointRequest {
            target_directory: target_directory.map(str::to_owned),
            ..SavepointRequest::default()
        };
        let answer: TriggerResponse =
            self.post(&format!("/jobs/{}/savepoints", segment(job)), &body)?;
        Ok(answer.request_id)
    }

    /// `POST /jobs/{id}/stop`: stop-with-savepoint; returns the savepoint's request id
    /// (its status is at [`RestClient::savepoint_status`]).
    pub fn stop_with_savepoint(
        &self,
        job: &str,
        target_directory: Option<&str>,
    ) -> Result<String, ClientError> {
        let body = StopRequest {
            target_directory: target_directory.map(str::to_owned),
            ..StopRequest::default()
        };
        let answer: TriggerResponse = self.post(&format!("/jobs/{}/stop", segment(job)), &body)?;
        Ok(answer.request_id)
    }

    /// `GET /jobs/{id}/savepoints/{request_id}`.
    pub fn savepoint_status(
        &self,
        job: &str,
        request_id: &str,
    ) -> Result<SavepointStatus, ClientError> {
        let body: SavepointStatusBody = self.get(&format!(
            "/jobs/{}/savepoints/{}",
            segment(job),
            segment(request_id)
        ))?;
        body.status().ok_or_else(|| ClientError::Protocol {
            addr: self.addr.clone(),
            reason: format!("savepoint status '{}' without a result", body.status.id),
        })
    }

    /// `PATCH /jobs/{id}?mode=cancel`.
    pub fn cancel(&self, job: &str) -> Result<(), ClientError> {
        let url = format!("{}/jobs/{}?mode=cancel", self.base, segment(job));
        let mut request = self.agent.patch(&url);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let _: serde_json::Value = self.read(request.send_json(serde_json::Map::new()))?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.get(&url);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        self.read(request.call())
    }

    fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.post(&url);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        // send_json says `Content-Type: application/json`, which the server requires.
        self.read(request.send_json(body))
    }

    fn read<T: DeserializeOwned>(
        &self,
        answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let mut response = answer.map_err(|error| self.transport_error(error))?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|error| self.transport_error(error))?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|error| ClientError::Protocol {
                addr: self.addr.clone(),
                reason: format!("HTTP {}: {error}", status.as_u16()),
            });
        }
        let message = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) if !body.errors.is_empty() => body.errors.join("; "),
            _ if text.trim().is_empty() => status
                .canonical_reason()
                .unwrap_or("request failed")
                .to_owned(),
            _ => text.trim().chars().take(200).collect(),
        };
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }

    fn transport_error(&self, error: ureq::Error) -> ClientError {
        let addr = self.addr.clone();
        match error {
            ureq::Error::Timeout(_) => ClientError::Timeout {
                addr,
                seconds: self.timeout.as_secs_f64(),
            },
            ureq::Error::Io(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                ClientError::Timeout {
                    addr,
                    seconds: self.timeout.as_secs_f64(),
                }
            }
            ureq::Error::Io(error) => ClientError::Unreachable {
                addr,
                reason: error.to_string(),
            },
            ureq::Error::HostNotFound => ClientError::Unreachable {
                addr,
                reason: "host not found".to_owned(),
            },
            ureq::Error::ConnectionFailed => ClientError::Unreachable {
                addr,
                reason: "connection failed".to_owned(),
            },
            ureq::Error::BadUri(reason) => ClientError::InvalidAddress { addr, reason },
            other => ClientError::Protocol {
                addr,
                reason: other.to_string(),
            },
        }
    }
}

/// `http://host:port` from what a user may type.
fn base_url(addr: &str) -> Result<String, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidAddress {
        addr: addr.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = addr.trim();
    if trimmed.starts_with("https://") {
        return Err(invalid("the HTTP API has no TLS: use http://host:port"));
    }
    let authority = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.is_empty() {
        return Err(invalid("expected host:port"));
    }
    if authority.contains("://") || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(invalid(
            "expected host:port or http://host:port, without a path",
        ));
    }
    // `[::1]:8081`, `[::1]`, `host:8081`, `host`.
    let has_port = match authority.rfind(']') {
        Some(close) => authority[close + 1..].starts_with(':'),
        None => authority.contains(':'),
    };
    if has_port {
        let (_, port) = authority.rsplit_once(':').unwrap_or((authority, ""));
        if port.parse::<u16>().is_err() {
            return Err(invalid("the port is not a number from 0 to 65535"));
        }
        Ok(format!("http://{authority}"))
    } else {
        Ok(format!("http://{authority}:{DEFAULT_PORT}"))
    }
}

/// `value` as one URL path segment: everything but unreserved characters
/// percent-encoded.
fn segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised() {
        assert_eq!(base_url("127.0.0.1:8081").unwrap(), "http://127.0.0.1:8081");
        assert_eq!(
            base_url("http://localhost:9/").unwrap(),
            "http://localhost:9"
        );
        assert_eq!(base_url("localhost").unwrap(), "http://localhost:8081");
        assert_eq!(base_url("[::1]:80").unwrap(), "http://[::1]:80");
        assert_eq!(base_url("[::1]").unwrap(), "http://[::1]:8081");
        for bad in [
            "",
            "https://h:1",
            "h:1/jobs",
            "h:port",
            "h:70000",
            "ftp://h:1",
        ] {
            assert!(
                matches!(base_url(bad), Err(ClientError::InvalidAddress { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("ab-1_2.~"), "ab-1_2.~");
        assert_eq!(segment("a/b c?"), "a%2Fb%20c%3F");
        assert_eq!(segment(".."), "..");
    }
}
