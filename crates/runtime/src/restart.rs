//! Restart strategies (Flink's `fixed-delay`, `exponential-delay`,
//! `failure-rate` and `none`) and the one place that decides, after a failure,
//! whether a job restarts and after how long: [`RestartPolicy`].
//!
//! It owns: the strategies' parameters and defaults ([`RestartStrategy`]), their
//! validation, which failures may be restarted at all ([`restartable`]), and the
//! policy's state (attempts since the last reset, the current backoff, the
//! failures inside the measuring window).
//!
//! It must not touch: threads, sleeps or the clock. Time is given: the
//! supervisor (`supervisor.rs`) passes the `Instant` an attempt started running
//! ([`RestartPolicy::on_running`]) and the `Instant` it failed
//! ([`RestartPolicy::on_failure`]), then sleeps the delay it is told. So every
//! decision can be unit-tested with invented instants, hours apart, in
//! microseconds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::error::{BuildError, JobError};

/// Restarts a job gets before it fails: with `fixed-delay` over its whole
/// life, with `exponential-delay` since the backoff was last reset.
pub const DEFAULT_RESTART_ATTEMPTS: u32 = 3;
/// Delay before a restart (`fixed-delay`, `failure-rate`), or before the first
/// restart after a reset (`exponential-delay`). Short, because a restart only
/// rebuilds tasks and rewinds to the latest checkpoint in this process.
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_millis(100);
/// Longest delay `exponential-delay` grows to.
pub const DEFAULT_RESTART_DELAY_MAX: Duration = Duration::from_secs(10);
/// Factor by which `exponential-delay` grows the delay with each restart.
pub const DEFAULT_BACKOFF_MULTIPLIER: f64 = 2.0;
/// How long an attempt must have run before its failure counts as a fresh
/// one (`exponential-delay`: attempts and delay start over; Flink's
/// `reset-backoff-threshold`). Six times the longest delay, so that a job in a
/// crash loop never looks healthy; far below an hour, so that a job that fails
/// once an hour (or every few minutes) runs for good.
pub const DEFAULT_RESET_BACKOFF_THRESHOLD: Duration = Duration::from_secs(60);
/// Random spread of an `exponential-delay` delay, as a fraction of it (0.1:
/// ±10%). Off by default so that a run's delays are reproducible; Flink
/// defaults to 0.1 to keep many jobs of one cluster from restarting together.
pub const DEFAULT_JITTER_FACTOR: f64 = 0.0;
/// `failure-rate`: failures tolerated per measuring interval (Flink's default).
pub const DEFAULT_FAILURE_RATE_MAX_FAILURES: u32 = 1;
/// `failure-rate`: the measuring interval (Flink's default).
pub const DEFAULT_FAILURE_RATE_INTERVAL: Duration = Duration::from_secs(60);

/// `fixed-delay`: at most `attempts` restarts over the job's life, each after
/// `delay`.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedDelay {
    /// 0: the first failure ends the job.
    pub attempts: u32,
    pub delay: Duration,
}

impl Default for FixedDelay {
    fn default() -> Self {
        Self {
            attempts: DEFAULT_RESTART_ATTEMPTS,
            delay: DEFAULT_RESTART_DELAY,
        }
    }
}

/// `exponential-delay`: the delay starts at `initial_delay` and grows by
/// `multiplier` with each restart up to `max_delay`; a failure after the job
/// ran for `reset_after` since its last restart starts over (initial delay,
/// attempts back to zero). More than `max_attempts` restarts without such a
/// healthy run in between end the job (Flink's
/// `attempts-before-reset-backoff`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExponentialDelay {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// At least 1.0 (1.0: a fixed delay that still resets).
    pub multiplier: f64,
    /// Flink's `reset-backoff-threshold`.
    pub reset_after: Duration,
    /// Restarts between two healthy runs; 0: the first failure ends the job.
    pub max_attempts: u32,
    /// 0.0 ..= 1.0: each delay is moved by up to this fraction of itself, at
    /// random, either way.
    pub jitter_factor: f64,
}

impl Default for ExponentialDelay {
    fn default() -> Self {
        Self {
            initial_delay: DEFAULT_RESTART_DELAY,
            max_delay: DEFAULT_RESTART_DELAY_MAX,
            multiplier: DEFAULT_BACKOFF_MULTIPLIER,
            reset_after: DEFAULT_RESET_BACKOFF_THRESHOLD,
            max_attempts: DEFAULT_RESTART_ATTEMPTS,
            jitter_factor: DEFAULT_JITTER_FACTOR,
        }
    }
}

