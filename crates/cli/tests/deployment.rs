//! The deployment files (`deploy/`) and the pages that show them name only
//! flags the binary has: every `--flag` in the Kubernetes manifest, in
//! docs/deployment.md and in docs/high-availability.md is one that
//! `flowstate run keyed-count` accepts (the manifests run keyed-count). Each
//! process's command line in the manifest parses as a whole (values,
//! conflicts, requirements), and the etcd the job managers and task managers
//! are given is the one `deploy/kubernetes/etcd.yaml` serves.

mod support;

use std::path::{Path, PathBuf};

use support::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(file: &str) -> String {
    std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn the_manifests_name_only_flags_the_binary_has() {
    let root = root();
    let help = flowstate(&root, &["run", "keyed-count", "--help"]);
    help.assert_success();
    let mut checked = 0;
    for file in [
        "deploy/kubernetes/flowstate.yaml",
        "docs/deployment.md",
        "docs/high-availability.md",
    ] {
        let text = read(file);
        for flag in text
            .split(|c: char| c.is_whitespace() || c == '`' || c == '=')
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
        {
            // Not flowstate's: docker's, kubectl's, cargo's and etcdctl's.
            if [
                "--from-literal",
                "--features",
                "--locked",
                "--release",
                "--prefix",
            ]
            .contains(&flag)
                || flag == "--"
            {
                continue;
            }
            assert!(
                help.stdout.contains(&format!("{flag} "))
                    || help.stdout.contains(&format!("{flag}\n")),
                "{file} names {flag}, which `flowstate run keyed-count` does not have"
            );
            checked += 1;
        }
    }
    assert!(checked > 10, "only {checked} flags found");
}

/// The folded scalars of a manifest (`KEY: >-` or `- >-`, and the lines
/// indented deeper below it), each as its key (`-` for a list item) and its
/// lines joined by spaces.
fn folded_blocks(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        i += 1;
        if trimmed.starts_with('#') || !trimmed.ends_with(">-") {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let key = trimmed
            .trim_end_matches(">-")
            .trim()
            .trim_end_matches(':')
            .to_owned();
        let mut body = Vec::new();
        while let Some(next) = lines.get(i) {
            let content = next.trim_start();
            if !content.is_empty() && next.len() - content.len() <= indent {
                break;
            }
            if !content.is_empty() {
                body.push(content);
            }
            i += 1;
        }
        blocks.push((key, body.join(" ")));
    }
    blocks
}

/// The value after `flag` in `args` (each occurrence).
fn values<'a>(args: &[&'a str], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1])
        .collect()
}

/// Each container's command line in the manifest, its variables given
/// values as Kubernetes would, without the leading `exec flowstate`.
fn manifest_commands() -> Vec<String> {
    let blocks = folded_blocks(&read("deploy/kubernetes/flowstate.yaml"));
    let job_args = &blocks
        .iter()
        .find(|(key, _)| key == "JOB_ARGS")
        .expect("the ConfigMap's JOB_ARGS")
        .1;
    let commands: Vec<String> = blocks
        .iter()
        .filter(|(key, _)| key == "-")
        .map(|(_, command)| {
            let line = command
                .replace("$JOB_ARGS", job_args)
                .replace("$(POD_IP)", "10.0.0.7")
                .replace("$(POD_NAME)", "flowstate-taskmanager-0")
                .replace("$(POD_INDEX)", "1");
            assert!(
                !line.contains('$'),
                "a variable the test does not know: {line}"
            );
            line.strip_prefix("exec flowstate ")
                .unwrap_or_else(|| panic!("not `exec flowstate ...`: {line}"))
                .to_owned()
        })
        .collect();
    assert_eq!(
        commands.len(),
        2,
        "a job manager's and a task manager's command line: {commands:?}"
    );
    commands
}

#[test]
fn each_process_of_the_manifest_accepts_its_command_line() {
    let tmp = tempdir();
    // `--check-savepoint` parses every flag as a run does, then only reads a
    // snapshot (none here): an error about it means the command line parsed.
    let missing = tmp.path().join("no-such-savepoint");
    for command in manifest_commands() {
        let mut args: Vec<&str> = command.split_whitespace().collect();
        args.extend(["--check-savepoint", missing.to_str().unwrap()]);
        let run = flowstate(tmp.path(), &args);
        assert!(
            !run.success()
                && run.stderr.contains("no-such-savepoint")
                && !run.stderr.contains("Usage:"),
            "the command line of the manifest did not parse: {command}\n{run}"
        );
    }
}

#[test]
fn the_manifest_wires_standby_job_managers_to_the_etcd_it_deploys() {
    let commands = manifest_commands();
    let mut urls = Vec::new();
    for command in &commands {
        let args: Vec<&str> = command.split_whitespace().collect();
        let etcd = values(&args, "--ha-etcd");
        assert_eq!(etcd.len(), 1, "one --ha-etcd: {command}");
        assert_eq!(values(&args, "--ha-id").len(), 1, "one --ha-id: {command}");
        assert!(
            values(&args, "--jobmanager").is_empty(),
            "--jobmanager with --ha-etcd: {command}"
        );
        urls.push(etcd[0]);
        if args.contains(&"--task-managers") {
            // Task managers cannot dial 0.0.0.0 (the default with
            // --task-managers): the job manager must say where it is (refused
            // at start otherwise, which parsing does not catch).
            let listen = values(&args, "--cluster-listen")
                .last()
                .copied()
                .unwrap_or("0.0.0.0:6123");
            assert!(
                !(listen.starts_with("0.0.0.0:") || listen.starts_with("[::]:"))
                    || values(&args, "--cluster-advertise").len() == 1,
                "a job manager listening on {listen} without --cluster-advertise: {command}"
            );
        }
    }
    assert!(
        commands.iter().any(|c| c.contains("--task-managers")),
        "no job manager: {commands:?}"
    );
    assert!(
        urls.windows(2).all(|w| w[0] == w[1]),
        "every process must use the same etcd: {urls:?}"
    );
    // http://SERVICE:PORT, the Service and port of etcd.yaml, which etcd
    // advertises.
    let url = urls[0];
    let (service, port) = url
        .strip_prefix("http://")
        .and_then(|a| a.rsplit_once(':'))
        .unwrap_or_else(|| panic!("--ha-etcd {url}: not http://HOST:PORT"));
    let etcd = read("deploy/kubernetes/etcd.yaml");
    assert!(
        etcd.contains(&format!("  name: {service}\n")),
        "etcd.yaml defines no {service}"
    );
    assert!(
        etcd.contains(&format!("port: {port}\n")),
        "etcd.yaml's Service has no port {port}"
    );
    assert!(
        etcd.contains(&format!("value: {url}\n")),
        "etcd.yaml's etcd does not advertise {url}"
    );
}
