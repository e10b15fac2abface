//! The HTTP API over a real socket, against an in-memory fake of the job service that
//! enforces what the real one will (one savepoint in flight per job, unknown jobs).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowstate_rest::{
    CheckpointCounts, CheckpointStatistics, CheckpointSummary, CheckpointingStatistics,
    ClientError, IoMetrics, JobDetails, JobOverview, JobService, JobState, LatestCheckpoints, Plan,
    RestClient, RestError, RestServer, SavepointStatus, SavepointTrigger, ServeOptions,
    ServiceError, VertexDetails, check_exposure, checkpoint_status, serve, serve_with, task_counts,
    vertex_id,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// The fake service.

#[derive(Default)]
struct Fake {
    inner: Mutex<FakeState>,
}

/// A job of the fake.
#[derive(Clone, Debug)]
struct JobSummary {
    id: String,
    name: String,
    state: JobState,
}

#[derive(Default)]
struct FakeState {
    jobs: Vec<JobSummary>,
    /// request id -> (job, status, stop)
    savepoints: HashMap<String, (String, SavepointStatus, bool)>,
    next_request: u64,
    /// (job, target_directory, stop) of every accepted trigger.
    triggers: Vec<(String, Option<String>, bool)>,
}

const JOB: &str = "a1b2c3";
const OTHER: &str = "ffff01";
/// A job whose service answers 503 to triggers (e.g. restarting).
const RESTARTING: &str = "dead99";

impl Fake {
    fn new() -> Arc<Fake> {
        let fake = Fake::default();
        {
            let mut state = fake.inner.lock().unwrap();
            state.jobs = vec![
                JobSummary {
                    id: JOB.into(),
                    name: "keyed-count".into(),
                    state: JobState::Running,
                },
                JobSummary {
                    id: OTHER.into(),
                    name: "wordcount".into(),
                    state: JobState::Running,
                },
                JobSummary {
                    id: RESTARTING.into(),
                    name: "flaky".into(),
                    state: JobState::Restarting,
                },
            ];
        }
        Arc::new(fake)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.inner.lock().unwrap()
    }

    /// Completes savepoint `request_id` at `location` (a stop also finishes the job).
    fn complete(&self, request_id: &str, location: &str) {
        let mut state = self.state();
        let (job, status, stop) = state
            .savepoints
            .get_mut(request_id)
            .expect("no such request");
        *status = SavepointStatus::Completed {
            location: location.into(),
        };
        let (job, stop) = (job.clone(), *stop);
        if stop {
            state.set_state(&job, JobState::Finished);
        }
    }

    fn fail(&self, request_id: &str, failure: &str) {
        let mut state = self.state();
        let (_, status, _) = state
            .savepoints
            .get_mut(request_id)
            .expect("no such request");
        *status = SavepointStatus::Failed {
            reason: failure.into(),
        };
    }

    fn triggers(&self) -> Vec<(String, Option<String>, bool)> {
        self.state().triggers.clone()
    }
}

impl FakeState {
    fn job(&self, job: &str) -> Result<&JobSummary, ServiceError> {
        self.jobs
            .iter()
            .find(|j| j.id == job)
            .ok_or(ServiceError::UnknownJob)
    }

    fn set_state(&mut self, job: &str, new: JobState) {
        if let Some(j) = self.jobs.iter_mut().find(|j| j.id == job) {
            j.state = new;
        }
    }
}

fn overview_of(summary: &JobSummary) -> JobOverview {
    JobOverview {
        jid: summary.id.clone(),
        name: summary.name.clone(),
        job_type: "STREAMING".into(),
        scheduler_type: "Default".into(),
        start_time: 1_700_000_000_000,
        end_time: -1,
        duration: 5_000,
        last_modification: 1_700_000_000_000,
        state: summary.state,
        tasks: task_counts("RUNNING", 4, true),
        pending_operators: 0,
    }
}

fn details_of(summary: &JobSummary) -> JobDetails {
    let vertex = |uid: &str, name: &str, records: u64| VertexDetails {
        id: vertex_id(uid),
        name: name.into(),
        max_parallelism: 128,
        parallelism: 2,
        status: "RUNNING".into(),
        start_time: 1_700_000_000_000,
        end_time: -1,
        duration: 5_000,
        tasks: task_counts("RUNNING", 2, false),
        metrics: IoMetrics {
            write_records: records,
            write_records_complete: true,
            ..IoMetrics::default()
        },
    };
    JobDetails {
        jid: summary.id.clone(),
        name: summary.name.clone(),
        is_stoppable: true,
        state: summary.state,
        job_type: "STREAMING".into(),
        scheduler_type: "Default".into(),
        start_time: 1_700_000_000_000,
        end_time: -1,
        duration: 5_000,
        max_parallelism: 128,
        now: 1_700_000_005_000,
        timestamps: Default::default(),
        vertices: vec![
            vertex("source", "Source: generator", 1000),
            vertex("count", "count", 0),
        ],
        status_counts: Default::default(),
        plan: Plan {
            jid: summary.id.clone(),
            name: summary.name.clone(),
            kind: "STREAMING".into(),
            nodes: vec![],
        },
        pending_operators: 0,
    }
}

fn history() -> CheckpointingStatistics {
    let entry = CheckpointStatistics {
        class_name: ".CompletedCheckpointStatistics".into(),
        id: 4,
        status: checkpoint_status::COMPLETED.into(),
        is_savepoint: false,
        savepoint_format: None,
        trigger_timestamp: 1_700_000_001_000,
        latest_ack_timestamp: 1_700_000_001_120,
        checkpointed_size: 4096,
        state_size: 8192,
        end_to_end_duration: 120,
        alignment_buffered: 0,
        processed_data: 0,
        persisted_data: 0,
        num_subtasks: 2,
        num_acknowledged_subtasks: 2,
        checkpoint_type: "CHECKPOINT".into(),
        tasks: Default::default(),
        external_path: Some("file:///ck/a1b2c3/chk-4/".into()),
        discarded: Some(false),
        failure_timestamp: None,
        failure_message: None,
    };
    let in_flight = CheckpointStatistics {
        class_name: ".PendingCheckpointStatistics".into(),
        id: 5,
        status: checkpoint_status::IN_PROGRESS.into(),
        num_acknowledged_subtasks: 0,
        external_path: None,
        discarded: None,
        ..entry.clone()
    };
    CheckpointingStatistics {
        counts: CheckpointCounts {
            restored: 0,
            total: 2,
            in_progress: 1,
            completed: 1,
            failed: 0,
        },
        summary: CheckpointSummary::default(),
        latest: LatestCheckpoints {
            completed: Some(entry.clone()),
            ..LatestCheckpoints::default()
        },
        history: vec![in_flight, entry],
    }
}