/// `failure-rate`: restart after `delay` as long as no more than
/// `max_failures` failures fell within the last `interval` (the window
/// slides: it ends at each failure); one more ends the job.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureRate {
    /// At least 1.
    pub max_failures: u32,
    pub interval: Duration,
    pub delay: Duration,
}

impl Default for FailureRate {
    fn default() -> Self {
        Self {
            max_failures: DEFAULT_FAILURE_RATE_MAX_FAILURES,
            interval: DEFAULT_FAILURE_RATE_INTERVAL,
            delay: DEFAULT_RESTART_DELAY,
        }
    }
}

/// How often and how soon a failed job is restarted from its latest
/// checkpoint. The default is `exponential-delay` with a reset, as in Flink
/// for a job with checkpoints: a job that fails now and then runs for good,
/// one in a crash loop ends.
#[derive(Debug, Clone, PartialEq)]
pub enum RestartStrategy {
    /// Never restart: the first failure ends the job.
    None,
    FixedDelay(FixedDelay),
    ExponentialDelay(ExponentialDelay),
    FailureRate(FailureRate),
}

impl Default for RestartStrategy {
    fn default() -> Self {
        RestartStrategy::ExponentialDelay(ExponentialDelay::default())
    }
}

/// A restart strategy whose parameters cannot work.
#[derive(Debug, Error, PartialEq)]
pub enum RestartStrategyError {
    #[error("the restart backoff multiplier {0} is not a number of at least 1.0")]
    Multiplier(f64),
    #[error("the restart jitter factor {0} is not between 0.0 and 1.0")]
    Jitter(f64),
    #[error("the initial restart delay {initial:?} is longer than the maximum delay {max:?}")]
    InitialAboveMax { initial: Duration, max: Duration },
    #[error("the healthy run that resets the restart backoff must be longer than zero")]
    ZeroResetThreshold,
    #[error("a failure-rate restart strategy must tolerate at least one failure per interval")]
    ZeroFailureRate,
    #[error("the failure-rate measuring interval must be longer than zero")]
    ZeroFailureInterval,
}

impl From<RestartStrategyError> for BuildError {
    fn from(e: RestartStrategyError) -> Self {
        BuildError::Config(e.to_string())
    }
}

impl RestartStrategy {
    /// `fixed-delay` with `attempts` restarts over the job's life.
    pub fn fixed_delay(attempts: u32, delay: Duration) -> Self {
        RestartStrategy::FixedDelay(FixedDelay { attempts, delay })
    }

    /// `exponential-delay` with the defaults.
    pub fn exponential_delay() -> Self {
        RestartStrategy::default()
    }

    /// `failure-rate`: at most `max_failures` per `interval`, each restarted
    /// after `delay`.
    pub fn failure_rate(max_failures: u32, interval: Duration, delay: Duration) -> Self {
        RestartStrategy::FailureRate(FailureRate {
            max_failures,
            interval,
            delay,
        })
    }

    /// The name Flink gives the strategy (`restart-strategy.type`).
    pub fn name(&self) -> &'static str {
        match self {
            RestartStrategy::None => "none",
            RestartStrategy::FixedDelay(_) => "fixed-delay",
            RestartStrategy::ExponentialDelay(_) => "exponential-delay",
            RestartStrategy::FailureRate(_) => "failure-rate",
        }
    }

    pub fn validate(&self) -> Result<(), RestartStrategyError> {
        match self {
            RestartStrategy::None | RestartStrategy::FixedDelay(_) => Ok(()),
            RestartStrategy::ExponentialDelay(e) => {
                // The range refuses NaN too.
                if !(1.0..f64::INFINITY).contains(&e.multiplier) {
                    return Err(RestartStrategyError::Multiplier(e.multiplier));
                }
                if !(0.0..=1.0).contains(&e.jitter_factor) {
                    return Err(RestartStrategyError::Jitter(e.jitter_factor));
                }
                if e.initial_delay > e.max_delay {
                    return Err(RestartStrategyError::InitialAboveMax {
                        initial: e.initial_delay,
                        max: e.max_delay,
                    });
                }
                if e.reset_after.is_zero() {
                    return Err(RestartStrategyError::ZeroResetThreshold);
                }
                Ok(())
            }
            RestartStrategy::FailureRate(f) => {
                if f.max_failures == 0 {
                    return Err(RestartStrategyError::ZeroFailureRate);
                }
                if f.interval.is_zero() {
                    return Err(RestartStrategyError::ZeroFailureInterval);
                }
                Ok(())
            }
        }
    }
}

