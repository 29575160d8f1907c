//! The records of finished outbound messages, kept for their status until the linger after
//! their window.
//!
//! At a steady load there are thousands (600 s of finished messages by default), and half of
//! them arrive after the first five minutes of a node's life, so what each costs is what the
//! node's memory grows by while the records fill up. A record is 32 bytes in fixed-size chunks
//! held in the order messages finished, which is also (within a window) the order they are
//! forgotten: chunks are freed whole from the front, no record is a heap block of its own and
//! none needs an ordering entry beside it. An id index (16 bytes an entry in a B-tree, which
//! grows and shrinks a node at a time) finds a record by its place in that order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hyphae_wire::identity::PublicKey;
use hyphae_wire::message::MessageId;

use super::fifo::ChunkedFifo;
use super::outbound::{Finished, KeyTable, Outbound};

/// One record in the order: its id and what is kept of it, or a forgotten one whose place
/// the order still holds until the front reaches it.
#[derive(Debug, Clone, Copy)]
struct Record {
    id: MessageId,
    f: Finished,
}

/// `Finished::dst` of a record that was forgotten (replaced, removed or evicted).
const GONE: u32 = u32::MAX;

/// Finished messages by id and in the order they finished; see the module docs.
#[derive(Debug)]
pub(super) struct FinishedTable {
    /// `Finished::created` counts nanoseconds from here.
    epoch: Instant,
    /// How long after it was pushed a message's record is forgotten (window and linger).
    lifetime: Duration,
    order: ChunkedFifo<Record>,
    /// The sequence number of `order`'s front record; each record pushed takes the next.
    front_seq: u64,
    index: BTreeMap<MessageId, u64>,
    dsts: KeyTable,
}