impl JobService for Fake {
    fn jobs(&self) -> Vec<JobOverview> {
        self.state().jobs.iter().map(overview_of).collect()
    }

    fn details(&self, job: &str) -> Result<JobDetails, ServiceError> {
        if job == "panic" {
            panic!("the fake service panics on purpose");
        }
        Ok(details_of(self.state().job(job)?))
    }

    fn checkpoints(&self, job: &str) -> Result<CheckpointingStatistics, ServiceError> {
        self.state().job(job)?;
        Ok(history())
    }

    fn trigger_savepoint(
        &self,
        job: &str,
        request: SavepointTrigger,
    ) -> Result<String, ServiceError> {
        let (target_directory, stop) = (request.target_directory, request.stop);
        let mut state = self.state();
        let summary = state.job(job)?;
        if summary.state == JobState::Restarting {
            return Err(ServiceError::Unavailable(format!(
                "job '{job}' is restarting; try again"
            )));
        }
        if summary.state != JobState::Running {
            return Err(ServiceError::Conflict(format!(
                "job '{job}' is {}",
                summary.state
            )));
        }
        if target_directory.as_deref() == Some("") {
            return Err(ServiceError::BadRequest("target_directory is empty".into()));
        }
        let in_flight = state
            .savepoints
            .values()
            .any(|(j, s, _)| j == job && *s == SavepointStatus::InProgress);
        if in_flight {
            return Err(ServiceError::Conflict(format!(
                "a savepoint of job '{job}' is already in progress"
            )));
        }
        state.next_request += 1;
        let request_id = request
            .request_id
            .unwrap_or_else(|| format!("req-{}", state.next_request));
        state.savepoints.insert(
            request_id.clone(),
            (job.to_owned(), SavepointStatus::InProgress, stop),
        );
        state
            .triggers
            .push((job.to_owned(), target_directory, stop));
        Ok(request_id)
    }

    fn savepoint_status(
        &self,
        job: &str,
        request_id: &str,
    ) -> Result<SavepointStatus, ServiceError> {
        let state = self.state();
        state.job(job)?;
        match state.savepoints.get(request_id) {
            Some((j, status, _)) if j == job => Ok(status.clone()),
            _ => Err(ServiceError::UnknownSavepointRequest),
        }
    }

    fn cancel(&self, job: &str) -> Result<(), ServiceError> {
        let mut state = self.state();
        let current = state.job(job)?.state;
        if current.is_terminal() {
            return Err(ServiceError::Conflict(format!(
                "job '{job}' is already {current}"
            )));
        }
        state.set_state(job, JobState::Canceled);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Helpers.

fn start() -> (Arc<Fake>, RestServer, RestClient) {
    let fake = Fake::new();
    let server = serve("127.0.0.1:0", fake.clone()).expect("server starts");
    let client = RestClient::new(&server.local_addr().to_string()).expect("client");
    (fake, server, client)
}

/// One raw HTTP/1.1 exchange (`Connection: close`): status, lower-cased head, body.
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}\n{}", self.body, self.head))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            (n.trim() == name).then_some(v.trim())
        })
    }

    /// Asserts the JSON error shape with `status` and returns the message.
    fn error(&self, status: u16) -> String {
        assert_eq!(
            self.status, status,
            "head: {}\nbody: {}",
            self.head, self.body
        );
        assert!(
            self.header("content-type")
                .is_some_and(|v| v.starts_with("application/json")),
            "error answer not JSON: {}",
            self.head
        );
        let body = self.json();
        let object = body.as_object().expect("error body is an object");
        // Flink's ErrorResponseBody: `{"errors": ["..."]}` and nothing else.
        assert_eq!(object.len(), 1, "error body has exactly errors: {body}");
        let errors = body["errors"].as_array().expect("errors is an array");
        assert_eq!(errors.len(), 1, "{body}");
        let message = errors[0].as_str().expect("an error is a string").to_owned();
        assert!(!message.is_empty(), "empty error message");
        message
    }
}

fn raw(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The server may answer (and close) before reading a body it rejects.
    let _ = stream.write_all(request);
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if !bytes.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                break;
            }
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
    let text = String::from_utf8(bytes).expect("answer is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let head = head.to_ascii_lowercase();
    assert!(
        !head.contains("transfer-encoding: chunked"),
        "unexpected chunked answer: {head}"
    );
    Raw {
        status,
        head,
        body: body.to_owned(),
    }
}

/// A request as a well-behaved client sends it: the server's address as Host, and
/// `Content-Type: application/json` on everything but GET.
fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Raw {
    let content_type = if method == "GET" {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    request_with(
        addr,
        method,
        path,
        &format!("Host: {addr}\r\n{content_type}"),
        body,
    )
}

/// A request with `headers` (each ending in CRLF) as the only headers besides
/// `Connection` and `Content-Length`.
fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: Option<&str>,
) -> Raw {
    let mut text = format!("{method} {path} HTTP/1.1\r\n{headers}Connection: close\r\n");
    if let Some(body) = body {
        text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    } else {
        text.push_str("\r\n");
    }
    raw(addr, text.as_bytes())
}

fn get(addr: SocketAddr, path: &str) -> Raw {
    request(addr, "GET", path, None)
}

