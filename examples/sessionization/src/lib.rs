//! Sessionization: click events read from Kafka, grouped per user into
//! event-time session windows (a session ends after `--gap` of event time
//! without a click), written exactly once to PostgreSQL by the two-phase-commit
//! sink (or to files with `--output`).
//!
//! Clicks are Kafka records with the user id as key and the click's event time
//! (ms since the Unix epoch) as value, both decimal text; [`produce`] writes
//! generated ones ([`Clicks`]). The Kafka source keeps every partition's offset
//! in checkpoints, so a crash rewinds and replays; event time is generated per
//! partition. The job ends (with `--records`) with `RESULT clicks=N
//! sessions=S checksum=<16 hex>`, where the checksum is the wrapping sum over
//! sessions of `splitmix64(fnv1a64("<user>,<start>,<last click>,<clicks>"))`,
//! kept as keyed state: the same at any parallelism and after a restore.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowstate::{
    DataStream, EventTimeSessionWindows, FnResult, KeyedContext, KeyedProcessFunction,
    KeyedStateBackend, StreamEnvironment, ValueStateDescriptor, ValueStateHandle,
    WatermarkStrategy, WindowAggregateFunction,
};
use flowstate_kafka::{
    ClientSettings, KafkaError, KafkaSource, RawRecord, StopAt, topic_partitions,
    workload_end_offsets,
};
use flowstate_postgres::{Mode, PostgresError, PostgresSink, SqlValue};

/// Event time of click 0 (ms since the Unix epoch).
pub const T0_MS: i64 = 1_700_000_000_000;

/// Users that are active together: click `i` belongs to one of the 32 users
/// of the group whose turn it is.
pub const GROUP: u64 = 32;

/// The job's parameters (besides the engine's runtime flags).
#[derive(Debug, Clone, clap::Args)]
pub struct Params {
    /// Kafka bootstrap servers (`host:port[,host:port...]`).
    #[arg(long)]
    pub brokers: String,
    /// The topic of click events (`sessionization-produce` writes one).
    #[arg(long)]
    pub topic: String,
    /// Read the N clicks `sessionization-produce --clicks N` wrote into the (then empty)
    /// topic, then end [default: read on forever].
    #[arg(long)]
    pub records: Option<u64>,
    /// A session ends after this much event time without a click.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub gap: Duration,
    /// Most a click's event time lags behind its partition's (disorder).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub out_of_orderness: Duration,
    /// `postgres://user:password@host:port/database`: write the sessions
    /// into `--table` there, exactly once.
    #[arg(long)]
    pub database: Option<String>,
    /// The table of sessions (created if missing).
    #[arg(long, default_value = "sessions")]
    pub table: String,
    /// Without `--database`: write the sessions, exactly once, into part
    /// files in this directory [default: count them and drop them].
    #[arg(long, conflicts_with = "database")]
    pub output: Option<PathBuf>,
}

/// SplitMix64's finaliser.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a, 64 bits.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// One click.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Click {
    pub user: u64,
    /// Event time, ms since the Unix epoch.
    pub timestamp_ms: i64,
}

/// The generated clicks: click `i` is a pure function of `i`. Users come in
/// groups of [`GROUP`]; the groups take turns of `turn_clicks` clicks each,
/// so a user clicks in bursts separated by the other groups' turns.
#[derive(Debug, Clone, Copy)]
pub struct Clicks {
    pub users: u64,
    pub events_per_second: u64,
    /// Clicks per turn of a group.
    pub turn_clicks: u64,
}

impl Default for Clicks {
    /// 320 users (10 groups), 20 clicks per second of event time, turns of 5
    /// minutes: a user's bursts are 45 minutes apart.
    fn default() -> Self {
        Self {
            users: 320,
            events_per_second: 20,
            turn_clicks: 6_000,
        }
    }
}

