//! Time as the scheduler sees it: monotonic instants for heartbeats and ETAs, Unix seconds for
//! what is stored. Injected, so that tests move time by hand.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A source of time.
pub trait Clock: Send + Sync {
    /// Now, for durations.
    fn now(&self) -> Instant;
    /// Seconds since the Unix epoch, for records.
    fn unix(&self) -> f64;
}

/// The system's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix(&self) -> f64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    elapsed: Mutex<Duration>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock {
            start: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        }
    }
}

impl ManualClock {
    /// Moves time forward by `d`.
    pub fn advance(&self, d: Duration) {
        *self.elapsed.lock().unwrap_or_else(|p| p.into_inner()) += d;
    }

    fn elapsed(&self) -> Duration {
        *self.elapsed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }

    fn unix(&self) -> f64 {
        1.0e9 + self.elapsed().as_secs_f64()
    }
}
