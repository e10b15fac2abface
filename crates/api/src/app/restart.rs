//! The restart flags of [`RunArgs`](super::RunArgs) (`flowstate run` and
//! every [`App`](super::App)) and the [`RestartStrategy`] they make (Flink's
//! `restart-strategy.*` options, as flags).
//!
//! It owns: parsing `--restart-strategy` and its parameters, their defaults
//! per strategy, refusing a parameter the chosen strategy does not have, and
//! naming the flag when the runtime refuses a value. It must not touch: the
//! decisions themselves (`flowstate_runtime::restart::RestartPolicy`).
//!
//! `--restart-attempts` and `--restart-delay` predate the strategies and keep
//! their meaning under the default, `exponential-delay`: the restarts before
//! the job fails (now: since its last healthy run; 0 disables restarts), and
//! the delay of the first restart.

use std::time::Duration;

use clap::{Args, ValueEnum};
use flowstate_runtime::RestartStrategy;
use flowstate_runtime::restart::{
    DEFAULT_BACKOFF_MULTIPLIER, DEFAULT_FAILURE_RATE_INTERVAL, DEFAULT_FAILURE_RATE_MAX_FAILURES,
    DEFAULT_JITTER_FACTOR, DEFAULT_RESET_BACKOFF_THRESHOLD, DEFAULT_RESTART_ATTEMPTS,
    DEFAULT_RESTART_DELAY, DEFAULT_RESTART_DELAY_MAX, ExponentialDelay, FailureRate, FixedDelay,
    RestartStrategyError,
};

use super::AppError;

type Result<T, E = AppError> = std::result::Result<T, E>;

macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(AppError::Usage(format!($($arg)*)))
    };
}

/// Flink's `restart-strategy.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StrategyKind {
    /// A fixed delay, a number of restarts over the job's whole life.
    FixedDelay,
    /// A growing delay; a healthy run resets delay and attempts.
    ExponentialDelay,
    /// A fixed delay while at most N failures fall within an interval.
    FailureRate,
    /// Never restart.
    None,
}

#[derive(Args, Debug)]
pub struct RestartArgs {
    /// How a failed job is restarted from its latest checkpoint.
    #[arg(long, value_enum, default_value_t = StrategyKind::ExponentialDelay)]
    restart_strategy: StrategyKind,
    /// fixed-delay: restarts over the job's life; exponential-delay: restarts
    /// without a healthy run (--restart-reset-after) in between. 0 disables
    /// restarts [default: 3].
    #[arg(long)]
    restart_attempts: Option<u32>,
    /// Delay before a restart (fixed-delay, failure-rate), or before the first
    /// one after a healthy run (exponential-delay) [default: 100ms].
    #[arg(long, value_parser = humantime::parse_duration)]
    restart_delay: Option<Duration>,
    /// exponential-delay: longest delay [default: 10s, or --restart-delay if
    /// longer].
    #[arg(long, value_parser = humantime::parse_duration)]
    restart_delay_max: Option<Duration>,
    /// exponential-delay: factor of growth of the delay, at least 1.0
    /// [default: 2.0].
    #[arg(long)]
    restart_backoff_multiplier: Option<f64>,
    /// exponential-delay: a failure after the job ran this long since its last
    /// restart starts over at the first delay with all attempts (Flink's
    /// reset-backoff-threshold) [default: 1m].
    #[arg(long, value_parser = humantime::parse_duration)]
    restart_reset_after: Option<Duration>,
    /// exponential-delay: each delay moves by up to this fraction of itself,
    /// at random (0.0 to 1.0) [default: 0].
    #[arg(long)]
    restart_jitter_factor: Option<f64>,
    /// failure-rate: failures tolerated within the interval; one more ends
    /// the job [default: 1].
    #[arg(long)]
    restart_failure_rate_max: Option<u32>,
    /// failure-rate: the sliding interval failures are counted in
    /// [default: 1m].
    #[arg(long, value_parser = humantime::parse_duration)]
    restart_failure_rate_interval: Option<Duration>,
}

