//! The message subsystem (`../shared/WIRE.md` section 5): reliable messages over the overlay,
//! as a sans-IO state machine, wire compatible with stock mycelium 0.7.10 in both directions.
//!
//! # Contract
//!
//! [`Messages`] reads no clock, opens no socket, spawns nothing and draws no randomness (the
//! caller draws message ids). The daemon seals what [`Messages::poll_transmit`] returns into a
//! data frame of user-data kind 1 (WIRE.md 4.2) toward the given public key, and feeds every
//! decrypted message packet to [`Messages::handle_packet`] together with the sender's key.
//!
//! After any `handle_*`, `push*`, `mark_read` or `abort` call, drain
//! [`Messages::poll_transmit`] and [`Messages::poll_event`] until they return `None`, then arm
//! one timer at [`Messages::poll_timeout`] and call [`Messages::handle_timeout`] when it fires.
//! All timers live in one heap; none is a task.
//!
//! # Protocol as the reference runs it (`mycelium/src/message.rs` at v0.7.10)
//!
//! * Sender (`push_message`, lines 1036-1270): INIT every 100 ms until INIT-ACK; chunks only
//!   after the INIT-ACK (an INIT-ACK outside state Init and chunk ACKs outside InProgress are
//!   dropped, 323-376); every chunk at once, each repeated every 100 ms until its ACK; then
//!   DONE on every tick and every ACK until DONE-ACK (`Received`); READ from the receiver
//!   makes it `Read` (663-675, only from `Received`). After the 5-minute send window an
//!   unfinished message is `Aborted` (one ABORTED packet); 5 minutes later it is removed.
//! * Receiver (`handle_message`, 398-700): the topic ACL is checked on INIT unless it carries
//!   REPLY (406-410); an INIT for a completed message still in the inbox is dropped without
//!   ACK, any other INIT unilaterally resets the pending message and is acknowledged
//!   (411-434). A CHUNK for an id without a pending INIT is dropped *without* ACK and
//!   leaves no state (437-488); chunks must fit the declared length, their index must be
//!   below `ceil(len / 250)`, and one under 250 bytes is taken only at that highest possible
//!   index (449-470); a repeated chunk overwrites. A DONE with a wrong chunk count, a missing
//!   chunk, a wrong total length or a wrong checksum is ignored, no ACK, the message stays
//!   pending (494-540). Nothing of a completed message is acknowledged again (the DONE and
//!   CHUNK branches only look at pending messages). ABORTED drops a pending message
//!   (676-682); READ and ABORTED are never acknowledged.
//!
//! # Where hyphae goes faster or stricter (all within the wire format)
//!
//! * Retransmission follows the measured round-trip time per destination (RFC 6298 SRTT and
//!   RTTVAR from ACK timing, Karn's rule, exponential backoff, floor [`Config::min_rto`])
//!   instead of a fixed 100 ms. ACKs go out at once, ahead of data.
//! * Pipelining: the first [`Config::pipeline_window`] chunks follow the INIT without
//!   waiting for the INIT-ACK. A stock receiver takes them if the INIT arrived first (the
//!   usual case: one route, FIFO links, one receiving task) and drops them silently, with no
//!   ACK and no state, otherwise; so the worst case is a retransmission, never a wrong
//!   message. A chunk ACK proves the INIT arrived. If the INIT must be repeated, the message
//!   falls back to INIT-first, because a repeated INIT wipes a stock receiver's chunks; if a
//!   DONE goes unanswered three times, every chunk is offered once more, which repairs a
//!   stock receiver reset by a late duplicate INIT. [`Config::pipelining`] turns it off.
//! * Early DONE: with pipelining, the DONE follows the first copy of the last chunk at once
//!   instead of waiting for every chunk ACK, so on a FIFO path a message is delivered one
//!   trip after it was pushed (the reference needs three). A receiver still missing a chunk
//!   ignores it, the stock one silently, and the ordinary DONE follows the ACKs of the
//!   chunks sent again; a lost early DONE is repeated by its timer.
//! * A last chunk shorter than 250 bytes takes bytes from the chunk before it: the stock
//!   receiver rejects such a chunk unless it sits at the highest index possible for the
//!   length, so stock nodes cannot deliver e.g. 1400-byte messages to each other.
//! * The receiver keeps a record of delivered messages for one send window, and
//!   re-acknowledges a repeated INIT, CHUNK or DONE of a delivered message instead of staying
//!   silent (a stock sender whose DONE-ACK was lost retries until it aborts). It never
//!   delivers a message twice. A repeated INIT that matches the pending message keeps its
//!   chunks; one that differs resets it (as the reference).
//! * A READ counts for a message whose DONE went out but whose DONE-ACK was lost.
//! * Replies skip the topic ACL only if they answer a message this node sent to that
//!   source (the reference lets any INIT with the REPLY flag skip it). Inbound messages are
//!   keyed by (source, id), so one node cannot disturb another node's transfer.
//! * Everything is bounded: message size, pending messages in total and per source,
//!   buffered bytes, the delivered-message records, the outbound queue. Pending inbound
//!   messages expire (idle timeout, and the send window); the reference keeps them forever.

