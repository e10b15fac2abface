//! The client commands (`list`, `savepoint`, `stop`, `cancel`) of the `flowstate`
//! binary against an HTTP API served in this test process by `flowstate-rest`, with a
//! fake job service behind it. Checks what the commands print and send, not the
//! runtime (the runtime's side is tested with real jobs elsewhere).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use flowstate_rest::{
    CheckpointingStatistics, JobDetails, JobOverview, JobService, JobState, Plan, RestServer,
    SavepointStatus, SavepointTrigger, ServeOptions, ServiceError, serve_with, task_counts,
};
use support::{Run, flowstate, flowstate_env, tempdir};

/// Completes a savepoint on the third status poll (so the CLI must poll), fails it
/// for job `doomed`, never completes it for job `slow`; a stopped job reports
/// `RUNNING` twice more before `FINISHED`.
#[derive(Default)]
struct Fake {
    state: Mutex<FakeState>,
}

/// A job of the fake.
#[derive(Clone)]
struct JobSummary {
    id: String,
    name: String,
    state: JobState,
}

fn overview(job: &JobSummary) -> JobOverview {
    JobOverview {
        jid: job.id.clone(),
        name: job.name.clone(),
        job_type: "STREAMING".into(),
        scheduler_type: "Default".into(),
        start_time: 0,
        end_time: -1,
        duration: 0,
        last_modification: 0,
        state: job.state,
        tasks: task_counts("RUNNING", 2, true),
        pending_operators: 0,
    }
}

#[derive(Default)]
struct FakeState {
    jobs: Vec<JobSummary>,
    /// request id -> (job, status polls so far, target, stop)
    requests: HashMap<String, (String, u32, Option<String>, bool)>,
    /// Details calls left before a stopping job reports FINISHED.
    stopping_polls: HashMap<String, u32>,
    triggers: Vec<(String, Option<String>, bool)>,
}

impl Fake {
    fn start() -> (Arc<Fake>, RestServer) {
        Self::start_with(&ServeOptions::default())
    }

    fn start_with(options: &ServeOptions) -> (Arc<Fake>, RestServer) {
        let fake = Arc::new(Fake::default());
        fake.state.lock().unwrap().jobs = [
            ("0badc0ffee", "keyed-count", JobState::Running),
            ("1d", "wordcount", JobState::Running),
            ("doomed", "doomed", JobState::Running),
            ("slow", "slow", JobState::Running),
            ("fin", "done", JobState::Finished),
        ]
        .into_iter()
        .map(|(id, name, state)| JobSummary {
            id: id.into(),
            name: name.into(),
            state,
        })
        .collect();
        let server = serve_with("127.0.0.1:0", fake.clone(), options).expect("serve");
        (fake, server)
    }

    fn triggers(&self) -> Vec<(String, Option<String>, bool)> {
        self.state.lock().unwrap().triggers.clone()
    }
}

fn no_job(_job: &str) -> ServiceError {
    ServiceError::UnknownJob
}

impl JobService for Fake {
    fn jobs(&self) -> Vec<JobOverview> {
        self.state
            .lock()
            .unwrap()
            .jobs
            .iter()
            .map(overview)
            .collect()
    }

    fn details(&self, job: &str) -> Result<JobDetails, ServiceError> {
        let mut state = self.state.lock().unwrap();
        let left = state.stopping_polls.get(job).copied();
        let summary = state
            .jobs
            .iter_mut()
            .find(|j| j.id == job)
            .ok_or_else(|| no_job(job))?;
        match left {
            Some(0) => summary.state = JobState::Finished,
            Some(n) => {
                summary.state = JobState::Running;
                state.stopping_polls.insert(job.to_owned(), n - 1);
            }
            None => {}
        }
        let summary = state
            .jobs
            .iter()
            .find(|j| j.id == job)
            .ok_or_else(|| no_job(job))?;
        Ok(JobDetails {
            jid: summary.id.clone(),
            name: summary.name.clone(),
            is_stoppable: true,
            state: summary.state,
            job_type: "STREAMING".into(),
            scheduler_type: "Default".into(),
            start_time: 0,
            end_time: -1,
            duration: 0,
            max_parallelism: 128,
            now: 0,
            timestamps: Default::default(),
            vertices: vec![],
            status_counts: Default::default(),
            plan: Plan {
                jid: summary.id.clone(),
                name: summary.name.clone(),
                kind: "STREAMING".into(),
                nodes: vec![],
            },
            pending_operators: 0,
        })
    }

