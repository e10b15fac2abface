//! Graceful shutdown on SIGTERM and SIGINT: the first signal asks the job to
//! stop (at a checkpoint, with a savepoint, or by cancelling it, see
//! [`OnSignal`]) and gives it `--shutdown-timeout` to end; a second signal,
//! or the timeout, ends the process at once, non-zero. Once the job ended,
//! [`resume_command`] is what the caller prints.
//!
//! Owns: the signal thread (`flowstate-signals`, through `signal-hook`) and
//! its decisions. Must not touch: the job other than through its
//! [`JobController`]; it never joins the job (the caller does).

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flowstate_runtime::JobController;
use flowstate_runtime::control::{ControlError, SavepointState};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use super::error::AppError;
use super::runtime_args::OnSignal;

/// How often the signal thread looks at the job while it stops.
const POLL: Duration = Duration::from_millis(20);

/// Test hook: when this environment variable is `1`, the first signal is
/// announced but the job is not asked to stop, so that a test can send a
/// second signal while the run is certainly still stopping (a real stop may
/// end before any second signal arrives). Not for production use.
pub const HOLD_STOP_ENV: &str = "FLOWSTATE_TEST_HOLD_STOP";

/// How a signal stopped the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// The signal's name (`SIGTERM`, `SIGINT`).
    pub signal: &'static str,
    /// What was done.
    pub action: OnSignal,
}

/// What a signal does in this run (`--on-signal`, adjusted to what the job
/// can do).
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub action: OnSignal,
    pub timeout: Duration,
}

impl Plan {
    /// `--on-signal` for a job with or without periodic checkpoints and a
    /// savepoint directory: without checkpoints there is no checkpoint to
    /// stop at, so a savepoint is taken if there is a savepoint directory,
    /// else the job is cancelled; both are logged when the signal comes.
    pub fn new(
        on_signal: OnSignal,
        checkpoints: bool,
        savepoint_dir: bool,
        timeout: Duration,
    ) -> Self {
        let action = match on_signal {
            OnSignal::Checkpoint if !checkpoints && savepoint_dir => OnSignal::Savepoint,
            OnSignal::Checkpoint if !checkpoints => OnSignal::Cancel,
            other => other,
        };
        Self { action, timeout }
    }
}

/// The signal handling of one run, from before the job runs until it ended.
pub struct Shutdown {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
    done: Arc<AtomicBool>,
    stopped: Arc<Mutex<Option<Stopped>>>,
}

fn name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "a signal",
    }
}

impl Shutdown {
    /// Takes over SIGTERM and SIGINT for `controller`'s job.
    pub fn install(
        controller: Arc<JobController>,
        plan: Plan,
        requested: Option<OnSignal>,
    ) -> Result<Self, AppError> {
        let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(|e| AppError::Flag {
            context: "installing the SIGTERM/SIGINT handlers".into(),
            source: Box::new(e),
        })?;
        let handle = signals.handle();
        let done = Arc::new(AtomicBool::new(false));
        let stopped = Arc::new(Mutex::new(None));
        let (thread_done, thread_stopped) = (Arc::clone(&done), Arc::clone(&stopped));
        let thread = std::thread::Builder::new()
            .name("flowstate-signals".into())
            .spawn(move || {
                let Some(first) = signals.forever().next() else {
                    return; // closed: the job ended
                };
                if thread_done.load(Ordering::SeqCst) {
                    return;
                }
                let signal = name(first);
                announce(signal, plan, requested);
                *thread_stopped.lock().unwrap_or_else(|e| e.into_inner()) = Some(Stopped {
                    signal,
                    action: plan.action,
                });
                let deadline = Instant::now() + plan.timeout;
                let hold = std::env::var(HOLD_STOP_ENV).is_ok_and(|v| v == "1");
                let mut stopping = Stopping::default();
                loop {
                    if thread_done.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Some(second) = signals.pending().next() {
                        eprintln!(
                            "{}: {} again: exiting at once; `--restore latest` resumes \
                             from the latest completed checkpoint",
                            crate::app::program_name(),
                            name(second)
                        );
                        std::process::exit(128 + second);
                    }
                    if !hold {
                        stopping.step(&controller, plan.action);
                    }
                    if Instant::now() >= deadline {
                        if thread_done.load(Ordering::SeqCst) {
                            return;
                        }
                        eprintln!(
                            "{}: error: the job did not stop within --shutdown-timeout {} \
                             after {signal}; exiting",
                            crate::app::program_name(),
                            humantime::format_duration(plan.timeout)
                        );
                        std::process::exit(1);
                    }
                    std::thread::sleep(POLL);
                }
            })
            .map_err(|e| AppError::Flag {
                context: "starting the signal thread".into(),
                source: Box::new(e),
            })?;
        Ok(Self {
            handle,
            thread: Some(thread),
            done,
            stopped,
        })
    }

