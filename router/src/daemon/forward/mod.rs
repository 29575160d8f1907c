//! What a worker does with the frames of one read: control TLVs go to the control thread,
//! data frames are forwarded in place or delivered locally.
//!
//! Work is done a read-batch at a time: the peer table is loaded once, counters are summed
//! locally and published once, and per-address packet counts collapse runs of one flow into a
//! single table update.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::Ipv6Addr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hyphae_proto::PeerId;
use hyphae_proto::hash::SeededState;
use hyphae_wire::Subnet;
use hyphae_wire::data::{DATA_OVERHEAD, DataFrame, DataHeader};
use hyphae_wire::deframer::Frame;
use hyphae_wire::icmp::{Icmpv6Code, Icmpv6Type, OobIcmp};
use hyphae_wire::seal::{SEAL_OVERHEAD, UserDataKind};
use tokio::sync::Notify;
use tokio::sync::mpsc::error::TrySendError;

use super::inbox::{ControlMsg, MsgCmd};
use super::keys::{KeyCache, Nonces};
use super::peers::PeerHandle;
use super::ring::Ring;
use super::shared::{RouteUse, Shared, WorkerCounters};
use super::tun::TunQueue;

mod counts;
mod l3;

use counts::AddressCounts;

/// Most source or destination addresses a worker keeps packet counts for.
const MAX_STATS_ENTRIES: usize = 16_384;
/// How many frames ahead of the one being forwarded the slot of its destination's packet
/// counts is fetched into the cache.
const PREFETCH_AHEAD: usize = 8;
/// Frames held per destination /64 while its route is looked for (the reference: 100 inbound).
const MAX_PENDING_PER_SUBNET: usize = 100;
/// Frames held per worker while routes are looked for.
const MAX_PENDING: usize = 10_000;
/// How long a frame may wait for its route (the reference's route query timeout).
pub(crate) const PENDING_TIMEOUT: Duration = Duration::from_secs(15);
/// How often held frames are checked while any are held.
const PENDING_CHECK: Duration = Duration::from_millis(5);

/// Packets and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Traffic {
    /// Packets.
    pub(crate) packets: u64,
    /// Bytes.
    pub(crate) bytes: u64,
}

/// One worker's packet counts by address, at most [`MAX_STATS_ENTRIES`] addresses each.
#[derive(Debug, Clone)]
pub(crate) struct PacketStats {
    /// By source address.
    pub(crate) by_source: HashMap<Ipv6Addr, Traffic, SeededState>,
    /// By destination address.
    pub(crate) by_destination: HashMap<Ipv6Addr, Traffic, SeededState>,
}

/// One worker's packet counts, as the forwarding path keeps them.
#[derive(Debug)]
struct Counts {
    by_source: AddressCounts,
    by_destination: AddressCounts,
}

/// The forwarding state of one worker, which only its own thread touches.
#[derive(Debug)]
struct State {
    /// Keys to open frames for this node and to seal ICMP errors.
    keys: KeyCache,
    stats: Counts,
    /// Frames waiting for a route, by the /64 (its upper 64 bits) whose route they need: the
    /// destination's to be forwarded, or, for frames to this node, the source's (for its key).
    pending: HashMap<u64, VecDeque<Held>, SeededState>,
    pending_len: usize,
    /// Out-of-band ICMP errors sent in the current second, and since when.
    icmp_budget: (Option<Instant>, u32),
    /// Packets opened for us in the current batch, for the TUN device.
    tun_out: Vec<l3::Delivered>,
    /// Nonces for what this worker seals.
    nonces: Nonces,
    /// Route lookups so far, to note one in [`RouteUse::SAMPLE`] as a use of its route.
    lookups: u32,
}

impl State {
    /// A route to the /64 `net` (its upper 64 bits) was looked up and found: note a sample
    /// of these for the control thread, which refreshes routes in use before they expire.
    fn used(&mut self, shared: &Shared, net: u128) {
        self.lookups = self.lookups.wrapping_add(1);
        if self.lookups.is_multiple_of(RouteUse::SAMPLE) {
            shared.route_use.note(net as u64);
        }
    }
}