    fn checkpoints(&self, _job: &str) -> Result<CheckpointingStatistics, ServiceError> {
        Err(ServiceError::Unavailable("not in this fake".into()))
    }

    fn trigger_savepoint(
        &self,
        job: &str,
        request: SavepointTrigger,
    ) -> Result<String, ServiceError> {
        let (target, stop) = (request.target_directory, request.stop);
        let mut state = self.state.lock().unwrap();
        let summary = state
            .jobs
            .iter()
            .find(|j| j.id == job)
            .ok_or_else(|| no_job(job))?;
        if summary.state != JobState::Running {
            return Err(ServiceError::Conflict(format!(
                "job '{job}' is {}",
                summary.state
            )));
        }
        if state
            .requests
            .values()
            .any(|(j, polls, _, _)| j == job && *polls < 3)
        {
            return Err(ServiceError::Conflict(format!(
                "a savepoint of job '{job}' is already in progress"
            )));
        }
        let id = format!("req-{}", state.requests.len() + 1);
        state
            .requests
            .insert(id.clone(), (job.to_owned(), 0, target.clone(), stop));
        state.triggers.push((job.to_owned(), target, stop));
        Ok(id)
    }

    fn savepoint_status(
        &self,
        job: &str,
        request_id: &str,
    ) -> Result<SavepointStatus, ServiceError> {
        let mut state = self.state.lock().unwrap();
        let (owner, polls, target, stop) = state
            .requests
            .get_mut(request_id)
            .ok_or(ServiceError::UnknownSavepointRequest)?;
        assert_eq!(owner, job);
        *polls += 1;
        let answer = match job {
            "slow" => SavepointStatus::InProgress,
            _ if *polls < 3 => SavepointStatus::InProgress,
            "doomed" => SavepointStatus::Failed {
                reason: "task count (1/2) failed: disk full".into(),
            },
            _ => SavepointStatus::Completed {
                location: format!(
                    "{}/savepoint-{job}-1",
                    target.as_deref().unwrap_or("/default")
                ),
            },
        };
        if *stop && matches!(answer, SavepointStatus::Completed { .. }) {
            let job = job.to_owned();
            state.stopping_polls.insert(job, 2);
        }
        Ok(answer)
    }

    fn cancel(&self, job: &str) -> Result<(), ServiceError> {
        let mut state = self.state.lock().unwrap();
        let summary = state
            .jobs
            .iter_mut()
            .find(|j| j.id == job)
            .ok_or_else(|| no_job(job))?;
        summary.state = JobState::Canceled;
        Ok(())
    }
}

/// Runs `flowstate ARGS --rest ADDR` in `cwd`.
fn client(cwd: &Path, addr: SocketAddr, args: &[&str]) -> Run {
    let addr = addr.to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--rest", &addr]);
    flowstate(cwd, &all)
}

#[test]
fn list_prints_one_line_per_job() {
    let (_fake, server) = Fake::start();
    let dir = tempdir();
    let run = client(dir.path(), server.local_addr(), &["list"]);
    run.assert_success();
    assert_eq!(
        run.stdout,
        "ID          STATE     NAME\n\
         0badc0ffee  RUNNING   keyed-count\n\
         1d          RUNNING   wordcount\n\
         doomed      RUNNING   doomed\n\
         slow        RUNNING   slow\n\
         fin         FINISHED  done\n"
    );
}

