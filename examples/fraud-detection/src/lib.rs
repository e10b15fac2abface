//! Fraud detection with keyed state and timers: a small rules engine over a
//! deterministic, replayable stream of card transactions, keyed by card.
//!
//! Rules (both on event time, so the alerts do not depend on the order in
//! which transactions reach the operators, nor on the parallelism):
//!
//! - **small-then-large** (Flink's fraud-detection walkthrough): a small
//!   transaction (below `--small-below-cents`) immediately followed, in the
//!   card's event-time order, by a large one (above `--large-above-cents`)
//!   within `--large-within` of event time. A keyed function buffers each
//!   card's transactions in `ValueState` until the watermark passes them (an
//!   event-time timer per transaction time), then walks them in `(time, id)`
//!   order; the "last transaction was small" flag is `ValueState` too and is
//!   expired by an event-time timer `--large-within` after the small one.
//! - **high-frequency**: more than `--max-per-window` transactions of one card
//!   in a tumbling event-time window of `--window` (a window aggregation).
//!
//! Alerts are written as lines (see [`Alert`]) through the exactly-once file
//! sink. The job ends with `RESULT transactions=N alerts=M checksum=<16 hex>`,
//! where the checksum is the wrapping sum over alerts of
//! `splitmix64(fnv1a64(line))`: order-independent, the same at any parallelism
//! and across crashes and restores (it is kept as keyed state and read when the
//! input ends, like the transaction count).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowstate::connectors::ConnectorError;
use flowstate::connectors::sequence::SequenceSource;
use flowstate::{
    FnResult, KeyedContext, KeyedProcessFunction, KeyedStateBackend, StreamEnvironment, TimeDomain,
    TumblingEventTimeWindows, ValueStateDescriptor, ValueStateHandle, WatermarkStrategy,
    WindowAggregateFunction,
};

/// Splits of the transaction source: at most this many source instances
/// read (more parallelism still spreads the keyed rules). Few, so that the
/// batch a reader takes from one split spans little event time (see
/// [`interleaved`]).
pub const SOURCE_SPLITS: u32 = 8;

/// Event time of transaction 0 before disorder (ms since the Unix epoch).
pub const T0_MS: i64 = 1_700_000_000_000;

/// The job's parameters (besides the engine's runtime flags).
#[derive(Debug, Clone, clap::Args)]
pub struct Params {
    /// Transactions generated (then the job ends).
    #[arg(long, default_value_t = 200_000)]
    pub transactions: u64,
    /// Distinct cards.
    #[arg(long, default_value_t = 1_000)]
    pub cards: u64,
    /// Transactions per second of event time.
    #[arg(long, default_value_t = 200)]
    pub events_per_second: u64,
    /// Most a transaction's event time lags behind the stream's (disorder).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub out_of_orderness: Duration,
    /// Throttle the source to R transactions per second of processing time
    /// [default: as fast as possible].
    #[arg(long)]
    pub rate: Option<u64>,
    /// A transaction below this many cents is small.
    #[arg(long, default_value_t = 100)]
    pub small_below_cents: u64,
    /// A transaction above this many cents is large.
    #[arg(long, default_value_t = 50_000)]
    pub large_above_cents: u64,
    /// A large transaction this soon after a small one is suspicious.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub large_within: Duration,
    /// The tumbling window of the high-frequency rule.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// More transactions than this of one card in one window raise an alert.
    #[arg(long, default_value_t = 20)]
    pub max_per_window: u64,
    /// Write the alerts, exactly once, into part files in this directory
    /// [default: count them and drop them].
    #[arg(long)]
    pub output: Option<PathBuf>,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            transactions: 200_000,
            cards: 1_000,
            events_per_second: 200,
            out_of_orderness: Duration::from_secs(5),
            rate: None,
            small_below_cents: 100,
            large_above_cents: 50_000,
            large_within: Duration::from_secs(60),
            window: Duration::from_secs(60),
            max_per_window: 20,
            output: None,
        }
    }
}

