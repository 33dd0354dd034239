//! Monotonic time as plain numbers, so cores are testable in virtual time.

use std::fmt;
use std::time::Duration;

/// A point on a monotonic clock, in nanoseconds since an arbitrary origin.
///
/// Production code reads it from [`MonotonicClock`]; the discrete-event simulator advances it
/// itself. Arithmetic saturates instead of wrapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The clock's origin.
    pub const ZERO: Instant = Instant(0);

    /// An instant `nanos` nanoseconds after the origin.
    pub const fn from_nanos(nanos: u64) -> Self {
        Instant(nanos)
    }

    /// An instant `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms.saturating_mul(1_000_000))
    }

    /// An instant `secs` seconds after the origin (fractional seconds allowed, negatives clamp to 0).
    pub fn from_secs_f64(secs: f64) -> Self {
        Instant((secs.max(0.0) * 1e9) as u64)
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Seconds since the origin.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }

    /// Time elapsed from `earlier` to `self`; zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating at the end of time.
    pub fn saturating_add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
    }

    /// `self - d`, saturating at the origin.
    pub fn saturating_sub(self, d: Duration) -> Instant {
        Instant(self.0.saturating_sub(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.6}s", self.as_secs_f64())
    }
}

/// A source of [`Instant`]s.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Instant;
}

/// The process's monotonic wall clock (origin = when the clock was created).
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    origin: std::time::Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        MonotonicClock { origin: std::time::Instant::now() }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        let d = self.origin.elapsed();
        Instant(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to: the virtual clock of the simulator and of tests that
/// drive a live component (a gate, a stream) step by step.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock at `t`.
    pub fn at(t: Instant) -> Self {
        ManualClock(std::sync::atomic::AtomicU64::new(t.0))
    }

    /// Moves the clock to `t` (backwards too: the caller owns time).
    pub fn set(&self, t: Instant) {
        self.0.store(t.0, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        Instant(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// A process-wide monotonic clock, shared so that every component agrees on the origin.
pub fn process_clock() -> &'static MonotonicClock {
    static CLOCK: std::sync::OnceLock<MonotonicClock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(MonotonicClock::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_millis(5);
        assert_eq!(t.saturating_sub(Duration::from_secs(1)), Instant::ZERO);
        assert_eq!(Instant::ZERO.saturating_duration_since(t), Duration::ZERO);
        assert_eq!(t.saturating_add(Duration::from_millis(5)), Instant::from_millis(10));
        assert_eq!(Instant::from_nanos(u64::MAX).saturating_add(Duration::from_secs(1)).as_nanos(), u64::MAX);
    }

    #[test]
    fn a_manual_clock_reads_what_it_was_set_to() {
        let c = ManualClock::at(Instant::from_millis(5));
        assert_eq!(c.now(), Instant::from_millis(5));
        c.set(Instant::from_secs_f64(2.5));
        assert_eq!(c.now().as_nanos(), 2_500_000_000);
    }
}