impl Clicks {
    /// Click `i`: at `T0 + i * 1000 / events_per_second` ms, by user
    /// `GROUP * ((i / turn_clicks) % groups) + splitmix64(i) % GROUP`, where
    /// `groups = max(1, users / GROUP)`.
    pub fn click(&self, i: u64) -> Click {
        let groups = (self.users / GROUP).max(1);
        let group = (i / self.turn_clicks.max(1)) % groups;
        Click {
            user: GROUP * group + splitmix64(i) % GROUP,
            timestamp_ms: T0_MS
                + (u128::from(i) * 1000 / u128::from(self.events_per_second.max(1))) as i64,
        }
    }
}

/// One user session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub user: u64,
    /// Time of its first click.
    pub start_ms: i64,
    /// Time of its last click.
    pub last_click_ms: i64,
    pub clicks: u64,
}

impl std::fmt::Display for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{},{},{},{}",
            self.user, self.start_ms, self.last_click_ms, self.clicks
        )
    }
}

/// `(clicks, last click)` of a session; session windows merge them.
#[derive(Clone, Copy)]
struct SessionAgg;

impl WindowAggregateFunction<Click, (u64, i64), (u64, i64)> for SessionAgg {
    fn create_accumulator(&self) -> (u64, i64) {
        (0, i64::MIN)
    }
    fn add(&self, acc: &mut (u64, i64), click: Click) {
        acc.0 += 1;
        acc.1 = acc.1.max(click.timestamp_ms);
    }
    fn merge(&self, acc: &mut (u64, i64), other: (u64, i64)) {
        acc.0 += other.0;
        acc.1 = acc.1.max(other.1);
    }
    fn result(&self, acc: &(u64, i64)) -> (u64, i64) {
        *acc
    }
}

/// What the job reports at its end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub clicks: u64,
    pub sessions: u64,
    pub checksum: u64,
}

impl Summary {
    /// `RESULT clicks=N sessions=S checksum=<16 hex>`.
    pub fn result_line(&self) -> String {
        format!(
            "RESULT clicks={} sessions={} checksum={:016x}",
            self.clicks, self.sessions, self.checksum
        )
    }
}

/// Each instance's share, by its first key group.
#[derive(Clone, Default)]
struct Shares(Arc<Mutex<HashMap<u32, Summary>>>);

/// Keeps, per user, its sessions' count, clicks and checksum (for the
/// summary), and passes the sessions on.
#[derive(Clone)]
struct SessionChecksum {
    state: Option<ValueStateHandle<(u64, u64, u64)>>,
    shares: Shares,
}

impl KeyedProcessFunction<u64, Session, Session> for SessionChecksum {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.state = Some(state.value_state(&ValueStateDescriptor::new("sessions"))?);
        Ok(())
    }

    fn process(
        &mut self,
        session: Session,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<Session>,
    ) -> FnResult {
        let handle = self.state.as_ref().ok_or("state used before open")?;
        let hash = splitmix64(fnv1a64(session.to_string().as_bytes()));
        ctx.value(handle).modify(
            || (0, 0, 0),
            |(sessions, clicks, sum)| {
                *sessions += 1;
                *clicks += session.clicks;
                *sum = sum.wrapping_add(hash);
            },
        )?;
        out.push(session);
        Ok(())
    }

    fn finish(
        &mut self,
        state: &mut dyn KeyedStateBackend<u64>,
        _out: &mut Vec<Session>,
    ) -> FnResult {
        let handle = self.state.as_ref().ok_or("state used before open")?;
        let mut share = Summary::default();
        state.for_each_value(handle, |_, &(sessions, clicks, sum)| {
            share.sessions += sessions;
            share.clicks += clicks;
            share.checksum = share.checksum.wrapping_add(sum);
        })?;
        self.shares
            .0
            .lock()
            .map_err(|_| "summary lock poisoned")?
            .insert(state.key_group_range().start, share);
        Ok(())
    }
}

