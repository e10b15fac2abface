//! A local cluster: `--processes N` runs N task managers as children of the
//! job manager's process, each the same program with the same arguments
//! plus the job manager's address and its process index, and restarts a
//! child that dies while the job runs (the job manager's failover then
//! redeploys on it).
//!
//! Children run in process groups of their own, so that a terminal's Ctrl-C
//! reaches only the job manager (which stops the job and then shuts its task
//! managers down); a child whose job manager dies loses its control
//! connection and exits.
//!
//! Owns: [`LocalCluster`]. Must not touch: what the children run (the
//! program's), admission or placement (`jobmanager`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the monitor looks at its children.
const MONITOR_INTERVAL: Duration = Duration::from_millis(100);

/// N task managers as children of this process.
pub struct LocalCluster {
    children: Arc<Mutex<Vec<Option<Child>>>>,
    stopping: Arc<AtomicBool>,
    monitor: Option<JoinHandle<()>>,
}

/// How to start child `index`: the program and its full argument list.
#[derive(Debug, Clone)]
pub struct ChildCommand {
    pub program: PathBuf,
    /// Arguments of every child (after the program).
    pub args: Vec<OsString>,
}

impl ChildCommand {
    fn spawn(&self, index: u32) -> std::io::Result<Child> {
        use std::os::unix::process::CommandExt as _;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .arg("--process-index")
            .arg(index.to_string())
            .stdin(Stdio::null())
            // A child's stdout would mix with the job manager's result: its
            // lines go to the job manager's stderr, like its logs.
            .stdout(stderr_stdio())
            .process_group(0);
        let child = command.spawn()?;
        tracing::info!(
            "started task manager {index} (pid {}) of the local cluster",
            child.id()
        );
        Ok(child)
    }
}

/// This process's stderr, for a child's stdout (the child's own stderr is
/// inherited).
fn stderr_stdio() -> Stdio {
    use std::os::fd::AsFd as _;
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => Stdio::from(fd),
        Err(_) => Stdio::null(),
    }
}

impl LocalCluster {
    /// Starts `count` children (indices `0..count`) and a monitor that
    /// restarts one that ends before [`LocalCluster::shutdown`].
    pub fn start(command: ChildCommand, count: u32) -> std::io::Result<Self> {
        let mut children = Vec::new();
        for index in 0..count {
            match command.spawn(index) {
                Ok(child) => children.push(Some(child)),
                Err(e) => {
                    for mut child in children.into_iter().flatten() {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    return Err(e);
                }
            }
        }
        let children = Arc::new(Mutex::new(children));
        let stopping = Arc::new(AtomicBool::new(false));
        let monitor = {
            let (children, stopping) = (Arc::clone(&children), Arc::clone(&stopping));
            std::thread::Builder::new()
                .name("flowstate-local-cluster".into())
                .spawn(move || monitor(&command, &children, &stopping))?
        };
        Ok(Self {
            children,
            stopping,
            monitor: Some(monitor),
        })
    }

    /// The children's process ids, by index (`None` while one restarts).
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|c| c.as_ref().map(Child::id))
            .collect()
    }

    /// Stops restarting children, waits up to `grace` for them to exit (the
    /// job manager told them to), then kills those still running.
    pub fn shutdown(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn stop(&mut self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(monitor) = self.monitor.take() {
            let _ = monitor.join();
        }
        let deadline = Instant::now() + grace;
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for child in children.iter_mut().flatten() {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.monitor.is_some() {
            self.stop(Duration::ZERO);
        }
    }
}

/// Restarts children that fail while the cluster runs. A child that exits
/// successfully is not restarted: a task manager does so only when its job
/// manager told it the job is over.
fn monitor(command: &ChildCommand, children: &Mutex<Vec<Option<Child>>>, stopping: &AtomicBool) {
    let mut done = std::collections::HashSet::new();
    while !stopping.load(Ordering::SeqCst) {
        std::thread::sleep(MONITOR_INTERVAL);
        let mut children = children.lock().unwrap_or_else(|e| e.into_inner());
        for (index, slot) in children.iter_mut().enumerate() {
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            if done.contains(&index) {
                continue;
            }
            let ended = match slot.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) if status.success() => {
                    tracing::info!("task manager {index} of the local cluster ended");
                    done.insert(index);
                    continue;
                }
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Ok(None)) => None,
                Some(Err(e)) => Some(e.to_string()),
                None => Some("not running".into()),
            };
            let Some(status) = ended else { continue };
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            tracing::warn!(
                "task manager {index} of the local cluster ended ({status}); restarting it"
            );
            *slot = match command.spawn(index) {
                Ok(child) => Some(child),
                Err(e) => {
                    tracing::error!("cannot restart task manager {index}: {e}");
                    None
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bounds every wait; never reached when the behaviour is right.
    const DEADLINE: Duration = Duration::from_secs(30);

    /// Children run `sh -c SCRIPT`, which appends a line to `log` per start.
    fn cluster(script: &str, log: &std::path::Path) -> LocalCluster {
        let script = format!("echo started >> '{}'; {script}", log.display());
        let command = ChildCommand {
            program: "sh".into(),
            args: vec!["-c".into(), script.into(), "sh".into()],
        };
        LocalCluster::start(command, 1).expect("started")
    }

    fn starts(log: &std::path::Path) -> usize {
        std::fs::read_to_string(log).map_or(0, |s| s.lines().count())
    }

    fn wait_for_starts(log: &std::path::Path, n: usize) {
        let deadline = Instant::now() + DEADLINE;
        while starts(log) < n {
            assert!(Instant::now() < deadline, "{n} starts within {DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_failed_child_is_restarted() {
        let dir = std::env::temp_dir().join(format!("flowstate-local-{}-f", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("starts");
        let local = cluster("exit 3", &log);
        wait_for_starts(&log, 3);
        local.shutdown(Duration::ZERO);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The bug: a task manager that ended with its job (told by the job
    /// manager) was restarted, and the new one held the job manager's exit
    /// for its whole grace period.
    #[test]
    fn a_child_that_ends_successfully_is_not_restarted() {
        let dir = std::env::temp_dir().join(format!("flowstate-local-{}-s", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("starts");
        let local = cluster("exit 0", &log);
        wait_for_starts(&log, 1);
        // Several rounds of the monitor.
        std::thread::sleep(MONITOR_INTERVAL * 5);
        assert_eq!(starts(&log), 1, "restarted after a successful exit");
        local.shutdown(Duration::ZERO);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
