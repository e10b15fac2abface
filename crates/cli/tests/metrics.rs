//! `GET /metrics` of a real running `keyed-count`: the document passes
//! Prometheus's own checker (`promtool check metrics`), every task and
//! operator series carries the job, task/operator and subtask labels, the
//! counters grow between two scrapes, and checkpoints, sink commits and
//! state sizes show up.
//!
//! promtool comes with Debian's `prometheus` package, which scripts/test.sh
//! installs; there FLOWSTATE_REQUIRE_PROMTOOL=1 makes its absence a failure
//! instead of a skip.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Served, arg, http, start_served, strings, tempdir};

/// One sample: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// The samples of a text-format document (label values without escapes,
/// which is all this job produces).
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), HashMap::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = HashMap::new();
                for pair in rest.split("\",") {
                    let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                    labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                }
                (name.to_owned(), labels)
            }
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

fn of<'a>(samples: &'a [Sample], name: &str) -> Vec<&'a Sample> {
    samples.iter().filter(|s| s.name == name).collect()
}

fn scrape(job: &Served) -> String {
    let answer = http(&job.addr, "GET", "/metrics", None);
    answer.expect_status(200);
    assert!(
        answer.content_type.starts_with("text/plain; version=0.0.4"),
        "content type {}",
        answer.content_type
    );
    answer.body
}

/// `promtool check metrics` on `text`: `None` when promtool is not installed
/// (and not required), else its verdict.
fn promtool(text: &str) -> Option<Result<(), String>> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if std::env::var("FLOWSTATE_REQUIRE_PROMTOOL").as_deref() == Ok("1") => {
            panic!("FLOWSTATE_REQUIRE_PROMTOOL=1 but promtool cannot be run: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED the promtool check: promtool cannot be run ({e})");
            return None;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(if output.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool: {}: {said}", output.status))
    })
}