mod fifo;
mod inbound;
mod outbound;
mod records;
mod rtt;
mod topic;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyphae_wire::DecodeError;
use hyphae_wire::identity::PublicKey;
use hyphae_wire::message::{
    CHUNK_SIZE, MIN_CHUNK_SIZE, MessageBody, MessageFlags, MessageId, MessagePacket,
};

use inbound::{ChunkReject, Inbound, chunk_fits};
use outbound::{Finished, KeyTable, Outbound, Phase};
use records::Records;
use rtt::RttTable;
pub use topic::TopicAcl;

/// Limits and timers of the message subsystem.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Chunk size, clamped to 500..=1300. More than 1300 breaks stock receivers (they size
    /// the chunk table from 1300-byte chunks and check the DONE chunk count against it).
    pub chunk_size: usize,
    /// How long a message is tried before it is aborted (reference: 300 s). Also how long
    /// a pending inbound message and the record of a delivered one are kept.
    pub send_window: Duration,
    /// How long a finished outbound message's status stays queryable after its window
    /// (reference: 300 s).
    pub linger: Duration,
    /// Retransmission timeout toward a destination without an RTT sample (reference: 100 ms).
    pub initial_rto: Duration,
    /// Lower bound of the retransmission timeout.
    pub min_rto: Duration,
    /// Upper bound of the retransmission timeout, backoff included.
    pub max_rto: Duration,
    /// Largest message accepted or sent (default 64 MiB).
    pub max_message_size: u64,
    /// Outbound messages in progress at once.
    pub max_outbound: usize,
    /// Payload bytes of outbound messages in progress.
    pub max_outbound_bytes: usize,
    /// Chunks of one message sent but not acknowledged at once.
    pub max_in_flight: usize,
    /// Pending inbound messages at once.
    pub max_inbound: usize,
    /// Pending inbound messages from one source.
    pub max_inbound_per_source: usize,
    /// Bytes buffered for pending inbound messages.
    pub max_inbound_bytes: usize,
    /// A pending inbound message without any packet for this long is dropped.
    pub inbound_idle_timeout: Duration,
    /// Records of delivered messages kept for duplicate suppression (oldest go first).
    pub max_delivered_records: usize,
    /// Destinations with an RTT estimate.
    pub max_rtt_entries: usize,
    /// Send the first chunks with the INIT, before its ACK.
    pub pipelining: bool,
    /// At most this many chunks go out before the INIT is acknowledged (when pipelining).
    pub pipeline_window: usize,
    /// Control packets (ACKs, READ) queued for `poll_transmit` before new ones are dropped.
    pub max_control_queue: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            chunk_size: CHUNK_SIZE,
            send_window: Duration::from_secs(300),
            linger: Duration::from_secs(300),
            initial_rto: Duration::from_millis(100),
            min_rto: Duration::from_millis(5),
            max_rto: Duration::from_secs(1),
            max_message_size: 64 << 20,
            max_outbound: 4096,
            max_outbound_bytes: 512 << 20,
            max_in_flight: 1024,
            max_inbound: 1024,
            max_inbound_per_source: 64,
            max_inbound_bytes: 256 << 20,
            inbound_idle_timeout: Duration::from_secs(60),
            max_delivered_records: 65536,
            max_rtt_entries: 4096,
            pipelining: true,
            pipeline_window: 128,
            max_control_queue: 65536,
        }
    }
}

/// Why a message could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The topic is longer than 255 bytes.
    #[error("topic longer than 255 bytes")]
    TopicTooLarge,
    /// The payload is larger than [`Config::max_message_size`].
    #[error("message too large")]
    MessageTooLarge,
    /// A message with this id is still being sent.
    #[error("a message with this id is in progress")]
    DuplicateId,
    /// Too many messages or bytes are in progress.
    #[error("too many messages in progress")]
    Busy,
}

/// The state of an outbound message, as the reference reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The receiver has not acknowledged the INIT yet.
    Pending,
    /// Chunks are being sent.
    Sending {
        /// Chunks never sent.
        pending: usize,
        /// Chunks sent but not acknowledged.
        sent: usize,
        /// Chunks acknowledged.
        acked: usize,
    },
    /// The receiver acknowledged the whole message (checksum verified).
    Received,
    /// The receiver handed the message to an application.
    Read,
    /// Given up (send window over, or [`Messages::abort`]).
    Aborted,
}