/// SplitMix64's finaliser: a well-mixed, stable hash of a `u64`.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One card transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Transaction {
    /// Its index in the generated stream (unique).
    pub id: u64,
    pub card: u64,
    pub amount_cents: u64,
    /// Event time, ms since the Unix epoch.
    pub timestamp_ms: i64,
}

// The stable name under which transactions are stored in state (snapshots
// record it; see `flowstate::state_type!`).
flowstate::state_type!(Transaction => "fraud-detection.Transaction");

/// The generated stream: transaction `i` is a pure function of `i`, so a
/// source that checkpoints its position replays exactly what it emitted.
#[derive(Debug, Clone, Copy)]
pub struct Generator {
    pub cards: u64,
    pub events_per_second: u64,
    pub out_of_orderness_ms: u64,
}

impl Generator {
    /// Transaction `i`: card `splitmix64(i) % cards`; event time `T0 + i *
    /// 1000 / rate` minus up to `out_of_orderness` of disorder; 2% small
    /// (1 to 99 cents), 1% large (500.01 to 5000.00), the rest 1.00 to 200.99.
    pub fn transaction(&self, i: u64) -> Transaction {
        let rate = self.events_per_second.max(1);
        let advance = (u128::from(i) * 1000 / u128::from(rate)) as i64;
        let disorder =
            (splitmix64(i ^ 0xD1B5_4A32_D192_ED03) % (self.out_of_orderness_ms + 1)) as i64;
        let u = splitmix64(i ^ 0x5DEE_CE66_D1CE_4E5B);
        let amount_cents = match u % 1000 {
            0..20 => 1 + (u >> 10) % 99,
            990.. => 50_001 + (u >> 10) % 450_000,
            _ => 100 + (u >> 10) % 20_000,
        };
        Transaction {
            id: i,
            card: splitmix64(i) % self.cards.max(1),
            amount_cents,
            timestamp_ms: T0_MS + advance - disorder,
        }
    }
}

/// The transaction id that position `i` of the sequence source emits, for
/// `n` transactions cut into `splits` splits.
///
/// The sequence source cuts its index range into contiguous splits, each read
/// at its own pace with its own watermark, and an instance's watermark is the
/// minimum over its splits. Were index and id the same, split 0 would hold the
/// first minutes of event time and the last split the last ones, and the
/// watermark would stay with the slowest until the end. So split `s` emits ids
/// `s`, `s + splits`, `s + 2 * splits`, ... instead: every split walks the
/// whole event-time range at the same pace, the watermark advances steadily,
/// and alerts come out as the stream goes (a reader takes a batch of up to a
/// thousand positions from one split at a time: with `splits` splits that
/// spans `splits` thousand transactions of event time). A bijection of `0..n`.
pub fn interleaved(i: u64, n: u64, splits: u64) -> u64 {
    let start = |s: u64| (u128::from(n) * u128::from(s) / u128::from(splits)) as u64;
    let mut s = (u128::from(i) * u128::from(splits) / u128::from(n.max(1))) as u64;
    while s + 1 < splits && start(s + 1) <= i {
        s += 1;
    }
    while s > 0 && start(s) > i {
        s -= 1;
    }
    // Position k in split s; every split has q or q + 1 positions.
    let (k, q) = (i - start(s), n / splits);
    if k < q {
        splits * k + s
    } else {
        // The last position of a long split: after all of the first q rows,
        // in split order among the long splits.
        splits * q + (start(s) - q * s)
    }
}

/// An alert, written as one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Alert {
    /// `small-then-large,<card>,<small id>,<small cents>,<large id>,<large cents>,<large time ms>`
    SmallThenLarge {
        card: u64,
        small: Transaction,
        large: Transaction,
    },
    /// `high-frequency,<card>,<window start ms>,<transactions>`
    HighFrequency {
        card: u64,
        window_start_ms: i64,
        transactions: u64,
    },
}

