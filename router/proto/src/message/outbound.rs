//! One outbound message: the sender side of the protocol.
//!
//! ```text
//!            INIT ──(INIT-ACK or, while pipelining, any CHUNK-ACK)──▶ chunks ──▶ DONE
//!   Pending ─────────────────────────────────────────────────────▶ Sending ──(DONE-ACK)──▶ Received
//!      │                                                              │          (READ)──▶ Read
//!      └──────────────── send window over: ABORTED sent once ─────────┴──────────────────▶ Aborted
//! ```
//!
//! Pipelining: the first INIT is followed at once by the first window of chunks. The stock
//! receiver drops (without ACK) chunks of a message it has no INIT for, and resets a pending
//! message when an INIT arrives again; both are harmless on a FIFO path as long as the INIT
//! is sent only once. So if the INIT's timer fires before anything of the message was
//! acknowledged, the sender falls back to the reference's order for this message: every chunk
//! counts as unsent, the INIT is repeated, and chunks wait for the INIT-ACK (chunk ACKs that
//! arrive meanwhile may describe state the repeated INIT wipes, so they are ignored).
//!
//! Early DONE: while pipelining, the DONE goes once right behind the first copy of the last
//! chunk. If every chunk was sent once, its own ACK (or its timer) settles it; once a chunk had
//! to be sent again, the receiver had ignored it, and a DONE follows the last chunk ACK.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyphae_wire::identity::PublicKey;
use hyphae_wire::message::{MIN_CHUNK_SIZE, MessageBody, MessageFlags, MessageId, MessagePacket};

use super::State;

/// Sender-side life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Pending,
    Sending,
    Received,
    Read,
    Aborted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkTx {
    Unsent,
    InFlight { at: Instant, count: u32 },
    Lost,
    Acked,
}

#[derive(Debug, Clone, Copy)]
struct Chunk {
    offset: u64,
    len: u32,
    state: ChunkTx,
}

/// Transmission record of a single control packet (INIT or DONE).
#[derive(Debug, Clone, Copy, Default)]
struct Tx {
    /// When the outstanding copy was sent; `None` while none is outstanding.
    at: Option<Instant>,
    /// How many copies were sent.
    count: u32,
}

/// What a timer did to a message.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct TimeoutOutcome {
    pub(super) aborted: bool,
    pub(super) remove: bool,
}

/// An outbound message.
#[derive(Debug)]
pub(super) struct Outbound {
    pub(super) id: MessageId,
    pub(super) dst: PublicKey,
    pub(super) reply: bool,
    topic: Vec<u8>,
    payload: Bytes,
    pub(super) len: u64,
    checksum: [u8; 32],
    pub(super) created: Instant,
    pub(super) deadline: Instant,
    pub(super) remove_at: Instant,
    pub(super) phase: Phase,
    init_acked: bool,
    /// Chunks may go before the INIT is acknowledged, at most this many (0: INIT first).
    pipelining: usize,
    need_init: bool,
    init_tx: Tx,
    chunks: Vec<Chunk>,
    next_new: usize,
    retx: VecDeque<u32>,
    in_flight: VecDeque<(u32, Instant)>,
    in_flight_count: usize,
    acked: usize,
    need_done: bool,
    done_tx: Tx,
    /// A chunk was sent again (lost or probed): an early DONE was then ignored by the receiver.
    resent: bool,
    /// Fell back to INIT first: every chunk already had a first copy.
    fell_back: bool,
    probe: Option<usize>,
    need_abort: bool,
    backoff: u32,
    pub(super) armed: Option<Instant>,
    pub(super) queued: bool,
}

/// What is kept of an outbound message once it has finished (received, read or aborted) and
/// has nothing left to send: its status, until it is forgotten. A finished message is kept
/// until the linger after its window (600 s after it was pushed, by default), so at steady
/// traffic there are hundreds of seconds' worth: this is 16 bytes of the 400 a live one takes,
/// and none of its buffers (its creation, from which its deadline and removal time follow, is
/// the record's start in [`super::records::Records`]; its destination is an index into a
/// [`KeyTable`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Finished {
    pub(super) len: u64,
    pub(super) dst: u32,
    pub(super) reply: bool,
    pub(super) phase: Phase,
}