impl Waiting {
    /// The same, in a buffer of its own size: what waits must not keep the whole receive
    /// buffer or read chunk it came in alive (up to [`MAX_PENDING`] of them, for seconds).
    fn compact(self) -> Self {
        let copy =
            |f: DataFrame<BytesMut>| match DataFrame::new_checked(BytesMut::from(f.as_bytes())) {
                Ok(c) => c,
                Err(_) => f,
            };
        match self {
            Self::Transit(f) => Self::Transit(copy(f)),
            Self::ForUs(f) => Self::ForUs(copy(f)),
            Self::FromTun(o) => Self::FromTun(o.compact()),
        }
    }
}

impl State {
    /// Whether one more ICMP error fits this second's budget (and spends it if so).
    fn icmp_allowed(&mut self) -> bool {
        let now = Instant::now();
        match self.icmp_budget {
            (Some(since), n) if now.duration_since(since) < Duration::from_secs(1) => {
                self.icmp_budget.1 = n + 1;
                n < ICMP_PER_SECOND
            }
            _ => {
                self.icmp_budget = (Some(now), 1);
                true
            }
        }
    }
}

/// A frame or packet waiting for a route.
#[derive(Debug)]
struct Held {
    since: Instant,
    what: Waiting,
}

/// What waits for a route, and for which end's route.
#[derive(Debug)]
enum Waiting {
    /// A frame to forward (waits for the destination's route).
    Transit(DataFrame<BytesMut>),
    /// A frame addressed to this node (waits for its source's route, for the key).
    ForUs(DataFrame<BytesMut>),
    /// A packet read from the TUN device, laid out in its frame buffer but not sealed yet
    /// (waits for the destination's route and key).
    FromTun(l3::Outbound),
}

/// What one worker does with the frames its links read: control TLVs go to the control
/// thread, data frames are forwarded in place, delivered locally or held for a route. Cloned
/// into every link task of the worker (same thread).
#[derive(Debug, Clone)]
pub(crate) struct Forwarder {
    worker: usize,
    shared: Arc<Shared>,
    state: Rc<RefCell<State>>,
    /// Woken when the first frame is held.
    held: Rc<Notify>,
    /// This worker's queue of the TUN device (`None` with `--no-tun`).
    tun: Option<Rc<TunQueue>>,
    /// The worker's io_uring ring (`None`: the portable driver).
    ring: Option<Rc<Ring>>,
}

impl Forwarder {
    /// The forwarding state of worker `worker`; `seed` keys the hashes of the tables peers
    /// fill (packet counts, held frames); `tun` is the worker's queue of the TUN device and
    /// `ring` its io_uring ring, if it runs that driver.
    pub(crate) fn new(
        worker: usize,
        shared: Arc<Shared>,
        seed: u64,
        tun: Option<TunQueue>,
        ring: Option<Rc<Ring>>,
    ) -> Self {
        let state = State {
            keys: KeyCache::default(),
            stats: Counts {
                by_source: AddressCounts::new(MAX_STATS_ENTRIES, seed),
                by_destination: AddressCounts::new(MAX_STATS_ENTRIES, seed.rotate_left(32)),
            },
            pending: HashMap::with_hasher(SeededState::new(seed.rotate_left(16))),
            pending_len: 0,
            icmp_budget: (None, 0),
            tun_out: Vec::new(),
            nonces: Nonces::default(),
            lookups: 0,
        };
        if let Some(ring) = &ring {
            // The ring's TUN writes are counted when they complete.
            let s = shared.clone();
            ring.on_detached(move |written, failed| {
                let c = &s.counters[worker];
                c.tun_written.fetch_add(written, Relaxed);
                c.drop_tun_write.fetch_add(failed, Relaxed);
            });
        }
        Self {
            worker,
            shared,
            state: Rc::new(RefCell::new(state)),
            held: Rc::new(Notify::new()),
            tun: tun.map(Rc::new),
            ring,
        }
    }