/// Why the job could not be built.
#[derive(Debug)]
pub enum BuildError {
    Kafka(KafkaError),
    Postgres(PostgresError),
    Table(String),
    Config(String),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Kafka(e) => write!(f, "{e}"),
            BuildError::Postgres(e) => write!(f, "{e}"),
            BuildError::Table(e) | BuildError::Config(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for BuildError {}

impl From<KafkaError> for BuildError {
    fn from(e: KafkaError) -> Self {
        BuildError::Kafka(e)
    }
}

impl From<PostgresError> for BuildError {
    fn from(e: PostgresError) -> Self {
        BuildError::Postgres(e)
    }
}

impl From<flowstate::connectors::ConnectorError> for BuildError {
    fn from(e: flowstate::connectors::ConnectorError) -> Self {
        BuildError::Config(e.to_string())
    }
}

/// A built job: its summary once it ended.
pub struct Job {
    shares: Shares,
}

impl Job {
    pub fn summary(&self) -> Summary {
        let shares = self.shares.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = Summary::default();
        for share in shares.values() {
            total.clicks += share.clicks;
            total.sessions += share.sessions;
            total.checksum = total.checksum.wrapping_add(share.checksum);
        }
        total
    }

    pub fn result_line(&self) -> String {
        self.summary().result_line()
    }
}

/// A decimal number from a record's key or value.
fn decimal<T: std::str::FromStr>(what: &str, bytes: Option<&[u8]>) -> Result<T, String> {
    let bytes = bytes.ok_or_else(|| format!("the record has no {what}"))?;
    let text = std::str::from_utf8(bytes).map_err(|_| format!("its {what} is not UTF-8"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("its {what} {text:?} is not a decimal number"))
}

fn click(record: &RawRecord<'_>) -> Result<Click, String> {
    Ok(Click {
        user: decimal("key", record.key)?,
        timestamp_ms: decimal("value", record.payload)?,
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Clicks into per-user event-time sessions (`gap`), each counted into
/// `shares` (keyed state: the summary) on its way out.
fn sessionize(clicks: &DataStream<Click>, gap: Duration, shares: &Shares) -> DataStream<Session> {
    clicks
        .key_by(|c: &Click| c.user)
        .window_by(EventTimeSessionWindows::with_gap(gap), |c: &Click| {
            c.timestamp_ms
        })
        .aggregate_with(SessionAgg, |user, window, (clicks, last)| Session {
            user: *user,
            start_ms: window.start,
            last_click_ms: last,
            clicks,
        })
        .name("Sessions")
        .uid("sessions")
        .key_by(|s: &Session| s.user)
        .process(SessionChecksum {
            state: None,
            shares: shares.clone(),
        })
        .name("Session checksum")
        .uid("session-checksum")
}

/// Adds the sessionization job to `env`. Fails at once if the brokers cannot
/// be asked for the topic's partitions (with `records`) or the table cannot
/// be created.
pub fn build(env: &StreamEnvironment, params: &Params) -> Result<Job, BuildError> {
    if params.gap.is_zero() {
        return Err(BuildError::Config("--gap must be at least 1ms".into()));
    }
    let strategy = WatermarkStrategy::bounded_out_of_orderness(
        millis(params.out_of_orderness),
        |c: &Click| c.timestamp_ms,
    );
    let mut source = KafkaSource::new(params.brokers.clone(), [params.topic.clone()], click)?
        .with_event_time(strategy)
        // A restored partition is read from its start, records below the
        // checkpointed offset dropped: correct on any broker, and needed on
        // brokers that cannot start a fetch inside a record batch (tansu).
        .reread_on_resume(true);
    if let Some(records) = params.records {
        let partitions =
            topic_partitions(ClientSettings::new(params.brokers.clone()), &params.topic)?;
        source = source.stop_at(StopAt::EndOffsets(workload_end_offsets(
            &params.topic,
            partitions.len() as i32,
            records,
        )));
    }
    let clicks = env
        .from_source("Source: Kafka clicks", source)
        .uid("kafka-clicks");
    sessions_to_output(&clicks, params)
}

/// The job after its source: sessions of `clicks` into the table, the files
/// or nowhere.
fn sessions_to_output(clicks: &DataStream<Click>, params: &Params) -> Result<Job, BuildError> {
    let shares = Shares::default();
    let sessions = sessionize(clicks, params.gap, &shares);
    match (&params.database, &params.output) {
        (Some(url), _) => {
            let sink = PostgresSink::new(
                url,
                &params.table,
                &["user_id", "session_start", "last_click", "clicks"],
                Mode::Append,
                |s: &Session| {
                    vec![
                        SqlValue::UInt(s.user),
                        SqlValue::Int(s.start_ms),
                        SqlValue::Int(s.last_click_ms),
                        SqlValue::UInt(s.clicks),
                    ]
                },
            )?;
            create_table(url, &params.table)?;
            sessions.sink_to("Sink: PostgreSQL", sink);
        }
        (None, Some(dir)) => sessions.map(|s| s.to_string()).write_lines(dir)?,
        (None, None) => {
            sessions.count();
        }
    }
    Ok(Job { shares })
}

/// `CREATE TABLE IF NOT EXISTS`: the job owns its table's shape. The primary
/// key makes a session written twice an error rather than a silent duplicate.
fn create_table(url: &str, table: &str) -> Result<(), BuildError> {
    let valid = !table.is_empty()
        && table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !valid {
        return Err(BuildError::Table(format!(
            "table '{table}': use letters, digits, '_' and '.' only"
        )));
    }
    let fail = |e: postgres::Error| BuildError::Table(format!("table '{table}': {e}"));
    let mut client = postgres::Client::connect(url, postgres::NoTls).map_err(fail)?;
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (user_id bigint NOT NULL, \
             session_start bigint NOT NULL, last_click bigint NOT NULL, \
             clicks bigint NOT NULL, PRIMARY KEY (user_id, session_start))"
        ))
        .map_err(fail)
}

/// Parameters of `sessionization-produce`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProduceParams {
    /// Kafka bootstrap servers (`host:port[,host:port...]`).
    #[arg(long)]
    pub brokers: String,
    /// The topic written (created if missing).
    #[arg(long)]
    pub topic: String,
    /// Clicks written.
    #[arg(long, default_value_t = 100_000)]
    pub clicks: u64,
    /// Distinct users (in groups of 32).
    #[arg(long, default_value_t = 320)]
    pub users: u64,
    /// Clicks per second of event time.
    #[arg(long, default_value_t = 20)]
    pub events_per_second: u64,
    /// Partitions of the topic when it is created (click i goes to partition
    /// i % partitions).
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
}

/// Writes `params.clicks` generated clicks into the topic (created if
/// missing): click `i` into partition `i % partitions`, key the user, value
/// the event time, as decimal text.
pub fn produce(params: &ProduceParams) -> Result<(), KafkaError> {
    match flowstate_kafka::create_topic(params.brokers.as_str(), &params.topic, params.partitions) {
        Ok(()) | Err(KafkaError::TopicExists { .. }) => {}
        Err(e) => return Err(e),
    }
    let clicks = Clicks {
        users: params.users,
        events_per_second: params.events_per_second,
        ..Clicks::default()
    };
    flowstate_kafka::produce_workload(
        params.brokers.as_str(),
        &params.topic,
        params.partitions,
        params.clicks,
        move |i| {
            let c = clicks.click(i);
            (c.user, c.timestamp_ms as u64)
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowstate::ExecutionConfig;
    use flowstate::connectors::sequence::SequenceSource;

    /// The session stage over the generated clicks (from a sequence source
    /// instead of Kafka) against a plain loop.
    #[test]
    fn sessions_of_the_generated_clicks() {
        let clicks = Clicks::default();
        let n = 100_000;
        let gap = Duration::from_secs(30 * 60);
        let env = StreamEnvironment::new(ExecutionConfig::with_parallelism(2));
        let source = SequenceSource::new(n, 4, move |i| clicks.click(i))
            .unwrap()
            .with_event_time(WatermarkStrategy::monotonous(|c: &Click| c.timestamp_ms));
        let shares = Shares::default();
        let out = sessionize(&env.from_source("clicks", source), gap, &shares).collect();
        env.execute().unwrap();
        let mut got: Vec<Session> = out.lock().unwrap().clone();
        got.sort_unstable_by_key(|s| (s.user, s.start_ms));

        let mut by_user: std::collections::BTreeMap<u64, Vec<i64>> = Default::default();
        for i in 0..n {
            let c = clicks.click(i);
            by_user.entry(c.user).or_default().push(c.timestamp_ms);
        }
        let mut want = Vec::new();
        for (user, times) in by_user {
            let mut start = 0;
            for k in 1..=times.len() {
                if k == times.len() || times[k] > times[k - 1] + millis(gap) {
                    want.push(Session {
                        user,
                        start_ms: times[start],
                        last_click_ms: times[k - 1],
                        clicks: (k - start) as u64,
                    });
                    start = k;
                }
            }
        }
        assert_eq!(got, want);
        let job = Job { shares };
        assert_eq!(job.summary().clicks, n);
        assert_eq!(job.summary().sessions, want.len() as u64);
        // The README's figures (also what the end-to-end test's checker computes).
        assert_eq!(
            job.result_line(),
            "RESULT clicks=100000 sessions=544 checksum=9cf8cdfa7008835d"
        );
    }

    /// The sessions through the two-phase-commit PostgreSQL sink, with
    /// checkpoints, from the generated clicks (no Kafka needed): the table
    /// holds every session once. Skipped without `FLOWSTATE_TEST_PG_URL`.
    #[test]
    fn sessions_into_postgres() {
        let Ok(url) = std::env::var("FLOWSTATE_TEST_PG_URL") else {
            if std::env::var("FLOWSTATE_REQUIRE_PG").as_deref() == Ok("1") {
                panic!("FLOWSTATE_TEST_PG_URL is not set but FLOWSTATE_REQUIRE_PG=1");
            }
            eprintln!("[sessions_into_postgres] SKIPPED: FLOWSTATE_TEST_PG_URL is not set");
            return;
        };
        let clicks = Clicks::default();
        let n = 40_000;
        let table = format!("sessions_unit_{}", std::process::id());
        let mut config = ExecutionConfig::with_parallelism(2);
        config.checkpointing = Some(flowstate::runtime::CheckpointingConfig {
            storage: flowstate::runtime::checkpoint::open_storage(&format!(
                "memory://sessionization-{}",
                std::process::id()
            ))
            .unwrap(),
            settings: flowstate::runtime::checkpoint::CoordinatorSettings {
                interval: Some(Duration::from_millis(50)),
                ..Default::default()
            },
            guarantee: flowstate::runtime::Guarantee::ExactlyOnce,
            job_id: None,
            restore: flowstate::runtime::RestoreFrom::Nothing,
            allow_non_restored_state: false,
            allow_fallback_duplicates: false,
            savepoint_dir: None,
            restart: Default::default(),
        });
        let env = StreamEnvironment::new(config);
        let source = SequenceSource::new(n, 4, move |i| clicks.click(i))
            .unwrap()
            .with_event_time(WatermarkStrategy::monotonous(|c: &Click| c.timestamp_ms));
        let params = Params {
            brokers: String::new(),
            topic: String::new(),
            records: None,
            gap: Duration::from_secs(30 * 60),
            out_of_orderness: Duration::ZERO,
            database: Some(url.clone()),
            table: table.clone(),
            output: None,
        };
        let job = sessions_to_output(&env.from_source("clicks", source), &params).unwrap();
        env.execute().unwrap();
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let rows = client
            .query(
                &format!("SELECT user_id, session_start, last_click, clicks FROM {table}"),
                &[],
            )
            .unwrap();
        let mut sum = Summary::default();
        for r in &rows {
            let s = Session {
                user: r.get::<_, i64>(0) as u64,
                start_ms: r.get(1),
                last_click_ms: r.get(2),
                clicks: r.get::<_, i64>(3) as u64,
            };
            sum.sessions += 1;
            sum.clicks += s.clicks;
            sum.checksum = sum
                .checksum
                .wrapping_add(splitmix64(fnv1a64(s.to_string().as_bytes())));
        }
        assert_eq!(sum, job.summary());
        assert_eq!(sum.clicks, n);
        client
            .batch_execute(&format!("DROP TABLE {table}"))
            .unwrap();
    }
}
