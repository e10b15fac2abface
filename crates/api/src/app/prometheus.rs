//! `GET /metrics`: the jobs' metrics in the Prometheus text format 0.0.4.
//!
//! On each scrape, the runtime's snapshots ([`JobMetrics::tasks`],
//! [`JobMetrics::operators`] and the job-wide counters) are read and encoded
//! by a custom `prometheus_client` collector; nothing of the library is on
//! the data path (the runtime's counters are plain atomics).
//!
//! Series and their labels (every series has `job_name` and `job_id`, as
//! Flink's Prometheus reporter: not `job`, which Prometheus sets on every
//! scraped series itself and would rename ours to `exported_job`):
//!
//! - per task (`task`: `<chain> (<i>/<p>)`, `operator_uid`: its head
//!   operator's uid, `subtask`): `flowstate_task_records_in_total`,
//!   `_records_out_total`, `_records_in_per_second`, `_records_out_per_second`,
//!   `_busy_time_seconds_total`, `_idle_time_seconds_total`,
//!   `_backpressured_time_seconds_total`, Flink's `busyTimeMsPerSecond`,
//!   `idleTimeMsPerSecond`, `backPressuredTimeMsPerSecond` divided by 1000
//!   as `flowstate_task_busy_time_ratio` (and `idle_`, `backpressured_`:
//!   Prometheus names carry base units, not milliseconds),
//!   `_input_queue_length`, `_input_queue_capacity`, `_input_queue_usage`
//!   (0..1) and the same for the output, `_watermark_seconds`,
//!   `_watermark_lag_seconds`, `_checkpoints_acknowledged_total` and the
//!   last acknowledged checkpoint's `_last_checkpoint_id`,
//!   `_last_checkpoint_duration_seconds`, `_last_checkpoint_sync_pause_seconds`,
//!   `_last_checkpoint_alignment_seconds`, `_last_checkpoint_size_bytes`,
//!   `_last_checkpoint_persisted_bytes` and `_last_checkpoint_unaligned`
//!   (0 or 1), and `_checkpoint_persisted_bytes_total` (in-flight records
//!   persisted by unaligned checkpoints);
//! - per operator instance (`task`, `operator_uid`, `operator_name`,
//!   `subtask`, `kind`: source, operator or sink):
//!   `flowstate_operator_records_in_total`, `_records_out_total`; per state
//!   (plus `state`): `flowstate_state_entries`, `flowstate_state_size_bytes`
//!   (when the backend knows); per sink: `flowstate_sink_commits_total`,
//!   `flowstate_sink_commit_duration_seconds_total`,
//!   `flowstate_sink_last_commit_duration_seconds`; a connector's own
//!   gauges as `flowstate_<name>` with its labels (e.g.
//!   `flowstate_kafka_consumer_lag{topic,partition}`);
//! - per job: `flowstate_job_records_in_total`,
//!   `flowstate_job_records_to_sinks_total`, `flowstate_job_restarts_total`,
//!   `flowstate_job_checkpoints_completed_total`, `_failed_total`,
//!   `_unaligned_total`, `flowstate_job_last_checkpoint_duration_seconds`,
//!   `flowstate_job_last_checkpoint_size_bytes`, `_persisted_bytes`,
//!   `_unaligned` (0 or 1).
//!
//! Owns: the metric names, help texts and labels of the exposition. Must not
//! touch: the runtime's counters (it only reads snapshots) or HTTP (the
//! `rest` crate serves the text).

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use flowstate_runtime::JobController;
use flowstate_runtime::metrics::{
    CheckpointProgress, OperatorMetricsSnapshot, TaskMetricsSnapshot,
};

type Labels = Vec<(String, String)>;

/// What one scrape reads of one job.
#[derive(Debug)]
struct JobScrape {
    labels: Labels,
    records_in: u64,
    records_to_sinks: u64,
    restarts: u64,
    checkpoints: CheckpointProgress,
    tasks: Vec<TaskMetricsSnapshot>,
    operators: Vec<OperatorMetricsSnapshot>,
}