    /// The worker's io_uring ring, if it runs that driver.
    pub(crate) fn ring(&self) -> Option<&Rc<Ring>> {
        self.ring.as_ref()
    }

    /// The state every thread shares.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The worker this forwarder runs on.
    pub(crate) fn worker(&self) -> usize {
        self.worker
    }

    /// This worker's counters.
    pub(crate) fn counters(&self) -> &WorkerCounters {
        &self.shared.counters[self.worker]
    }

    /// This worker's packet counts by address.
    pub(crate) fn packet_stats(&self) -> PacketStats {
        let st = self.state.borrow();
        let map = |c: &AddressCounts| {
            let mut m = HashMap::with_capacity_and_hasher(c.len(), SeededState::new(0));
            m.extend(c.iter());
            m
        };
        PacketStats {
            by_source: map(&st.stats.by_source),
            by_destination: map(&st.stats.by_destination),
        }
    }

    /// Releases frames held for routes that appeared, until shutdown: sleeps until a frame is
    /// held, then checks every few milliseconds while any are.
    pub(crate) async fn release_held(self) {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            let held = self.state.borrow().pending_len > 0;
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = self.held.notified(), if !held => continue,
                _ = tokio::time::sleep(PENDING_CHECK), if held => {}
            }
            self.flush_pending(Instant::now());
        }
    }
}

/// A run of frames with the same address, counted once when the address changes.
#[derive(Default)]
struct Run {
    addr: Option<Ipv6Addr>,
    seen: Traffic,
}

impl Run {
    fn add(&mut self, map: &mut AddressCounts, addr: Ipv6Addr, len: usize) {
        if self.addr != Some(addr) {
            self.flush(map);
            self.addr = Some(addr);
        }
        self.seen.packets += 1;
        self.seen.bytes += len as u64;
    }

    fn flush(&mut self, map: &mut AddressCounts) {
        let Some(a) = self.addr.take() else { return };
        map.add(a, self.seen);
        self.seen = Traffic::default();
    }
}

/// Counters summed over one batch, then added to the shared ones.
#[derive(Default)]
struct Tally {
    forwarded: u64,
    local: u64,
    local_opened: u64,
    local_unopened: u64,
    hop_limit: u64,
    no_route: u64,
    queue_full: u64,
    looped: u64,
    skipped: u64,
    control_waits: u64,
    icmp: u64,
    tun_read: u64,
    tun_written: u64,
    tun_icmp: u64,
    tun_foreign: u64,
    tun_invalid: u64,
    tun_write_failed: u64,
}

impl Tally {
    fn publish(&self, c: &WorkerCounters) {
        let add = |a: &AtomicU64, v: u64| {
            if v != 0 {
                a.fetch_add(v, Relaxed);
            }
        };
        add(&c.forwarded, self.forwarded);
        add(&c.local, self.local);
        add(&c.local_opened, self.local_opened);
        add(&c.local_unopened, self.local_unopened);
        add(&c.drop_hop_limit, self.hop_limit);
        add(&c.drop_no_route, self.no_route);
        add(&c.drop_queue_full, self.queue_full);
        add(&c.drop_loop, self.looped);
        add(&c.skipped_control, self.skipped);
        add(&c.control_queue_waits, self.control_waits);
        add(&c.icmp_sent, self.icmp);
        add(&c.tun_read, self.tun_read);
        add(&c.tun_written, self.tun_written);
        add(&c.tun_icmp, self.tun_icmp);
        add(&c.drop_tun_foreign_source, self.tun_foreign);
        add(&c.drop_tun_invalid, self.tun_invalid);
        add(&c.drop_tun_write, self.tun_write_failed);
    }
}

/// Longest run of frames queued as one slice.
const MAX_RUN: usize = 64 * 1024;

