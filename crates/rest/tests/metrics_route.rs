//! `GET /metrics` over a real socket: the service's Prometheus text goes out
//! as it is, with the text format's content type, behind the same access
//! rules as every route (a foreign Host is refused).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use flowstate_rest::{
    CheckpointingStatistics, JobDetails, JobOverview, JobService, SavepointStatus,
    SavepointTrigger, ServiceError, serve,
};

struct Metrics;

const TEXT: &str = "# HELP flowstate_x_total A counter.\n# TYPE flowstate_x_total counter\nflowstate_x_total{job=\"j\"} 7\n";

impl JobService for Metrics {
    fn jobs(&self) -> Vec<JobOverview> {
        Vec::new()
    }
    fn details(&self, _: &str) -> Result<JobDetails, ServiceError> {
        Err(ServiceError::UnknownJob)
    }
    fn checkpoints(&self, _: &str) -> Result<CheckpointingStatistics, ServiceError> {
        Err(ServiceError::UnknownJob)
    }
    fn trigger_savepoint(&self, _: &str, _: SavepointTrigger) -> Result<String, ServiceError> {
        Err(ServiceError::UnknownJob)
    }
    fn savepoint_status(&self, _: &str, _: &str) -> Result<SavepointStatus, ServiceError> {
        Err(ServiceError::UnknownJob)
    }
    fn cancel(&self, _: &str) -> Result<(), ServiceError> {
        Err(ServiceError::UnknownJob)
    }
    fn prometheus_text(&self) -> String {
        TEXT.to_owned()
    }
}

/// One request, the whole answer as text.
fn get(addr: SocketAddr, path: &str, host: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn metrics_are_the_services_text_with_the_prometheus_content_type() {
    let server = serve("127.0.0.1:0", Arc::new(Metrics)).unwrap();
    let addr = server.local_addr();
    let answer = get(addr, "/metrics", &addr.to_string());
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert_eq!(body, TEXT);

    let refused = get(addr, "/metrics", "evil.example:80");
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    server.shutdown();
}