/// The server still serves normal requests.
fn assert_alive(addr: SocketAddr) {
    let answer = get(addr, "/jobs");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["jobs"].as_array().map(Vec::len), Some(3));
}

// ---------------------------------------------------------------------------
// Happy paths and shapes.

#[test]
fn list_answers_the_jobs_in_json() {
    let (_fake, server, client) = start();
    let answer = get(server.local_addr(), "/jobs");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(
        answer.json(),
        json!({"jobs": [
            {"id": JOB, "status": "RUNNING"},
            {"id": OTHER, "status": "RUNNING"},
            {"id": RESTARTING, "status": "RESTARTING"},
        ]})
    );
    // Flink's MultipleJobsDetails, every ExecutionState key and `total`.
    let overview = get(server.local_addr(), "/v1/jobs/overview").json();
    assert_eq!(
        overview["jobs"][0],
        json!({
            "jid": JOB, "name": "keyed-count", "jobType": "STREAMING",
            "schedulerType": "Default", "start-time": 1_700_000_000_000u64,
            "end-time": -1, "duration": 5000, "last-modification": 1_700_000_000_000u64,
            "state": "RUNNING", "pending-operators": 0,
            "tasks": {"total": 4, "created": 0, "scheduled": 0, "deploying": 0,
                      "running": 4, "finished": 0, "canceling": 0, "canceled": 0,
                      "failed": 0, "reconciling": 0, "initializing": 0},
        })
    );
    let jobs = client.list().unwrap();
    assert_eq!(jobs.len(), 3);
    assert_eq!(jobs[0].state, JobState::Running);
    assert_eq!(jobs[2].jid, RESTARTING);
}

#[test]
fn overview_and_config_are_flinks() {
    let (_fake, server, _client) = start();
    let overview = get(server.local_addr(), "/overview").json();
    assert_eq!(overview["taskmanagers"], 1);
    assert_eq!(overview["slots-total"], 12);
    assert_eq!(overview["jobs-running"], 3);
    assert_eq!(overview["jobs-cancelled"], 0);
    assert_eq!(overview["flink-version"], env!("CARGO_PKG_VERSION"));
    let config = get(server.local_addr(), "/v1/config").json();
    assert_eq!(config["refresh-interval"], 3000);
    assert_eq!(config["timezone-name"], "UTC");
    assert_eq!(
        config["features"],
        json!({"web-submit": false, "web-cancel": true, "web-rescale": false, "web-history": false})
    );
}

#[test]
fn details_have_the_documented_shape() {
    let (_fake, server, client) = start();
    let answer = get(server.local_addr(), &format!("/jobs/{JOB}"));
    assert_eq!(answer.status, 200);
    let body = answer.json();
    for key in [
        "jid",
        "name",
        "isStoppable",
        "state",
        "job-type",
        "start-time",
        "end-time",
        "duration",
        "maxParallelism",
        "now",
        "timestamps",
        "vertices",
        "status-counts",
        "plan",
    ] {
        assert!(body.get(key).is_some(), "no {key} in {body}");
    }
    assert_eq!(body["vertices"][0]["id"], vertex_id("source"));
    assert_eq!(body["vertices"][0]["metrics"]["write-records"], 1000);
    assert_eq!(
        body["vertices"][0]["metrics"]["write-records-complete"],
        true
    );
    let details = client.details(JOB).unwrap();
    let summary = JobSummary {
        id: JOB.into(),
        name: "keyed-count".into(),
        state: JobState::Running,
    };
    assert_eq!(details, details_of(&summary));
}

#[test]
fn vertex_ids_are_32_hex_digits_and_stable() {
    let id = vertex_id("count-and-sum");
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(id, vertex_id("count-and-sum"));
    assert_ne!(id, vertex_id("count-and-sun"));
}

#[test]
fn checkpoint_history_has_the_documented_shape() {
    let (_fake, server, client) = start();
    let answer = get(server.local_addr(), &format!("/jobs/{JOB}/checkpoints"));
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert_eq!(
        body["counts"],
        json!({"restored": 0, "total": 2, "in_progress": 1, "completed": 1, "failed": 0})
    );
    assert_eq!(
        body["latest"]["completed"],
        json!({
            "className": ".CompletedCheckpointStatistics",
            "id": 4, "status": "COMPLETED", "is_savepoint": false, "savepointFormat": null,
            "trigger_timestamp": 1_700_000_001_000u64,
            "latest_ack_timestamp": 1_700_000_001_120u64,
            "checkpointed_size": 4096, "state_size": 8192, "end_to_end_duration": 120,
            "alignment_buffered": 0, "processed_data": 0, "persisted_data": 0,
            "num_subtasks": 2, "num_acknowledged_subtasks": 2,
            "checkpoint_type": "CHECKPOINT", "tasks": {},
            "external_path": "file:///ck/a1b2c3/chk-4/", "discarded": false,
        })
    );
    assert_eq!(body["latest"]["savepoint"], Value::Null);
    assert_eq!(body["latest"]["restored"], Value::Null);
    assert_eq!(body["summary"]["state_size"]["p999"], 0.0);
    assert_eq!(body["history"][0]["status"], "IN_PROGRESS");
    assert_eq!(body["history"][0]["id"], 5);
    assert_eq!(client.checkpoints(JOB).unwrap(), history());
    // The default details route answers the history's entry; an unknown one is 404.
    let detail = get(
        server.local_addr(),
        &format!("/jobs/{JOB}/checkpoints/details/4"),
    );
    assert_eq!(detail.json()["id"], 4);
    get(
        server.local_addr(),
        &format!("/jobs/{JOB}/checkpoints/details/99"),
    )
    .error(404);
}