#[test]
fn savepoint_sends_an_absolute_target_polls_and_prints_the_location() {
    let (fake, server) = Fake::start();
    let dir = tempdir();
    let cwd = dir.path().canonicalize().unwrap();
    let run = client(
        &cwd,
        server.local_addr(),
        &["savepoint", "0badc0ffee", "--target", "sp"],
    );
    run.assert_success();
    let target = cwd.join("sp").to_str().unwrap().to_owned();
    assert_eq!(
        run.stdout,
        format!("Savepoint completed: {target}/savepoint-0badc0ffee-1\n")
    );
    assert_eq!(
        fake.triggers(),
        vec![("0badc0ffee".to_owned(), Some(target), false)]
    );

    // Without --target: the job's default; URLs are sent as given.
    let run = client(&cwd, server.local_addr(), &["savepoint", "1d"]);
    run.assert_success();
    assert_eq!(run.stdout, "Savepoint completed: /default/savepoint-1d-1\n");
    let run = client(
        &cwd,
        server.local_addr(),
        &["savepoint", "1d", "--target", "s3://b/sp"],
    );
    run.assert_success();
    assert_eq!(fake.triggers()[2].1.as_deref(), Some("s3://b/sp"));
}

#[test]
fn savepoint_no_wait_prints_the_request_id_and_a_second_one_conflicts() {
    let (_fake, server) = Fake::start();
    let dir = tempdir();
    let run = client(
        dir.path(),
        server.local_addr(),
        &["savepoint", "slow", "--no-wait"],
    );
    run.assert_success();
    assert_eq!(run.stdout, "req-1\n");
    let run = client(dir.path(), server.local_addr(), &["savepoint", "slow"]);
    run.assert_failure();
    assert_eq!(
        run.single_error_line(),
        "flowstate: error: a savepoint of job 'slow' is already in progress (HTTP 409)"
    );
}

#[test]
fn a_failed_savepoint_fails_the_command_with_the_reason() {
    let (_fake, server) = Fake::start();
    let dir = tempdir();
    let run = client(dir.path(), server.local_addr(), &["savepoint", "doomed"]);
    run.assert_failure();
    assert_eq!(
        run.single_error_line(),
        "flowstate: error: savepoint of job doomed failed: task count (1/2) failed: disk full"
    );
    assert_eq!(run.stdout, "");
}

