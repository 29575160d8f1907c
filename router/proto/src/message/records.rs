//! Records the message subsystem keeps for a while after a message is done with: the status
//! of our finished messages (until the linger after their window) and what identifies the
//! messages delivered to us (for a window, so repeats are acknowledged and not delivered
//! twice).
//!
//! At a steady load there are thousands of each, and those kept longest (600 s by default)
//! are half made after a node's first five minutes, so what a record costs is what the node's
//! memory grows by while they fill up. A record sits in fixed-size chunks held in the order
//! records were made, which is also (within a window) the order they are forgotten: chunks are
//! freed whole from the front, no record is a heap block of its own and none needs an ordering
//! entry beside it. A B-tree index (key and a sequence number an entry; it grows and shrinks a
//! node at a time) finds a record by its place in that order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::fifo::ChunkedFifo;

/// One record in the order, or a forgotten one whose place the order still holds until the
/// front reaches it.
#[derive(Debug, Clone, Copy)]
struct Slot<K, V> {
    key: K,
    /// When the record's lifetime began, in nanoseconds from the epoch; [`GONE`] once
    /// forgotten (replaced, removed or evicted).
    since: u64,
    value: V,
}

const GONE: u64 = u64::MAX;

/// Records by key and in the order they were made; see the module docs.
#[derive(Debug)]
pub(super) struct Records<K, V> {
    epoch: Instant,
    /// How long after its start a record is forgotten.
    lifetime: Duration,
    order: ChunkedFifo<Slot<K, V>>,
    /// The sequence number of `order`'s front; each record made takes the next.
    front_seq: u64,
    index: BTreeMap<K, u64>,
}

impl<K: Ord + Copy, V: Copy> Records<K, V> {
    /// An empty table whose records are forgotten `lifetime` after their start; `epoch` is no
    /// later than any time given to it.
    pub(super) fn new(epoch: Instant, lifetime: Duration) -> Self {
        Self {
            epoch,
            lifetime,
            order: ChunkedFifo::new(),
            front_seq: 0,
            index: BTreeMap::new(),
        }
    }

    /// Records kept.
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// Records and forgotten records' places in the order.
    pub(super) fn places(&self) -> usize {
        self.order.len()
    }

    /// The record of `key`, if kept, with its start.
    pub(super) fn get(&self, key: &K) -> Option<(Instant, &V)> {
        let s = self.order.get(self.place(*self.index.get(key)?)?)?;
        Some((self.epoch + Duration::from_nanos(s.since), &s.value))
    }