/// The collector of one scrape: the snapshots, read before encoding.
#[derive(Debug)]
struct Scrape {
    jobs: Vec<JobScrape>,
}

/// A sample's value: counters and gauges, integer or not.
#[derive(Debug, Clone, Copy)]
enum Value {
    Count(u64),
    Seconds(f64),
    Gauge(f64),
}

/// Every job's metrics, in the Prometheus text format 0.0.4.
pub fn render(jobs: &[Arc<JobController>]) -> String {
    let jobs = jobs
        .iter()
        .map(|job| {
            let metrics = job.metrics();
            JobScrape {
                labels: vec![
                    ("job_name".into(), job.description().name.clone()),
                    ("job_id".into(), job.job_id().unwrap_or("").to_owned()),
                ],
                records_in: metrics.records_in(),
                records_to_sinks: metrics.records_to_sinks(),
                restarts: metrics.restarts(),
                checkpoints: metrics.checkpoints(),
                tasks: metrics.tasks(),
                operators: metrics.operators(),
            }
        })
        .collect();
    encode(Scrape { jobs })
}

fn encode(scrape: Scrape) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        // Writing into a String cannot fail; should the encoder, the
        // scrape says so instead of serving half a document.
        text.clear();
        let _ = writeln!(text, "# flowstate: cannot encode the metrics: {e}");
    }
    text
}

fn with(labels: &Labels, more: &[(&str, String)]) -> Labels {
    let mut all = labels.clone();
    all.extend(more.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    all
}

fn task_labels(job: &Labels, t: &TaskMetricsSnapshot) -> Labels {
    with(
        job,
        &[
            ("task", t.task.clone()),
            ("operator_uid", t.uid.clone()),
            ("subtask", t.subtask.to_string()),
        ],
    )
}

fn operator_labels(job: &Labels, o: &OperatorMetricsSnapshot) -> Labels {
    with(
        job,
        &[
            ("task", o.task.clone()),
            ("operator_uid", o.uid.clone()),
            ("operator_name", o.name.clone()),
            ("subtask", o.subtask.to_string()),
            ("kind", o.kind.as_str().to_owned()),
        ],
    )
}

/// A metric name from a connector's gauge name: lower case, `[a-z0-9_]`.
fn metric_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// One family: its descriptor, then every series (none: nothing written).
fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: Vec<(Labels, Value)>,
) -> Result<(), std::fmt::Error> {
    let Some((_, first)) = series.first() else {
        return Ok(());
    };
    let metric_type = match first {
        Value::Count(_) | Value::Seconds(_) => MetricType::Counter,
        Value::Gauge(_) => MetricType::Gauge,
    };
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in &series {
        let sample = metric.encode_family(labels)?;
        match *value {
            Value::Count(v) => ConstCounter::new(v).encode(sample)?,
            Value::Seconds(v) => ConstCounter::new(v).encode(sample)?,
            Value::Gauge(v) => ConstGauge::new(v).encode(sample)?,
        }
    }
    Ok(())
}

/// Milliseconds per second (kept to thousandths) as a share of the second,
/// in one rounding (no float noise like 0.22182400000000003 in the text).
fn ratio(ms_per_second: f64) -> f64 {
    (ms_per_second * 1e3).round() / 1e6
}

