//! Processing time: the clock that state TTL and processing-time timers read.
//!
//! Owns: [`Clock`], the real [`SystemClock`] and the [`ManualClock`] tests and
//! simulations set by hand. Must not touch: event time (watermarks are the
//! runtime's), threads or scheduling.
//!
//! Every reader of processing time is given a clock (`Arc<dyn Clock>`) rather
//! than reading the system's: a test moves a `ManualClock` and sees exactly
//! the expiries and firings it expects, with no sleep.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Milliseconds since the Unix epoch, as processing time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> i64;

    /// When, on the monotonic clock, this clock will read `at_ms`: how long
    /// a worker with nothing else to do may park before a processing-time
    /// timer at `at_ms` is due. `None` when the clock cannot say (the
    /// default; a [`ManualClock`] moves only when told): the caller then
    /// looks again whenever it runs anyway (a worker parks for a bounded
    /// time; a deterministic run returns and is run again after the test
    /// moved the clock).
    fn instant_at(&self, _at_ms: i64) -> Option<std::time::Instant> {
        None
    }

    /// Whether the clock moves by itself with real time (the system's),
    /// rather than only when told: what reads it then depends on how fast
    /// the machine runs, which a deterministic run must not.
    fn is_wall_clock(&self) -> bool {
        false
    }
}

/// The shared handle every component holds.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    /// Now plus the difference between `at_ms` and the clock's reading (at
    /// once if it passed; `None` if it is too far to represent).
    fn instant_at(&self, at_ms: i64) -> Option<std::time::Instant> {
        let wait = u64::try_from(at_ms.saturating_sub(self.now_ms())).unwrap_or(0);
        std::time::Instant::now().checked_add(std::time::Duration::from_millis(wait))
    }

    fn is_wall_clock(&self) -> bool {
        true
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    pub fn new(now_ms: i64) -> Arc<Self> {
        Arc::new(Self {
            now_ms: AtomicI64::new(now_ms),
        })
    }

    pub fn set_ms(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance_ms(&self, by_ms: i64) {
        self.now_ms.fetch_add(by_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// The system clock as a shared handle: the default.
pub fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance_ms(250);
        assert_eq!(clock.now_ms(), 1_250);
        clock.set_ms(7);
        assert_eq!(clock.now_ms(), 7);
        assert_eq!(
            clock.instant_at(1_000),
            None,
            "a manual clock has no instant"
        );
    }

    #[test]
    fn the_system_clock_maps_a_time_to_an_instant() {
        let before = std::time::Instant::now();
        let now = SystemClock.now_ms();
        let at = SystemClock.instant_at(now + 5_000).expect("representable");
        assert!(at >= before + std::time::Duration::from_millis(4_000));
        assert!(at <= std::time::Instant::now() + std::time::Duration::from_millis(5_000));
        // A time already passed is due at once.
        assert!(SystemClock.instant_at(now - 60_000).expect("now") <= std::time::Instant::now());
    }

    #[test]
    fn the_system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
