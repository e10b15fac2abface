//! The librdkafka settings every Kafka client of this crate starts from: the
//! bootstrap servers, bounded network timeouts (an unreachable broker must give
//! an error, not a hang), and the user's overrides. Owns no client and does no
//! I/O.

use std::time::Duration;

use rdkafka::ClientConfig;

/// Default bound on one metadata/admin request (and librdkafka's socket timeout).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection settings of a Kafka client.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// Bound on metadata, watermark and admin requests and librdkafka's
    /// `socket.timeout.ms`.
    pub request_timeout: Duration,
    /// Extra librdkafka properties, applied last (e.g. `security.protocol`,
    /// `fetch.max.bytes`).
    pub properties: Vec<(String, String)>,
}

impl ClientSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            properties: Vec::new(),
        }
    }

    /// The base configuration: bootstrap servers and timeouts; the caller adds
    /// its client-specific properties, then [`ClientSettings::apply_overrides`].
    pub(crate) fn base_config(&self) -> ClientConfig {
        let timeout_ms = self.request_timeout.as_millis().max(10).to_string();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("socket.timeout.ms", &timeout_ms)
            // A broker that never answers is given up on (and reported) quickly.
            .set(
                "socket.connection.setup.timeout.ms",
                self.request_timeout.as_millis().max(1000).to_string(),
            )
            .set("client.id", "flowstate")
            .set("log_level", "4");
        config
    }

    pub(crate) fn apply_overrides(&self, config: &mut ClientConfig) {
        for (key, value) in &self.properties {
            config.set(key, value);
        }
    }
}

impl From<&str> for ClientSettings {
    fn from(brokers: &str) -> Self {
        Self::new(brokers)
    }
}

impl From<String> for ClientSettings {
    fn from(brokers: String) -> Self {
        Self::new(brokers)
    }
}

impl From<&ClientSettings> for ClientSettings {
    fn from(settings: &ClientSettings) -> Self {
        settings.clone()
    }
}