    /// The job ended: the signals go back to their defaults' hands (the
    /// thread ends). What a signal did, if one came.
    pub fn finish(mut self) -> Option<Stopped> {
        self.done.store(true, Ordering::SeqCst);
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn announce(signal: &str, plan: Plan, requested: Option<OnSignal>) {
    let timeout = humantime::format_duration(plan.timeout);
    let what = match (plan.action, requested) {
        (OnSignal::Checkpoint, _) => "stopping the job at a final checkpoint".to_owned(),
        (OnSignal::Savepoint, Some(OnSignal::Checkpoint)) => {
            "the job takes no checkpoints (--checkpoint-interval off): stopping it with a \
             savepoint into --savepoint-dir instead"
                .to_owned()
        }
        (OnSignal::Savepoint, _) => "stopping the job with a savepoint".to_owned(),
        (OnSignal::Cancel, Some(OnSignal::Checkpoint)) => {
            "the job takes no checkpoints (--checkpoint-interval off) and has no \
             --savepoint-dir: cancelling it; its uncommitted output is dropped"
                .to_owned()
        }
        (OnSignal::Cancel, _) => "cancelling the job".to_owned(),
    };
    eprintln!(
        "{}: {signal}: {what} (within {timeout}; a second signal exits at once)",
        crate::app::program_name()
    );
}

/// Asking the job to stop, again until it took the request.
#[derive(Default)]
struct Stopping {
    asked: bool,
    savepoint: Option<String>,
    /// The last refusal said, so a retry loop does not repeat it.
    said: Option<String>,
}

impl Stopping {
    fn step(&mut self, controller: &JobController, action: OnSignal) {
        if controller.status().is_terminal() {
            return;
        }
        if let Some(request) = &self.savepoint {
            // A failed stop-with-savepoint leaves the job running: ask again.
            if let Ok(SavepointState::Failed(reason)) = controller.savepoint(request) {
                self.tell(format!("the savepoint failed ({reason}); trying again"));
                self.savepoint = None;
                self.asked = false;
            }
        }
        if self.asked {
            return;
        }
        let result = match action {
            OnSignal::Checkpoint => controller.stop_with_checkpoint(),
            OnSignal::Savepoint => controller.trigger_savepoint(None, true).map(|request| {
                self.savepoint = Some(request);
            }),
            OnSignal::Cancel => controller.cancel(),
        };
        match result {
            Ok(()) => self.asked = true,
            // Not running yet, busy, between attempts: try again.
            Err(ControlError::Conflict(reason)) => self.tell(reason),
            Err(other) => {
                // It cannot work for this job: cancel instead.
                self.tell(format!("{other}; cancelling the job instead"));
                if controller.cancel().is_ok() {
                    self.asked = true;
                }
            }
        }
    }

    fn tell(&mut self, text: String) {
        if self.said.as_deref() != Some(text.as_str()) {
            eprintln!("{}: {text}", crate::app::program_name());
            self.said = Some(text);
        }
    }
}

/// The command line that resumes a stopped run: this process's arguments
/// without any `--restore`, plus `--restore <restore>`; each argument quoted
/// for a POSIX shell where needed.
pub fn resume_command(args: &[OsString], restore: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut skip_value = false;
    for arg in args {
        let text = arg.to_string_lossy();
        if skip_value {
            skip_value = false;
            continue;
        }
        if text == "--restore" {
            skip_value = true;
            continue;
        }
        if text.starts_with("--restore=") {
            continue;
        }
        out.push(quote(&text));
    }
    out.push("--restore".into());
    out.push(quote(restore));
    out.join(" ")
}

fn quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_resume_command_replaces_any_restore_and_quotes() {
        let given = args(&[
            "flowstate",
            "run",
            "keyed-count",
            "--restore",
            "/old/sp",
            "--output",
            "/tmp/my out",
            "--restore=x",
        ]);
        assert_eq!(
            resume_command(&given, "latest"),
            "flowstate run keyed-count --output '/tmp/my out' --restore latest"
        );
        assert_eq!(
            resume_command(&args(&["job"]), "/sp/it's"),
            r"job --restore '/sp/it'\''s'"
        );
    }

    #[test]
    fn without_checkpoints_a_signal_takes_a_savepoint_or_cancels() {
        let t = Duration::from_secs(1);
        let plan = |on, chk, sp| Plan::new(on, chk, sp, t).action;
        assert_eq!(
            plan(OnSignal::Checkpoint, true, false),
            OnSignal::Checkpoint
        );
        assert_eq!(plan(OnSignal::Checkpoint, false, true), OnSignal::Savepoint);
        assert_eq!(plan(OnSignal::Checkpoint, false, false), OnSignal::Cancel);
        assert_eq!(plan(OnSignal::Cancel, true, true), OnSignal::Cancel);
        assert_eq!(plan(OnSignal::Savepoint, false, true), OnSignal::Savepoint);
    }
}