impl Alert {
    pub fn card(&self) -> u64 {
        match self {
            Alert::SmallThenLarge { card, .. } | Alert::HighFrequency { card, .. } => *card,
        }
    }
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Alert::SmallThenLarge { card, small, large } => write!(
                f,
                "small-then-large,{card},{},{},{},{},{}",
                small.id, small.amount_cents, large.id, large.amount_cents, large.timestamp_ms
            ),
            Alert::HighFrequency {
                card,
                window_start_ms,
                transactions,
            } => write!(f, "high-frequency,{card},{window_start_ms},{transactions}"),
        }
    }
}

/// FNV-1a, 64 bits.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// One alert line's share of the checksum.
pub fn alert_hash(line: &str) -> u64 {
    splitmix64(fnv1a64(line.as_bytes()))
}

/// What the job reports at its end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub transactions: u64,
    pub alerts: u64,
    /// Wrapping sum of [`alert_hash`] over the alerts' lines.
    pub checksum: u64,
}

impl Summary {
    fn merge(&mut self, other: &Summary) {
        self.transactions += other.transactions;
        self.alerts += other.alerts;
        self.checksum = self.checksum.wrapping_add(other.checksum);
    }

    /// `RESULT transactions=N alerts=M checksum=<16 hex>`.
    pub fn result_line(&self) -> String {
        format!(
            "RESULT transactions={} alerts={} checksum={:016x}",
            self.transactions, self.alerts, self.checksum
        )
    }
}

/// Each operator instance's share of the summary, read from its final state
/// when the input ends. Named by (operator, first key group), so an instance
/// that finishes again after a restart replaces its share instead of adding
/// it twice.
#[derive(Clone, Default)]
struct Shares(Arc<Mutex<HashMap<(&'static str, u32), Summary>>>);

impl Shares {
    fn set(&self, operator: &'static str, instance: u32, share: Summary) -> FnResult {
        self.0
            .lock()
            .map_err(|_| "summary lock poisoned")?
            .insert((operator, instance), share);
        Ok(())
    }

    fn total(&self) -> Summary {
        let shares = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = Summary::default();
        for share in shares.values() {
            total.merge(share);
        }
        total
    }
}

/// The states of [`SmallThenLarge`]: pending transactions, last small one,
/// transactions seen.
type RuleHandles = (
    ValueStateHandle<Vec<Transaction>>,
    ValueStateHandle<Transaction>,
    ValueStateHandle<u64>,
);

/// Rule "small-then-large", per card.
#[derive(Clone)]
struct SmallThenLarge {
    small_below: u64,
    large_above: u64,
    within_ms: i64,
    /// Transactions waiting for the watermark to pass their time.
    pending: Option<ValueStateHandle<Vec<Transaction>>>,
    /// The card's last transaction, if it was small and is not expired.
    last_small: Option<ValueStateHandle<Transaction>>,
    /// Transactions of the card (for the summary).
    seen: Option<ValueStateHandle<u64>>,
    shares: Shares,
}

impl SmallThenLarge {
    fn handles(&self) -> Result<RuleHandles, &'static str> {
        match (&self.pending, &self.last_small, &self.seen) {
            (Some(p), Some(l), Some(s)) => Ok((p.clone(), l.clone(), s.clone())),
            _ => Err("state used before open"),
        }
    }
}

impl KeyedProcessFunction<u64, Transaction, Alert> for SmallThenLarge {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.pending = Some(state.value_state(&ValueStateDescriptor::new("pending"))?);
        self.last_small = Some(state.value_state(&ValueStateDescriptor::new("last-small"))?);
        self.seen = Some(state.value_state(&ValueStateDescriptor::new("transactions"))?);
        Ok(())
    }

    fn process(
        &mut self,
        txn: Transaction,
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Vec<Alert>,
    ) -> FnResult {
        let (pending, _, seen) = self.handles()?;
        ctx.value(&seen).modify(|| 0, |n| *n += 1)?;
        ctx.value(&pending).modify(Vec::new, |p| p.push(txn))?;
        // Evaluated once the watermark says no earlier transaction can come.
        ctx.register_event_time_timer(txn.timestamp_ms)
    }

    fn on_timer(
        &mut self,
        time: i64,
        _domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<Alert>,
    ) -> FnResult {
        let (pending, last_small, _) = self.handles()?;
        // The card's transactions up to `time`, in event-time order.
        let mut due = Vec::new();
        ctx.value(&pending).update(|p| {
            let mut p = p?;
            p.retain(|t| {
                let ready = t.timestamp_ms <= time;
                if ready {
                    due.push(*t);
                }
                !ready
            });
            (!p.is_empty()).then_some(p)
        })?;
        due.sort_unstable_by_key(|t| (t.timestamp_ms, t.id));
        let mut small = ctx.value(&last_small).get()?.copied();
        for txn in due {
            if let Some(s) = small
                && txn.amount_cents > self.large_above
                && txn.timestamp_ms - s.timestamp_ms <= self.within_ms
            {
                out.push(Alert::SmallThenLarge {
                    card: txn.card,
                    small: s,
                    large: txn,
                });
            }
            small = if txn.amount_cents < self.small_below {
                // Expire the flag once no large transaction can follow in time.
                ctx.register_event_time_timer(txn.timestamp_ms + self.within_ms)?;
                Some(txn)
            } else {
                None
            };
        }
        // Later transactions are later than `time`: an expired flag goes.
        match small {
            Some(s) if s.timestamp_ms + self.within_ms > time => ctx.value(&last_small).set(s)?,
            _ => {
                ctx.value(&last_small).clear()?;
            }
        }
        Ok(())
    }

    fn finish(
        &mut self,
        state: &mut dyn KeyedStateBackend<u64>,
        _out: &mut Vec<Alert>,
    ) -> FnResult {
        let (_, _, seen) = self.handles()?;
        let mut share = Summary::default();
        state.for_each_value(&seen, |_, n| share.transactions += n)?;
        self.shares
            .set("small-then-large", state.key_group_range().start, share)
    }
}

