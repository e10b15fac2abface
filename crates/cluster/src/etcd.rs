//! A small blocking client of etcd's v3 API through etcd's own JSON gateway
//! (`POST /v3/...`, documented by etcd as its HTTP API: keys and values in
//! base64, 64-bit integers as decimal strings, zero values left out): the
//! few calls leader election needs — lease grant, keep-alive and revoke, a
//! range read of one key, and transactions that create a key only where it
//! does not exist or write one only while a lease still holds another.
//!
//! Why not gRPC (`etcd-client`): that crate generates its stubs from
//! `.proto` files at build time and needs `protoc`, which the build machines
//! do not have. The gateway is served by every etcd 3.4+ on its client port.
//!
//! Owns: [`Etcd`] and [`EtcdError`]. Must not touch: what the keys mean
//! (the election's, [`crate::leader`]). Nothing read from the server is
//! trusted: an answer that does not parse is an error, never a panic.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

/// Why a call to etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd at {url}: {message}")]
    Call { url: String, message: String },
    #[error("etcd at {url} answered {path} with something unexpected: {message}")]
    Answer {
        url: String,
        path: &'static str,
        message: String,
    },
    #[error("etcd URL {0:?}: expected http://HOST:PORT")]
    Url(String),
}

/// One key's value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub value: String,
    /// The revision that created the key (a key deleted and created again
    /// has a new one).
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

/// Endpoints of one etcd cluster a client takes at most (the members of a
/// cluster: 3 or 5, seldom more).
pub const ENDPOINTS_MAX: usize = 16;

/// A client of an etcd cluster through one or more of its members'
/// endpoints: a call goes to the endpoint that answered last and, when that
/// one cannot be reached, to the next (each call is safe to repeat: keep-alive,
/// revoke and reads are idempotent, the writes are compare-and-set
/// transactions, and a lease granted twice expires unused).
pub struct Etcd {
    /// The endpoints, `http://HOST:PORT` each, as given.
    urls: Vec<String>,
    /// The endpoint that answered last.
    current: AtomicUsize,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd").field("urls", &self.urls).finish()
    }
}

/// An int64 of the gateway's JSON: a decimal string, a number, or left out
/// (zero).
fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Null => Some(0),
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn b64(text: &str) -> String {
    BASE64.encode(text.as_bytes())
}

impl Etcd {
    /// A client of the etcd at `url`: `http://HOST:PORT`, or several such
    /// endpoints of one cluster separated by commas. Each attempt of a call
    /// on one endpoint gives up after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, EtcdError> {
        let urls: Vec<String> = url
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .collect();
        if urls.len() > ENDPOINTS_MAX {
            return Err(EtcdError::Url(format!(
                "{url} ({} endpoints, at most {ENDPOINTS_MAX})",
                urls.len()
            )));
        }
        if let Some(bad) = urls
            .iter()
            .find(|u| !u.starts_with("http://") || u.len() <= "http://".len())
        {
            return Err(EtcdError::Url(bad.clone()));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .build();
        Ok(Self {
            urls,
            current: AtomicUsize::new(0),
            agent: ureq::Agent::new_with_config(config),
        })
    }

