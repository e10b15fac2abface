//! The web UI in a real headless browser against a real job: `flowstate run
//! keyed-count` with checkpoints every 200 ms and a bearer token serves its
//! page; `web_ui/ui-test.cjs` (playwright-core driving Debian's Chromium) enters
//! the token, waits for the graph with rates and the checkpoint table to fill
//! from the live API, has a savepoint to a forbidden directory refused, takes one
//! into the allowed directory, then cancels the job from the page and waits for
//! the page to show it ended. This test checks what the job did: the savepoint
//! directory exists where the page said, and the job ended cancelled.
//!
//! Needs Chromium and playwright-core: `eval "$(bash scripts/browser.sh)"`
//! (scripts/test.sh does it and sets FLOWSTATE_REQUIRE_BROWSER=1; without them
//! the test is skipped, or fails when that is set). Screenshots land in the
//! test's temporary directory; FLOWSTATE_WEB_UI_KEEP=<dir> keeps a copy.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Json, arg, one_at_a_time, start_served, strings, tempdir};

/// The whole browser session (a debug job on a busy machine; every step inside
/// waits for the page, at most 90 s each).
const SESSION_DEADLINE: Duration = Duration::from_secs(600);

const TOKEN: &str = "web-ui-test-token-3f9a";

/// Where the browser and the driver are, or why the test cannot run.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let chromium =
        PathBuf::from(std::env::var("FLOWSTATE_CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    if !chromium.is_file() {
        return Err(format!("no Chromium at {}", chromium.display()));
    }
    let modules = std::env::var("FLOWSTATE_WEB_UI_NODE_MODULES")
        .map(PathBuf::from)
        .map_err(|_| "FLOWSTATE_WEB_UI_NODE_MODULES is not set".to_owned())?;
    if !modules
        .join("playwright-core")
        .join("package.json")
        .is_file()
    {
        return Err(format!("no playwright-core under {}", modules.display()));
    }
    let node = Command::new("node")
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run node: {e}"))?;
    if !node.status.success() {
        return Err("node --version failed".into());
    }
    Ok((chromium, modules))
}

#[test]
fn the_web_ui_shows_a_live_job_and_takes_a_savepoint() {
    let (chromium, modules) = match browser() {
        Ok(found) => found,
        Err(why) if std::env::var("FLOWSTATE_REQUIRE_BROWSER").as_deref() == Ok("1") => {
            panic!("FLOWSTATE_REQUIRE_BROWSER=1 but {why} (run scripts/browser.sh)")
        }
        Err(why) => {
            eprintln!("skipped: {why}; `eval \"$(bash scripts/browser.sh)\"` installs the browser");
            return;
        }
    };
    let _machine = one_at_a_time();
    let dir = tempdir();
    let root = dir.path();
    let savepoints = root.join("savepoints");
    let forbidden = root.join("elsewhere");
    std::fs::create_dir_all(&savepoints).unwrap();
    let args = strings(&[
        "run",
        "keyed-count",
        "--records",
        "1000000000000",
        "--keys",
        "10000",
        "--rate",
        "20000",
        "--parallelism",
        "2",
        "--checkpoint-interval",
        "200ms",
        "--checkpoint-dir",
        arg(&root.join("checkpoints")),
        "--savepoint-dir",
        arg(&savepoints),
        "--rest-token",
        TOKEN,
    ]);
    let job = start_served(root, &root.join("logs"), "job", &args);

    let out = root.join("browser");
    std::fs::create_dir_all(&out).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web_ui/ui-test.cjs");
    let mut node = Command::new("node")
        .arg(&script)
        .env("FLOWSTATE_UI_URL", format!("http://{}/", job.addr))
        .env("FLOWSTATE_UI_TOKEN", TOKEN)
        .env("FLOWSTATE_UI_TARGET", arg(&savepoints))
        .env("FLOWSTATE_UI_FORBIDDEN", arg(&forbidden))
        .env("FLOWSTATE_UI_OUT", arg(&out))
        .env("FLOWSTATE_CHROMIUM", &chromium)
        .env("FLOWSTATE_WEB_UI_NODE_MODULES", &modules)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out.join("stdout")).unwrap())
        .stderr(std::fs::File::create(out.join("stderr")).unwrap())
        .spawn()
        .expect("cannot start node");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = node.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > SESSION_DEADLINE {
            let _ = node.kill();
            let _ = node.wait();
            panic!(
                "the browser session did not end within {SESSION_DEADLINE:?}: {}",
                std::fs::read_to_string(out.join("stderr")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(out.join("stdout")).unwrap_or_default();
    let stderr = std::fs::read_to_string(out.join("stderr")).unwrap_or_default();
    if let Ok(keep) = std::env::var("FLOWSTATE_WEB_UI_KEEP") {
        std::fs::create_dir_all(&keep).unwrap();
        for name in ["web-ui.png", "web-ui-ended.png", "failure.png"] {
            let _ = std::fs::copy(out.join(name), Path::new(&keep).join(name));
        }
    }
    assert!(
        status.success(),
        "the browser session failed ({status}):\n{stderr}\n--- the job's stderr ---\n{}",
        job.process.stderr_so_far()
    );
    let seen: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the session's report is not JSON ({e}): {stdout}\n{stderr}"));
    eprintln!("[web-ui] {seen}");

    // The graph: keyed-count is a source, a keyed count and a sink, joined by edges.
    assert!(seen.field("vertices").u64() >= 2, "{seen}");
    assert!(seen.field("edges").u64() >= 1, "{seen}");
    assert!(seen.field("checkpointRows").u64() >= 1, "{seen}");
    assert!(seen.field("configRows").u64() >= 1, "{seen}");
    // The refused target: the page showed the API's 403.
    let refusal = seen.field("refusal").str();
    assert!(
        refusal.contains("403"),
        "the page should show the refusal's status: {refusal}"
    );
    // The savepoint: where the page said, right under the target, complete.
    let location = seen.field("location").str();
    let path = PathBuf::from(location.strip_prefix("file://").unwrap_or(location));
    assert_eq!(
        path.parent(),
        Some(savepoints.as_path()),
        "savepoint at {location}"
    );
    assert!(
        path.join("_metadata").is_file(),
        "no _metadata in {}",
        path.display()
    );
    assert!(
        !forbidden.exists(),
        "the refused savepoint wrote {}",
        forbidden.display()
    );
    assert!(out.join("web-ui.png").is_file(), "no screenshot");
    assert!(
        out.join("web-ui-ended.png").is_file(),
        "no screenshot of the ended job"
    );

    // The cancel from the page ended the job.
    let run = job.process.wait();
    run.assert_failure();
    assert!(
        run.single_error_line().contains("cancelled"),
        "the job should end cancelled: {run}"
    );
}