/// Frames for one egress peer, contiguous in the receive buffer.
struct Staged {
    peer: PeerId,
    run: BytesMut,
    frames: u32,
}

impl Staged {
    fn send(self, peers: &HashMap<PeerId, Arc<PeerHandle>>, t: &mut Tally) {
        let n = u64::from(self.frames);
        match peers.get(&self.peer) {
            Some(e) if e.enqueue(self.run.freeze(), self.frames) => t.forwarded += n,
            Some(_) => t.queue_full += n,
            None => t.no_route += n,
        }
    }
}

/// Whether `b` starts where `a` ends in memory (so `unsplit` joins them without copying).
fn adjacent(a: &BytesMut, b: &BytesMut) -> bool {
    (a.as_ptr() as usize).wrapping_add(a.len()) == b.as_ptr() as usize
}

/// Most out-of-band ICMP errors a worker sends per second: they cost a seal each, and a peer
/// must not be able to make us spend unbounded work on its bad frames.
const ICMP_PER_SECOND: u32 = 200;

impl Forwarder {
    /// Hands the control TLVs [`Self::handle_frames`] deferred to the control thread, in
    /// order, waiting for room; the caller reads its link again only after this.
    pub(crate) async fn send_deferred(&self, deferred: &mut Vec<ControlMsg>) {
        for msg in deferred.drain(..) {
            if self.shared.inbox.control.send(msg).await.is_err() {
                break;
            }
        }
    }