/// What to do about a failure.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Restart once this delay has passed.
    RestartAfter(Duration),
    /// End the job with its failure.
    GiveUp(GiveUpReason),
}

/// Why a policy ends a job.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum GiveUpReason {
    #[error("the restart strategy is none")]
    NoRestarts,
    #[error("all {attempts} restart attempts are used")]
    AttemptsUsed { attempts: u32 },
    #[error(
        "{attempts} restart attempts are used without {reset_after:?} of healthy running since"
    )]
    AttemptsUsedWithoutHealthyRun {
        attempts: u32,
        reset_after: Duration,
    },
    #[error("{failures} failures within {interval:?}, more than the {max} tolerated")]
    FailureRateExceeded {
        failures: usize,
        max: u32,
        interval: Duration,
    },
}

/// The restart decisions of one job: a small state machine fed with times.
#[derive(Debug)]
pub struct RestartPolicy {
    strategy: RestartStrategy,
    /// When the current attempt started running; `None` once it failed (a
    /// failure to load the checkpoint for a restart ran nothing).
    running_since: Option<Instant>,
    /// Restarts granted: over the job's life (`fixed-delay`), since the last
    /// reset (`exponential-delay`), or in all (the others; for messages).
    attempts: u32,
    /// `exponential-delay`: the delay of the next restart, before jitter.
    next_delay: Duration,
    /// `failure-rate`: failures inside the window ending at the latest one,
    /// oldest first; never more than `max_failures + 1`.
    failures: VecDeque<Instant>,
    /// Jitter only; seeded, so a policy's decisions are reproducible.
    rng: fastrand::Rng,
}