impl FinishedTable {
    /// An empty table whose records are forgotten `lifetime` after their message was pushed;
    /// `epoch` is no later than any time given to it.
    pub(super) fn new(epoch: Instant, lifetime: Duration) -> Self {
        Self {
            epoch,
            lifetime,
            order: ChunkedFifo::new(),
            front_seq: 0,
            index: BTreeMap::new(),
            dsts: KeyTable::default(),
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

    /// The record of `id`, if kept, with its destination.
    pub(super) fn get(&self, id: &MessageId) -> Option<(PublicKey, &Finished)> {
        let &seq = self.index.get(id)?;
        let r = self.order.get(self.place(seq)?)?;
        Some((self.dsts.key(r.f.dst), &r.f))
    }

    /// The record of `id`, if kept, with its destination, to change it.
    pub(super) fn get_mut(&mut self, id: &MessageId) -> Option<(PublicKey, &mut Finished)> {
        let &seq = self.index.get(id)?;
        let i = self.place(seq)?;
        let dst = self.dsts.key(self.order.get(i)?.f.dst);
        Some((dst, &mut self.order.get_mut(i)?.f))
    }

    /// When `f`'s message was pushed.
    pub(super) fn created(&self, f: &Finished) -> Instant {
        self.epoch + Duration::from_nanos(f.created)
    }

    /// Keeps what is needed of settled message `m`, replacing any record of its id.
    pub(super) fn insert(&mut self, m: &Outbound) {
        self.remove(&m.id);
        let created = m.created.saturating_duration_since(self.epoch);
        let created = u64::try_from(created.as_nanos()).unwrap_or(u64::MAX);
        let f = m.finished(self.dsts.hold(m.dst), created);
        self.order.push_back(Record { id: m.id, f });
        let seq = self.front_seq + self.order.len() as u64 - 1;
        self.index.insert(m.id, seq);
    }

    /// Forgets the record of `id`, if kept.
    pub(super) fn remove(&mut self, id: &MessageId) {
        let Some(seq) = self.index.remove(id) else {
            return;
        };
        if let Some(r) = self.place(seq).and_then(|i| self.order.get_mut(i)) {
            self.dsts.release(r.f.dst);
            r.f.dst = GONE;
        }
    }

    /// Drops the front of the order, forgetting its record if still kept.
    pub(super) fn pop_front(&mut self) -> bool {
        let Some(r) = self.order.pop_front() else {
            return false;
        };
        let seq = self.front_seq;
        self.front_seq += 1;
        if r.f.dst != GONE && self.index.get(&r.id) == Some(&seq) {
            self.index.remove(&r.id);
            self.dsts.release(r.f.dst);
        }
        true
    }

    /// When the front of the order is due to go, if anything is held.
    pub(super) fn next_removal(&self) -> Option<Instant> {
        let r = self.order.front()?;
        Some(match r.f.dst {
            // A forgotten record's place can go at once.
            GONE => self.epoch,
            _ => self.created(&r.f) + self.lifetime,
        })
    }

    /// Forgets the records due by `now` at the front of the order (one that finished late
    /// after an early start may hold later ones back: at most a window longer).
    pub(super) fn expire(&mut self, now: Instant) {
        while self.next_removal().is_some_and(|t| t <= now) {
            self.pop_front();
        }
    }

    /// Where sequence number `seq` is in the order, if still in it.
    fn place(&self, seq: u64) -> Option<usize> {
        usize::try_from(seq.checked_sub(self.front_seq)?).ok()
    }

    /// Destination keys held.
    #[cfg(test)]
    pub(super) fn keys_held(&self) -> usize {
        self.dsts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use hyphae_wire::identity::SecretKey;
    use std::collections::VecDeque;

    const WINDOW: Duration = Duration::from_secs(300);
    const LINGER: Duration = Duration::from_secs(300);

    fn outbound(now: Instant, id: u64, dst: PublicKey) -> Outbound {
        Outbound::new(
            now,
            MessageId(id.to_be_bytes()),
            dst,
            false,
            b"t",
            Bytes::from_static(b"x"),
            1300,
            WINDOW,
            LINGER,
            0,
        )
    }

    /// Random inserts, removals, evictions and expiries against a plain model of the rule: a
    /// record is kept until it is replaced, removed or evicted from the front, or it is due and
    /// everything that finished before it is gone.
    #[test]
    fn keeps_what_the_model_keeps() {
        let keys: Vec<PublicKey> = (1..=4u8)
            .map(|n| SecretKey::from_bytes([n; 32]).public_key())
            .collect();
        let epoch = Instant::now();
        let mut t = FinishedTable::new(epoch, WINDOW + LINGER);
        // In finish order: id, destination, created, still kept.
        let mut model: VecDeque<(u64, PublicKey, Instant, bool)> = VecDeque::new();
        let mut now = epoch;
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for step in 0..100_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = (x >> 8) % 96;
            match x % 100 {
                0..50 => {
                    // Pushed up to a window ago, finished now.
                    let back = Duration::from_millis((x >> 20) % 300_000);
                    let created = now.checked_sub(back).filter(|c| *c >= epoch).unwrap_or(now);
                    let dst = keys[(x >> 40) as usize % keys.len()];
                    t.insert(&outbound(created, id, dst));
                    for e in model.iter_mut().filter(|e| e.0 == id) {
                        e.3 = false;
                    }
                    model.push_back((id, dst, created, true));
                }
                50..60 => {
                    t.remove(&MessageId(id.to_be_bytes()));
                    for e in model.iter_mut().filter(|e| e.0 == id) {
                        e.3 = false;
                    }
                }
                60..62 => {
                    assert_eq!(t.pop_front(), model.pop_front().is_some());
                }
                _ => {
                    now += Duration::from_millis((x >> 24) % 20_000);
                    t.expire(now);
                    while model
                        .front()
                        .is_some_and(|e| !e.3 || e.2 + WINDOW + LINGER <= now)
                    {
                        model.pop_front();
                    }
                }
            }
            let kept: Vec<_> = model.iter().filter(|e| e.3).collect();
            assert_eq!(t.len(), kept.len(), "step {step}");
            for id in 0..96u64 {
                let want = kept.iter().find(|e| e.0 == id).map(|e| (e.1, e.2));
                let got = t
                    .get(&MessageId(id.to_be_bytes()))
                    .map(|(dst, f)| (dst, t.created(f)));
                assert_eq!(got, want, "step {step} id {id}");
            }
            let mut dsts: Vec<_> = kept.iter().map(|e| e.1).collect();
            dsts.sort_by_key(|k| *k.as_bytes());
            dsts.dedup();
            assert_eq!(t.keys_held(), dsts.len(), "step {step}");
            // Forgotten records' places go as the model's do: the order stays bounded.
            assert_eq!(t.places(), model.len(), "step {step}");
        }
    }

    /// A record costs 32 bytes in the order and nothing else but its index entry.
    #[test]
    fn a_record_is_32_bytes() {
        assert_eq!(size_of::<Record>(), 32);
    }
}