impl RestartArgs {
    /// The strategy the flags choose, checked.
    pub fn strategy(&self) -> Result<RestartStrategy> {
        let kind = self.restart_strategy;
        let name = kind
            .to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_owned());
        // A parameter of another strategy is a mistake, not something to
        // ignore silently.
        let only = |given: bool, flag: &str, strategies: &[StrategyKind]| -> Result<()> {
            if given && !strategies.contains(&kind) {
                bail!("{flag} does not apply to --restart-strategy {name}");
            }
            Ok(())
        };
        use StrategyKind::{ExponentialDelay as Exp, FailureRate as Rate, FixedDelay as Fixed};
        only(
            self.restart_attempts.is_some(),
            "--restart-attempts",
            &[Fixed, Exp],
        )?;
        only(
            self.restart_delay.is_some(),
            "--restart-delay",
            &[Fixed, Exp, Rate],
        )?;
        only(
            self.restart_delay_max.is_some(),
            "--restart-delay-max",
            &[Exp],
        )?;
        only(
            self.restart_backoff_multiplier.is_some(),
            "--restart-backoff-multiplier",
            &[Exp],
        )?;
        only(
            self.restart_reset_after.is_some(),
            "--restart-reset-after",
            &[Exp],
        )?;
        only(
            self.restart_jitter_factor.is_some(),
            "--restart-jitter-factor",
            &[Exp],
        )?;
        only(
            self.restart_failure_rate_max.is_some(),
            "--restart-failure-rate-max",
            &[Rate],
        )?;
        only(
            self.restart_failure_rate_interval.is_some(),
            "--restart-failure-rate-interval",
            &[Rate],
        )?;
        let attempts = self.restart_attempts.unwrap_or(DEFAULT_RESTART_ATTEMPTS);
        let delay = self.restart_delay.unwrap_or(DEFAULT_RESTART_DELAY);
        let strategy = match kind {
            StrategyKind::None => RestartStrategy::None,
            StrategyKind::FixedDelay => RestartStrategy::FixedDelay(FixedDelay { attempts, delay }),
            StrategyKind::ExponentialDelay => RestartStrategy::ExponentialDelay(ExponentialDelay {
                initial_delay: delay,
                // A long --restart-delay alone raises the maximum with it
                // rather than being refused (it was accepted before there
                // was a maximum to give).
                max_delay: self
                    .restart_delay_max
                    .unwrap_or(DEFAULT_RESTART_DELAY_MAX.max(delay)),
                multiplier: self
                    .restart_backoff_multiplier
                    .unwrap_or(DEFAULT_BACKOFF_MULTIPLIER),
                reset_after: self
                    .restart_reset_after
                    .unwrap_or(DEFAULT_RESET_BACKOFF_THRESHOLD),
                max_attempts: attempts,
                jitter_factor: self.restart_jitter_factor.unwrap_or(DEFAULT_JITTER_FACTOR),
            }),
            StrategyKind::FailureRate => RestartStrategy::FailureRate(FailureRate {
                max_failures: self
                    .restart_failure_rate_max
                    .unwrap_or(DEFAULT_FAILURE_RATE_MAX_FAILURES),
                interval: self
                    .restart_failure_rate_interval
                    .unwrap_or(DEFAULT_FAILURE_RATE_INTERVAL),
                delay,
            }),
        };
        if let Err(e) = strategy.validate() {
            let flag = match e {
                RestartStrategyError::Multiplier(_) => "--restart-backoff-multiplier",
                RestartStrategyError::Jitter(_) => "--restart-jitter-factor",
                RestartStrategyError::InitialAboveMax { .. } => {
                    "--restart-delay and --restart-delay-max"
                }
                RestartStrategyError::ZeroResetThreshold => "--restart-reset-after",
                RestartStrategyError::ZeroFailureRate => "--restart-failure-rate-max",
                RestartStrategyError::ZeroFailureInterval => "--restart-failure-rate-interval",
            };
            bail!("{flag}: {e}");
        }
        Ok(strategy)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        restart: RestartArgs,
    }

    fn strategy(args: &[&str]) -> Result<RestartStrategy, String> {
        let cli = Cli::try_parse_from(std::iter::once("flowstate").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.restart.strategy().map_err(|e| e.to_string())
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_flags_give_the_runtime_default() {
        assert_eq!(strategy(&[]).unwrap(), RestartStrategy::default());
    }

    /// The flags that predate the strategies keep working, on the default.
    #[test]
    fn the_old_flags_set_the_default_strategy() {
        let RestartStrategy::ExponentialDelay(e) =
            strategy(&["--restart-attempts", "30", "--restart-delay", "300ms"]).unwrap()
        else {
            panic!("not exponential-delay");
        };
        assert_eq!((e.max_attempts, e.initial_delay), (30, ms(300)));
        assert_eq!(e.max_delay, DEFAULT_RESTART_DELAY_MAX);
        // 0 disables restarts, as before.
        let zero = strategy(&["--restart-attempts", "0"]).unwrap();
        let RestartStrategy::ExponentialDelay(e) = zero else {
            panic!("not exponential-delay");
        };
        assert_eq!(e.max_attempts, 0);
        // A delay above the default maximum raises the maximum.
        let RestartStrategy::ExponentialDelay(e) = strategy(&["--restart-delay", "30s"]).unwrap()
        else {
            panic!("not exponential-delay");
        };
        assert_eq!(e.max_delay, Duration::from_secs(30));
    }

    #[test]
    fn every_strategy_takes_its_flags() {
        assert_eq!(
            strategy(&[
                "--restart-strategy",
                "fixed-delay",
                "--restart-attempts",
                "5",
                "--restart-delay",
                "2s"
            ])
            .unwrap(),
            RestartStrategy::fixed_delay(5, Duration::from_secs(2))
        );
        assert_eq!(
            strategy(&[
                "--restart-strategy",
                "failure-rate",
                "--restart-failure-rate-max",
                "3",
                "--restart-failure-rate-interval",
                "5m",
                "--restart-delay",
                "1s"
            ])
            .unwrap(),
            RestartStrategy::failure_rate(3, Duration::from_secs(300), Duration::from_secs(1))
        );
        assert_eq!(
            strategy(&["--restart-strategy", "none"]).unwrap(),
            RestartStrategy::None
        );
        assert_eq!(
            strategy(&[
                "--restart-strategy",
                "exponential-delay",
                "--restart-delay",
                "1s",
                "--restart-delay-max",
                "1m",
                "--restart-backoff-multiplier",
                "1.5",
                "--restart-reset-after",
                "1h",
                "--restart-jitter-factor",
                "0.1",
                "--restart-attempts",
                "10"
            ])
            .unwrap(),
            RestartStrategy::ExponentialDelay(ExponentialDelay {
                initial_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(60),
                multiplier: 1.5,
                reset_after: Duration::from_secs(3600),
                max_attempts: 10,
                jitter_factor: 0.1,
            })
        );
    }

    #[test]
    fn a_flag_of_another_strategy_or_a_bad_value_is_refused_naming_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--restart-strategy", "none", "--restart-attempts", "3"],
                "--restart-attempts",
            ),
            (
                &[
                    "--restart-strategy",
                    "failure-rate",
                    "--restart-attempts",
                    "3",
                ],
                "--restart-attempts",
            ),
            (
                &[
                    "--restart-strategy",
                    "fixed-delay",
                    "--restart-reset-after",
                    "1m",
                ],
                "--restart-reset-after",
            ),
            (
                &["--restart-failure-rate-max", "3"],
                "--restart-failure-rate-max",
            ),
            (
                &["--restart-backoff-multiplier", "0.5"],
                "--restart-backoff-multiplier",
            ),
            (&["--restart-jitter-factor", "2"], "--restart-jitter-factor"),
            (
                &["--restart-delay", "1m", "--restart-delay-max", "1s"],
                "--restart-delay-max",
            ),
            (&["--restart-reset-after", "0s"], "--restart-reset-after"),
            (
                &[
                    "--restart-strategy",
                    "failure-rate",
                    "--restart-failure-rate-max",
                    "0",
                ],
                "--restart-failure-rate-max",
            ),
        ];
        for (args, flag) in cases {
            let error = strategy(args).expect_err(&args.join(" "));
            assert!(error.to_string().contains(flag), "{args:?}: {error}");
        }
        assert!(strategy(&["--restart-strategy", "sometimes"]).is_err());
    }
}
