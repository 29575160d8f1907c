//! Round-trip time estimation per destination (RFC 6298, with Karn's rule applied by the
//! caller: only packets sent exactly once yield a sample).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hyphae_wire::identity::PublicKey;

/// SRTT/RTTVAR for one destination.
#[derive(Debug, Clone, Copy)]
pub(super) struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    /// A backed-off RTO kept for new packets until the next valid sample (RFC 6298 5.7):
    /// otherwise, on a path slower than the initial RTO, every packet would time out once,
    /// be sent twice, and (Karn) never yield the sample that would fix the RTO.
    floor: Option<Duration>,
    last_used: Instant,
}

impl RttEstimator {
    fn new(now: Instant) -> Self {
        Self {
            srtt: None,
            rttvar: Duration::ZERO,
            floor: None,
            last_used: now,
        }
    }

    /// Folds in one sample (RFC 6298 section 2, alpha = 1/8, beta = 1/4).
    fn sample(&mut self, r: Duration) {
        self.floor = None;
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + err) / 4;
                self.srtt = Some((srtt * 7 + r) / 8);
            }
        }
    }

    /// The retransmission timeout before backoff, clamped to `[min, max]`.
    fn rto(&self, initial: Duration, min: Duration, max: Duration) -> Duration {
        let rto = match self.srtt {
            None => initial,
            Some(srtt) => srtt + (self.rttvar * 4).max(Duration::from_millis(1)),
        };
        rto.max(self.floor.unwrap_or_default())
            .clamp(min, max.max(min))
    }

    /// The smoothed round-trip time, once measured.
    pub(super) fn srtt(&self) -> Option<Duration> {
        self.srtt
    }
}

/// The estimators of all destinations, bounded in number (least recently used goes first).
#[derive(Debug)]
pub(super) struct RttTable {
    map: HashMap<PublicKey, RttEstimator>,
    cap: usize,
    initial: Duration,
    min: Duration,
    max: Duration,
}

impl RttTable {
    pub(super) fn new(cap: usize, initial: Duration, min: Duration, max: Duration) -> Self {
        Self {
            map: HashMap::new(),
            cap: cap.max(1),
            initial,
            min,
            max,
        }
    }

    /// The base RTO toward `dst` (no backoff).
    pub(super) fn rto(&self, dst: &PublicKey) -> Duration {
        match self.map.get(dst) {
            Some(e) => e.rto(self.initial, self.min, self.max),
            None => self.initial.clamp(self.min, self.max.max(self.min)),
        }
    }

    /// The RTO after `backoff` doublings, never above the maximum.
    pub(super) fn rto_backoff(&self, dst: &PublicKey, backoff: u32) -> Duration {
        let base = self.rto(dst);
        base.saturating_mul(1 << backoff.min(16))
            .min(self.max.max(self.min))
    }

    /// Records a sample toward `dst`.
    pub(super) fn sample(&mut self, now: Instant, dst: PublicKey, r: Duration) {
        self.entry(now, dst).sample(r);
    }

    /// A packet toward `dst` timed out after `rto`: new packets wait at least twice that
    /// until a valid sample arrives.
    pub(super) fn timed_out(&mut self, now: Instant, dst: PublicKey, rto: Duration) {
        let max = self.max.max(self.min);
        let e = self.entry(now, dst);
        let backed_off = rto.saturating_mul(2).min(max);
        e.floor = Some(e.floor.map_or(backed_off, |f| f.max(backed_off)));
    }

    fn entry(&mut self, now: Instant, dst: PublicKey) -> &mut RttEstimator {
        if !self.map.contains_key(&dst) && self.map.len() >= self.cap {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.map.remove(&k);
            }
        }
        let e = self
            .map
            .entry(dst)
            .or_insert_with(|| RttEstimator::new(now));
        e.last_used = now;
        e
    }

    /// The estimator for `dst`, if any sample was taken.
    pub(super) fn get(&self, dst: &PublicKey) -> Option<&RttEstimator> {
        self.map.get(dst)
    }
}