/// Counts a window's transactions.
#[derive(Clone, Copy)]
struct Count;

impl WindowAggregateFunction<Transaction, u64, u64> for Count {
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, accumulator: &mut u64, _input: Transaction) {
        *accumulator += 1;
    }
    fn merge(&self, accumulator: &mut u64, other: u64) {
        *accumulator += other;
    }
    fn result(&self, accumulator: &u64) -> u64 {
        *accumulator
    }
}

/// Keeps, per card, how many alerts it had and their checksum, and passes
/// the alerts on; folds its state into the summary at the end of the input.
#[derive(Clone)]
struct AlertChecksum {
    state: Option<ValueStateHandle<(u64, u64)>>,
    shares: Shares,
}

impl KeyedProcessFunction<u64, Alert, Alert> for AlertChecksum {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.state = Some(state.value_state(&ValueStateDescriptor::new("alerts"))?);
        Ok(())
    }

    fn process(
        &mut self,
        alert: Alert,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<Alert>,
    ) -> FnResult {
        let handle = self.state.as_ref().ok_or("state used before open")?;
        let hash = alert_hash(&alert.to_string());
        ctx.value(handle).modify(
            || (0, 0),
            |(n, sum)| {
                *n += 1;
                *sum = sum.wrapping_add(hash);
            },
        )?;
        out.push(alert);
        Ok(())
    }

    fn finish(
        &mut self,
        state: &mut dyn KeyedStateBackend<u64>,
        _out: &mut Vec<Alert>,
    ) -> FnResult {
        let handle = self.state.as_ref().ok_or("state used before open")?;
        let mut share = Summary::default();
        state.for_each_value(handle, |_, &(n, sum)| {
            share.alerts += n;
            share.checksum = share.checksum.wrapping_add(sum);
        })?;
        self.shares
            .set("alert-checksum", state.key_group_range().start, share)
    }
}