#[test]
fn savepoint_lifecycle_with_one_in_flight_at_a_time() {
    let (fake, server, client) = start();
    let addr = server.local_addr();

    let answer = request(
        addr,
        "POST",
        &format!("/jobs/{JOB}/savepoints"),
        Some(r#"{"target-directory": "/tmp/sp", "cancel-job": false}"#),
    );
    assert_eq!(answer.status, 202, "{}", answer.body);
    let first = answer.json()["request-id"]
        .as_str()
        .expect("request-id")
        .to_owned();
    assert_eq!(answer.json(), json!({"request-id": first}));
    assert_eq!(
        fake.triggers(),
        vec![(JOB.to_owned(), Some("/tmp/sp".to_owned()), false)]
    );

    let status = get(addr, &format!("/jobs/{JOB}/savepoints/{first}"));
    assert_eq!(status.status, 200);
    assert_eq!(
        status.json(),
        json!({"status": {"id": "IN_PROGRESS"}, "operation": null})
    );

    // A second one while the first is in flight: 409, in JSON, through both clients.
    let message = request(addr, "POST", &format!("/jobs/{JOB}/savepoints"), Some("{}")).error(409);
    assert!(message.contains("already in progress"), "{message}");
    let error = client.trigger_savepoint(JOB, None).unwrap_err();
    assert_eq!(error.status(), Some(409));
    assert_eq!(
        error.to_string(),
        format!("a savepoint of job '{JOB}' is already in progress (HTTP 409)")
    );
    // Another job is not blocked by it.
    let other = client.trigger_savepoint(OTHER, None).unwrap();

    fake.complete(&first, "/tmp/sp/savepoint-7");
    assert_eq!(
        get(addr, &format!("/v1/jobs/{JOB}/savepoints/{first}")).json(),
        json!({"status": {"id": "COMPLETED"},
               "operation": {"location": "/tmp/sp/savepoint-7", "failure-cause": null}})
    );
    let done = client.savepoint_status(JOB, &first).unwrap();
    assert_eq!(
        done,
        SavepointStatus::Completed {
            location: "/tmp/sp/savepoint-7".into()
        }
    );

    // Once it is done, the next one is accepted; a failure is reported as such.
    let second = client.trigger_savepoint(JOB, Some("/tmp/sp2")).unwrap();
    assert_ne!(second, first);
    fake.fail(&second, "disk full");
    let body = get(addr, &format!("/jobs/{JOB}/savepoints/{second}")).json();
    assert_eq!(body["status"]["id"], "COMPLETED");
    assert_eq!(body["operation"]["location"], Value::Null);
    assert!(
        body["operation"]["failure-cause"]["stack-trace"]
            .as_str()
            .unwrap()
            .contains("disk full"),
        "{body}"
    );
    let failed = client.savepoint_status(JOB, &second).unwrap();
    assert_eq!(
        failed,
        SavepointStatus::Failed {
            reason: "disk full".into()
        }
    );

    // A request id of another job is not found under this one.
    let error = client.savepoint_status(JOB, &other).unwrap_err();
    assert_eq!(error.status(), Some(404), "{error}");
}

#[test]
fn savepoint_body_may_be_absent_empty_or_flowstate_spelled() {
    let (fake, server, _client) = start();
    let addr = server.local_addr();
    let path = format!("/jobs/{JOB}/savepoints");

    // No body at all (no Content-Length).
    let answer = request(addr, "POST", &path, None);
    assert_eq!(answer.status, 202, "{}", answer.body);
    let id = answer.json()["request-id"].as_str().unwrap().to_owned();
    fake.complete(&id, "x");
    // An empty body.
    let answer = request(addr, "POST", &path, Some(""));
    assert_eq!(answer.status, 202, "{}", answer.body);
    fake.complete(answer.json()["request-id"].as_str().unwrap(), "x");
    // flowstate's older spelling of the field.
    let answer = request(addr, "POST", &path, Some(r#"{"target_directory":"/f"}"#));
    assert_eq!(answer.status, 202, "{}", answer.body);
    fake.complete(answer.json()["request-id"].as_str().unwrap(), "x");
    // Flink's client's own trigger id is the request id; its format must be canonical.
    let trigger = "0123456789abcdef0123456789abcdef";
    let answer = request(
        addr,
        "POST",
        &path,
        Some(&format!(
            r#"{{"target-directory":"/g","cancel-job":false,"formatType":"CANONICAL","triggerId":"{trigger}"}}"#
        )),
    );
    assert_eq!(answer.json(), json!({"request-id": trigger}));
    let message = request(addr, "POST", &path, Some(r#"{"formatType":"NATIVE"}"#)).error(400);
    assert!(message.contains("CANONICAL"), "{message}");
    assert_eq!(
        fake.triggers(),
        vec![
            (JOB.to_owned(), None, false),
            (JOB.to_owned(), None, false),
            (JOB.to_owned(), Some("/f".to_owned()), false),
            (JOB.to_owned(), Some("/g".to_owned()), false),
        ]
    );
}

#[test]
fn cancel_job_true_stops_with_the_savepoint() {
    let (fake, server, _client) = start();
    let answer = request(
        server.local_addr(),
        "POST",
        &format!("/jobs/{JOB}/savepoints"),
        Some(r#"{"target-directory": "/sp", "cancel-job": true}"#),
    );
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(
        fake.triggers(),
        vec![(JOB.to_owned(), Some("/sp".to_owned()), true)]
    );
}

#[test]
fn stop_triggers_a_stopping_savepoint_reported_on_the_savepoints_route() {
    let (fake, server, client) = start();
    let answer = request(
        server.local_addr(),
        "POST",
        &format!("/jobs/{JOB}/stop"),
        Some(r#"{"targetDirectory": "/sp", "drain": false}"#),
    );
    assert_eq!(answer.status, 202, "{}", answer.body);
    let id = answer.json()["request-id"].as_str().unwrap().to_owned();
    assert_eq!(
        fake.triggers(),
        vec![(JOB.to_owned(), Some("/sp".to_owned()), true)]
    );
    assert_eq!(
        client.savepoint_status(JOB, &id).unwrap(),
        SavepointStatus::InProgress
    );
    fake.complete(&id, "/sp/savepoint-9");
    assert_eq!(
        client.savepoint_status(JOB, &id).unwrap(),
        SavepointStatus::Completed {
            location: "/sp/savepoint-9".into()
        }
    );
    assert_eq!(client.details(JOB).unwrap().state, JobState::Finished);

    // Through the client too, on the other job.
    let id = client.stop_with_savepoint(OTHER, None).unwrap();
    assert_eq!(fake.triggers()[1], (OTHER.to_owned(), None, true));
    assert_eq!(
        client.savepoint_status(OTHER, &id).unwrap(),
        SavepointStatus::InProgress
    );
}

#[test]
fn cancel_by_post_and_by_flink_patch() {
    let (_fake, server, client) = start();
    let addr = server.local_addr();
    let answer = request(addr, "POST", &format!("/jobs/{JOB}/cancel"), None);
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.json(), json!({}));
    assert_eq!(client.details(JOB).unwrap().state, JobState::Canceled);
    // Cancelling a cancelled job: the service's conflict.
    assert_eq!(client.cancel(JOB).unwrap_err().status(), Some(409));

    let answer = request(addr, "PATCH", &format!("/jobs/{OTHER}?mode=cancel"), None);
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.json(), json!({}));
    assert_eq!(client.details(OTHER).unwrap().state, JobState::Canceled);

    let message = request(addr, "PATCH", &format!("/jobs/{RESTARTING}"), None).error(400);
    assert!(message.contains("mode=cancel"), "{message}");
    let message = request(
        addr,
        "PATCH",
        &format!("/jobs/{RESTARTING}?mode=stop"),
        None,
    )
    .error(400);
    assert!(message.contains("'stop'"), "{message}");
    assert_eq!(
        client.details(RESTARTING).unwrap().state,
        JobState::Restarting
    );
    client.cancel(RESTARTING).unwrap();
    assert_eq!(
        client.details(RESTARTING).unwrap().state,
        JobState::Canceled
    );
}

// ---------------------------------------------------------------------------
// Errors.

#[test]
fn unknown_job_is_404_json_on_every_route() {
    let (_fake, server, client) = start();
    let addr = server.local_addr();
    for (method, path, body) in [
        ("GET", "/jobs/nope", None),
        ("GET", "/jobs/nope/checkpoints", None),
        ("POST", "/jobs/nope/savepoints", Some("{}")),
        ("GET", "/jobs/nope/savepoints/req-1", None),
        ("POST", "/jobs/nope/stop", Some("{}")),
        ("POST", "/jobs/nope/cancel", None),
        ("PATCH", "/jobs/nope?mode=cancel", None),
    ] {
        let answer = request(addr, method, path, body);
        let message = answer.error(404);
        // Says only that the job is not known: no id, neither the one asked for
        // nor those of the jobs that exist.
        assert_eq!(message, "job not known", "{method} {path}");
        for id in ["nope", JOB, OTHER, RESTARTING] {
            assert!(
                !answer.body.contains(id),
                "{method} {path}: {}",
                answer.body
            );
        }
    }
    let answer = get(addr, &format!("/jobs/{JOB}/savepoints/req-99"));
    assert_eq!(answer.error(404), "savepoint request not known");
    assert!(!answer.body.contains("req-99"), "{}", answer.body);

    let error = client.details("nope").unwrap_err();
    assert!(
        matches!(error, ClientError::Api { status: 404, .. }),
        "{error:?}"
    );
    assert_eq!(error.to_string(), "job not known (HTTP 404)");
    // Ids are sent as one path segment, whatever they hold.
    let error = client.details("a/b c").unwrap_err();
    assert_eq!(error.to_string(), "job not known (HTTP 404)");
    assert_alive(addr);
}

#[test]
fn malformed_or_invalid_bodies_are_400_json() {
    let (fake, server, _client) = start();
    let addr = server.local_addr();
    let path = format!("/jobs/{JOB}/savepoints");
    for body in [
        "{",
        "not json",
        r#"{"target_directory": 5}"#,
        r#"{"target_dir": "/x"}"#,
        r#"["/x"]"#,
        "\u{0}",
    ] {
        let message = request(addr, "POST", &path, Some(body)).error(400);
        assert!(
            message.starts_with("invalid request body"),
            "{body:?}: {message}"
        );
    }
    let message = request(addr, "POST", &format!("/jobs/{JOB}/stop"), Some("{]")).error(400);
    assert!(message.starts_with("invalid request body"), "{message}");
    // The service's own BadRequest.
    let message = request(addr, "POST", &path, Some(r#"{"target_directory": ""}"#)).error(400);
    assert_eq!(message, "target_directory is empty");
    // A request line the HTTP layer cannot parse: answered, and the server lives on.
    let answer = raw(addr, b"GARBAGE\r\n\r\n");
    assert_eq!(answer.status, 400);
    assert!(fake.triggers().is_empty(), "nothing was triggered");
    assert_alive(addr);
}

#[test]
fn unavailable_is_503_json() {
    let (_fake, server, client) = start();
    let message = request(
        server.local_addr(),
        "POST",
        &format!("/jobs/{RESTARTING}/savepoints"),
        None,
    )
    .error(503);
    assert!(message.contains("restarting"), "{message}");
    assert_eq!(
        client
            .trigger_savepoint(RESTARTING, None)
            .unwrap_err()
            .status(),
        Some(503)
    );
}

#[test]
fn wrong_method_is_405_json() {
    let (_fake, server, _client) = start();
    let addr = server.local_addr();
    for (method, path) in [
        ("DELETE", "/jobs".to_owned()),
        ("POST", "/jobs".to_owned()),
        ("PUT", format!("/jobs/{JOB}")),
        ("GET", format!("/jobs/{JOB}/cancel")),
        ("GET", format!("/jobs/{JOB}/stop")),
        ("POST", format!("/jobs/{JOB}/checkpoints")),
        ("DELETE", format!("/jobs/{JOB}/savepoints/req-1")),
    ] {
        let answer = request(addr, method, &path, None);
        let message = answer.error(405);
        assert_eq!(message, format!("method {method} not allowed on {path}"));
        assert!(
            answer.header("allow").is_some(),
            "no Allow header: {}",
            answer.head
        );
    }
    assert_alive(addr);
}

#[test]
fn unknown_route_is_404_json() {
    let (_fake, server, _client) = start();
    let addr = server.local_addr();
    for path in [
        "/nope",
        "/jobs/x/y/z",
        "/v2/jobs",
        "/v1/nope",
        "/jobs/x/savepoints/y/z",
    ] {
        let message = get(addr, path).error(404);
        assert_eq!(message, format!("no route for GET {path}"));
    }
    let message = request(addr, "POST", "/nope", Some("{}")).error(404);
    assert_eq!(message, "no route for POST /nope");
    assert_alive(addr);
}

#[test]
fn oversized_bodies_are_413_json() {
    let (fake, server, _client) = start();
    let addr = server.local_addr();
    let limit = flowstate_rest::MAX_BODY_BYTES;
    // Declared too large: rejected before the body is read, on any route.
    for path in [
        format!("/jobs/{JOB}/savepoints"),
        "/jobs".to_owned(),
        "/nope".to_owned(),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            limit + 1
        );
        let message = raw(addr, head.as_bytes()).error(413);
        assert!(message.contains(&limit.to_string()), "{message}");
    }
    // Chunked, so the length shows only while reading.
    let chunk = format!("{{\"target_directory\": \"{}\"}}", "x".repeat(limit));
    let chunked = format!(
        "POST /jobs/{JOB}/savepoints HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let message = raw(addr, chunked.as_bytes()).error(413);
    assert!(message.contains(&limit.to_string()), "{message}");
    // Just under the limit is fine (the service then rejects nothing).
    let fits = format!("{{\"target_directory\": \"{}\"}}", "y".repeat(limit - 30));
    let answer = request(
        addr,
        "POST",
        &format!("/jobs/{JOB}/savepoints"),
        Some(&fits),
    );
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(fake.triggers().len(), 1);
    assert_alive(addr);
}

#[test]
fn a_panicking_service_call_is_500_json_and_the_server_lives_on() {
    let (_fake, server, _client) = start();
    let message = get(server.local_addr(), "/jobs/panic").error(500);
    assert!(message.contains("job service failed"), "{message}");
    assert_alive(server.local_addr());
}

#[test]
fn one_connection_serves_many_requests() {
    let (_fake, server, _client) = start();
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for path in ["/jobs", "/nope", "/jobs/nope", "/jobs"] {
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n",
            server.local_addr()
        )
        .unwrap();
        // Read one answer: head, then Content-Length bytes.
        let mut data = Vec::new();
        let mut byte = [0u8; 1];
        while !data.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            data.push(byte[0]);
        }
        let head = String::from_utf8(data).unwrap().to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .expect("content-length")
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).unwrap();
        let body: Value = serde_json::from_slice(&body).expect("JSON body");
        assert!(body.is_object(), "{path}: {body}");
    }
}

// ---------------------------------------------------------------------------
// Who may talk to the API, and how many connections for how long.

fn start_with(options: ServeOptions) -> (Arc<Fake>, RestServer) {
    let fake = Fake::new();
    let server = serve_with("127.0.0.1:0", fake.clone(), &options).expect("server starts");
    (fake, server)
}

fn job_state(fake: &Fake, job: &str) -> JobState {
    fake.jobs().iter().find(|j| j.jid == job).unwrap().state
}

/// What a browser can send cross-site without a CORS preflight (`text/plain`,
/// a form, or no content type) must not change anything: 415, and the service is
/// never called.
#[test]
fn a_change_without_json_content_type_is_415_and_reaches_no_service() {
    let (fake, server, _client) = start();
    let addr = server.local_addr();
    let host = format!("Host: {addr}\r\n");
    for (method, path, content_type, body) in [
        (
            "POST",
            format!("/jobs/{JOB}/stop"),
            "text/plain",
            Some("{}"),
        ),
        (
            "POST",
            format!("/jobs/{JOB}/savepoints"),
            "application/x-www-form-urlencoded",
            Some("target_directory=/tmp"),
        ),
        (
            "POST",
            format!("/jobs/{JOB}/cancel"),
            "multipart/form-data",
            Some(""),
        ),
        ("POST", format!("/jobs/{JOB}/cancel"), "", None),
        (
            "PATCH",
            format!("/jobs/{JOB}?mode=cancel"),
            "text/plain",
            None,
        ),
        (
            "POST",
            format!("/jobs/{JOB}/stop"),
            "application/jsonx",
            Some("{}"),
        ),
        ("DELETE", format!("/jobs/{JOB}"), "", None),
    ] {
        let headers = if content_type.is_empty() {
            host.clone()
        } else {
            format!("{host}Content-Type: {content_type}\r\n")
        };
        let message = request_with(addr, method, &path, &headers, body).error(415);
        assert!(message.contains("application/json"), "{message}");
    }
    assert!(
        fake.triggers().is_empty(),
        "a savepoint or stop was triggered"
    );
    assert_eq!(job_state(&fake, JOB), JobState::Running);
    // With its parameters, JSON is JSON.
    let headers = format!("{host}Content-Type: Application/JSON; charset=utf-8\r\n");
    let answer = request_with(addr, "POST", &format!("/jobs/{JOB}/cancel"), &headers, None);
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
}

/// DNS rebinding: a page of another site whose name now resolves to 127.0.0.1
/// sends its own name as Host. Only names of this server are answered.
#[test]
fn a_foreign_host_is_403_whatever_the_request() {
    let (fake, server, _client) = start();
    let addr = server.local_addr();
    let port = addr.port();
    let json = "Content-Type: application/json\r\n";
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_owned(),
        format!("localhost:{}", port.wrapping_add(1)),
        format!("127.0.0.1.evil.example:{port}"),
        "".to_owned(),
        format!("[::2]:{port}"),
    ] {
        let headers = format!("Host: {host}\r\n{json}");
        let message = request_with(
            addr,
            "POST",
            &format!("/jobs/{JOB}/stop"),
            &headers,
            Some("{}"),
        )
        .error(403);
        assert!(message.contains("host"), "{host}: {message}");
        request_with(addr, "GET", "/jobs", &format!("Host: {host}\r\n"), None).error(403);
    }
    // No Host at all (HTTP/1.0 allows that).
    let answer = raw(addr, b"GET /jobs HTTP/1.0\r\n\r\n");
    assert!(answer.error(403).contains("Host"));
    // A request target naming another authority.
    let absolute = format!(
        "GET http://evil.example:{port}/jobs HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    raw(addr, absolute.as_bytes()).error(403);
    assert!(
        fake.triggers().is_empty(),
        "a foreign host triggered a stop"
    );
    assert_eq!(job_state(&fake, JOB), JobState::Running);

    // The loopback names with the bound port are this server.
    for host in [
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let answer = request_with(addr, "GET", "/jobs", &format!("Host: {host}\r\n"), None);
        assert_eq!(answer.status, 200, "{host}: {}", answer.body);
    }

    // A configured name is answered too (e.g. behind a reverse proxy).
    let (_fake, server) = start_with(ServeOptions {
        allowed_hosts: vec!["flowstate.example".into(), "other.example:9".into()],
        ..ServeOptions::default()
    });
    let addr = server.local_addr();
    for (host, status) in [
        ("flowstate.example", 200),
        ("flowstate.example:4443", 200),
        ("other.example:9", 200),
        ("other.example:10", 403),
        ("evil.example", 403),
    ] {
        let answer = request_with(addr, "GET", "/jobs", &format!("Host: {host}\r\n"), None);
        assert_eq!(answer.status, status, "{host}: {}", answer.body);
    }
}

#[test]
fn a_token_is_required_when_set_and_compared_exactly() {
    const TOKEN: &str = "s3cret-Token_1";
    let (fake, server) = start_with(ServeOptions {
        token: Some(TOKEN.into()),
        ..ServeOptions::default()
    });
    let addr = server.local_addr();
    let host = format!("Host: {addr}\r\n");
    let json = "Content-Type: application/json\r\n";
    for authorization in [
        "".to_owned(),
        "Authorization: Bearer\r\n".to_owned(),
        "Authorization: Bearer wrong\r\n".to_owned(),
        format!("Authorization: Bearer {TOKEN}x\r\n"),
        format!("Authorization: Bearer {}\r\n", &TOKEN[..TOKEN.len() - 1]),
        format!("Authorization: Basic {TOKEN}\r\n"),
        format!("Authorization: {TOKEN}\r\n"),
    ] {
        let answer = request_with(
            addr,
            "GET",
            "/jobs",
            &format!("{host}{authorization}"),
            None,
        );
        let message = answer.error(401);
        assert!(message.contains("token"), "{authorization:?}: {message}");
        assert_eq!(
            answer.header("www-authenticate"),
            Some("bearer"),
            "{}",
            answer.head
        );
        assert!(!answer.body.contains(JOB), "{}", answer.body);
        // Nor does it change anything.
        let headers = format!("{host}{json}{authorization}");
        request_with(
            addr,
            "POST",
            &format!("/jobs/{JOB}/stop"),
            &headers,
            Some("{}"),
        )
        .error(401);
        // Not even which routes exist.
        request_with(
            addr,
            "GET",
            "/nope",
            &format!("{host}{authorization}"),
            None,
        )
        .error(401);
    }
    assert!(fake.triggers().is_empty());
    assert_eq!(job_state(&fake, JOB), JobState::Running);

    let headers = format!("{host}Authorization: bearer {TOKEN}\r\n");
    let answer = request_with(addr, "GET", "/jobs", &headers, None);
    assert_eq!(answer.status, 200, "{}", answer.body);

    // The client sends it when given it.
    let client = RestClient::new(&addr.to_string()).unwrap();
    let error = client.list().unwrap_err();
    assert_eq!(error.status(), Some(401), "{error}");
    let client = client.with_token(Some("wrong".into()));
    assert_eq!(client.list().unwrap_err().status(), Some(401));
    let client = client.with_token(Some(TOKEN.into()));
    assert_eq!(client.list().unwrap().len(), 3);
    let id = client.trigger_savepoint(JOB, Some("/sp")).unwrap();
    assert_eq!(
        client.savepoint_status(JOB, &id).unwrap(),
        SavepointStatus::InProgress
    );
    client.cancel(OTHER).unwrap();
    assert_eq!(job_state(&fake, OTHER), JobState::Canceled);

    // A token that cannot travel in a header is refused at start.
    for bad in ["", "has space", "tab\there", "é"] {
        let error = serve_with(
            "127.0.0.1:0",
            fake.clone(),
            &ServeOptions {
                token: Some(bad.into()),
                ..ServeOptions::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(error, RestError::InvalidOption(_)),
            "{bad:?}: {error:?}"
        );
    }
}

#[test]
fn beyond_loopback_a_token_is_required_unless_explicitly_waived() {
    let fake = Fake::new();
    let error = serve_with("0.0.0.0:0", fake.clone(), &ServeOptions::default()).unwrap_err();
    assert!(matches!(error, RestError::Unprotected { .. }), "{error:?}");
    assert!(
        error.to_string().contains("without a bearer token"),
        "{error}"
    );
    let error = check_exposure("0.0.0.0:0", &ServeOptions::default()).unwrap_err();
    assert!(matches!(error, RestError::Unprotected { .. }), "{error:?}");
    check_exposure("127.0.0.1:0", &ServeOptions::default()).unwrap();
    check_exposure("localhost:0", &ServeOptions::default()).unwrap();

    let protected = ServeOptions {
        token: Some("t0ken".into()),
        ..ServeOptions::default()
    };
    check_exposure("0.0.0.0:0", &protected).unwrap();
    let server = serve_with("0.0.0.0:0", fake.clone(), &protected).unwrap();
    let port = server.local_addr().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Bound to every address: IP literals with the port are this server; names
    // other than localhost are not.
    let authorized = "Authorization: Bearer t0ken\r\n";
    for (host, status) in [
        (format!("127.0.0.1:{port}"), 200),
        (format!("10.1.2.3:{port}"), 200),
        (format!("localhost:{port}"), 200),
        (format!("evil.example:{port}"), 403),
        (format!("10.1.2.3:{}", port.wrapping_add(1)), 403),
    ] {
        let headers = format!("Host: {host}\r\n{authorized}");
        let answer = request_with(addr, "GET", "/jobs", &headers, None);
        assert_eq!(answer.status, status, "{host}: {}", answer.body);
    }
    drop(server);

    let waived = ServeOptions {
        allow_unprotected_remote: true,
        ..ServeOptions::default()
    };
    let server = serve_with("0.0.0.0:0", fake, &waived).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", server.local_addr().port())
        .parse()
        .unwrap();
    assert_alive(addr);
}

/// Reads from `stream` until the server closes it (end of stream or reset);
/// panics if it is still open after `bound`. Returns what was read.
fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> Vec<u8> {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return bytes,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return bytes,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading: {e}"),
        }
        assert!(
            started.elapsed() < bound,
            "the connection is still open after {bound:?}; read so far: {:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

/// Generous: the timeout under test is 200 ms.
const CLOSE_BOUND: Duration = Duration::from_secs(20);

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let (_fake, server) = start_with(ServeOptions {
        idle_timeout: Duration::from_millis(200),
        ..ServeOptions::default()
    });
    let addr = server.local_addr();

    // A client that never sends anything.
    let mut silent = TcpStream::connect(addr).unwrap();
    read_until_closed(&mut silent, CLOSE_BOUND);

    // A client that never completes its request head.
    let mut partial = TcpStream::connect(addr).unwrap();
    partial.write_all(b"GET /jobs HTTP/1.1\r\nHo").unwrap();
    read_until_closed(&mut partial, CLOSE_BOUND);

    // A kept-alive connection after its answer.
    let mut kept = TcpStream::connect(addr).unwrap();
    write!(kept, "GET /jobs HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let answer = read_until_closed(&mut kept, CLOSE_BOUND);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A body that never arrives: answered 408 (or closed), not held open.
    let mut slow = TcpStream::connect(addr).unwrap();
    write!(
        slow,
        "POST /jobs/{JOB}/savepoints HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    )
    .unwrap();
    let answer = read_until_closed(&mut slow, CLOSE_BOUND);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    assert_alive(addr);
}

#[test]
fn connections_beyond_the_cap_are_closed_at_once() {
    const CAP: usize = 3;
    let (_fake, server) = start_with(ServeOptions {
        max_connections: CAP,
        idle_timeout: Duration::from_secs(600),
        ..ServeOptions::default()
    });
    let addr = server.local_addr();
    // CAP kept-alive connections, each known to be served (it answered).
    let mut held: Vec<TcpStream> = (0..CAP)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            write!(stream, "GET /nope HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
            let mut buf = [0u8; 12];
            stream.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"HTTP/1.1 404");
            stream
        })
        .collect();
    // One more is closed without an answer.
    for _ in 0..2 {
        let mut extra = TcpStream::connect(addr).unwrap();
        let _ = write!(extra, "GET /jobs HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        let answer = read_until_closed(&mut extra, CLOSE_BOUND);
        assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    }
    // A held connection ends: its place is free again (eventually: the server
    // notices the end of the connection first).
    drop(held.pop());
    let started = Instant::now();
    loop {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = write!(
            stream,
            "GET /jobs HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        );
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        if answer.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(
            started.elapsed() < CLOSE_BOUND,
            "no connection served after one of {CAP} closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(held);
}

// ---------------------------------------------------------------------------
// Server life cycle and client failures.

#[test]
fn binding_an_occupied_or_bad_address_fails_at_once_naming_it() {
    let (fake, server, _client) = start();
    let taken = server.local_addr().to_string();
    let error = serve(&taken, fake.clone()).unwrap_err();
    assert!(matches!(error, RestError::Bind { .. }), "{error:?}");
    assert!(error.to_string().contains(&taken), "{error}");
    let error = serve("not an address", fake).unwrap_err();
    assert!(error.to_string().contains("not an address"), "{error}");
    assert_alive(server.local_addr());
}

#[test]
fn shutdown_stops_answering_and_the_client_says_so() {
    let (_fake, server, client) = start();
    let addr = server.local_addr().to_string();
    client.list().unwrap();
    let started = Instant::now();
    server.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    let error = client.list().unwrap_err();
    assert!(error.is_unreachable(), "{error:?}");
    let text = error.to_string();
    assert!(
        text.starts_with(&format!("cannot reach the flowstate HTTP API at {addr}: "))
            && text.ends_with(&format!("(is the job running with --rest {addr}?)")),
        "{text}"
    );
}

#[test]
fn dropping_the_server_stops_it() {
    let (_fake, server, client) = start();
    drop(server);
    assert!(client.list().unwrap_err().is_unreachable());
}

#[test]
fn shutdown_is_bounded_with_a_client_stuck_mid_request() {
    let (_fake, server, _client) = start();
    let mut stuck = TcpStream::connect(server.local_addr()).unwrap();
    let head = format!(
        "POST /jobs/a1b2c3/savepoints HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{{",
        server.local_addr()
    );
    stuck.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    server.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[test]
fn client_calls_time_out_on_a_silent_server() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let client =
        RestClient::with_timeout(&format!("http://{addr}/"), Duration::from_millis(300)).unwrap();
    let started = Instant::now();
    let error = client.list().unwrap_err();
    assert!(matches!(error, ClientError::Timeout { .. }), "{error:?}");
    assert!(error.is_unreachable());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
}

#[test]
fn client_reports_a_non_json_error_answer() {
    // A server that is not flowstate: plain-text 500.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = other.local_addr().unwrap();
    let answerer = std::thread::spawn(move || {
        let (mut stream, _) = other.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf);
        let _ = stream.write_all(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\noops",
        );
    });
    let client = RestClient::new(&addr.to_string()).unwrap();
    let error = client.list().unwrap_err();
    assert_eq!(error.to_string(), "oops (HTTP 500)");
    answerer.join().unwrap();
}
