//! Stage `auth`, abuse control: a token bucket per peer IP for failed `Authenticate` calls.
//!
//! Receives the peer of each failed attempt; hands back whether that peer may try again now.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed attempts a peer may make in a burst.
const BURST: f64 = 10.0;
/// Attempts regained per second.
const REFILL_PER_SEC: f64 = 1.0;
/// Peers tracked before full buckets are forgotten.
const MAX_TRACKED: usize = 10_000;

/// Failed-attempt buckets by peer IP.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl FailureLimiter {
    /// `Err(wait)` when the peer has used up its failed attempts.
    pub fn check(&self, peer: IpAddr) -> Result<(), Duration> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        let Some((tokens, at)) = buckets.get_mut(&peer) else {
            return Ok(());
        };
        *tokens = (*tokens + at.elapsed().as_secs_f64() * REFILL_PER_SEC).min(BURST);
        *at = Instant::now();
        if *tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / REFILL_PER_SEC))
        }
    }

    /// Records a failed attempt.
    pub fn fail(&self, peer: IpAddr) {
        let Ok(mut buckets) = self.buckets.lock() else {
            return;
        };
        if buckets.len() >= MAX_TRACKED {
            buckets.retain(|_, (tokens, at)| {
                *tokens + at.elapsed().as_secs_f64() * REFILL_PER_SEC < BURST
            });
        }
        let (tokens, at) = buckets.entry(peer).or_insert((BURST, Instant::now()));
        *tokens = (*tokens + at.elapsed().as_secs_f64() * REFILL_PER_SEC).min(BURST) - 1.0;
        *at = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_failures_then_slowed_down_per_peer() {
        let limiter = FailureLimiter::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..10 {
            assert!(limiter.check(a).is_ok());
            limiter.fail(a);
        }
        assert!(limiter.check(a).is_err(), "the eleventh attempt waits");
        assert!(limiter.check(b).is_ok(), "other peers are not affected");
    }
}
