//! Live progress: a one-line spinner on a terminal, plain periodic log lines
//! otherwise. Reads the job's counters from its own thread; never touches the
//! data path.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flowstate_runtime::JobMetrics;
use indicatif::{ProgressBar, ProgressStyle};

/// How often the terminal line is redrawn.
const TERMINAL_REFRESH: Duration = Duration::from_millis(200);
/// How often a log line is written when stderr is not a terminal.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

pub struct Reporter {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
    metrics: Arc<JobMetrics>,
    started: Instant,
}

pub struct Summary {
    pub records: u64,
    pub elapsed: Duration,
}

fn line(metrics: &JobMetrics, records: u64, rate: f64, elapsed: Duration) -> String {
    let mut text = format!(
        "{records} records in, {:.0} records/s, {:.1}s elapsed",
        rate,
        elapsed.as_secs_f64()
    );
    let checkpoints = metrics.checkpoints();
    if checkpoints.completed > 0 || checkpoints.failed > 0 {
        text.push_str(&format!(
            ", {} checkpoints (last #{}: {:.1} ms, {} KiB)",
            checkpoints.completed,
            checkpoints.last_id,
            checkpoints.last_duration_us as f64 / 1e3,
            checkpoints.last_bytes / 1024
        ));
        if checkpoints.failed > 0 {
            text.push_str(&format!(", {} failed", checkpoints.failed));
        }
    }
    if metrics.restarts() > 0 {
        text.push_str(&format!(", {} restarts", metrics.restarts()));
    }
    text
}

impl Reporter {
    pub fn start(label: &str, metrics: Arc<JobMetrics>, terminal: bool) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let started = Instant::now();
        let label = label.to_owned();
        let thread_metrics = Arc::clone(&metrics);
        let thread = std::thread::Builder::new()
            .name("flowstate-progress".into())
            .spawn(move || {
                let bar = terminal.then(|| {
                    let bar = ProgressBar::new_spinner();
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {prefix}: {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_prefix(label.clone());
                    bar
                });
                let interval = if terminal {
                    TERMINAL_REFRESH
                } else {
                    LOG_INTERVAL
                };
                let (mut last_records, mut last_at) = (0u64, Instant::now());
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    let records = thread_metrics.records_in();
                    let now = Instant::now();
                    let rate = (records - last_records) as f64
                        / now.duration_since(last_at).as_secs_f64().max(1e-9);
                    (last_records, last_at) = (records, now);
                    let text = line(&thread_metrics, records, rate, started.elapsed());
                    match &bar {
                        Some(bar) => {
                            bar.set_message(text);
                            bar.tick();
                        }
                        None => tracing::info!("{label}: {text}"),
                    }
                }
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
            })
            .ok();
        Self {
            stop,
            thread,
            metrics,
            started,
        }
    }

    pub fn finish(mut self) -> Summary {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        Summary {
            records: self.metrics.records_in(),
            elapsed: self.started.elapsed(),
        }
    }
}