    /// Handles every frame in `frames` (from one read of `from`), leaving it empty.
    ///
    /// Control TLVs go to the control thread. When its inbox is full, they and every control
    /// TLV after them in this read are put in `deferred`, in order, for the caller to send
    /// waiting for room before it reads the link again: a peer sending faster than the control
    /// thread handles is slowed down by TCP, and loses nothing.
    ///
    /// Work is done a read-batch at a time: the peer table is loaded once, counters are summed
    /// locally and published once, and per-address packet counts collapse runs of one flow
    /// into a single table update.
    pub(crate) fn handle_frames(
        &self,
        from: &PeerHandle,
        frames: &mut Vec<Frame<BytesMut>>,
        deferred: &mut Vec<ControlMsg>,
    ) {
        let shared = &*self.shared;
        let peers = shared.peers.load();
        let mut t = Tally::default();
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let (mut src_run, mut dst_run) = (Run::default(), Run::default());
        let mut staged: Option<Staged> = None;
        // The last route looked up, reused while the destination /64 stays the same; the
        // forwarding table loaded once per batch, at its first lookup.
        let mut last: Option<(u128, Option<PeerId>)> = None;
        let mut fib = None;
        let mut frames = frames.drain(..);
        // The destinations' count slots, fetched PREFETCH_AHEAD frames ahead (once per change
        // of destination): with many destinations interleaved each is a cache miss.
        let mut fetched: Option<Ipv6Addr> = None;
        let mut prefetch = |st: &State, f: Option<&Frame<BytesMut>>| {
            if let Some(Frame::Data(d)) = f
                && fetched != Some(d.dst())
            {
                fetched = Some(d.dst());
                st.stats.by_destination.prefetch(d.dst());
            }
        };
        for f in frames.as_slice().iter().take(PREFETCH_AHEAD) {
            prefetch(st, Some(f));
        }
        while let Some(f) = frames.next() {
            prefetch(st, frames.as_slice().get(PREFETCH_AHEAD - 1));
            let mut frame = match f {
                Frame::Data(d) => d,
                Frame::Control(tlv) => {
                    // In order: once one TLV waits, the rest of the read waits behind it.
                    let msg = ControlMsg::Tlv { peer: from.id, tlv };
                    if !deferred.is_empty() {
                        deferred.push(msg);
                    } else if let Err(TrySendError::Full(msg)) = shared.inbox.control.try_send(msg)
                    {
                        t.control_waits += 1;
                        deferred.push(msg);
                    }
                    continue;
                }
                Frame::Skipped(s) => {
                    t.skipped += 1;
                    tracing::debug!(peer = from.id.0, ?s, "skipped control frame");
                    continue;
                }
            };
            let (src, dst, len) = (frame.src(), frame.dst(), frame.as_bytes().len());
            src_run.add(&mut st.stats.by_source, src, len);
            dst_run.add(&mut st.stats.by_destination, dst, len);
            // As the reference: the hop limit is checked before anything else, local delivery
            // included, and an expired frame is answered with a time-exceeded error.
            let hop = frame.hop_limit();
            if hop < 2 {
                t.hop_limit += 1;
                let kind = (Icmpv6Type::TIME_EXCEEDED, Icmpv6Code::HOP_LIMIT_EXCEEDED);
                self.send_icmp(st, &peers, kind, &frame, &mut t);
                continue;
            }
            frame.set_hop_limit(hop - 1);
            if shared.node.subnet.contains_ip(dst.into()) {
                t.local += 1;
                match self.open_for_us(st, frame, &mut t) {
                    Ok(true) => t.local_opened += 1,
                    Ok(false) => t.local_unopened += 1,
                    // The source's key is not known yet: hold the frame while its route is
                    // found.
                    Err(frame) => {
                        let held = self.hold(st, u128::from(src) >> 64, Waiting::ForUs(frame));
                        if held.is_err() {
                            t.local_unopened += 1;
                        }
                    }
                }
                continue;
            }
            let net = u128::from(dst) >> 64;
            let next = match last {
                Some((n, hop)) if n == net => hop,
                _ => {
                    let hop = fib.get_or_insert_with(|| shared.fib.snapshot()).lookup(dst);
                    if hop.is_some() {
                        st.used(shared, net);
                    }
                    last = Some((net, hop));
                    hop
                }
            };
            let Some(next) = next else {
                // Held while the route is looked for; when the queue is full, the reference
                // answers with "no route" at once.
                if let Err(Waiting::Transit(frame)) = self.hold(st, net, Waiting::Transit(frame)) {
                    t.no_route += 1;
                    let kind = (Icmpv6Type::DEST_UNREACHABLE, Icmpv6Code::NO_ROUTE);
                    self.send_icmp(st, &peers, kind, &frame, &mut t);
                }
                continue;
            };
            if next == from.id {
                t.looped += 1;
                continue;
            }
            // Consecutive frames of one read for one egress peer sit side by side in the
            // receive buffer: rejoin them (no copy) into one run, queued and written as one
            // slice.
            let bytes = frame.into_inner();
            match &mut staged {
                Some(s)
                    if s.peer == next
                        && s.run.len() + bytes.len() <= MAX_RUN
                        && adjacent(&s.run, &bytes) =>
                {
                    s.run.unsplit(bytes);
                    s.frames += 1;
                }
                _ => {
                    if let Some(s) = staged.take() {
                        s.send(&peers, &mut t);
                    }
                    staged = Some(Staged {
                        peer: next,
                        run: bytes,
                        frames: 1,
                    });
                }
            }
        }
        if let Some(s) = staged.take() {
            s.send(&peers, &mut t);
        }
        src_run.flush(&mut st.stats.by_source);
        dst_run.flush(&mut st.stats.by_destination);
        self.flush_tun(st, &mut t);
        t.publish(self.counters());
    }

