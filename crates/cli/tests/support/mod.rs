//! Helpers for the end-to-end tests of the `flowstate` binary: running it (to
//! the end, or spawned in the background to be acted on and killed), reading
//! what its file sink committed, and an independent reference implementation
//! of workload W and of wordcount to check the results against.
//!
//! Nothing here is imported from the flowstate crates: the checker must not share
//! code (or bugs) with what it checks.
//!
//! Every test binary compiles this module on its own and uses only part of it,
//! hence the `dead_code` allowance.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest a run that is not killed may take.
pub const RUN_DEADLINE: Duration = Duration::from_secs(300);

/// What one run of the binary produced.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with both streams unless the run exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "flowstate failed: {self}");
        self
    }

    /// Panics unless the run exited non-zero (and was not killed by a signal),
    /// wrote something to stderr and printed no RESULT line.
    pub fn assert_failure(&self) -> &Self {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "expected a non-zero exit code: {self}"
        );
        assert!(
            !self.stderr.trim().is_empty(),
            "expected a message on stderr: {self}"
        );
        assert!(
            !self.stdout.contains("RESULT"),
            "a failed run must not print a RESULT line: {self}"
        );
        self
    }

    /// The lines of stderr that are the CLI's own error messages.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("flowstate: error:"))
            .collect()
    }

    /// Panics unless stderr holds exactly one `flowstate: error: ...` line;
    /// returns it.
    pub fn single_error_line(&self) -> &str {
        let lines = self.error_lines();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one 'flowstate: error:' line: {self}"
        );
        lines[0]
    }

    /// Panics unless stdout is exactly one line starting with `RESULT `;
    /// returns it (without the newline).
    pub fn result_line(&self) -> &str {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("RESULT ") && self.stdout.ends_with('\n'),
            "expected stdout to be exactly one RESULT line: {self}"
        );
        lines[0]
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `flowstate ARGS` in `cwd` (so that nothing it might write lands in the
/// repository) and waits for it.
pub fn flowstate(cwd: &Path, args: &[&str]) -> Run {
    flowstate_env(cwd, args, &[])
}

/// [`flowstate`] with environment variables `env` set (and no other
/// `FLOWSTATE_` settings of the test's own environment).
pub fn flowstate_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_flowstate"))
        .args(args)
        .current_dir(cwd)
        .env_remove("FLOWSTATE_LOG")
        .env_remove("FLOWSTATE_REST_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("cannot start the flowstate binary");
    Run {
        code: status.code(),
        stdout: String::from_utf8(stdout).expect("stdout is not UTF-8"),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// `path` as a `&str` argument.
pub fn arg(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Owned arguments.
pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// [`flowstate`] with owned arguments.
pub fn run_args(cwd: &Path, args: &[String]) -> Run {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    flowstate(cwd, &refs)
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("cannot create a temporary directory")
}

/// The tests that spawn multi-threaded processes (throttled, acted on while
/// they run, killed at chosen moments) take turns: at most `TURNS_MAX` at a
/// time per test binary, which keeps a small machine responsive and the kill
/// moments meaningful while a throttled child waits.
pub fn one_at_a_time() -> Turn {
    let mut running = TURNS.running.lock().unwrap_or_else(|e| e.into_inner());
    while *running >= TURNS_MAX {
        running = TURNS.freed.wait(running).unwrap_or_else(|e| e.into_inner());
    }
    *running += 1;
    Turn
}

/// Tests of one binary that may run their processes at once.
const TURNS_MAX: usize = 2;

struct Turns {
    running: Mutex<usize>,
    freed: std::sync::Condvar,
}

static TURNS: Turns = Turns {
    running: Mutex::new(0),
    freed: std::sync::Condvar::new(),
};

/// A test's turn ([`one_at_a_time`]), given back when dropped.
pub struct Turn;

impl Drop for Turn {
    fn drop(&mut self) {
        let mut running = TURNS.running.lock().unwrap_or_else(|e| e.into_inner());
        *running = running.saturating_sub(1);
        TURNS.freed.notify_one();
    }
}

/// Copies a directory tree, hidden (in-progress) files included.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Where a run keeps its keyed state: heap or RocksDB (full or incremental).
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Heap,
    RocksDb,
    RocksDbIncremental,
}

impl Backend {
    /// The run's arguments for this backend, its local state under `state_dir`.
    pub fn args(self, state_dir: &Path) -> Vec<String> {
        let rocksdb = |incremental: bool| {
            let mut args = strings(&["--state-backend", "rocksdb", "--state-dir", arg(state_dir)]);
            if incremental {
                args.push("--incremental".into());
            }
            args
        };
        match self {
            Backend::Heap => Vec::new(),
            Backend::RocksDb => rocksdb(false),
            Backend::RocksDbIncremental => rocksdb(true),
        }
    }
}

// ---------------------------------------------------------------------------
// Spawned runs, and kill moments.

/// A child process that is killed if the test ends early.
pub struct Process {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    pub started: Instant,
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `flowstate ARGS` in `cwd`, its stdout and stderr going to
/// `<logs>/<name>.out` and `.err`.
pub fn start(cwd: &Path, logs: &Path, name: &str, args: &[String]) -> Process {
    start_env(cwd, logs, name, args, &[])
}

/// [`start`] with environment variables `env` set.
pub fn start_env(
    cwd: &Path,
    logs: &Path,
    name: &str,
    args: &[String],
    env: &[(&str, &str)],
) -> Process {
    std::fs::create_dir_all(logs).unwrap();
    let stdout = logs.join(format!("{name}.out"));
    let stderr = logs.join(format!("{name}.err"));
    let child = Command::new(env!("CARGO_BIN_EXE_flowstate"))
        .args(args)
        .current_dir(cwd)
        .env_remove("FLOWSTATE_LOG")
        .env_remove("FLOWSTATE_REST_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).unwrap())
        .stderr(File::create(&stderr).unwrap())
        .spawn()
        .expect("cannot start the flowstate binary");
    Process {
        child,
        stdout,
        stderr,
        started: Instant::now(),
    }
}

const SIGKILL: i32 = 9;

/// How a process that was to be killed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Killed,
    ByItself,
}

impl Process {
    fn run(&self, status: ExitStatus) -> Run {
        Run {
            code: status.code(),
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: String::from_utf8_lossy(&std::fs::read(&self.stderr).unwrap_or_default())
                .into_owned(),
        }
    }

    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr).unwrap_or_default()).into_owned()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("a pid fits in i32");
        // SAFETY: kill(2) has no memory-safety preconditions; the child is
        // not reaped yet (it is reaped only by `wait`/`ended`), so its pid
        // cannot have been reused.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "kill({pid}, {signal}) failed");
    }

    /// The run's output if it has ended.
    pub fn ended(&mut self) -> Option<Run> {
        let status = self.child.try_wait().unwrap()?;
        Some(self.run(status))
    }

    /// Waits until the process ended by itself (at most [`RUN_DEADLINE`]
    /// after its start).
    pub fn wait(mut self) -> Run {
        loop {
            if let Some(run) = self.ended() {
                return run;
            }
            if self.started.elapsed() > RUN_DEADLINE {
                let _ = self.child.kill();
                let status = self.child.wait().unwrap();
                panic!(
                    "flowstate did not finish within {RUN_DEADLINE:?}: {}",
                    self.run(status)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL now, unless the process has ended. Returns what happened and
    /// the run's output.
    pub fn kill(mut self) -> (Ending, Run) {
        if let Some(run) = self.ended() {
            return (Ending::ByItself, run);
        }
        let _ = self.child.kill(); // SIGKILL on Unix
        let status = self.child.wait().unwrap();
        let run = self.run(status);
        if status.signal() == Some(SIGKILL) {
            (Ending::Killed, run)
        } else {
            // It ended just before the signal.
            (Ending::ByItself, run)
        }
    }

    /// SIGKILL `at` after the start, unless the process ended before. Returns
    /// what happened and the run's output.
    pub fn kill_at(mut self, at: Duration) -> (Ending, Run) {
        while self.started.elapsed() < at {
            if let Some(run) = self.ended() {
                return (Ending::ByItself, run);
            }
            std::thread::sleep(
                Duration::from_millis(5).min(at.saturating_sub(self.started.elapsed())),
            );
        }
        self.kill()
    }
}

/// The seed of the kill moments: `FLOWSTATE_CRASH_SEED` if set (to replay a
/// run's moments), else `default`.
pub fn crash_seed(default: u64) -> u64 {
    match std::env::var("FLOWSTATE_CRASH_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("FLOWSTATE_CRASH_SEED={text:?} is not a u64")),
        Err(_) => default,
    }
}

/// A small seeded generator (splitmix64 over a counter).
pub struct Rng {
    seed: u64,
    n: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { seed, n: 0 }
    }

    pub fn next(&mut self) -> u64 {
        self.n += 1;
        splitmix64(self.seed ^ splitmix64(self.n))
    }

    /// Uniform in `lo..hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

// ---------------------------------------------------------------------------
// Spawned jobs, served over HTTP; raw HTTP/1.1 with JSON bodies.

/// Longest a job may take to start serving its HTTP API.
pub const API_DEADLINE: Duration = Duration::from_secs(60);

/// A running job with its HTTP API.
pub struct Served {
    pub process: Process,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub job: String,
}

/// Starts `flowstate ARGS --rest 127.0.0.1:0` and waits (reading its stderr as
/// it grows) until it has logged its job id and the address of its HTTP API.
pub fn start_served(cwd: &Path, logs: &Path, name: &str, args: &[String]) -> Served {
    let mut args = args.to_vec();
    args.extend(strings(&["--rest", "127.0.0.1:0"]));
    let mut process = start(cwd, logs, name, &args);
    loop {
        let stderr = process.stderr_so_far();
        let addr = after(&stderr, "HTTP API listening on http://", |c| {
            c.is_whitespace()
        });
        let job = after(&stderr, "job_id=\"", |c| c == '"');
        if let (Some(addr), Some(job)) = (addr, job) {
            return Served { process, addr, job };
        }
        if let Some(run) = process.ended() {
            panic!("flowstate ended before serving its HTTP API: {run}");
        }
        if process.started.elapsed() > API_DEADLINE {
            panic!("no HTTP API after {API_DEADLINE:?}; stderr so far:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The text after the first `marker` in `text`, up to `end` (which must
/// follow: a line still being written is not taken).
pub fn after(text: &str, marker: &str, end: impl Fn(char) -> bool) -> Option<String> {
    let start = text.find(marker)? + marker.len();
    let rest = &text[start..];
    let len = rest.find(end)?;
    Some(rest[..len].to_owned())
}

impl Served {
    pub fn details(&self) -> Value {
        let answer = http(&self.addr, "GET", &format!("/jobs/{}", self.job), None);
        answer.expect_status(200);
        answer.json()
    }

    /// Polls `GET /jobs/{id}` until the job is RUNNING with `records_in` at
    /// least `at_least`.
    pub fn wait_for_records(&mut self, at_least: u64) -> u64 {
        loop {
            if let Some(run) = self.process.ended() {
                panic!("the job ended before {at_least} records were in: {run}");
            }
            let details = self.details();
            // Records in: the sources' `write-records` (a source is a plan
            // node without inputs).
            let sources: Vec<&Value> = details
                .field("plan")
                .field("nodes")
                .array()
                .iter()
                .filter(|n| {
                    n.get("inputs")
                        .and_then(Value::as_array)
                        .is_none_or(Vec::is_empty)
                })
                .map(|n| n.field("id"))
                .collect();
            let records: u64 = details
                .field("vertices")
                .array()
                .iter()
                .filter(|v| sources.contains(&v.field("id")))
                .map(|v| v.field("metrics").field("write-records").u64())
                .sum();
            if records >= at_least && details.field("state").str() == "RUNNING" {
                return records;
            }
            if self.process.started.elapsed() > RUN_DEADLINE {
                panic!("fewer than {at_least} records in after {RUN_DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub struct Http {
    pub status: u16,
    pub content_type: String,
    pub body: String,
    /// What was asked, for messages.
    pub request: String,
}

impl Http {
    pub fn expect_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status, status,
            "{}: expected {status}, got {} {}",
            self.request, self.status, self.body
        );
        self
    }

    pub fn json(&self) -> Value {
        assert!(
            self.content_type.starts_with("application/json"),
            "{}: content type {:?}, body {}",
            self.request,
            self.content_type,
            self.body
        );
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", self.request, self.body))
    }

    /// An error answer: `status`, and Flink's JSON body `{"errors":
    /// ["<non-empty>"]}`. Returns the message.
    pub fn expect_error(&self, status: u16) -> String {
        self.expect_status(status);
        let body = self.json();
        let message = body.field("errors").array()[0].str().to_owned();
        assert!(
            !message.trim().is_empty(),
            "{}: empty error message",
            self.request
        );
        message
    }
}

/// One HTTP/1.1 request over a new connection (`Connection: close`).
pub fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> Http {
    try_http(addr, method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`http`], with connection and read errors returned (the process may be
/// going away).
pub fn try_http(addr: &str, method: &str, path: &str, body: Option<&str>) -> std::io::Result<Http> {
    // As a well-behaved client: JSON on everything that is not a GET.
    let headers = if method == "GET" {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    try_http_with(addr, method, path, headers, body)
}

/// [`http`] with `headers` (each ending in CRLF) as the only headers besides
/// `Host`, `Connection`, `Accept` and `Content-Length`.
pub fn http_with(addr: &str, method: &str, path: &str, headers: &str, body: Option<&str>) -> Http {
    try_http_with(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn try_http_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: Option<&str>,
) -> std::io::Result<Http> {
    let request = format!("{method} {path}");
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n{headers}"
    );
    let body = body.unwrap_or("");
    if body.is_empty() && method == "GET" {
        head.push_str("\r\n");
    } else {
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    }
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{request}: no end of headers in {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut content = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{request}: bad status line {status_line:?}"));
    let mut content_type = String::new();
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-type" => content_type = value.to_owned(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    if chunked {
        content = dechunk(&content);
    }
    Ok(Http {
        status,
        content_type,
        body: String::from_utf8(content)
            .unwrap_or_else(|e| panic!("{request}: body is not UTF-8: {e}")),
        request,
    })
}

pub fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap().trim();
        let size = usize::from_str_radix(size_text, 16).expect("chunk size");
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Reading what the API answered: a missing field or a value of the wrong
/// type fails the test, naming what was there instead.
pub trait Json {
    /// The field `key` of an object, which must be there.
    fn field(&self, key: &str) -> &Value;
    fn str(&self) -> &str;
    fn u64(&self) -> u64;
    fn array(&self) -> &[Value];
}

impl Json for Value {
    fn field(&self, key: &str) -> &Value {
        self.get(key)
            .unwrap_or_else(|| panic!("no field {key:?} in {self}"))
    }

    fn str(&self) -> &str {
        self.as_str()
            .unwrap_or_else(|| panic!("not a string: {self}"))
    }

    fn u64(&self) -> u64 {
        self.as_u64().unwrap_or_else(|| panic!("not a u64: {self}"))
    }

    fn array(&self) -> &[Value] {
        self.as_array()
            .unwrap_or_else(|| panic!("not an array: {self}"))
    }
}

// ---------------------------------------------------------------------------
// Workload W, written from the brief.

pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The final state of W: for every key, the values (= record indices) it got, in
/// index order. Keys that got no record are absent.
pub fn workload_values(records: u64, keys: u64) -> BTreeMap<u64, Vec<u64>> {
    let mut values: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for i in 0..records {
        values.entry(splitmix64(i) % keys).or_default().push(i);
    }
    values
}

/// `(distinct keys, checksum)` of W's final state, per the brief's definition.
pub fn workload_checksum(records: u64, keys: u64) -> (u64, u64) {
    // A dense table: fine for the key counts the tests use (at most 1M).
    let mut state = vec![(0u64, 0u64); keys as usize];
    for i in 0..records {
        let slot = &mut state[(splitmix64(i) % keys) as usize];
        slot.0 += 1;
        slot.1 = slot.1.wrapping_add(i);
    }
    let mut distinct = 0;
    let mut checksum = 0u64;
    for (key, &(count, sum)) in state.iter().enumerate() {
        if count > 0 {
            distinct += 1;
            let mixed = splitmix64(splitmix64(splitmix64(key as u64) ^ count) ^ sum);
            checksum = checksum.wrapping_add(mixed);
        }
    }
    (distinct, checksum)
}

/// The exact RESULT line `keyed-count --records N --keys K` must print.
pub fn expected_keyed_count_result(records: u64, keys: u64) -> String {
    let (distinct, checksum) = workload_checksum(records, keys);
    format!("RESULT records={records} keys={distinct} checksum={checksum:016x}")
}

/// Panics unless `line` has the shape `RESULT records=N keys=K checksum=<16 hex>`.
pub fn assert_keyed_count_result_shape(line: &str) {
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.len(), 4, "bad RESULT line {line:?}");
    assert_eq!(fields[0], "RESULT", "bad RESULT line {line:?}");
    let number = |field: &str, name: &str| {
        let value = field
            .strip_prefix(name)
            .unwrap_or_else(|| panic!("expected {name}... in {line:?}"));
        assert!(
            !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()),
            "not a decimal number after {name} in {line:?}"
        );
    };
    number(fields[1], "records=");
    number(fields[2], "keys=");
    let checksum = fields[3]
        .strip_prefix("checksum=")
        .unwrap_or_else(|| panic!("expected checksum=... in {line:?}"));
    assert!(
        checksum.len() == 16
            && checksum
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "checksum is not 16 lower-case hex digits in {line:?}"
    );
}

// ---------------------------------------------------------------------------
// Committed output of the file sink.

/// The lines of every committed (visible) file in `dir`. Panics if an
/// in-progress (dot-prefixed) file or a subdirectory remains, or if a committed
/// file does not end with a complete line.
pub fn committed_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut leftovers = Vec::new();
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list output dir {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let file_type = entry.file_type().unwrap();
        if name.starts_with('.') || !file_type.is_file() {
            leftovers.push(name);
            continue;
        }
        let text = std::fs::read_to_string(entry.path())
            .unwrap_or_else(|e| panic!("committed file {name} unreadable: {e}"));
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "committed file {name} ends with a partial line"
        );
        lines.extend(text.lines().map(str::to_owned));
    }
    assert!(
        leftovers.is_empty(),
        "hidden or in-progress entries remain in {} after success: {leftovers:?}",
        dir.display()
    );
    lines
}

/// Names of the visible (committed) entries of `dir`.
pub fn visible_entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot list {}: {e}", dir.display()),
    }
}

/// `(key, count, sum)` of a `key,count,sum` line of `keyed-count` output,
/// with a key below `keys` and a count of at least 1.
pub fn keyed_count_line(line: &str, keys: u64) -> (u64, u64, u64) {
    let fields: Vec<u64> = line
        .split(',')
        .map(|f| {
            f.parse()
                .unwrap_or_else(|_| panic!("bad output line {line:?}"))
        })
        .collect();
    let [key, count, sum] = fields[..] else {
        panic!("bad output line {line:?}");
    };
    assert!(key < keys && count >= 1, "bad output line {line:?}");
    (key, count, sum)
}

/// Workload W's record values grouped by key in one flat table: the values of
/// key k are `values[start[k]..start[k + 1]]`, ascending. Flat arrays rather
/// than a map of vectors because the tests check millions of output lines in a
/// debug build, where a million small allocations cost seconds.
pub struct WorkloadByKey {
    start: Vec<usize>,
    values: Vec<u64>,
}

impl WorkloadByKey {
    pub fn new(records: u64, keys: u64) -> Self {
        let key_of = |i: u64| (splitmix64(i) % keys) as usize;
        let mut start = vec![0usize; keys as usize + 1];
        for i in 0..records {
            start[key_of(i) + 1] += 1;
        }
        for k in 0..keys as usize {
            start[k + 1] += start[k];
        }
        let mut next = start.clone();
        let mut values = vec![0u64; records as usize];
        for i in 0..records {
            let slot = &mut next[key_of(i)];
            values[*slot] = i;
            *slot += 1;
        }
        Self { start, values }
    }

    /// Where key `key`'s values sit in the flat table (empty if out of range).
    fn range(&self, key: u64) -> std::ops::Range<usize> {
        let k = key as usize;
        match (self.start.get(k), self.start.get(k + 1)) {
            (Some(&from), Some(&to)) => from..to,
            _ => 0..0,
        }
    }
}

/// The brief's exactly-once check of `keyed-count` output, made stronger: for
/// every key, its lines carry counts exactly 1..c once each, the line with count
/// c carries the final sum, and the values added between consecutive counts
/// (sum(j) - sum(j-1), in whatever order the updates happened) are exactly the
/// values of the records of that key, each once.
pub fn check_keyed_count_output(lines: &[String], records: u64, keys: u64) {
    let expected = WorkloadByKey::new(records, keys);
    // The sum of key k's line with count j sits at `expected.range(k).start + j - 1`.
    let mut sums: Vec<Option<u64>> = vec![None; expected.values.len()];
    for line in lines {
        let parse = |s: &str| {
            s.parse::<u64>()
                .unwrap_or_else(|_| panic!("bad output line {line:?}"))
        };
        let mut fields = line.split(',');
        let (Some(key), Some(count), Some(sum), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            panic!("bad output line {line:?}");
        };
        let (key, count, sum) = (parse(key), parse(count), parse(sum));
        assert!(key < keys, "key out of range in {line:?}");
        assert!(count >= 1, "count 0 in {line:?}");
        let range = expected.range(key);
        assert!(
            count as usize <= range.len(),
            "key {key}: count {count} but W has {} records of the key ({line:?})",
            range.len()
        );
        let slot = &mut sums[range.start + count as usize - 1];
        assert!(
            slot.is_none(),
            "key {key}: count {count} appears more than once"
        );
        *slot = Some(sum);
    }
    assert_eq!(
        lines.len() as u64,
        records,
        "one output line per record expected"
    );
    let mut added = Vec::new();
    for key in 0..keys {
        let range = expected.range(key);
        let values = &expected.values[range.clone()];
        let updates = &sums[range];
        if values.is_empty() {
            continue;
        }
        assert!(
            updates.iter().any(Option::is_some),
            "key {key} missing from the output"
        );
        let c = values.len();
        added.clear();
        let mut previous = 0u64;
        for (j, sum) in updates.iter().enumerate() {
            let sum = sum.unwrap_or_else(|| {
                panic!(
                    "key {key}: counts are not exactly 1..{c} (count {} is missing)",
                    j + 1
                )
            });
            added.push(sum.wrapping_sub(previous));
            previous = sum;
        }
        let final_sum = values.iter().fold(0u64, |a, &v| a.wrapping_add(v));
        assert_eq!(
            previous, final_sum,
            "key {key}: the line with count {c} does not carry the final sum"
        );
        added.sort_unstable();
        assert_eq!(
            added, values,
            "key {key}: the values added by its updates are not its records' values"
        );
    }
}

// ---------------------------------------------------------------------------
// Wordcount, written from the brief.

/// Lower-cased words split on non-alphanumeric characters, counted.
pub fn count_words<'a>(texts: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for text in texts {
        for word in text.split(|c: char| !c.is_alphanumeric()) {
            if !word.is_empty() {
                *counts.entry(word.to_lowercase()).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// Checks `word,count` output lines: every word's lines carry counts 1..c
/// exactly once, and c is the expected count of the word.
pub fn check_wordcount_output(lines: &[String], expected: &BTreeMap<String, u64>) {
    let mut by_word: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in lines {
        let (word, count) = line
            .rsplit_once(',')
            .unwrap_or_else(|| panic!("bad output line {line:?}"));
        let count: u64 = count
            .parse()
            .unwrap_or_else(|_| panic!("bad count in output line {line:?}"));
        by_word.entry(word.to_owned()).or_default().push(count);
    }
    let words: Vec<&String> = by_word.keys().collect();
    let expected_words: Vec<&String> = expected.keys().collect();
    assert_eq!(words, expected_words, "the set of words in the output");
    for (word, counts) in &mut by_word {
        counts.sort_unstable();
        let c = expected[word];
        assert_eq!(
            *counts,
            (1..=c).collect::<Vec<u64>>(),
            "word {word:?}: counts are not exactly 1..{c} once each"
        );
    }
    let total: u64 = expected.values().sum();
    assert_eq!(
        lines.len() as u64,
        total,
        "one output line per word occurrence"
    );
}

// ---------------------------------------------------------------------------
// Workload WT (event time), written from the brief.

/// WT's parameters: `(records, keys, events per second, out-of-orderness ms, window ms)`.
#[derive(Debug, Clone, Copy)]
pub struct Wt {
    pub records: u64,
    pub keys: u64,
    pub events_per_second: u64,
    pub out_of_orderness_ms: u64,
    pub window_ms: u64,
}

impl Wt {
    pub fn with_records(records: u64) -> Self {
        Self {
            records,
            keys: 100_000,
            events_per_second: 100_000,
            out_of_orderness_ms: 2_000,
            window_ms: 10_000,
        }
    }

    /// Every `(key, window_start) -> (count, sum)`, per the brief.
    pub fn windows(&self) -> BTreeMap<(u64, i64), (u64, u64)> {
        let mut windows = BTreeMap::new();
        for i in 0..self.records {
            let key = splitmix64(i) % self.keys;
            let ts = 1_700_000_000_000i64
                + (i as i128 * 1000 / self.events_per_second as i128) as i64
                - (splitmix64(i ^ 0xD1B5_4A32_D192_ED03) % (self.out_of_orderness_ms + 1)) as i64;
            let w = self.window_ms as i64;
            let start = ts - ts.rem_euclid(w);
            let entry = windows.entry((key, start)).or_insert((0u64, 0u64));
            entry.0 += 1;
            entry.1 = entry.1.wrapping_add(i);
        }
        windows
    }

    /// The exact RESULT line `window-count` must print.
    pub fn expected_result(&self) -> String {
        let windows = self.windows();
        let mut checksum = 0u64;
        for (&(key, start), &(count, sum)) in &windows {
            let mixed =
                splitmix64(splitmix64(splitmix64(splitmix64(key) ^ start as u64) ^ count) ^ sum);
            checksum = checksum.wrapping_add(mixed);
        }
        format!(
            "RESULT records={} windows={} checksum={checksum:016x}",
            self.records,
            windows.len()
        )
    }
}

/// Checks `window-count` output lines `key,window_start_ms,count,sum`:
/// every (key, window) of the workload exactly once, with its true count and
/// sum; nothing else.
pub fn check_window_count_output(lines: &[String], wt: &Wt) {
    let expected = wt.windows();
    let mut seen: BTreeMap<(u64, i64), (u64, u64)> = BTreeMap::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), 4, "bad output line {line:?}");
        let key: u64 = fields[0]
            .parse()
            .unwrap_or_else(|_| panic!("key in {line:?}"));
        let start: i64 = fields[1]
            .parse()
            .unwrap_or_else(|_| panic!("start in {line:?}"));
        let count: u64 = fields[2]
            .parse()
            .unwrap_or_else(|_| panic!("count in {line:?}"));
        let sum: u64 = fields[3]
            .parse()
            .unwrap_or_else(|_| panic!("sum in {line:?}"));
        if let Some(previous) = seen.insert((key, start), (count, sum)) {
            panic!("window ({key}, {start}) output twice: {previous:?} and {line:?}");
        }
        match expected.get(&(key, start)) {
            Some(&truth) => assert_eq!(
                (count, sum),
                truth,
                "window ({key}, {start}): {line:?}, expected count,sum {truth:?}"
            ),
            None => panic!("window ({key}, {start}) has no record: {line:?}"),
        }
    }
    if seen.len() != expected.len() {
        let missing = expected.keys().find(|k| !seen.contains_key(k));
        panic!(
            "{} of {} windows in the output; first missing: {missing:?}",
            seen.len(),
            expected.len()
        );
    }
}

/// The newest completed checkpoint's id under checkpoint directory `ck`
/// (any job): a `chk-N` directory with its `_metadata`.
pub fn newest_checkpoint(ck: &Path) -> Option<u64> {
    let mut newest = None;
    for job in std::fs::read_dir(ck).ok()?.flatten() {
        for chk in std::fs::read_dir(job.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = chk.file_name().to_string_lossy().into_owned();
            if let Some(id) = name
                .strip_prefix("chk-")
                .and_then(|n| n.parse::<u64>().ok())
                && chk.path().join("_metadata").exists()
            {
                newest = newest.max(Some(id));
            }
        }
    }
    newest
}

/// Whether the newest completed checkpoint under `ck` (the one `--restore
/// latest` takes) holds in-flight records of an unaligned checkpoint.
pub fn newest_has_channel_state(ck: &Path) -> bool {
    let Ok(jobs) = std::fs::read_dir(ck) else {
        return false;
    };
    let mut newest: Option<(u64, std::path::PathBuf)> = None;
    for job in jobs.flatten() {
        for chk in std::fs::read_dir(job.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = chk.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_prefix("chk-")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if chk.path().join("_metadata").exists() && newest.as_ref().is_none_or(|(n, _)| id > *n)
            {
                newest = Some((id, chk.path()));
            }
        }
    }
    newest.is_some_and(|(_, dir)| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|f| f.file_name().to_string_lossy().ends_with(".channels"))
    })
}

/// Polls `done` on `process`'s stderr so far until it answers, failing the
/// test after `within` (a bound on a wait, never reached when all is well).
pub fn wait_for_stderr<T>(
    process: &Process,
    what: &str,
    within: Duration,
    done: impl Fn(&str) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let stderr = process.stderr_so_far();
        if let Some(value) = done(&stderr) {
            return value;
        }
        assert!(Instant::now() < deadline, "never {what}: {stderr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