/// The destination keys of finished messages, each held once with the number of records that
/// name it: a destination's 32 bytes are stored once, not once per message.
#[derive(Debug, Default)]
pub(super) struct KeyTable {
    index: HashMap<PublicKey, u32>,
    /// Key and records naming it, by index; an entry with no record is free.
    keys: Vec<(PublicKey, u32)>,
    free: Vec<u32>,
}

impl KeyTable {
    /// The index of `key`, for one more record.
    pub(super) fn hold(&mut self, key: PublicKey) -> u32 {
        if let Some(&i) = self.index.get(&key) {
            self.keys[i as usize].1 += 1;
            return i;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.keys[i as usize] = (key, 1);
                i
            }
            None => {
                self.keys.push((key, 1));
                (self.keys.len() - 1) as u32
            }
        };
        self.index.insert(key, i);
        i
    }

    /// The index of `key`, if a record names it.
    pub(super) fn find(&self, key: &PublicKey) -> Option<u32> {
        self.index.get(key).copied()
    }

    /// The key at `i`.
    pub(super) fn key(&self, i: u32) -> PublicKey {
        self.keys[i as usize].0
    }

    /// One record less names the key at `i`; the last frees it.
    pub(super) fn release(&mut self, i: u32) {
        let Some(e) = self.keys.get_mut(i as usize) else {
            return;
        };
        e.1 = e.1.saturating_sub(1);
        if e.1 == 0 {
            self.index.remove(&e.0);
            self.free.push(i);
        }
    }

    /// Keys held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }
}

impl Finished {
    /// A READ from the receiver: taken only in state `Received`, as by the stock sender.
    pub(super) fn on_read(&mut self) -> bool {
        let ok = self.phase == Phase::Received;
        if ok {
            self.phase = Phase::Read;
        }
        ok
    }

    /// The reference's status for this message.
    pub(super) fn state(&self) -> State {
        match self.phase {
            Phase::Read => State::Read,
            Phase::Aborted => State::Aborted,
            // Only finished phases reach here; `Received` stands for itself.
            Phase::Received | Phase::Pending | Phase::Sending => State::Received,
        }
    }
}

/// Splits `len` bytes into chunks of `size`, except that a last chunk below the stock
/// receiver's minimum (250 bytes) borrows bytes from the one before it: the stock receiver
/// only lets a chunk this small through at the highest index a message of this length could
/// have (`message.rs` 455-470), so a 1400-byte message split 1300 + 100 is never accepted.
pub(super) fn layout(len: u64, size: usize) -> Vec<(u64, u32)> {
    let size = size as u64;
    let n = len.div_ceil(size);
    let mut out: Vec<(u64, u32)> = (0..n)
        .map(|i| (i * size, (len - i * size).min(size) as u32))
        .collect();
    let min = MIN_CHUNK_SIZE as u32;
    if let [.., prev, last] = out.as_mut_slice()
        && last.1 < min
    {
        let short = min - last.1;
        prev.1 -= short;
        last.0 -= u64::from(short);
        last.1 = min;
    }
    out
}