fn usage(length: u64, capacity: u64) -> Option<f64> {
    (capacity > 0).then(|| length as f64 / capacity as f64)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        // Per job.
        type JobField = fn(&JobScrape) -> Option<Value>;
        let job_families: [(&str, &str, JobField); 10] = [
            (
                "flowstate_job_records_in",
                "Records emitted by all sources (replays after a restart included).",
                |j| Some(Value::Count(j.records_in)),
            ),
            (
                "flowstate_job_records_to_sinks",
                "Records handed to all sinks.",
                |j| Some(Value::Count(j.records_to_sinks)),
            ),
            (
                "flowstate_job_restarts",
                "Restarts of the job after a failure.",
                |j| Some(Value::Count(j.restarts)),
            ),
            (
                "flowstate_job_checkpoints_completed",
                "Checkpoints completed.",
                |j| Some(Value::Count(j.checkpoints.completed)),
            ),
            (
                "flowstate_job_checkpoints_failed",
                "Checkpoints failed or aborted.",
                |j| Some(Value::Count(j.checkpoints.failed)),
            ),
            (
                "flowstate_job_checkpoints_unaligned",
                "Completed checkpoints in which some task's barrier overtook in-flight records (unaligned).",
                |j| Some(Value::Count(j.checkpoints.unaligned)),
            ),
            (
                "flowstate_job_last_checkpoint_duration_seconds",
                "Duration of the latest completed checkpoint, trigger to completion.",
                |j| {
                    (j.checkpoints.completed > 0)
                        .then_some(Value::Gauge(j.checkpoints.last_duration_us as f64 / 1e6))
                },
            ),
            (
                "flowstate_job_last_checkpoint_size_bytes",
                "Bytes written by the latest completed checkpoint.",
                |j| {
                    (j.checkpoints.completed > 0)
                        .then_some(Value::Gauge(j.checkpoints.last_bytes as f64))
                },
            ),
            (
                "flowstate_job_last_checkpoint_persisted_bytes",
                "Bytes of in-flight records the latest completed checkpoint persisted (0 unless unaligned).",
                |j| {
                    (j.checkpoints.completed > 0)
                        .then_some(Value::Gauge(j.checkpoints.last_persisted_bytes as f64))
                },
            ),
            (
                "flowstate_job_last_checkpoint_unaligned",
                "1 if the latest completed checkpoint was unaligned, else 0.",
                |j| {
                    (j.checkpoints.completed > 0).then_some(Value::Gauge(f64::from(u8::from(
                        j.checkpoints.last_unaligned,
                    ))))
                },
            ),
        ];
        for (name, help, field) in job_families {
            let series = self
                .jobs
                .iter()
                .filter_map(|j| Some((j.labels.clone(), field(j)?)))
                .collect();
            family(e, name, help, series)?;
        }

        // Per task.
        type TaskField = fn(&TaskMetricsSnapshot) -> Option<Value>;
        let task_families: [(&str, &str, TaskField); 27] = [
            (
                "flowstate_task_records_in",
                "Records the task took in (a source task: records read).",
                |t| Some(Value::Count(t.records_in)),
            ),
            (
                "flowstate_task_records_out",
                "Records the task sent to its output channels.",
                |t| Some(Value::Count(t.records_out)),
            ),
            (
                "flowstate_task_records_in_per_second",
                "Records in per second over the last sample interval.",
                |t| Some(Value::Gauge(t.records_in_per_second)),
            ),
            (
                "flowstate_task_records_out_per_second",
                "Records out per second over the last sample interval.",
                |t| Some(Value::Gauge(t.records_out_per_second)),
            ),
            (
                "flowstate_task_busy_time_seconds",
                "Time the task was busy (processing, or runnable).",
                |t| Some(Value::Seconds(t.busy.as_secs_f64())),
            ),
            (
                "flowstate_task_idle_time_seconds",
                "Time the task waited for input.",
                |t| Some(Value::Seconds(t.idle.as_secs_f64())),
            ),
            (
                "flowstate_task_backpressured_time_seconds",
                "Time the task waited for room in a full output channel.",
                |t| Some(Value::Seconds(t.backpressured.as_secs_f64())),
            ),
            (
                "flowstate_task_busy_time_ratio",
                "Share of the last sample interval the task was busy, 0 to 1 (Flink's busyTimeMsPerSecond / 1000).",
                |t| Some(Value::Gauge(ratio(t.busy_ms_per_second))),
            ),
            (
                "flowstate_task_idle_time_ratio",
                "Share of the last sample interval the task was idle, 0 to 1 (Flink's idleTimeMsPerSecond / 1000).",
                |t| Some(Value::Gauge(ratio(t.idle_ms_per_second))),
            ),
            (
                "flowstate_task_backpressured_time_ratio",
                "Share of the last sample interval the task was backpressured, 0 to 1 (Flink's backPressuredTimeMsPerSecond / 1000).",
                |t| Some(Value::Gauge(ratio(t.backpressured_ms_per_second))),
            ),
            (
                "flowstate_task_input_queue_length",
                "Messages waiting in the task's input channels (sampled).",
                |t| Some(Value::Gauge(t.input_queue_length as f64)),
            ),
            (
                "flowstate_task_input_queue_capacity",
                "Messages the task's input channels hold at most.",
                |t| Some(Value::Gauge(t.input_queue_capacity as f64)),
            ),
            (
                "flowstate_task_input_queue_usage",
                "Fill of the task's input channels, 0 to 1 (Flink's inPoolUsage).",
                |t| usage(t.input_queue_length, t.input_queue_capacity).map(Value::Gauge),
            ),
            (
                "flowstate_task_output_queue_length",
                "Messages waiting in the task's output channels (sampled).",
                |t| Some(Value::Gauge(t.output_queue_length as f64)),
            ),
            (
                "flowstate_task_output_queue_capacity",
                "Messages the task's output channels hold at most.",
                |t| Some(Value::Gauge(t.output_queue_capacity as f64)),
            ),
            (
                "flowstate_task_output_queue_usage",
                "Fill of the task's output channels, 0 to 1 (Flink's outPoolUsage).",
                |t| usage(t.output_queue_length, t.output_queue_capacity).map(Value::Gauge),
            ),
            (
                "flowstate_task_watermark_seconds",
                "The task's current watermark (event time, seconds since the epoch).",
                |t| {
                    t.watermark
                        .filter(|w| *w < i64::MAX)
                        .map(|w| Value::Gauge(w as f64 / 1e3))
                },
            ),
            (
                "flowstate_task_watermark_lag_seconds",
                "How far the task's watermark is behind the wall clock.",
                |t| t.watermark_lag_ms.map(|l| Value::Gauge(l as f64 / 1e3)),
            ),
            (
                "flowstate_task_checkpoints_acknowledged",
                "Checkpoints and savepoints the task acknowledged.",
                |t| Some(Value::Count(t.checkpoints_acknowledged)),
            ),
            (
                "flowstate_task_last_checkpoint_id",
                "Id of the last checkpoint the task acknowledged.",
                |t| t.last_checkpoint.map(|c| Value::Gauge(c.id as f64)),
            ),
            (
                "flowstate_task_last_checkpoint_duration_seconds",
                "The task's part of its last checkpoint: from its synchronous part to the end of its upload.",
                |t| {
                    t.last_checkpoint
                        .map(|c| Value::Gauge(c.duration.as_secs_f64()))
                },
            ),
            (
                "flowstate_task_last_checkpoint_sync_pause_seconds",
                "The synchronous pause of the task's last checkpoint.",
                |t| {
                    t.last_checkpoint
                        .map(|c| Value::Gauge(c.sync_pause.as_secs_f64()))
                },
            ),
            (
                "flowstate_task_last_checkpoint_alignment_seconds",
                "Barrier alignment time of the task's last checkpoint.",
                |t| {
                    t.last_checkpoint
                        .map(|c| Value::Gauge(c.alignment.as_secs_f64()))
                },
            ),
            (
                "flowstate_task_last_checkpoint_size_bytes",
                "Bytes the task wrote for its last checkpoint.",
                |t| t.last_checkpoint.map(|c| Value::Gauge(c.bytes as f64)),
            ),
            (
                "flowstate_task_last_checkpoint_persisted_bytes",
                "Bytes of in-flight records the task persisted for its last checkpoint (0 unless unaligned).",
                |t| {
                    t.last_checkpoint
                        .map(|c| Value::Gauge(c.persisted_bytes as f64))
                },
            ),
            (
                "flowstate_task_last_checkpoint_unaligned",
                "1 if the task took its last checkpoint unaligned, else 0.",
                |t| {
                    t.last_checkpoint
                        .map(|c| Value::Gauge(f64::from(u8::from(c.unaligned))))
                },
            ),
            (
                "flowstate_task_checkpoint_persisted_bytes",
                "Bytes of in-flight records the task persisted for all its unaligned checkpoints.",
                |t| Some(Value::Count(t.checkpoint_persisted_bytes_total)),
            ),
        ];
        for (name, help, field) in task_families {
            let series = self
                .jobs
                .iter()
                .flat_map(|j| {
                    j.tasks
                        .iter()
                        .filter_map(|t| Some((task_labels(&j.labels, t), field(t)?)))
                })
                .collect();
            family(e, name, help, series)?;
        }

        // Per operator instance.
        type OperatorField = fn(&OperatorMetricsSnapshot) -> Option<Value>;
        let operator_families: [(&str, &str, OperatorField); 5] = [
            (
                "flowstate_operator_records_in",
                "Records the operator instance took in.",
                |o| Some(Value::Count(o.records_in)),
            ),
            (
                "flowstate_operator_records_out",
                "Records the operator instance emitted.",
                |o| Some(Value::Count(o.records_out)),
            ),
            (
                "flowstate_sink_commits",
                "Checkpoints whose output the sink committed.",
                |o| o.commits.map(|c| Value::Count(c.count)),
            ),
            (
                "flowstate_sink_commit_duration_seconds",
                "Time the sink spent committing checkpoints' output.",
                |o| o.commits.map(|c| Value::Seconds(c.total.as_secs_f64())),
            ),
            (
                "flowstate_sink_last_commit_duration_seconds",
                "How long the sink's last commit took (its commit latency).",
                |o| {
                    o.commits
                        .filter(|c| c.count > 0)
                        .map(|c| Value::Gauge(c.last.as_secs_f64()))
                },
            ),
        ];
        for (name, help, field) in operator_families {
            let series = self
                .jobs
                .iter()
                .flat_map(|j| {
                    j.operators
                        .iter()
                        .filter_map(|o| Some((operator_labels(&j.labels, o), field(o)?)))
                })
                .collect();
            family(e, name, help, series)?;
        }

        // Per state.
        let states = |bytes: bool| -> Vec<(Labels, Value)> {
            self.jobs
                .iter()
                .flat_map(|j| {
                    j.operators.iter().flat_map(move |o| {
                        o.states.iter().filter_map(move |s| {
                            let labels =
                                with(&operator_labels(&j.labels, o), &[("state", s.name.clone())]);
                            let value = if bytes { s.bytes? } else { s.entries };
                            Some((labels, Value::Gauge(value as f64)))
                        })
                    })
                })
                .collect()
        };
        family(
            e,
            "flowstate_state_entries",
            "Keys with an entry in the state (an estimate for RocksDB), sampled.",
            states(false),
        )?;
        family(
            e,
            "flowstate_state_size_bytes",
            "Bytes the state takes (RocksDB's estimate of live data and memtables), sampled.",
            states(true),
        )?;

        // Connectors' own gauges, one family per name.
        let mut names: Vec<(String, String)> = Vec::new();
        for j in &self.jobs {
            for o in &j.operators {
                for g in &o.gauges {
                    if !names.iter().any(|(n, _)| *n == g.name) {
                        names.push((g.name.clone(), g.help.clone()));
                    }
                }
            }
        }
        for (name, help) in names {
            let series = self
                .jobs
                .iter()
                .flat_map(|j| {
                    j.operators.iter().flat_map({
                        let name = name.clone();
                        move |o| {
                            let name = name.clone();
                            o.gauges
                                .iter()
                                .filter(move |g| g.name == name)
                                .map(move |g| {
                                    let mut labels = operator_labels(&j.labels, o);
                                    labels.extend(g.labels.iter().cloned());
                                    (labels, Value::Gauge(g.value as f64))
                                })
                        }
                    })
                })
                .collect();
            family(
                e,
                &format!("flowstate_{}", metric_name(&name)),
                &help,
                series,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connector_gauge_names_become_metric_names() {
        assert_eq!(metric_name("kafka_consumer_lag"), "kafka_consumer_lag");
        assert_eq!(metric_name("Kafka-Lag.x"), "kafka_lag_x");
        assert_eq!(metric_name("9lives"), "_9lives");
    }

    #[test]
    fn ratios_print_without_float_noise() {
        assert_eq!(ratio(221.824).to_string(), "0.221824");
        assert_eq!(ratio(1000.0), 1.0);
    }

    #[test]
    fn an_empty_scrape_is_an_empty_document() {
        assert_eq!(encode(Scrape { jobs: Vec::new() }), "");
    }

    /// A job whose latest checkpoint was unaligned at one of its tasks.
    fn unaligned_scrape() -> Scrape {
        use flowstate_runtime::metrics::TaskCheckpointMetrics;
        use std::time::Duration;
        let task = |subtask: u32, unaligned: bool, persisted_bytes: u64| TaskMetricsSnapshot {
            task: format!("count ({}/2)", subtask + 1),
            uid: "count".into(),
            subtask,
            records_in: 10,
            records_out: 10,
            records_in_per_second: 0.0,
            records_out_per_second: 0.0,
            busy: Duration::ZERO,
            idle: Duration::ZERO,
            backpressured: Duration::ZERO,
            busy_ms_per_second: 0.0,
            idle_ms_per_second: 0.0,
            backpressured_ms_per_second: 0.0,
            input_queue_length: 0,
            input_queue_capacity: 16,
            output_queue_length: 0,
            output_queue_capacity: 16,
            watermark: None,
            watermark_lag_ms: None,
            checkpoints_acknowledged: 3,
            checkpoint_persisted_bytes_total: persisted_bytes * 2,
            last_checkpoint: Some(TaskCheckpointMetrics {
                id: 3,
                duration: Duration::from_millis(4),
                sync_pause: Duration::from_micros(100),
                alignment: Duration::from_millis(1),
                bytes: 1000 + persisted_bytes,
                unaligned,
                persisted_bytes,
            }),
        };
        Scrape {
            jobs: vec![JobScrape {
                labels: vec![
                    ("job_name".into(), "keyed-count".into()),
                    ("job_id".into(), "0123".into()),
                ],
                records_in: 20,
                records_to_sinks: 20,
                restarts: 0,
                checkpoints: CheckpointProgress {
                    completed: 3,
                    failed: 0,
                    last_id: 3,
                    last_duration_us: 4000,
                    last_bytes: 5096,
                    unaligned: 2,
                    last_unaligned: true,
                    last_persisted_bytes: 4096,
                    persisted_bytes_total: 8192,
                },
                tasks: vec![task(0, true, 4096), task(1, false, 0)],
                operators: Vec::new(),
            }],
        }
    }

    /// The value of sample `series` (name and labels as encoded) in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn unaligned_checkpoints_have_their_series() {
        let text = encode(unaligned_scrape());
        let job = "job_name=\"keyed-count\",job_id=\"0123\"";
        let task = |subtask: u32| {
            format!(
                "{job},task=\"count ({}/2)\",operator_uid=\"count\",subtask=\"{subtask}\"",
                subtask + 1
            )
        };
        for (series, value) in [
            (
                format!("flowstate_job_checkpoints_unaligned_total{{{job}}}"),
                2.0,
            ),
            (
                format!("flowstate_job_last_checkpoint_persisted_bytes{{{job}}}"),
                4096.0,
            ),
            (
                format!("flowstate_job_last_checkpoint_unaligned{{{job}}}"),
                1.0,
            ),
            (
                format!(
                    "flowstate_task_last_checkpoint_persisted_bytes{{{}}}",
                    task(0)
                ),
                4096.0,
            ),
            (
                format!("flowstate_task_last_checkpoint_unaligned{{{}}}", task(0)),
                1.0,
            ),
            (
                format!(
                    "flowstate_task_checkpoint_persisted_bytes_total{{{}}}",
                    task(0)
                ),
                8192.0,
            ),
            (
                format!(
                    "flowstate_task_last_checkpoint_persisted_bytes{{{}}}",
                    task(1)
                ),
                0.0,
            ),
            (
                format!("flowstate_task_last_checkpoint_unaligned{{{}}}", task(1)),
                0.0,
            ),
            (
                format!(
                    "flowstate_task_checkpoint_persisted_bytes_total{{{}}}",
                    task(1)
                ),
                0.0,
            ),
        ] {
            assert_eq!(sample(&text, &series), Some(value), "{series} in:\n{text}");
        }
    }
}