    /// The record of `key`, if kept, to change it.
    pub(super) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = self.place(*self.index.get(key)?)?;
        Some(&mut self.order.get_mut(i)?.value)
    }

    /// Keeps `value` under `key` from `since`, returning the record it replaces.
    pub(super) fn insert(&mut self, key: K, since: Instant, value: V) -> Option<V> {
        let old = self.remove(&key);
        let since = since.saturating_duration_since(self.epoch).as_nanos();
        let since = u64::try_from(since).unwrap_or(GONE - 1);
        self.order.push_back(Slot { key, since, value });
        let seq = self.front_seq + self.order.len() as u64 - 1;
        self.index.insert(key, seq);
        old
    }

    /// Forgets the record of `key`, returning it.
    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        let seq = self.index.remove(key)?;
        let s = self.order.get_mut(self.place(seq)?)?;
        s.since = GONE;
        Some(s.value)
    }

    /// Drops the front of the order: `None` if empty, else the record it forgets, if still
    /// kept.
    pub(super) fn pop_front(&mut self) -> Option<Option<(K, V)>> {
        let s = self.order.pop_front()?;
        let seq = self.front_seq;
        self.front_seq += 1;
        if s.since == GONE || self.index.get(&s.key) != Some(&seq) {
            return Some(None);
        }
        self.index.remove(&s.key);
        Some(Some((s.key, s.value)))
    }

    /// When the front of the order is due to go, if anything is held.
    pub(super) fn next_removal(&self) -> Option<Instant> {
        let s = self.order.front()?;
        Some(match s.since {
            // A forgotten record's place can go at once.
            GONE => self.epoch,
            since => self.epoch + Duration::from_nanos(since) + self.lifetime,
        })
    }

    /// Forgets the records due by `now` at the front of the order (one that started early and
    /// was made late may hold later ones back), handing each to `gone`.
    pub(super) fn expire(&mut self, now: Instant, mut gone: impl FnMut(K, V)) {
        while self.next_removal().is_some_and(|t| t <= now) {
            if let Some(Some((k, v))) = self.pop_front() {
                gone(k, v);
            }
        }
    }

    /// Where sequence number `seq` is in the order, if still in it.
    fn place(&self, seq: u64) -> Option<usize> {
        usize::try_from(seq.checked_sub(self.front_seq)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const LIFETIME: Duration = Duration::from_secs(600);

    /// Random inserts, removals, evictions and expiries against a plain model of the rule: a
    /// record is kept until it is replaced, removed or evicted from the front, or it is due and
    /// everything made before it is gone.
    #[test]
    fn keeps_what_the_model_keeps() {
        let epoch = Instant::now();
        let mut t = Records::<u64, u32>::new(epoch, LIFETIME);
        // In the order made: key, value, start, still kept.
        let mut model: VecDeque<(u64, u32, Instant, bool)> = VecDeque::new();
        let mut now = epoch;
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for step in 0..100_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = (x >> 8) % 96;
            let kept_value = |m: &VecDeque<(u64, u32, Instant, bool)>| {
                m.iter().find(|e| e.0 == key && e.3).map(|e| e.1)
            };
            match x % 100 {
                0..50 => {
                    // Started up to half a lifetime ago, made now.
                    let back = Duration::from_millis((x >> 20) % 300_000);
                    let since = now.checked_sub(back).filter(|c| *c >= epoch).unwrap_or(now);
                    let value = (x >> 40) as u32;
                    assert_eq!(t.insert(key, since, value), kept_value(&model));
                    for e in model.iter_mut().filter(|e| e.0 == key) {
                        e.3 = false;
                    }
                    model.push_back((key, value, since, true));
                }
                50..60 => {
                    assert_eq!(t.remove(&key), kept_value(&model));
                    for e in model.iter_mut().filter(|e| e.0 == key) {
                        e.3 = false;
                    }
                }
                60..62 => {
                    let want = model.pop_front().map(|e| e.3.then_some((e.0, e.1)));
                    assert_eq!(t.pop_front(), want);
                }
                _ => {
                    now += Duration::from_millis((x >> 24) % 20_000);
                    let mut gone = Vec::new();
                    t.expire(now, |k, v| gone.push((k, v)));
                    let mut want = Vec::new();
                    while let Some(e) = model.front().filter(|e| !e.3 || e.2 + LIFETIME <= now) {
                        if e.3 {
                            want.push((e.0, e.1));
                        }
                        model.pop_front();
                    }
                    assert_eq!(gone, want, "step {step}");
                }
            }
            let kept: Vec<_> = model.iter().filter(|e| e.3).collect();
            assert_eq!(t.len(), kept.len(), "step {step}");
            for key in 0..96u64 {
                let want = kept.iter().find(|e| e.0 == key).map(|e| (e.2, e.1));
                assert_eq!(t.get(&key).map(|(s, v)| (s, *v)), want, "step {step}");
            }
            // Forgotten records' places go as the model's do: the order stays bounded.
            assert_eq!(t.places(), model.len(), "step {step}");
        }
    }

    /// What a finished message's status and a delivered message's identity cost in the order.
    #[test]
    fn record_sizes() {
        use super::super::outbound::Finished;
        use super::super::{Delivered, SourceId};
        use hyphae_wire::message::MessageId;
        assert_eq!(size_of::<Slot<MessageId, Finished>>(), 32);
        assert_eq!(size_of::<Slot<SourceId, Delivered>>(), 80);
    }
}