impl RestartPolicy {
    /// A policy with no failure yet; `seed` drives the jitter.
    pub fn new(strategy: RestartStrategy, seed: u64) -> Self {
        let next_delay = match &strategy {
            RestartStrategy::ExponentialDelay(e) => e.initial_delay,
            _ => Duration::ZERO,
        };
        Self {
            strategy,
            running_since: None,
            attempts: 0,
            next_delay,
            failures: VecDeque::new(),
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    pub fn strategy(&self) -> &RestartStrategy {
        &self.strategy
    }

    /// An attempt of the job started running at `now` (the first one, or one
    /// after a restart).
    pub fn on_running(&mut self, now: Instant) {
        self.running_since = Some(now);
    }

    /// The job failed at `now` with a restartable failure: restart after a
    /// delay, or give up.
    pub fn on_failure(&mut self, now: Instant) -> Decision {
        let healthy = self
            .running_since
            .take()
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        match &self.strategy {
            RestartStrategy::None => Decision::GiveUp(GiveUpReason::NoRestarts),
            RestartStrategy::FixedDelay(f) => {
                if self.attempts >= f.attempts {
                    return Decision::GiveUp(GiveUpReason::AttemptsUsed {
                        attempts: f.attempts,
                    });
                }
                self.attempts += 1;
                Decision::RestartAfter(f.delay)
            }
            RestartStrategy::ExponentialDelay(e) => {
                if healthy >= e.reset_after {
                    self.attempts = 0;
                    self.next_delay = e.initial_delay;
                }
                if self.attempts >= e.max_attempts {
                    return Decision::GiveUp(GiveUpReason::AttemptsUsedWithoutHealthyRun {
                        attempts: e.max_attempts,
                        reset_after: e.reset_after,
                    });
                }
                self.attempts += 1;
                let base = self.next_delay;
                self.next_delay = scaled(base, e.multiplier).min(e.max_delay);
                Decision::RestartAfter(jittered(base, e.jitter_factor, &mut self.rng))
            }
            RestartStrategy::FailureRate(f) => {
                // The window is (now - interval, now]: a failure exactly one
                // interval old has left it.
                while let Some(&oldest) = self.failures.front() {
                    if now.saturating_duration_since(oldest) >= f.interval {
                        self.failures.pop_front();
                    } else {
                        break;
                    }
                }
                self.failures.push_back(now);
                if self.failures.len() > f.max_failures as usize {
                    return Decision::GiveUp(GiveUpReason::FailureRateExceeded {
                        failures: self.failures.len(),
                        max: f.max_failures,
                        interval: f.interval,
                    });
                }
                self.attempts = self.attempts.saturating_add(1);
                Decision::RestartAfter(f.delay)
            }
        }
    }

    /// The latest restart granted, for the log: `restart 2 of 3` (the
    /// strategies with an attempt budget: a log contract), or the failures in
    /// the window.
    pub fn describe_restart(&self) -> String {
        match &self.strategy {
            RestartStrategy::None => "no restart".to_owned(),
            RestartStrategy::FixedDelay(f) => {
                format!("restart {} of {}", self.attempts, f.attempts)
            }
            RestartStrategy::ExponentialDelay(e) => {
                format!("restart {} of {}", self.attempts, e.max_attempts)
            }
            RestartStrategy::FailureRate(f) => format!(
                "restart {} ({} of at most {} failures within {:?})",
                self.attempts,
                self.failures.len(),
                f.max_failures,
                f.interval
            ),
        }
    }
}

/// `delay × multiplier`, saturating at the longest `Duration` instead of
/// panicking as `Duration::mul_f64` does on overflow.
fn scaled(delay: Duration, multiplier: f64) -> Duration {
    Duration::try_from_secs_f64(delay.as_secs_f64() * multiplier).unwrap_or(Duration::MAX)
}

/// `delay` moved by up to `factor` of itself either way, at random.
fn jittered(delay: Duration, factor: f64, rng: &mut fastrand::Rng) -> Duration {
    if factor <= 0.0 {
        return delay;
    }
    let spread = (rng.f64() * 2.0 - 1.0) * factor;
    Duration::try_from_secs_f64(delay.as_secs_f64() * (1.0 + spread)).unwrap_or(delay)
}

/// Whether a failure goes through the restart strategy at all. Creating an
/// operator instance fails for a bad configuration (fail at once) or for a
/// server that is down (retry): once the job has run (`has_run`), a failure
/// to create one again is taken for the transient kind. Reading storage may
/// fail for a while (a network, a server); a checkpoint that is damaged or of
/// an unknown version stays so.
pub fn restartable(error: &JobError, has_run: bool) -> bool {
    match error {
        JobError::TaskFailed { .. } | JobError::Checkpointing(_) => true,
        // Across processes: a lost task manager or connection, a failed part,
        // task managers late to register are all failures of a running
        // cluster, which the next attempt may not meet.
        JobError::Network(_)
        | JobError::TaskManager { .. }
        | JobError::TaskManagerLost { .. }
        | JobError::Deploy(_) => true,
        JobError::Build(BuildError::Create { .. }) => has_run,
        JobError::Restore(flowstate_checkpoint::CheckpointError::Storage(_)) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn failures_of_a_cluster_restart() {
        let lost = JobError::TaskManagerLost {
            process: 1,
            cause: "connection reset".into(),
        };
        let failed = JobError::TaskManager {
            process: 0,
            cause: "a channel closed".into(),
        };
        let network = JobError::Network(crate::remote::TransportError::Down("reset".into()));
        let late = JobError::Deploy("task managers [2] did not register".into());
        for error in [lost, failed, network, late] {
            assert!(restartable(&error, true), "{error}");
        }
        assert!(!restartable(&JobError::Cancelled, true));
    }

    /// A clock the test moves by hand.
    struct Clock(Instant);

    impl Clock {
        fn new() -> Self {
            Clock(Instant::now())
        }
        fn advance(&mut self, by: Duration) -> Instant {
            self.0 += by;
            self.0
        }
    }

    fn restart_after(decision: Decision) -> Duration {
        match decision {
            Decision::RestartAfter(delay) => delay,
            Decision::GiveUp(reason) => panic!("gave up: {reason}"),
        }
    }

    /// Runs `healthy` and fails, `times` times, restarting after each delay;
    /// returns the delays, or the reason of the first give-up.
    fn fail_repeatedly(
        policy: &mut RestartPolicy,
        clock: &mut Clock,
        healthy: Duration,
        times: usize,
    ) -> Result<Vec<Duration>, GiveUpReason> {
        let mut delays = Vec::new();
        for _ in 0..times {
            policy.on_running(clock.0);
            let now = clock.advance(healthy);
            match policy.on_failure(now) {
                Decision::RestartAfter(delay) => {
                    clock.advance(delay);
                    delays.push(delay);
                }
                Decision::GiveUp(reason) => return Err(reason),
            }
        }
        Ok(delays)
    }

    #[test]
    fn the_default_is_exponential_delay_with_a_reset() {
        let RestartStrategy::ExponentialDelay(e) = RestartStrategy::default() else {
            panic!("the default is not exponential-delay");
        };
        assert_eq!(e, ExponentialDelay::default());
        assert!(e.reset_after < HOUR && e.reset_after > e.max_delay);
        assert_eq!(RestartStrategy::default().validate(), Ok(()));
    }

    /// The promise: a job that fails once an hour runs for good under
    /// the default. With the old supervisor the fourth failure ended it.
    #[test]
    fn under_the_default_a_job_that_fails_once_an_hour_runs_for_good() {
        let mut policy = RestartPolicy::new(RestartStrategy::default(), 1);
        let mut clock = Clock::new();
        let delays = fail_repeatedly(&mut policy, &mut clock, HOUR, 1000).unwrap();
        // Every failure after a healthy hour starts over at the initial delay.
        assert!(delays.iter().all(|&d| d == DEFAULT_RESTART_DELAY));
        assert_eq!(policy.describe_restart(), "restart 1 of 3");
    }

    /// Several minutes of healthy running between failures are enough too.
    #[test]
    fn under_the_default_failures_minutes_apart_never_end_the_job() {
        let mut policy = RestartPolicy::new(RestartStrategy::default(), 1);
        let mut clock = Clock::new();
        assert!(fail_repeatedly(&mut policy, &mut clock, 3 * MINUTE, 500).is_ok());
    }

    /// A crash loop (failures seconds apart) still ends the job, after the
    /// attempts with a growing delay.
    #[test]
    fn under_the_default_a_crash_loop_ends_after_the_attempts() {
        let mut policy = RestartPolicy::new(RestartStrategy::default(), 1);
        let mut clock = Clock::new();
        let error = fail_repeatedly(&mut policy, &mut clock, SECOND, 10).unwrap_err();
        assert_eq!(
            error,
            GiveUpReason::AttemptsUsedWithoutHealthyRun {
                attempts: DEFAULT_RESTART_ATTEMPTS,
                reset_after: DEFAULT_RESET_BACKOFF_THRESHOLD,
            }
        );
        let mut policy = RestartPolicy::new(RestartStrategy::default(), 1);
        let delays = fail_repeatedly(&mut policy, &mut clock, SECOND, 3).unwrap();
        assert_eq!(
            delays,
            [100, 200, 400].map(Duration::from_millis).to_vec(),
            "100 ms doubling"
        );
    }

    #[test]
    fn exponential_delay_grows_to_its_maximum_and_resets_after_a_healthy_run() {
        let strategy = RestartStrategy::ExponentialDelay(ExponentialDelay {
            initial_delay: SECOND,
            max_delay: 5 * SECOND,
            multiplier: 2.0,
            reset_after: 10 * MINUTE,
            max_attempts: 100,
            jitter_factor: 0.0,
        });
        let mut policy = RestartPolicy::new(strategy, 1);
        let mut clock = Clock::new();
        let delays = fail_repeatedly(&mut policy, &mut clock, MINUTE, 5).unwrap();
        assert_eq!(delays, [1, 2, 4, 5, 5].map(Duration::from_secs).to_vec());
        assert_eq!(policy.describe_restart(), "restart 5 of 100");
        // Just short of the threshold: no reset.
        let delays = fail_repeatedly(&mut policy, &mut clock, 10 * MINUTE - SECOND, 1).unwrap();
        assert_eq!(delays, [5 * SECOND]);
        assert_eq!(policy.describe_restart(), "restart 6 of 100");
        // At the threshold: initial delay, attempts from one again; then
        // growing again while the runs are short.
        let delays = fail_repeatedly(&mut policy, &mut clock, 10 * MINUTE, 1).unwrap();
        assert_eq!(delays, [SECOND]);
        assert_eq!(policy.describe_restart(), "restart 1 of 100");
        let delays = fail_repeatedly(&mut policy, &mut clock, MINUTE, 2).unwrap();
        assert_eq!(delays, [2, 4].map(Duration::from_secs).to_vec());
        assert_eq!(policy.describe_restart(), "restart 3 of 100");
    }

    /// The reset counts the time since the attempt started running, not
    /// since the last failure: a failed load of the checkpoint for a restart
    /// (no `on_running` in between) is not a healthy run.
    #[test]
    fn exponential_delay_does_not_count_time_without_a_running_attempt_as_healthy() {
        let strategy = RestartStrategy::ExponentialDelay(ExponentialDelay {
            max_attempts: 2,
            ..ExponentialDelay::default()
        });
        let mut policy = RestartPolicy::new(strategy, 1);
        let mut clock = Clock::new();
        policy.on_running(clock.0);
        restart_after(policy.on_failure(clock.advance(HOUR)));
        // Two failed loads, an hour apart, without the job running.
        restart_after(policy.on_failure(clock.advance(HOUR)));
        assert!(matches!(
            policy.on_failure(clock.advance(HOUR)),
            Decision::GiveUp(GiveUpReason::AttemptsUsedWithoutHealthyRun { attempts: 2, .. })
        ));
    }

    #[test]
    fn exponential_delay_with_zero_attempts_never_restarts() {
        let strategy = RestartStrategy::ExponentialDelay(ExponentialDelay {
            max_attempts: 0,
            ..ExponentialDelay::default()
        });
        let mut policy = RestartPolicy::new(strategy, 1);
        policy.on_running(Instant::now());
        assert!(matches!(
            policy.on_failure(Instant::now() + HOUR),
            Decision::GiveUp(_)
        ));
    }

    #[test]
    fn exponential_delay_jitter_stays_within_its_factor_and_is_reproducible() {
        let strategy = RestartStrategy::ExponentialDelay(ExponentialDelay {
            initial_delay: 10 * SECOND,
            max_delay: 10 * SECOND,
            multiplier: 1.0,
            jitter_factor: 0.5,
            max_attempts: u32::MAX,
            ..ExponentialDelay::default()
        });
        let run = |seed| {
            let mut policy = RestartPolicy::new(strategy.clone(), seed);
            fail_repeatedly(&mut policy, &mut Clock::new(), SECOND, 200).unwrap()
        };
        let delays = run(7);
        assert!(
            delays
                .iter()
                .all(|d| (5 * SECOND..=15 * SECOND).contains(d)),
            "{delays:?}"
        );
        assert!(delays.iter().any(|&d| d != 10 * SECOND), "no jitter at all");
        assert_eq!(delays, run(7), "the same seed, the same delays");
    }

    /// A multiplier that overflows `Duration` saturates at the maximum delay
    /// instead of panicking.
    #[test]
    fn exponential_delay_does_not_overflow() {
        let strategy = RestartStrategy::ExponentialDelay(ExponentialDelay {
            initial_delay: HOUR,
            max_delay: Duration::MAX,
            multiplier: 1e300,
            max_attempts: 5,
            ..ExponentialDelay::default()
        });
        let mut policy = RestartPolicy::new(strategy, 1);
        let now = Instant::now();
        assert_eq!(restart_after(policy.on_failure(now)), HOUR);
        assert_eq!(restart_after(policy.on_failure(now)), Duration::MAX);
        assert_eq!(restart_after(policy.on_failure(now)), Duration::MAX);
    }

    /// Fixed delay never forgives: `attempts` restarts over the job's life,
    /// however long it ran in between (Flink's `fixed-delay`).
    #[test]
    fn fixed_delay_counts_attempts_over_the_whole_life() {
        let mut policy = RestartPolicy::new(RestartStrategy::fixed_delay(3, 2 * SECOND), 1);
        let mut clock = Clock::new();
        let delays = fail_repeatedly(&mut policy, &mut clock, HOUR, 3).unwrap();
        assert_eq!(delays, [2 * SECOND; 3]);
        assert_eq!(policy.describe_restart(), "restart 3 of 3");
        assert_eq!(
            fail_repeatedly(&mut policy, &mut clock, 24 * HOUR, 1),
            Err(GiveUpReason::AttemptsUsed { attempts: 3 })
        );
        let mut none = RestartPolicy::new(RestartStrategy::fixed_delay(0, SECOND), 1);
        assert!(matches!(
            none.on_failure(Instant::now()),
            Decision::GiveUp(_)
        ));
    }

    #[test]
    fn none_never_restarts() {
        let mut policy = RestartPolicy::new(RestartStrategy::None, 1);
        let mut clock = Clock::new();
        assert_eq!(
            fail_repeatedly(&mut policy, &mut clock, 100 * HOUR, 1),
            Err(GiveUpReason::NoRestarts)
        );
    }

    #[test]
    fn failure_rate_ends_the_job_on_one_failure_too_many_within_the_interval() {
        let strategy = RestartStrategy::failure_rate(3, 10 * MINUTE, SECOND);
        let mut policy = RestartPolicy::new(strategy, 1);
        let mut clock = Clock::new();
        let delays = fail_repeatedly(&mut policy, &mut clock, MINUTE, 3).unwrap();
        assert_eq!(delays, [SECOND; 3]);
        assert_eq!(
            fail_repeatedly(&mut policy, &mut clock, MINUTE, 1),
            Err(GiveUpReason::FailureRateExceeded {
                failures: 4,
                max: 3,
                interval: 10 * MINUTE
            })
        );
    }

    /// The window slides: it always ends at the latest failure, so failures
    /// that fell out of it no longer count, however many there were before.
    #[test]
    fn failure_rate_window_slides() {
        let strategy = RestartStrategy::failure_rate(2, 10 * SECOND, Duration::ZERO);
        let mut policy = RestartPolicy::new(strategy, 1);
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        // Two failures in any 10 s are tolerated: 0, 6, 12, 18, ... never has
        // three within 10 s.
        for t in (0..600).step_by(6) {
            restart_after(policy.on_failure(at(t)));
        }
        assert!(policy.failures.len() <= 3, "the window is bounded");
        // 594 and 600 are two within 10 s; at 604, 594 has left the window
        // (600 and 604); at 606, 600, 604 and 606 are three, one too many.
        restart_after(policy.on_failure(at(600)));
        restart_after(policy.on_failure(at(604)));
        assert!(matches!(
            policy.on_failure(at(606)),
            Decision::GiveUp(GiveUpReason::FailureRateExceeded { failures: 3, .. })
        ));
        // A failure exactly one interval old has left the window.
        let mut policy = RestartPolicy::new(
            RestartStrategy::failure_rate(1, 10 * SECOND, Duration::ZERO),
            1,
        );
        restart_after(policy.on_failure(at(0)));
        restart_after(policy.on_failure(at(10)));
        assert!(matches!(policy.on_failure(at(19)), Decision::GiveUp(_)));
    }

    #[test]
    fn invalid_parameters_are_refused() {
        let exp = |e: ExponentialDelay| RestartStrategy::ExponentialDelay(e).validate();
        assert_eq!(
            exp(ExponentialDelay {
                multiplier: 0.5,
                ..ExponentialDelay::default()
            }),
            Err(RestartStrategyError::Multiplier(0.5))
        );
        assert!(
            exp(ExponentialDelay {
                multiplier: f64::NAN,
                ..ExponentialDelay::default()
            })
            .is_err()
        );
        assert!(
            exp(ExponentialDelay {
                multiplier: f64::INFINITY,
                ..ExponentialDelay::default()
            })
            .is_err()
        );
        assert!(
            exp(ExponentialDelay {
                jitter_factor: 1.5,
                ..ExponentialDelay::default()
            })
            .is_err()
        );
        assert!(
            exp(ExponentialDelay {
                initial_delay: MINUTE,
                ..ExponentialDelay::default()
            })
            .is_err()
        );
        assert!(
            exp(ExponentialDelay {
                reset_after: Duration::ZERO,
                ..ExponentialDelay::default()
            })
            .is_err()
        );
        assert_eq!(
            RestartStrategy::failure_rate(0, MINUTE, SECOND).validate(),
            Err(RestartStrategyError::ZeroFailureRate)
        );
        assert_eq!(
            RestartStrategy::failure_rate(1, Duration::ZERO, SECOND).validate(),
            Err(RestartStrategyError::ZeroFailureInterval)
        );
        assert_eq!(RestartStrategy::None.validate(), Ok(()));
        assert_eq!(RestartStrategy::fixed_delay(0, SECOND).validate(), Ok(()));
    }

    #[test]
    fn which_failures_are_restartable() {
        let task = JobError::TaskFailed {
            task: "t".into(),
            source: crate::error::TaskError::ChannelClosed { task: "t".into() },
        };
        assert!(restartable(&task, false));
        assert!(!restartable(&JobError::Cancelled, true));
    }
}