    /// The endpoint that answered last (the first one before any call).
    pub fn url(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// `path` with `body`, on the endpoint that answered last, then on the
    /// others in turn while none can be reached. An answer, even an error,
    /// is final.
    fn call(&self, path: &'static str, body: &Value) -> Result<Value, EtcdError> {
        let first = self.current.load(Ordering::Relaxed);
        let mut unreachable = Vec::new();
        for i in 0..self.urls.len() {
            let index = (first + i) % self.urls.len();
            let url = &self.urls[index];
            match self.agent.post(&format!("{url}{path}")).send_json(body) {
                Ok(response) => {
                    self.current.store(index, Ordering::Relaxed);
                    return self.answered(url, path, response);
                }
                Err(e) => unreachable.push(format!("{url}: {e}")),
            }
        }
        Err(EtcdError::Call {
            url: self.urls.join(","),
            message: format!("{path}: no endpoint answered ({})", unreachable.join("; ")),
        })
    }

    /// What an endpoint answered: its JSON, or the error it reported.
    fn answered(
        &self,
        url: &str,
        path: &'static str,
        mut response: ureq::http::Response<ureq::Body>,
    ) -> Result<Value, EtcdError> {
        let call_error = |message: String| EtcdError::Call {
            url: url.to_owned(),
            message: format!("{path}: {message}"),
        };
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| call_error(e.to_string()))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| call_error(format!("HTTP {status}, not JSON ({e}): {text:.200}")))?;
        // The gateway reports a gRPC error as {"error": ..., "code": N, "message": ...}.
        if !status.is_success() || value.get("error").is_some() {
            let message = value
                .get("message")
                .or_else(|| value.get("error"))
                .map(|m| m.to_string())
                .unwrap_or_else(|| text.clone());
            return Err(call_error(format!("HTTP {status}: {message}")));
        }
        Ok(value)
    }

    fn answer(&self, path: &'static str, message: impl Into<String>) -> EtcdError {
        EtcdError::Answer {
            url: self.url().to_owned(),
            path,
            message: message.into(),
        }
    }

    /// Grants a lease of `ttl_secs`: its id and the store's revision then.
    pub fn grant(&self, ttl_secs: i64) -> Result<(i64, i64), EtcdError> {
        const PATH: &str = "/v3/lease/grant";
        let answer = self.call(PATH, &json!({ "TTL": ttl_secs.to_string() }))?;
        let id = int(&answer["ID"]).filter(|id| *id != 0);
        let revision = int(&answer["header"]["revision"]);
        match (id, revision) {
            (Some(id), Some(revision)) => Ok((id, revision)),
            _ => Err(self.answer(PATH, format!("no lease id in {answer}"))),
        }
    }

    /// Keeps lease `id` alive: the seconds it has left (0: it expired or
    /// was revoked).
    pub fn keep_alive(&self, id: i64) -> Result<i64, EtcdError> {
        const PATH: &str = "/v3/lease/keepalive";
        // A streaming call: one request in the body gives one answer.
        let answer = self.call(PATH, &json!({ "ID": id.to_string() }))?;
        let result = answer.get("result").unwrap_or(&answer);
        int(&result["TTL"]).ok_or_else(|| self.answer(PATH, format!("no TTL in {answer}")))
    }

    /// Revokes lease `id`: the keys attached to it are deleted at once.
    pub fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", &json!({ "ID": id.to_string() }))
            .map(|_| ())
    }

    /// Key `key`'s value, if it exists.
    pub fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        const PATH: &str = "/v3/kv/range";
        let answer = self.call(PATH, &json!({ "key": b64(key) }))?;
        match answer.get("kvs").and_then(Value::as_array) {
            None => Ok(None),
            Some(kvs) => match kvs.first() {
                None => Ok(None),
                Some(kv) => self.key_value(PATH, kv).map(Some),
            },
        }
    }

    fn key_value(&self, path: &'static str, kv: &Value) -> Result<KeyValue, EtcdError> {
        let value = match kv.get("value").and_then(Value::as_str) {
            None => Vec::new(),
            Some(v) => BASE64
                .decode(v)
                .map_err(|e| self.answer(path, format!("a value not in base64: {e}")))?,
        };
        let value = String::from_utf8(value)
            .map_err(|e| self.answer(path, format!("a value not in UTF-8: {e}")))?;
        let field = |name: &str| {
            int(&kv[name]).ok_or_else(|| self.answer(path, format!("{name} in {kv} is no integer")))
        };
        Ok(KeyValue {
            value,
            create_revision: field("create_revision")?,
            mod_revision: field("mod_revision")?,
            lease: field("lease")?,
        })
    }

    /// Creates `key` with `value` (attached to `lease`, unless 0) if no such
    /// key exists: `Ok(None)` when created, else the existing key.
    pub fn create(
        &self,
        key: &str,
        value: &str,
        lease: i64,
    ) -> Result<Option<KeyValue>, EtcdError> {
        const PATH: &str = "/v3/kv/txn";
        let mut put = json!({ "key": b64(key), "value": b64(value) });
        if lease != 0 {
            put["lease"] = json!(lease.to_string());
        }
        let answer = self.call(
            PATH,
            &json!({
                "compare": [{
                    "key": b64(key),
                    "target": "CREATE",
                    "result": "EQUAL",
                    "create_revision": "0",
                }],
                "success": [{ "request_put": put }],
                "failure": [{ "request_range": { "key": b64(key) } }],
            }),
        )?;
        if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
            return Ok(None);
        }
        let kv = answer["responses"][0]["response_range"]["kvs"][0].clone();
        if kv.is_null() {
            // Deleted between the compare and now: a retry decides.
            return Err(self.answer(PATH, "the key was neither created nor found"));
        }
        self.key_value(PATH, &kv).map(Some)
    }

    /// Writes `key` = `value` (attached to no lease) only while `guard` is
    /// attached to `lease`: whether it was written.
    pub fn put_guarded(
        &self,
        guard: &str,
        lease: i64,
        key: &str,
        value: &str,
    ) -> Result<bool, EtcdError> {
        let answer = self.call(
            "/v3/kv/txn",
            &json!({
                "compare": [{
                    "key": b64(guard),
                    "target": "LEASE",
                    "result": "EQUAL",
                    "lease": lease.to_string(),
                }],
                "success": [{ "request_put": { "key": b64(key), "value": b64(value) } }],
            }),
        )?;
        Ok(answer.get("succeeded").and_then(Value::as_bool) == Some(true))
    }

    /// Deletes `key` (tests).
    pub fn delete(&self, key: &str) -> Result<(), EtcdError> {
        self.call("/v3/kv/deleterange", &json!({ "key": b64(key) }))
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_of_the_gateway() {
        assert_eq!(int(&json!("7587869")), Some(7_587_869));
        assert_eq!(int(&json!(12)), Some(12));
        assert_eq!(int(&Value::Null), Some(0));
        assert_eq!(int(&json!("x")), None);
        assert_eq!(int(&json!([1])), None);
    }

    #[test]
    fn urls() {
        assert!(Etcd::new("http://127.0.0.1:2379/", Duration::from_secs(1)).is_ok());
        assert!(matches!(
            Etcd::new("127.0.0.1:2379", Duration::from_secs(1)),
            Err(EtcdError::Url(_))
        ));
        let cluster = Etcd::new(
            "http://10.0.0.1:2379, http://10.0.0.2:2379/,http://10.0.0.3:2379",
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(cluster.urls.len(), 3);
        assert_eq!(cluster.url(), "http://10.0.0.1:2379");
        assert!(matches!(
            Etcd::new("http://10.0.0.1:2379,10.0.0.2:2379", Duration::from_secs(1)),
            Err(EtcdError::Url(u)) if u == "10.0.0.2:2379"
        ));
        let many = vec!["http://h:1"; ENDPOINTS_MAX + 1].join(",");
        assert!(matches!(
            Etcd::new(&many, Duration::from_secs(1)),
            Err(EtcdError::Url(_))
        ));
    }
}