/// Status of an outbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Destination.
    pub dst: PublicKey,
    /// Whether it is a reply.
    pub reply: bool,
    /// Transmission state.
    pub state: State,
    /// When it was pushed.
    pub created: Instant,
    /// When it is aborted if not received by then.
    pub deadline: Instant,
    /// Payload length.
    pub len: u64,
}

/// A message delivered by a remote node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// Its id. For a reply, the id of the message it answers.
    pub id: MessageId,
    /// The sender.
    pub src: PublicKey,
    /// Whether it is a reply (to our message with the same id).
    pub reply: bool,
    /// The topic (empty if none).
    pub topic: Bytes,
    /// The payload.
    pub payload: Bytes,
}

/// Something the daemon must know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message arrived completely and intact. Delivered once per (source, id).
    Received(ReceivedMessage),
    /// An outbound message reached `Received`, `Read` or `Aborted`.
    StateChanged {
        /// The message.
        id: MessageId,
        /// Its destination.
        dst: PublicKey,
        /// The new state.
        state: State,
    },
}

/// An encoded message packet for one destination. The daemon prepends the user-data header
/// (kind 1) and seals it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The destination node.
    pub dst: PublicKey,
    /// The message packet (no user-data header).
    pub payload: Vec<u8>,
}

/// Counters of what the sender repeated and what the receiver dropped or repeated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Messages delivered.
    pub delivered: u64,
    /// Packets for messages we know nothing about (chunk before INIT, stray DONE, ACKs).
    pub unknown: u64,
    /// Packets that contradict their message (bounds, sizes, overlap, wrong length).
    pub invalid: u64,
    /// DONE packets whose chunks or checksum did not match.
    pub bad_done: u64,
    /// INITs refused by the topic ACL.
    pub refused_acl: u64,
    /// Packets dropped because a limit was reached.
    pub over_limit: u64,
    /// Repeated packets acknowledged again without effect.
    pub duplicates: u64,
    /// Packets of our messages sent again (INIT, CHUNK, DONE).
    pub retransmitted: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Out(MessageId),
    In(PublicKey, MessageId),
    Delivered,
    Finished,
}

/// What identifies a message delivered to us, kept for a window so that its repeats are
/// acknowledged and not delivered twice.
#[derive(Debug, Clone, Copy)]
pub(super) struct Delivered {
    total_len: u64,
    chunk_count: u64,
    checksum: [u8; 32],
    reply: bool,
}

/// A delivered message's key: its source (an index into a [`KeyTable`]) and id.
pub(super) type SourceId = (u32, MessageId);