    /// Sends an out-of-band ICMP error of `kind` about `frame` back to its source, as the
    /// reference does (silently nothing if the source's key is not known, or over the rate
    /// limit). The error quotes the frame's still-sealed body and leaves with hop limit 63.
    fn send_icmp(
        &self,
        st: &mut State,
        peers: &HashMap<PeerId, Arc<PeerHandle>>,
        (ty, code): (Icmpv6Type, Icmpv6Code),
        frame: &DataFrame<BytesMut>,
        t: &mut Tally,
    ) {
        let shared = &*self.shared;
        let (src, dst) = (frame.src(), frame.dst());
        if shared.node.subnet.contains_ip(src.into()) || !st.icmp_allowed() {
            return;
        }
        let Some(pk) = shared.route_keys.load().get(&Subnet::v6_64(src)).copied() else {
            return;
        };
        let Some(egress) = shared.fib.lookup(src).and_then(|p| peers.get(&p)) else {
            return;
        };
        let Some(nonce) = st.nonces.next() else {
            return;
        };
        let key = st
            .keys
            .get(&shared.node.secret, pk, &shared.key_cache_evictions);
        // As the reference, from the first address of our /64 (not the node's own).
        let own = Ipv6Addr::from(u128::from(shared.node.address) >> 64 << 64);
        let error = OobIcmp::new(ty, code, own, src, dst, frame.body());
        let mut out = BytesMut::with_capacity(DATA_OVERHEAD + SEAL_OVERHEAD + error.encoded_len());
        if error.emit_sealed(63, key, nonce, &mut out).is_ok() && egress.enqueue(out.freeze(), 1) {
            t.icmp += 1;
        }
    }

    /// Holds a frame until the route for `net` (a /64's upper bits) appears, as the reference
    /// does; asks the control thread for that route with the first frame. Gives the frame
    /// back if over the caps.
    fn hold(&self, st: &mut State, net: u128, what: Waiting) -> Result<(), Waiting> {
        let q = st.pending.entry(net as u64).or_default();
        if q.is_empty() {
            let subnet = Subnet::v6_64(Ipv6Addr::from(net << 64));
            self.shared.inbox.need_route(subnet);
        }
        if q.len() >= MAX_PENDING_PER_SUBNET || st.pending_len >= MAX_PENDING {
            return Err(what);
        }
        q.push_back(Held {
            since: Instant::now(),
            what: what.compact(),
        });
        st.pending_len += 1;
        if st.pending_len == 1 {
            self.held.notify_one();
        }
        Ok(())
    }

    /// Sends (or opens) the held frames whose route has appeared; drops and counts those that
    /// waited too long.
    pub(crate) fn flush_pending(&self, now: Instant) {
        let shared = &*self.shared;
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let peers = shared.peers.load();
        let route_keys = shared.route_keys.load();
        let mut t = Tally::default();
        let mut pending = std::mem::take(&mut st.pending);
        pending.retain(|net, q| {
            let addr = Ipv6Addr::from(u128::from(*net) << 64);
            let next = shared.fib.lookup(addr);
            let known_key = route_keys.contains_key(&Subnet::v6_64(addr));
            while let Some(h) = q.front() {
                let ready = match h.what {
                    Waiting::ForUs(_) => known_key,
                    Waiting::Transit(_) => next.is_some(),
                    Waiting::FromTun(_) => next.is_some() && known_key,
                };
                let expired = now.duration_since(h.since) >= PENDING_TIMEOUT;
                if !ready && !expired {
                    break;
                }
                let Some(h) = q.pop_front() else { break };
                st.pending_len -= 1;
                match (ready, h.what) {
                    (false, Waiting::ForUs(_)) => t.local_unopened += 1,
                    (false, Waiting::Transit(_)) => t.no_route += 1,
                    // As the reference: a packet that waited in vain is answered with "no
                    // route".
                    (false, Waiting::FromTun(out)) => {
                        t.no_route += 1;
                        self.no_route_to_tun(st, &out, &mut t);
                    }
                    (true, Waiting::ForUs(frame)) => match self.open_for_us(st, frame, &mut t) {
                        Ok(true) => t.local_opened += 1,
                        _ => t.local_unopened += 1,
                    },
                    (true, Waiting::Transit(frame)) => match next.and_then(|p| peers.get(&p)) {
                        Some(egress) => match egress.enqueue(frame.into_inner().freeze(), 1) {
                            true => t.forwarded += 1,
                            false => t.queue_full += 1,
                        },
                        None => t.no_route += 1,
                    },
                    (true, Waiting::FromTun(out)) => {
                        let egress = next.and_then(|p| peers.get(&p));
                        let pk = route_keys.get(&Subnet::v6_64(addr));
                        match (egress, pk) {
                            (Some(egress), Some(pk)) => {
                                let frame = self.seal_outbound(st, *pk, out);
                                match frame.map(|f| egress.enqueue(f.freeze(), 1)) {
                                    Some(true) => t.forwarded += 1,
                                    Some(false) => t.queue_full += 1,
                                    None => t.no_route += 1,
                                }
                            }
                            _ => t.no_route += 1,
                        }
                    }
                }
            }
            !q.is_empty()
        });
        st.pending = pending;
        self.flush_tun(st, &mut t);
        t.publish(self.counters());
    }