#[test]
fn a_running_keyed_count_serves_prometheus_metrics_that_grow() {
    let dir = tempdir();
    let root = dir.path();
    let args = {
        let mut args = strings(&[
            "run",
            "keyed-count",
            "--records",
            "100000000",
            "--keys",
            "1000",
            "--parallelism",
            "2",
            // Slow enough to run for minutes, fast enough to fill batches.
            "--rate",
            "200000",
            "--checkpoint-interval",
            "200ms",
        ]);
        args.extend(strings(&["--checkpoint-dir", arg(&root.join("ck"))]));
        args.extend(strings(&["--output", arg(&root.join("out"))]));
        args
    };
    let job = start_served(root, &root.join("logs"), "run", &args);

    // Wait until checkpoints completed, sinks committed and state was sampled.
    let deadline = Instant::now() + Duration::from_secs(120);
    let first = loop {
        let text = scrape(&job);
        let samples = parse(&text);
        let committed = of(&samples, "flowstate_sink_commits_total")
            .iter()
            .any(|s| s.value > 0.0);
        let checkpointed = !of(&samples, "flowstate_task_last_checkpoint_id").is_empty();
        let state = of(&samples, "flowstate_state_entries")
            .iter()
            .any(|s| s.value > 0.0);
        if committed && checkpointed && state {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint, commit or state metrics within two minutes:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    if let Some(verdict) = promtool(&first) {
        verdict.unwrap_or_else(|e| panic!("{e}\n--- the document:\n{first}"));
    }

    let samples = parse(&first);
    // Every task and operator series names its job, task or operator and subtask.
    let tasks = of(&samples, "flowstate_task_records_in_total");
    assert_eq!(tasks.len(), 4, "two tasks of two subtasks: {tasks:#?}");
    for s in samples.iter().filter(|s| {
        s.name.starts_with("flowstate_task_") || s.name.starts_with("flowstate_operator_")
    }) {
        assert_eq!(
            s.labels.get("job_name").map(String::as_str),
            Some("keyed-count"),
            "{s:?}"
        );
        assert_eq!(s.labels.get("job_id"), Some(&job.job), "{s:?}");
        for label in ["task", "operator_uid", "subtask"] {
            assert!(s.labels.contains_key(label), "{label} missing: {s:?}");
        }
    }
    let subtasks: Vec<&str> = tasks.iter().map(|s| s.labels["subtask"].as_str()).collect();
    assert!(
        subtasks.contains(&"0") && subtasks.contains(&"1"),
        "{subtasks:?}"
    );
    for name in [
        "flowstate_task_busy_time_seconds_total",
        "flowstate_task_idle_time_seconds_total",
        "flowstate_task_backpressured_time_seconds_total",
        "flowstate_task_busy_time_ratio",
        "flowstate_task_input_queue_usage",
        "flowstate_task_output_queue_usage",
        "flowstate_task_last_checkpoint_duration_seconds",
        "flowstate_task_last_checkpoint_sync_pause_seconds",
        "flowstate_task_last_checkpoint_alignment_seconds",
        "flowstate_operator_records_out_total",
        "flowstate_sink_last_commit_duration_seconds",
        "flowstate_job_restarts_total",
        "flowstate_job_checkpoints_completed_total",
    ] {
        assert!(!of(&samples, name).is_empty(), "no {name} in:\n{first}");
    }
    let operators = of(&samples, "flowstate_operator_records_in_total");
    for kind in ["source", "operator", "sink"] {
        assert!(
            operators.iter().any(|s| s.labels["kind"] == kind),
            "no {kind} operator: {operators:#?}"
        );
    }
    assert!(
        of(&samples, "flowstate_state_entries")
            .iter()
            .all(|s| s.labels.contains_key("state") && s.labels["kind"] == "operator")
    );

    // The counters grow.
    let records = |samples: &[Sample], name: &str| -> HashMap<String, f64> {
        of(samples, name)
            .into_iter()
            .map(|s| (s.labels["task"].clone(), s.value))
            .collect()
    };
    let before = records(&samples, "flowstate_task_records_in_total");
    let busy_before = records(&samples, "flowstate_task_busy_time_seconds_total");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = parse(&scrape(&job));
        let after = records(&now, "flowstate_task_records_in_total");
        let busy_after = records(&now, "flowstate_task_busy_time_seconds_total");
        let grew = before
            .iter()
            .all(|(task, v)| after.get(task).is_some_and(|a| a > v))
            && busy_before
                .iter()
                .all(|(task, v)| busy_after.get(task).is_some_and(|a| a > v));
        if grew {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the counters did not grow within a minute: {before:?} -> {after:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let cancel = support::flowstate(root, &["cancel", &job.job, "--rest", &job.addr]);
    cancel.assert_success();
    job.process.wait();
}

/// `GET /jobs/{id}` of a running job gives every operator its own records in
/// and out and its task's busy/idle/backpressured time (not the job-wide
/// figures), and `GET .../vertices/{vid}/backpressure` answers per subtask.
#[test]
fn the_rest_api_reports_each_operators_own_records_and_time() {
    let dir = tempdir();
    let root = dir.path();
    let args = {
        let mut args = strings(&[
            "run",
            "keyed-count",
            "--records",
            "100000000",
            "--keys",
            "1000",
            "--parallelism",
            "2",
            "--rate",
            "200000",
        ]);
        args.extend(strings(&["--output", arg(&root.join("out"))]));
        args
    };
    let job = start_served(root, &root.join("logs"), "run", &args);
    let path = format!("/jobs/{}", job.job);
    let deadline = Instant::now() + Duration::from_secs(120);
    let vertices = loop {
        let answer = http(&job.addr, "GET", &path, None);
        answer.expect_status(200);
        let details: serde_json::Value =
            serde_json::from_str(&answer.body).expect("job details are JSON");
        let vertices = details["vertices"].as_array().expect("vertices").clone();
        assert_eq!(vertices.len(), 3, "{vertices:#?}");
        let figure = |v: &serde_json::Value, name: &str| v["metrics"][name].as_u64().unwrap_or(0);
        let source = &vertices[0];
        let count = &vertices[1];
        let timed = vertices.iter().all(|v| {
            figure(v, "accumulated-busy-time")
                + figure(v, "accumulated-idle-time")
                + figure(v, "accumulated-backpressured-time")
                > 0
        });
        if figure(source, "write-records") > 0 && figure(count, "read-records") > 0 && timed {
            // The source reads nothing from a channel; the keyed operator's
            // input is its own (it was the job-wide figure of the sinks before).
            assert_eq!(figure(source, "read-records"), 0, "{source:#}");
            assert_eq!(count["metrics"]["read-records-complete"], true);
            break vertices;
        }
        assert!(
            Instant::now() < deadline,
            "no per-operator figures within two minutes: {vertices:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for vertex in &vertices {
        let id = vertex["id"].as_str().expect("vertex id");
        let answer = http(
            &job.addr,
            "GET",
            &format!("{path}/vertices/{id}/backpressure"),
            None,
        );
        answer.expect_status(200);
        let pressure: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
        assert_eq!(pressure["status"], "ok", "{pressure:#}");
        let subtasks = pressure["subtasks"].as_array().expect("subtasks");
        assert_eq!(subtasks.len(), 2, "{pressure:#}");
        for s in subtasks {
            let ratio = s["ratio"].as_f64().expect("ratio");
            assert!((0.0..=1.0).contains(&ratio), "{s:#}");
            assert!(["ok", "low", "high"].contains(&s["backpressureLevel"].as_str().unwrap_or("")));
        }
    }
}