/// The message subsystem of one node. See the module docs for the calling contract.
#[derive(Debug)]
pub struct Messages {
    cfg: Config,
    own: PublicKey,
    acl: TopicAcl,
    /// Outbound messages still sending (or with an ABORT to send). This map and the two
    /// below hold records for minutes (the window, the linger); B-trees grow and shrink a node
    /// at a time with them, where a hash table doubles (a whole table more, at some moment
    /// minutes into a steady load) and never shrinks.
    outbound: BTreeMap<MessageId, Outbound>,
    /// Outbound messages finished, kept for their status until [`Config::linger`] after
    /// their window, at most [`Config::max_delivered_records`].
    finished: Records<MessageId, Finished>,
    /// The destinations `finished` names.
    finished_dsts: KeyTable,
    finished_armed: Option<Instant>,
    active_outbound: usize,
    outbound_bytes: usize,
    inbound: HashMap<(PublicKey, MessageId), Inbound>,
    per_source: HashMap<PublicKey, usize>,
    inbound_bytes: usize,
    /// Messages delivered to us in the last window, at most [`Config::max_delivered_records`].
    delivered: Records<SourceId, Delivered>,
    /// The sources `delivered` names.
    delivered_srcs: KeyTable,
    delivered_armed: Option<Instant>,
    rtt: RttTable,
    timers: BinaryHeap<Reverse<(Instant, TimerKey)>>,
    ready: VecDeque<MessageId>,
    control: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Messages {
    /// A message subsystem for the node `own`.
    pub fn new(now: Instant, mut config: Config, own: PublicKey) -> Self {
        let (window, linger) = (config.send_window, config.linger);
        config.chunk_size = config.chunk_size.clamp(2 * MIN_CHUNK_SIZE, CHUNK_SIZE);
        config.max_in_flight = config.max_in_flight.max(1);
        let rtt = RttTable::new(
            config.max_rtt_entries,
            config.initial_rto,
            config.min_rto,
            config.max_rto,
        );
        Self {
            cfg: config,
            own,
            acl: TopicAcl::default(),
            outbound: BTreeMap::new(),
            finished: Records::new(now, window + linger),
            finished_dsts: KeyTable::default(),
            finished_armed: None,
            active_outbound: 0,
            outbound_bytes: 0,
            inbound: HashMap::new(),
            per_source: HashMap::new(),
            inbound_bytes: 0,
            delivered: Records::new(now, window),
            delivered_srcs: KeyTable::default(),
            delivered_armed: None,
            rtt,
            timers: BinaryHeap::new(),
            ready: VecDeque::new(),
            control: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// This node's key.
    pub fn own_key(&self) -> &PublicKey {
        &self.own
    }

    /// The topic ACL.
    pub fn acl(&self) -> &TopicAcl {
        &self.acl
    }

    /// The topic ACL, to change it.
    pub fn acl_mut(&mut self) -> &mut TopicAcl {
        &mut self.acl
    }

    /// Receiver counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The smoothed round-trip time measured toward `dst`, if any.
    pub fn srtt(&self, dst: &PublicKey) -> Option<Duration> {
        self.rtt.get(dst).and_then(|e| e.srtt())
    }

    /// Queues a new message with a caller-drawn random `id`.
    pub fn push(
        &mut self,
        now: Instant,
        id: MessageId,
        dst: PublicKey,
        topic: &[u8],
        payload: Bytes,
    ) -> Result<(), PushError> {
        self.push_inner(now, id, dst, topic, payload, false)
    }

    /// Queues a reply to the message `reply_to` received from `dst`. As in the reference, the
    /// reply reuses that id, carries the REPLY flag and no topic.
    pub fn push_reply(
        &mut self,
        now: Instant,
        reply_to: MessageId,
        dst: PublicKey,
        payload: Bytes,
    ) -> Result<(), PushError> {
        self.push_inner(now, reply_to, dst, &[], payload, true)
    }

    fn push_inner(
        &mut self,
        now: Instant,
        id: MessageId,
        dst: PublicKey,
        topic: &[u8],
        payload: Bytes,
        reply: bool,
    ) -> Result<(), PushError> {
        if topic.len() > 255 {
            return Err(PushError::TopicTooLarge);
        }
        if payload.len() as u64 > self.cfg.max_message_size {
            return Err(PushError::MessageTooLarge);
        }
        if self.outbound.get(&id).is_some_and(Outbound::is_active) {
            return Err(PushError::DuplicateId);
        }
        if self.active_outbound >= self.cfg.max_outbound
            || self.outbound_bytes + payload.len() > self.cfg.max_outbound_bytes
        {
            return Err(PushError::Busy);
        }
        self.outbound.remove(&id);
        if let Some(f) = self.finished.remove(&id) {
            self.finished_dsts.release(f.dst);
        }
        self.active_outbound += 1;
        self.outbound_bytes += payload.len();
        let m = Outbound::new(
            now,
            id,
            dst,
            reply,
            topic,
            payload,
            self.cfg.chunk_size,
            self.cfg.send_window,
            self.cfg.linger,
            match self.cfg.pipelining {
                true => self.cfg.pipeline_window.max(1),
                false => 0,
            },
        );
        self.outbound.insert(id, m);
        self.schedule_out(id);
        Ok(())
    }

    /// The application gives up on an outbound message: it becomes `Aborted` and the
    /// receiver is told. False if it is unknown or finished.
    pub fn abort(&mut self, _now: Instant, id: MessageId) -> bool {
        let Some(m) = self.outbound.get_mut(&id) else {
            return false;
        };
        let prev = m.phase;
        if !m.abort() {
            return false;
        }
        self.after_out_change(id, prev);
        true
    }

    /// Tells the sender of a received message that an application took it (a READ packet).
    /// The reference sends one READ every time a message is taken, and never repeats it.
    pub fn mark_read(&mut self, _now: Instant, src: PublicKey, id: MessageId) {
        let mut buf = Vec::with_capacity(12);
        MessagePacket {
            id,
            flags: MessageFlags::READ,
            body: MessageBody::Empty,
        }
        .encode(&mut buf);
        self.queue_control(src, buf);
    }

    /// Status of an outbound message, until [`Config::linger`] after its window.
    pub fn status(&self, id: MessageId) -> Option<Status> {
        if let Some((created, f)) = self.finished.get(&id) {
            return Some(Status {
                dst: self.finished_dsts.key(f.dst),
                reply: f.reply,
                state: f.state(),
                created,
                deadline: created + self.cfg.send_window,
                len: f.len,
            });
        }
        self.outbound.get(&id).map(|m| Status {
            dst: m.dst,
            reply: m.reply,
            state: m.state(),
            created: m.created,
            deadline: m.deadline,
            len: m.len,
        })
    }

    /// Decodes and handles one message packet (the plaintext after the user-data header).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        src: PublicKey,
        bytes: &[u8],
    ) -> Result<(), DecodeError> {
        let p = MessagePacket::decode(bytes)?;
        self.handle_packet(now, src, p);
        Ok(())
    }

    /// Handles one decoded message packet from `src`.
    pub fn handle_packet(&mut self, now: Instant, src: PublicKey, packet: MessagePacket<'_>) {
        let id = packet.id;
        let flags = packet.flags;
        if flags.contains(MessageFlags::ACK) {
            self.handle_ack(now, src, packet);
            return;
        }
        match packet.body {
            MessageBody::Init { total_len, topic } => {
                let reply = flags.contains(MessageFlags::REPLY);
                self.handle_init(now, src, &packet, total_len, topic, reply);
            }
            MessageBody::Chunk {
                index,
                offset,
                data,
            } => self.handle_chunk(now, src, &packet, index, offset, data),
            MessageBody::Done {
                chunk_count,
                checksum,
            } => self.handle_done(now, src, &packet, chunk_count, &checksum),
            MessageBody::Empty if flags.contains(MessageFlags::READ) => {
                if let Some(f) = self.finished.get_mut(&id) {
                    let dst = self.finished_dsts.key(f.dst);
                    if dst != src {
                        self.stats.unknown += 1;
                    } else if f.on_read() {
                        let state = f.state();
                        self.events
                            .push_back(Event::StateChanged { id, dst, state });
                    }
                    return;
                }
                let Some(m) = self.outbound_from(id, &src) else {
                    return;
                };
                let prev = m.phase;
                if m.on_read() {
                    self.after_out_change(id, prev);
                }
            }
            MessageBody::Empty => {
                // ABORTED: drop a pending message; a delivered one stays delivered.
                if let Some(e) = self.inbound.remove(&(src, id)) {
                    self.forget_inbound(src, &e);
                }
            }
            MessageBody::InitAck { .. } | MessageBody::ChunkAck { .. } => {}
        }
    }

    /// Our outbound message `id` if `src` is its destination; anything else is counted as a
    /// packet about a message we don't know.
    fn outbound_from(&mut self, id: MessageId, src: &PublicKey) -> Option<&mut Outbound> {
        match self.outbound.get_mut(&id) {
            Some(m) if m.dst == *src => Some(m),
            // Finished: nothing to do, but not unknown either (`finished_dst` by hand: `outbound`
            // is borrowed).
            None if self
                .finished
                .get(&id)
                .is_some_and(|(_, f)| self.finished_dsts.key(f.dst) == *src) =>
            {
                None
            }
            _ => {
                self.stats.unknown += 1;
                None
            }
        }
    }

    fn handle_ack(&mut self, now: Instant, src: PublicKey, packet: MessagePacket<'_>) {
        let id = packet.id;
        let Some(m) = self.outbound_from(id, &src) else {
            return;
        };
        let prev = m.phase;
        let sample = match packet.body {
            MessageBody::InitAck { total_len, .. } => m.on_init_ack(now, total_len),
            MessageBody::ChunkAck {
                index,
                offset,
                size,
            } => m.on_chunk_ack(now, index, offset, size),
            MessageBody::Done {
                chunk_count,
                checksum,
            } => match m.on_done_ack(now, chunk_count, &checksum) {
                Some(s) => s,
                None => return,
            },
            // READ|ACK (the reference ignores it too) or anything else.
            _ => return,
        };
        if let Some(r) = sample {
            self.rtt.sample(now, src, r);
        }
        self.after_out_change(id, prev);
    }

    fn handle_init(
        &mut self,
        now: Instant,
        src: PublicKey,
        packet: &MessagePacket<'_>,
        total_len: u64,
        topic: &[u8],
        reply: bool,
    ) {
        let key = (src, packet.id);
        if total_len > self.cfg.max_message_size {
            self.stats.over_limit += 1;
            return;
        }
        if let Some((_, d)) = self.delivered_of(&src, packet.id) {
            if d.total_len == total_len && d.reply == reply {
                self.stats.duplicates += 1;
                self.ack(src, packet);
                return;
            }
            // A different message under the same id: a new one.
            self.forget_delivered(&src, packet.id);
        }
        if let Some(e) = self.inbound.get_mut(&key) {
            e.last_activity = now;
            if e.same_init(total_len, topic, reply) {
                self.stats.duplicates += 1;
                self.ack(src, packet);
                return;
            }
            if let Some(old) = self.inbound.remove(&key) {
                self.forget_inbound(src, &old);
            }
        }
        let answers_ours = reply
            && (self.outbound.get(&packet.id).map(|m| m.dst))
                .or_else(|| self.finished_dst(packet.id))
                == Some(src);
        if !answers_ours && !self.acl.allows(topic, &src) {
            self.stats.refused_acl += 1;
            return;
        }
        let from_src = self.per_source.get(&src).copied().unwrap_or(0);
        if self.inbound.len() >= self.cfg.max_inbound || from_src >= self.cfg.max_inbound_per_source
        {
            self.stats.over_limit += 1;
            return;
        }
        *self.per_source.entry(src).or_insert(0) += 1;
        self.inbound
            .insert(key, Inbound::new(now, total_len, topic, reply));
        self.rearm_in(key);
        self.ack(src, packet);
    }

    fn handle_chunk(
        &mut self,
        now: Instant,
        src: PublicKey,
        packet: &MessagePacket<'_>,
        index: u64,
        offset: u64,
        data: &[u8],
    ) {
        let key = (src, packet.id);
        if let Some((_, d)) = self.delivered_of(&src, packet.id) {
            if chunk_fits(d.total_len, index, offset, data.len() as u64) {
                self.stats.duplicates += 1;
                self.ack(src, packet);
            } else {
                self.stats.invalid += 1;
            }
            return;
        }
        let budget = self
            .cfg
            .max_inbound_bytes
            .saturating_sub(self.inbound_bytes);
        let Some(e) = self.inbound.get_mut(&key) else {
            // As the reference: no INIT, no state, no ACK; the sender repeats it.
            self.stats.unknown += 1;
            return;
        };
        e.last_activity = now;
        match e.insert(index, offset, data, budget) {
            Ok(Some(replaced)) => {
                self.inbound_bytes =
                    self.inbound_bytes - replaced.min(self.inbound_bytes) + data.len();
                self.ack(src, packet);
            }
            Ok(None) => {
                self.stats.duplicates += 1;
                self.ack(src, packet);
            }
            Err(ChunkReject::Invalid) => self.stats.invalid += 1,
            Err(ChunkReject::Full) => self.stats.over_limit += 1,
        }
    }

    fn handle_done(
        &mut self,
        now: Instant,
        src: PublicKey,
        packet: &MessagePacket<'_>,
        chunk_count: u64,
        checksum: &[u8; 32],
    ) {
        let key = (src, packet.id);
        if let Some((_, d)) = self.delivered_of(&src, packet.id) {
            if d.chunk_count == chunk_count && &d.checksum == checksum {
                self.stats.duplicates += 1;
                self.ack(src, packet);
            } else {
                self.stats.bad_done += 1;
            }
            return;
        }
        let Some(e) = self.inbound.get_mut(&key) else {
            self.stats.unknown += 1;
            return;
        };
        let Some(payload) = e.complete(chunk_count, checksum) else {
            // As the reference: ignored, no ACK, the message stays pending (and a wrong DONE
            // does not keep it from going idle).
            self.stats.bad_done += 1;
            return;
        };
        let Some(e) = self.inbound.remove(&key) else {
            return;
        };
        self.forget_inbound(src, &e);
        self.record_delivered(
            now,
            key,
            Delivered {
                total_len: e.total_len,
                chunk_count,
                checksum: *checksum,
                reply: e.reply,
            },
        );
        self.stats.delivered += 1;
        self.events.push_back(Event::Received(ReceivedMessage {
            id: packet.id,
            src,
            reply: e.reply,
            topic: Bytes::from(e.topic),
            payload,
        }));
        self.ack(src, packet);
    }

    /// The next packet to send. ACKs and READs go first, then message data round-robin.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if let Some(t) = self.control.pop_front() {
            return Some(t);
        }
        let window = self.cfg.max_in_flight;
        while let Some(id) = self.ready.pop_front() {
            let Some(m) = self.outbound.get_mut(&id) else {
                continue;
            };
            m.queued = false;
            let mut buf = Vec::new();
            let Some(repeat) = m.next_packet(now, window, &mut buf) else {
                continue;
            };
            self.stats.retransmitted += u64::from(repeat);
            let dst = m.dst;
            if m.has_work(window) {
                m.queued = true;
                self.ready.push_back(id);
            }
            self.rearm_out(id);
            self.settle_out(id);
            return Some(Transmit { dst, payload: buf });
        }
        None
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((t, key))) = self.timers.peek().copied() {
            if self.armed(key) == Some(t) {
                return Some(t);
            }
            self.timers.pop();
        }
        None
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((t, key))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            if self.armed(key) != Some(t) {
                continue;
            }
            match key {
                TimerKey::Out(id) => self.timeout_out(now, id),
                TimerKey::In(src, id) => self.timeout_in(now, (src, id)),
                TimerKey::Delivered => self.timeout_delivered(now),
                TimerKey::Finished => self.timeout_finished(now),
            }
        }
    }

    /// Arms `key` at `at`. A deadline that moves leaves its old heap entry behind (skipped when
    /// it surfaces); once the stale entries outnumber the live timers, they are swept, so a
    /// peer that keeps resetting a message (an INIT that differs each time) cannot grow the
    /// heap by one entry per packet.
    fn push_timer(&mut self, at: Instant, key: TimerKey) {
        self.timers.push(Reverse((at, key)));
        let live = self.outbound.len() + self.inbound.len() + 2;
        if self.timers.len() > 2 * live + 64 {
            let (outbound, inbound, delivered, finished) = (
                &self.outbound,
                &self.inbound,
                self.delivered_armed,
                self.finished_armed,
            );
            // One entry per armed key (a reset message re-arms at the same instant).
            let mut kept = BTreeSet::new();
            self.timers.retain(|Reverse((t, k))| {
                let armed = match k {
                    TimerKey::Out(id) => outbound.get(id).and_then(|m| m.armed),
                    TimerKey::In(src, id) => inbound.get(&(*src, *id)).and_then(|e| e.armed),
                    TimerKey::Delivered => delivered,
                    TimerKey::Finished => finished,
                };
                armed == Some(*t) && kept.insert(*k)
            });
        }
    }

    fn armed(&self, key: TimerKey) -> Option<Instant> {
        match key {
            TimerKey::Out(id) => self.outbound.get(&id).and_then(|m| m.armed),
            TimerKey::In(src, id) => self.inbound.get(&(src, id)).and_then(|e| e.armed),
            TimerKey::Delivered => self.delivered_armed,
            TimerKey::Finished => self.finished_armed,
        }
    }

    fn timeout_out(&mut self, now: Instant, id: MessageId) {
        let Some(m) = self.outbound.get_mut(&id) else {
            return;
        };
        m.armed = None;
        let prev = m.phase;
        let rto = self.rtt.rto_backoff(&m.dst, m.backoff());
        let backoff = m.backoff();
        let outcome = m.on_timeout(now, rto);
        if m.backoff() > backoff {
            let dst = m.dst;
            self.rtt.timed_out(now, dst, rto);
        }
        if outcome.remove {
            if let Some(m) = self.outbound.remove(&id)
                && m.is_active()
            {
                self.active_outbound -= 1;
                self.outbound_bytes -= self.outbound_bytes.min(m.len as usize);
            }
            return;
        }
        self.after_out_change(id, prev);
    }

    fn timeout_in(&mut self, now: Instant, key: (PublicKey, MessageId)) {
        let Some(e) = self.inbound.get_mut(&key) else {
            return;
        };
        e.armed = None;
        if now >= e.created + self.cfg.send_window
            || now >= e.last_activity + self.cfg.inbound_idle_timeout
        {
            if let Some(e) = self.inbound.remove(&key) {
                self.forget_inbound(key.0, &e);
            }
            return;
        }
        self.rearm_in(key);
    }

    fn timeout_delivered(&mut self, now: Instant) {
        self.delivered_armed = None;
        let srcs = &mut self.delivered_srcs;
        self.delivered.expire(now, |(src, _), _| srcs.release(src));
        self.arm_delivered();
    }

    /// The record of message `id` delivered from `src`, if kept.
    fn delivered_of(&self, src: &PublicKey, id: MessageId) -> Option<(Instant, &Delivered)> {
        self.delivered.get(&(self.delivered_srcs.find(src)?, id))
    }

    /// Forgets the record of message `id` delivered from `src`, if kept.
    fn forget_delivered(&mut self, src: &PublicKey, id: MessageId) {
        let Some(i) = self.delivered_srcs.find(src) else {
            return;
        };
        if self.delivered.remove(&(i, id)).is_some() {
            self.delivered_srcs.release(i);
        }
    }

    fn record_delivered(&mut self, now: Instant, key: (PublicKey, MessageId), d: Delivered) {
        // Forgotten records' places count too, so the order stays bounded whatever ids come.
        let cap = self.cfg.max_delivered_records.max(1);
        while self.delivered.len() >= cap || self.delivered.places() >= 2 * cap {
            match self.delivered.pop_front() {
                None => break,
                Some(Some(((src, _), _))) => self.delivered_srcs.release(src),
                Some(None) => {}
            }
        }
        let src = self.delivered_srcs.hold(key.0);
        if self.delivered.insert((src, key.1), now, d).is_some() {
            self.delivered_srcs.release(src);
        }
        self.arm_delivered();
    }

    fn arm_delivered(&mut self) {
        let Some(t) = self.delivered.next_removal() else {
            return;
        };
        if self.delivered_armed.is_none_or(|a| t < a) {
            self.delivered_armed = Some(t);
            self.push_timer(t, TimerKey::Delivered);
        }
    }

    fn forget_inbound(&mut self, src: PublicKey, e: &Inbound) {
        self.inbound_bytes -= e.bytes.min(self.inbound_bytes);
        if let Some(n) = self.per_source.get_mut(&src) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&src);
            }
        }
    }

    fn rearm_in(&mut self, key: (PublicKey, MessageId)) {
        let Some(e) = self.inbound.get_mut(&key) else {
            return;
        };
        let d =
            (e.created + self.cfg.send_window).min(e.last_activity + self.cfg.inbound_idle_timeout);
        if e.armed.is_none_or(|a| d < a) {
            e.armed = Some(d);
            self.push_timer(d, TimerKey::In(key.0, key.1));
        }
    }

    fn rearm_out(&mut self, id: MessageId) {
        let Some(m) = self.outbound.get_mut(&id) else {
            return;
        };
        let rto = self.rtt.rto_backoff(&m.dst, m.backoff());
        let d = m.next_deadline(rto);
        if m.armed.is_none_or(|a| d < a) {
            m.armed = Some(d);
            self.push_timer(d, TimerKey::Out(id));
        }
    }

    /// Bookkeeping after an outbound message changed: counters, events, send queue, timer.
    fn after_out_change(&mut self, id: MessageId, prev: Phase) {
        let Some(m) = self.outbound.get_mut(&id) else {
            return;
        };
        let was_active = matches!(prev, Phase::Pending | Phase::Sending);
        if was_active && !m.is_active() {
            self.active_outbound -= 1;
            self.outbound_bytes -= self.outbound_bytes.min(m.len as usize);
        }
        if m.phase != prev && matches!(m.phase, Phase::Received | Phase::Read | Phase::Aborted) {
            self.events.push_back(Event::StateChanged {
                id,
                dst: m.dst,
                state: m.state(),
            });
        }
        self.schedule_out(id);
        self.settle_out(id);
    }

    /// Moves outbound message `id` to [`Self::finished`] once it is finished with nothing
    /// left to send, keeping only its status, with a timer for its removal.
    fn settle_out(&mut self, id: MessageId) {
        if !self.outbound.get(&id).is_some_and(Outbound::is_settled) {
            return;
        }
        let Some(m) = self.outbound.remove(&id) else {
            return;
        };
        // Forgotten records' places count too, so the order stays bounded whatever ids come.
        let cap = self.cfg.max_delivered_records.max(1);
        while self.finished.len() >= cap || self.finished.places() >= 2 * cap {
            match self.finished.pop_front() {
                None => break,
                Some(Some((_, f))) => self.finished_dsts.release(f.dst),
                Some(None) => {}
            }
        }
        let f = m.finished(self.finished_dsts.hold(m.dst));
        if let Some(old) = self.finished.insert(id, m.created, f) {
            self.finished_dsts.release(old.dst);
        }
        self.arm_finished();
    }

    /// The destination of finished message `id`, if kept.
    fn finished_dst(&self, id: MessageId) -> Option<PublicKey> {
        let (_, f) = self.finished.get(&id)?;
        Some(self.finished_dsts.key(f.dst))
    }

    fn timeout_finished(&mut self, now: Instant) {
        self.finished_armed = None;
        let dsts = &mut self.finished_dsts;
        self.finished.expire(now, |_, f| dsts.release(f.dst));
        self.arm_finished();
    }

    fn arm_finished(&mut self) {
        let Some(t) = self.finished.next_removal() else {
            return;
        };
        if self.finished_armed.is_none_or(|a| t < a) {
            self.finished_armed = Some(t);
            self.push_timer(t, TimerKey::Finished);
        }
    }

    fn schedule_out(&mut self, id: MessageId) {
        let window = self.cfg.max_in_flight;
        if let Some(m) = self.outbound.get_mut(&id)
            && !m.queued
            && m.has_work(window)
        {
            m.queued = true;
            self.ready.push_back(id);
        }
        self.rearm_out(id);
    }

    fn ack(&mut self, dst: PublicKey, packet: &MessagePacket<'_>) {
        let ack = packet.ack();
        let mut buf = Vec::with_capacity(ack.encoded_len());
        ack.encode(&mut buf);
        self.queue_control(dst, buf);
    }

    fn queue_control(&mut self, dst: PublicKey, payload: Vec<u8>) {
        if self.control.len() >= self.cfg.max_control_queue {
            self.stats.over_limit += 1;
            return;
        }
        self.control.push_back(Transmit { dst, payload });
    }
}

#[cfg(test)]
mod tests;