    /// Opens a frame for this node and hands what it carries on: a message packet to the
    /// message task, an IPv6 packet or an error the overlay reports about one to the TUN
    /// device. Returns whether it opened, or gives the frame back if the source's key is not
    /// known yet (no route to the source).
    fn open_for_us(
        &self,
        st: &mut State,
        mut frame: DataFrame<BytesMut>,
        t: &mut Tally,
    ) -> Result<bool, DataFrame<BytesMut>> {
        let shared = &*self.shared;
        let Some(pk) = shared
            .route_keys
            .load()
            .get(&Subnet::v6_64(frame.src()))
            .copied()
        else {
            return Err(frame);
        };
        let key = st
            .keys
            .get(&shared.node.secret, pk, &shared.key_cache_evictions);
        let Ok((kind, payload)) = frame.open(key) else {
            return Ok(false);
        };
        match kind {
            UserDataKind::MESSAGE => {
                // The plaintext sits in place: the payload is a slice of the receive buffer.
                let payload = frame.into_inner().freeze().slice(payload);
                let msg = MsgCmd::Packet { src: pk, payload };
                if shared.inbox.messages.try_send(msg).is_err() {
                    self.counters().drop_message_queue.fetch_add(1, Relaxed);
                }
            }
            UserDataKind::L3 => {
                let hop = frame.hop_limit();
                self.deliver_l3(st, hop, frame.into_inner(), payload, t);
            }
            UserDataKind::OOB_ICMP => {
                let header = DataHeader::parse(&frame);
                let buf = frame.into_inner();
                self.deliver_oob_icmp(st, header, &buf[payload], t);
            }
            _ => {}
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_waits_for_a_route_lets_its_read_buffer_go() {
        let mut header = Vec::new();
        DataHeader {
            hop_limit: 9,
            src: "4a9::1".parse().unwrap(),
            dst: "5ff::2".parse().unwrap(),
        }
        .emit_frame(&[7; 100], &mut header)
        .unwrap();
        let mut read = BytesMut::with_capacity(256 * 1024);
        read.extend_from_slice(&header);
        read.extend_from_slice(&[0; 4096]);
        let base = read.as_ptr() as usize;
        let frame = DataFrame::new_checked(read.split_to(header.len())).unwrap();
        let Waiting::Transit(held) = Waiting::Transit(frame).compact() else {
            unreachable!()
        };
        let at = held.as_bytes().as_ptr() as usize;
        assert!(
            !(base..base + 256 * 1024).contains(&at),
            "a copy of its own"
        );
        assert_eq!(held.as_bytes(), &header[..]);
        assert!(held.into_inner().capacity() < 1024, "sized to the frame");
    }

    #[test]
    fn frames_split_from_one_read_rejoin_without_copying() {
        let mut buf = BytesMut::from(&[1u8; 600][..]);
        let start = buf.as_ptr();
        let mut a = buf.split_to(296);
        let b = buf.split_to(296);
        assert!(adjacent(&a, &b));
        a.unsplit(b);
        assert_eq!((a.as_ptr(), a.len()), (start, 592), "joined in place");
        assert!(!adjacent(&a, &BytesMut::from(&[0u8; 8][..])));
    }
}