/// A built job: its summary once it ended.
pub struct Job {
    shares: Shares,
}

impl Job {
    pub fn summary(&self) -> Summary {
        self.shares.total()
    }

    pub fn result_line(&self) -> String {
        self.summary().result_line()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Adds the fraud-detection job to `env`.
pub fn build(env: &StreamEnvironment, params: &Params) -> Result<Job, ConnectorError> {
    if params.cards == 0 || params.events_per_second == 0 {
        return Err(ConnectorError::Config(
            "--cards and --events-per-second must be at least 1".into(),
        ));
    }
    if params.window.is_zero() || params.large_within.is_zero() {
        return Err(ConnectorError::Config(
            "--window and --large-within must be at least 1ms".into(),
        ));
    }
    let generator = Generator {
        cards: params.cards,
        events_per_second: params.events_per_second,
        out_of_orderness_ms: u64::try_from(params.out_of_orderness.as_millis()).unwrap_or(u64::MAX),
    };
    // Watermarks per source split, trailing by the disorder bound: no
    // transaction is ever late.
    let strategy = WatermarkStrategy::bounded_out_of_orderness(
        millis(params.out_of_orderness),
        |t: &Transaction| t.timestamp_ms,
    );
    let n = params.transactions;
    let splits = u64::from(SOURCE_SPLITS);
    let mut source = SequenceSource::new(n, SOURCE_SPLITS, move |i| {
        generator.transaction(interleaved(i, n, splits))
    })?
    .with_event_time(strategy);
    if let Some(rate) = params.rate {
        source = source.with_rate(rate)?;
    }
    let shares = Shares::default();
    let transactions = env
        .from_source("Source: Transactions", source)
        .uid("transactions");

    let small_then_large = transactions
        .key_by(|t: &Transaction| t.card)
        .process(SmallThenLarge {
            small_below: params.small_below_cents,
            large_above: params.large_above_cents,
            within_ms: millis(params.large_within),
            pending: None,
            last_small: None,
            seen: None,
            shares: shares.clone(),
        })
        .name("Rule: small then large")
        .uid("small-then-large");

    let max = params.max_per_window;
    let high_frequency = transactions
        .key_by(|t: &Transaction| t.card)
        .window_by(TumblingEventTimeWindows::of(params.window), |t| {
            t.timestamp_ms
        })
        .aggregate_with(Count, |card, window, n| Alert::HighFrequency {
            card: *card,
            window_start_ms: window.start,
            transactions: n,
        })
        .name("Rule: high frequency")
        .uid("high-frequency")
        .filter(
            move |a| matches!(a, Alert::HighFrequency { transactions, .. } if *transactions > max),
        );

    let alerts = small_then_large
        .union(&high_frequency)
        .key_by(Alert::card)
        .process(AlertChecksum {
            state: None,
            shares: shares.clone(),
        })
        .name("Alert checksum")
        .uid("alert-checksum");
    match &params.output {
        Some(dir) => alerts.map(|a| a.to_string()).write_lines(dir)?,
        None => {
            alerts.count();
        }
    }
    Ok(Job { shares })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaving_is_a_bijection() {
        for (n, splits) in [(0, 4), (3, 8), (10, 4), (128, 128), (1000, 128), (1001, 7)] {
            let mut ids: Vec<u64> = (0..n).map(|i| interleaved(i, n, splits)).collect();
            ids.sort_unstable();
            assert_eq!(ids, (0..n).collect::<Vec<_>>(), "n={n} splits={splits}");
        }
    }

    #[test]
    fn every_split_starts_at_the_beginning() {
        // Split s (starting at index n * s / splits) emits id s first.
        let (n, splits) = (1000, 128);
        for s in 0..splits {
            assert_eq!(interleaved(n * s / splits, n, splits), s);
        }
    }
}