#[test]
fn savepoint_waits_no_longer_than_its_timeout() {
    let (_fake, server) = Fake::start();
    let dir = tempdir();
    let started = std::time::Instant::now();
    let run = client(
        dir.path(),
        server.local_addr(),
        &["savepoint", "slow", "--timeout", "300ms"],
    );
    run.assert_failure();
    assert!(
        run.single_error_line()
            .contains("still in progress after 300ms"),
        "{run}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn stop_prints_the_savepoint_then_waits_for_the_job_to_end() {
    let (fake, server) = Fake::start();
    let dir = tempdir();
    let run = client(
        dir.path(),
        server.local_addr(),
        &["stop", "0badc0ffee", "--savepoint", "/sp"],
    );
    run.assert_success();
    assert_eq!(
        run.stdout,
        "Savepoint completed: /sp/savepoint-0badc0ffee-1\nJob 0badc0ffee stopped.\n"
    );
    assert_eq!(
        fake.triggers(),
        vec![("0badc0ffee".to_owned(), Some("/sp".to_owned()), true)]
    );
    // It waited through the RUNNING answers until FINISHED.
    let run = client(dir.path(), server.local_addr(), &["list"]);
    assert!(
        run.stdout.contains("0badc0ffee  FINISHED  keyed-count"),
        "{run}"
    );

    // A job that has ended cannot be stopped: the service's conflict, one line.
    let run = client(
        dir.path(),
        server.local_addr(),
        &["stop", "fin", "--savepoint", "/sp"],
    );
    run.assert_failure();
    assert_eq!(
        run.single_error_line(),
        "flowstate: error: job 'fin' is FINISHED (HTTP 409)"
    );
}

#[test]
fn cancel_prints_what_it_did_and_unknown_jobs_are_one_clear_line() {
    let (_fake, server) = Fake::start();
    let dir = tempdir();
    let run = client(dir.path(), server.local_addr(), &["cancel", "1d"]);
    run.assert_success();
    assert_eq!(run.stdout, "Cancelled job 1d.\n");
    for args in [
        &["cancel", "x"][..],
        &["savepoint", "x"][..],
        &["stop", "x", "--savepoint", "/sp"][..],
    ] {
        let run = client(dir.path(), server.local_addr(), args);
        run.assert_failure();
        assert_eq!(
            run.single_error_line(),
            "flowstate: error: no job 'x' (HTTP 404)"
        );
    }
}

#[test]
fn an_unreachable_api_is_one_clear_line() {
    // A port that was free a moment ago: nothing listens there now.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempdir();
    for args in [&["list"][..], &["cancel", "x"][..]] {
        let run = client(dir.path(), addr, args);
        run.assert_failure();
        let line = run.single_error_line();
        assert!(
            line.starts_with(&format!(
                "flowstate: error: cannot reach the flowstate HTTP API at {addr}: "
            )) && line.ends_with(&format!("(is the job running with --rest {addr}?)")),
            "{line}"
        );
    }
    let run = flowstate(dir.path(), &["list", "--rest", "https://h:1"]);
    run.assert_failure();
    assert!(run.single_error_line().contains("no TLS"), "{run}");
}

#[test]
fn the_client_commands_send_the_token_from_the_flag_or_the_environment() {
    const TOKEN: &str = "cli-t0ken";
    let (fake, server) = Fake::start_with(&ServeOptions {
        token: Some(TOKEN.into()),
        ..ServeOptions::default()
    });
    let dir = tempdir();
    let addr = server.local_addr().to_string();

    // Without it: one clear line that says where a token comes from.
    let run = client(dir.path(), server.local_addr(), &["list"]);
    run.assert_failure();
    let line = run.single_error_line();
    assert!(
        line.contains("--rest-token")
            && line.contains("FLOWSTATE_REST_TOKEN")
            && line.contains("HTTP 401"),
        "{line}"
    );
    let run = client(
        dir.path(),
        server.local_addr(),
        &["list", "--rest-token", "wrong"],
    );
    run.assert_failure();
    assert!(
        run.single_error_line().contains("wrong bearer token"),
        "{run}"
    );

    // With it, by flag or by environment, every command works.
    let run = client(
        dir.path(),
        server.local_addr(),
        &["list", "--rest-token", TOKEN],
    );
    run.assert_success();
    assert!(
        run.stdout.contains("0badc0ffee  RUNNING   keyed-count"),
        "{run}"
    );
    let run = flowstate_env(
        dir.path(),
        &["list", "--rest", &addr],
        &[("FLOWSTATE_REST_TOKEN", TOKEN)],
    );
    run.assert_success();
    let run = client(
        dir.path(),
        server.local_addr(),
        &["savepoint", "1d", "--target", "/sp", "--rest-token", TOKEN],
    );
    run.assert_success();
    let run = flowstate_env(
        dir.path(),
        &["stop", "0badc0ffee", "--savepoint", "/sp", "--rest", &addr],
        &[("FLOWSTATE_REST_TOKEN", TOKEN)],
    );
    run.assert_success();
    let run = client(
        dir.path(),
        server.local_addr(),
        &["cancel", "doomed", "--rest-token", TOKEN],
    );
    run.assert_success();
    assert_eq!(
        fake.triggers(),
        vec![
            ("1d".to_owned(), Some("/sp".to_owned()), false),
            ("0badc0ffee".to_owned(), Some("/sp".to_owned()), true),
        ]
    );
}