impl Outbound {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        now: Instant,
        id: MessageId,
        dst: PublicKey,
        reply: bool,
        topic: &[u8],
        payload: Bytes,
        chunk_size: usize,
        window: Duration,
        linger: Duration,
        pipelining: usize,
    ) -> Self {
        let len = payload.len() as u64;
        let chunks = layout(len, chunk_size)
            .into_iter()
            .map(|(offset, len)| Chunk {
                offset,
                len,
                state: ChunkTx::Unsent,
            })
            .collect();
        let deadline = now + window;
        Self {
            id,
            dst,
            reply,
            topic: topic.to_vec(),
            checksum: *blake3::hash(&payload).as_bytes(),
            payload,
            len,
            created: now,
            deadline,
            remove_at: deadline + linger,
            phase: Phase::Pending,
            init_acked: false,
            pipelining,
            need_init: true,
            init_tx: Tx::default(),
            chunks,
            next_new: 0,
            retx: VecDeque::new(),
            in_flight: VecDeque::new(),
            in_flight_count: 0,
            acked: 0,
            need_done: len == 0,
            done_tx: Tx::default(),
            resent: false,
            fell_back: false,
            probe: None,
            need_abort: false,
            backoff: 0,
            armed: None,
            queued: false,
        }
    }

    /// Finished, with nothing left to send (an ABORT still to go keeps it whole): only its
    /// [`Outbound::finished`] record need be kept.
    pub(super) fn is_settled(&self) -> bool {
        !self.is_active() && !self.need_abort
    }

    /// The record to keep once it [`Outbound::is_settled`], its destination at `dst` in a
    /// [`KeyTable`].
    pub(super) fn finished(&self, dst: u32) -> Finished {
        Finished {
            dst,
            len: self.len,
            reply: self.reply,
            phase: self.phase,
        }
    }

    /// Still trying to deliver.
    pub(super) fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Pending | Phase::Sending)
    }

    pub(super) fn backoff(&self) -> u32 {
        self.backoff
    }

    fn can_send_chunks(&self) -> bool {
        self.is_active() && (self.init_acked || self.pipelining > 0)
    }

    /// The in-flight limit: `window`, or the pipelining window before the INIT-ACK.
    fn window(&self, window: usize) -> usize {
        match self.init_acked {
            true => window,
            false => window.min(self.pipelining),
        }
    }

    fn done_ready(&self) -> bool {
        self.need_done && self.init_acked && self.acked == self.chunks.len()
    }

    /// The early DONE: once, right behind the first copy of the last chunk, while nothing had
    /// to be sent again. On a FIFO path the receiver then has every chunk when it arrives and
    /// delivers one trip after the sender started, instead of waiting for the chunk ACKs to
    /// come back first. A receiver missing a chunk ignores it (the stock one too: no ACK, the
    /// message stays pending) and the ordinary DONE follows the ACKs. Only while pipelining:
    /// after the fallback to INIT first the receiver may lack the INIT.
    fn early_done_ready(&self) -> bool {
        self.pipelining > 0
            && self.done_tx.count == 0
            && !self.resent
            && self.next_new == self.chunks.len()
            && self.retx.is_empty()
    }

    fn encode_done(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        self.need_done = false;
        self.done_tx.at = Some(now);
        self.done_tx.count += 1;
        MessagePacket {
            id: self.id,
            flags: MessageFlags::DONE,
            body: MessageBody::Done {
                chunk_count: self.chunks.len() as u64,
                checksum: self.checksum,
            },
        }
        .encode(out);
        self.done_tx.count > 1
    }

    /// Whether [`Self::next_packet`] may produce something now.
    pub(super) fn has_work(&self, window: usize) -> bool {
        if self.need_abort {
            return true;
        }
        if !self.is_active() {
            return false;
        }
        self.need_init
            || (self.can_send_chunks()
                && self.in_flight_count < self.window(window)
                && (!self.retx.is_empty() || self.next_new < self.chunks.len()))
            || self.probe.is_some()
            || self.done_ready()
            || self.early_done_ready()
    }

    fn flags(&self, kind: MessageFlags) -> MessageFlags {
        match self.reply {
            true => kind.with(MessageFlags::REPLY),
            false => kind,
        }
    }

    fn encode_chunk(&self, i: usize, out: &mut Vec<u8>) {
        let Some(c) = self.chunks.get(i) else { return };
        let start = c.offset as usize;
        let data = self
            .payload
            .get(start..start + c.len as usize)
            .unwrap_or(&[]);
        MessagePacket {
            id: self.id,
            flags: MessageFlags::CHUNK,
            body: MessageBody::Chunk {
                index: i as u64,
                offset: c.offset,
                data,
            },
        }
        .encode(out);
    }

    /// Encodes the next packet into `out`: `None` if there is nothing to send now, else whether
    /// it repeats an earlier packet.
    pub(super) fn next_packet(
        &mut self,
        now: Instant,
        window: usize,
        out: &mut Vec<u8>,
    ) -> Option<bool> {
        if self.need_abort {
            self.need_abort = false;
            MessagePacket {
                id: self.id,
                flags: MessageFlags::ABORTED,
                body: MessageBody::Empty,
            }
            .encode(out);
            return Some(false);
        }
        if !self.is_active() {
            return None;
        }
        if self.need_init {
            self.need_init = false;
            self.init_tx.at = Some(now);
            self.init_tx.count += 1;
            MessagePacket {
                id: self.id,
                flags: self.flags(MessageFlags::INIT),
                body: MessageBody::Init {
                    total_len: self.len,
                    topic: &self.topic,
                },
            }
            .encode(out);
            return Some(self.init_tx.count > 1);
        }
        if self.can_send_chunks() && self.in_flight_count < self.window(window) {
            let mut pick = None;
            while let Some(i) = self.retx.pop_front() {
                if self.chunks.get(i as usize).map(|c| c.state) == Some(ChunkTx::Lost) {
                    pick = Some((i as usize, 2));
                    break;
                }
            }
            if pick.is_none() && self.next_new < self.chunks.len() {
                // After a fallback every chunk had a first copy: an ACK of that copy must not
                // time this one (Karn).
                pick = Some((self.next_new, if self.fell_back { 2 } else { 1 }));
                self.next_new += 1;
            }
            if let Some((i, count)) = pick {
                if let Some(c) = self.chunks.get_mut(i) {
                    c.state = ChunkTx::InFlight { at: now, count };
                }
                self.in_flight.push_back((i as u32, now));
                self.in_flight_count += 1;
                self.encode_chunk(i, out);
                return Some(count > 1);
            }
        }
        if let Some(p) = self.probe {
            if p < self.chunks.len() {
                self.probe = Some(p + 1);
                self.resent = true;
                self.encode_chunk(p, out);
                return Some(true);
            }
            self.probe = None;
        }
        if self.early_done_ready() {
            return Some(self.encode_done(now, out));
        }
        if self.done_ready() {
            return Some(self.encode_done(now, out));
        }
        None
    }

    /// An INIT-ACK; returns an RTT sample if the INIT went out once (Karn).
    pub(super) fn on_init_ack(&mut self, now: Instant, total_len: u64) -> Option<Duration> {
        if !self.is_active() || self.init_acked || total_len != self.len {
            return None;
        }
        self.init_acked = true;
        // A repeat still queued would reset a stock receiver's chunks: drop it.
        self.need_init = false;
        self.phase = Phase::Sending;
        self.backoff = 0;
        match (self.init_tx.count, self.init_tx.at) {
            (1, Some(at)) => Some(now.saturating_duration_since(at)),
            _ => None,
        }
    }

    /// A CHUNK-ACK; returns an RTT sample if the chunk went out once.
    pub(super) fn on_chunk_ack(
        &mut self,
        now: Instant,
        index: u64,
        offset: u64,
        size: u64,
    ) -> Option<Duration> {
        if !self.is_active() {
            return None;
        }
        let i = usize::try_from(index).ok()?;
        let c = self.chunks.get(i)?;
        if c.offset != offset || u64::from(c.len) != size {
            return None;
        }
        if !self.init_acked {
            if self.pipelining == 0 {
                return None;
            }
            // Only a receiver that took the INIT acknowledges chunks.
            self.init_acked = true;
            self.need_init = false;
            self.phase = Phase::Sending;
        }
        let sample = match c.state {
            ChunkTx::InFlight { at, count } => {
                self.in_flight_count -= 1;
                (count == 1).then(|| now.saturating_duration_since(at))
            }
            ChunkTx::Lost => None,
            ChunkTx::Unsent | ChunkTx::Acked => return None,
        };
        if let Some(c) = self.chunks.get_mut(i) {
            c.state = ChunkTx::Acked;
        }
        self.acked += 1;
        self.backoff = 0;
        self.trim_in_flight();
        // An early DONE that went out behind chunks sent once is answered on its own (or its
        // timer repeats it); after a resent chunk the receiver had ignored it.
        if self.acked == self.chunks.len() && (self.done_tx.count == 0 || self.resent) {
            self.need_done = true;
        }
        sample
    }

    /// A DONE-ACK; returns an RTT sample if the DONE went out once.
    pub(super) fn on_done_ack(
        &mut self,
        now: Instant,
        chunk_count: u64,
        checksum: &[u8; 32],
    ) -> Option<Option<Duration>> {
        if !self.is_active()
            || self.done_tx.count == 0
            || chunk_count != self.chunks.len() as u64
            || checksum != &self.checksum
        {
            return None;
        }
        let sample = match (self.done_tx.count, self.done_tx.at) {
            (1, Some(at)) => Some(now.saturating_duration_since(at)),
            _ => None,
        };
        self.phase = Phase::Received;
        self.finish();
        Some(sample)
    }

    /// A READ from the receiver. The stock sender only takes it in state `Received`; a READ
    /// also proves reception after a lost DONE-ACK (the stock receiver never repeats one), so it
    /// is taken once the DONE went out.
    pub(super) fn on_read(&mut self) -> bool {
        let ok = self.phase == Phase::Received || (self.is_active() && self.done_tx.count > 0);
        if ok {
            self.phase = Phase::Read;
            self.finish();
        }
        ok
    }

    /// The application gives up.
    pub(super) fn abort(&mut self) -> bool {
        if !self.is_active() {
            return false;
        }
        self.phase = Phase::Aborted;
        self.need_abort = true;
        self.finish();
        true
    }

    fn finish(&mut self) {
        self.payload = Bytes::new();
        self.chunks = Vec::new();
        self.retx.clear();
        self.in_flight.clear();
        self.in_flight_count = 0;
        self.probe = None;
        self.need_init = false;
        self.need_done = false;
    }

    fn trim_in_flight(&mut self) {
        while let Some(&(i, at)) = self.in_flight.front() {
            match self.chunks.get(i as usize).map(|c| c.state) {
                Some(ChunkTx::InFlight { at: a, .. }) if a == at => break,
                _ => {
                    self.in_flight.pop_front();
                }
            }
        }
    }

    /// Fires whatever is due at `now` with retransmission timeout `rto` (backoff included).
    pub(super) fn on_timeout(&mut self, now: Instant, rto: Duration) -> TimeoutOutcome {
        let mut out = TimeoutOutcome::default();
        if now >= self.remove_at {
            out.remove = true;
            return out;
        }
        if !self.is_active() {
            return out;
        }
        if now >= self.deadline {
            out.aborted = self.abort();
            return out;
        }
        let mut lost = false;
        if !self.init_acked
            && let Some(at) = self.init_tx.at
            && at + rto <= now
        {
            lost = true;
            self.init_tx.at = None;
            self.need_init = true;
            if self.pipelining > 0 {
                // Fall back to INIT first (see the module docs). An early DONE that went out
                // stays on record: the INIT may only have been slow, the receiver may have
                // delivered, and its DONE-ACK (or READ) must still settle the message.
                self.pipelining = 0;
                self.resent = true;
                self.fell_back = true;
                for c in &mut self.chunks {
                    c.state = ChunkTx::Unsent;
                }
                self.next_new = 0;
                self.acked = 0;
                self.retx.clear();
                self.in_flight.clear();
                self.in_flight_count = 0;
            }
        }
        self.trim_in_flight();
        while let Some(&(i, at)) = self.in_flight.front() {
            if at + rto > now {
                break;
            }
            self.in_flight.pop_front();
            if let Some(c) = self.chunks.get_mut(i as usize) {
                c.state = ChunkTx::Lost;
            }
            self.resent = true;
            self.in_flight_count -= 1;
            self.retx.push_back(i);
            lost = true;
            self.trim_in_flight();
        }
        if !self.need_done
            && let Some(at) = self.done_tx.at
            && at + rto <= now
        {
            lost = true;
            self.done_tx.at = None;
            self.need_done = true;
            // A stock receiver whose state was reset by a late duplicate INIT lacks chunks it
            // once acknowledged and ignores DONE; offering every chunk again repairs that.
            if self.done_tx.count == 3 || self.done_tx.count.is_multiple_of(16) {
                self.probe = Some(0);
            }
        }
        if lost {
            self.backoff = (self.backoff + 1).min(16);
        }
        out
    }

    /// The earliest instant at which [`Self::on_timeout`] has something to do.
    pub(super) fn next_deadline(&self, rto: Duration) -> Instant {
        let mut d = self.remove_at;
        if !self.is_active() {
            return d;
        }
        d = d.min(self.deadline);
        if !self.init_acked
            && let Some(at) = self.init_tx.at
        {
            d = d.min(at + rto);
        }
        if let Some(&(_, at)) = self.in_flight.front() {
            d = d.min(at + rto);
        }
        if let Some(at) = self.done_tx.at {
            d = d.min(at + rto);
        }
        d
    }

    /// The reference's status for this message.
    pub(super) fn state(&self) -> State {
        match self.phase {
            Phase::Pending => State::Pending,
            Phase::Sending => {
                let (mut pending, mut sent, mut acked) = (0, 0, 0);
                for c in &self.chunks {
                    match c.state {
                        ChunkTx::Unsent => pending += 1,
                        ChunkTx::InFlight { .. } | ChunkTx::Lost => sent += 1,
                        ChunkTx::Acked => acked += 1,
                    }
                }
                State::Sending {
                    pending,
                    sent,
                    acked,
                }
            }
            Phase::Received => State::Received,
            Phase::Read => State::Read,
            Phase::Aborted => State::Aborted,
        }
    }
}
