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
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hyphae_wire::Subnet;
use hyphae_wire::data::DataFrame;
use hyphae_wire::deframer::Frame;
use hyphae_wire::identity::PublicKey;
use hyphae_wire::seal::{SealingKey, UserDataKind};

use super::messages::MsgCmd;
use super::{ControlMsg, PeerHandle, Shared, WorkerCounters, icmp};
use hyphae_proto::hash::SeededState;

/// Most source or destination addresses a worker keeps packet counts for.
const MAX_STATS_ENTRIES: usize = 16_384;
/// Most sealing keys a worker caches.
const MAX_KEYS: usize = 4096;
/// Frames held per destination /64 while its route is looked for (the reference: 100 inbound).
const MAX_PENDING_PER_SUBNET: usize = 100;
/// Frames held per worker while routes are looked for.
const MAX_PENDING: usize = 10_000;
/// How long a frame may wait for its route (the reference's route query timeout).
pub(crate) const PENDING_TIMEOUT: Duration = Duration::from_secs(15);

/// Packets and bytes by address.
pub(crate) type AddrCounts = HashMap<Ipv6Addr, (u64, u64), SeededState>;

/// Per-worker state that only its own thread touches.
#[derive(Debug)]
pub(crate) struct WorkerLocal {
    keys: HashMap<PublicKey, SealingKey>,
    /// Packets and bytes by source address.
    pub(crate) by_source: AddrCounts,
    /// Packets and bytes by destination address.
    pub(crate) by_destination: AddrCounts,
    /// Frames waiting for a route, by the /64 (its upper 64 bits) whose route they need: the
    /// destination's to be forwarded, or, for frames to this node, the source's (for its key).
    pending: HashMap<u64, VecDeque<Held>, SeededState>,
    pending_len: usize,
    /// Woken when the first frame is held.
    pub(crate) pending_wake: Rc<tokio::sync::Notify>,
}

/// A frame waiting for a route.
#[derive(Debug)]
struct Held {
    since: Instant,
    frame: DataFrame<BytesMut>,
    local: bool,
}

impl WorkerLocal {
    pub(crate) fn with_seed(seed: u64) -> Self {
        Self {
            keys: HashMap::new(),
            by_source: HashMap::with_hasher(SeededState::new(seed)),
            by_destination: HashMap::with_hasher(SeededState::new(seed.rotate_left(32))),
            pending: HashMap::with_hasher(SeededState::new(seed.rotate_left(16))),
            pending_len: 0,
            pending_wake: Rc::new(tokio::sync::Notify::new()),
        }
    }

    /// Whether frames are waiting for routes.
    pub(crate) fn has_pending(&self) -> bool {
        self.pending_len > 0
    }
}

pub(crate) type Local = Rc<RefCell<WorkerLocal>>;

/// A run of frames with the same address, counted once when the address changes.
#[derive(Default)]
struct Run {
    addr: Option<Ipv6Addr>,
    frames: u64,
    bytes: u64,
}

impl Run {
    fn add(&mut self, map: &mut AddrCounts, addr: Ipv6Addr, len: usize) {
        if self.addr != Some(addr) {
            self.flush(map);
            self.addr = Some(addr);
        }
        self.frames += 1;
        self.bytes += len as u64;
    }

    fn flush(&mut self, map: &mut AddrCounts) {
        let Some(a) = self.addr.take() else { return };
        if let Some(e) = map.get_mut(&a) {
            e.0 += self.frames;
            e.1 += self.bytes;
        } else if map.len() < MAX_STATS_ENTRIES {
            map.insert(a, (self.frames, self.bytes));
        }
        (self.frames, self.bytes) = (0, 0);
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
    control_full: u64,
    icmp: u64,
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
        add(&c.drop_control_queue, self.control_full);
        add(&c.icmp_sent, self.icmp);
    }
}

/// Longest run of frames queued as one slice.
const MAX_RUN: usize = 64 * 1024;

/// Frames for one egress peer, contiguous in the receive buffer.
struct Staged {
    peer: hyphae_proto::PeerId,
    run: BytesMut,
    frames: u32,
}

impl Staged {
    fn send(
        self,
        peers: &HashMap<hyphae_proto::PeerId, std::sync::Arc<PeerHandle>>,
        t: &mut Tally,
    ) {
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

/// Handles every frame in `frames` (from one read of `from`), leaving it empty.
pub(crate) fn handle_frames(
    shared: &Shared,
    counters: &WorkerCounters,
    local: &Local,
    from: &PeerHandle,
    frames: &mut Vec<Frame<BytesMut>>,
) {
    let peers = shared.peers.load();
    let mut t = Tally::default();
    let mut l = local.borrow_mut();
    let (mut src_run, mut dst_run) = (Run::default(), Run::default());
    let mut staged: Option<Staged> = None;
    // The last route looked up, reused while the destination /64 stays the same.
    let mut last: Option<(u128, Option<hyphae_proto::PeerId>)> = None;
    for f in frames.drain(..) {
        let mut frame = match f {
            Frame::Data(d) => d,
            Frame::Control(tlv) => {
                if shared
                    .ctl
                    .try_send(ControlMsg::Tlv { peer: from.id, tlv })
                    .is_err()
                {
                    t.control_full += 1;
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
        let WorkerLocal {
            by_source,
            by_destination,
            keys,
            ..
        } = &mut *l;
        src_run.add(by_source, src, len);
        dst_run.add(by_destination, dst, len);
        // As the reference: the hop limit is checked before anything else, local delivery
        // included, and an expired frame is answered with a time-exceeded error.
        let hop = frame.hop_limit();
        if hop < 2 {
            t.hop_limit += 1;
            send_icmp(shared, keys, &peers, icmp::TIME_EXCEEDED, &frame, &mut t);
            continue;
        }
        frame.set_hop_limit(hop - 1);
        if shared.node.subnet.contains_ip(dst.into()) {
            t.local += 1;
            match open_local(shared, keys, frame) {
                Ok(true) => t.local_opened += 1,
                Ok(false) => t.local_unopened += 1,
                // The source's key is not known yet: hold the frame while its route is found.
                Err(frame) => {
                    if hold(shared, &mut l, u128::from(src) >> 64, frame, true).is_err() {
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
                let hop = shared.fib.lookup(dst);
                last = Some((net, hop));
                hop
            }
        };
        let Some(next) = next else {
            // Held while the route is looked for; when the queue is full, the reference
            // answers with "no route" at once.
            if let Err(frame) = hold(shared, &mut l, net, frame, false) {
                t.no_route += 1;
                let WorkerLocal { keys, .. } = &mut *l;
                send_icmp(shared, keys, &peers, icmp::DEST_UNREACHABLE, &frame, &mut t);
            }
            continue;
        };
        if next == from.id {
            t.looped += 1;
            continue;
        }
        // Consecutive frames of one read for one egress peer sit side by side in the receive
        // buffer: rejoin them (no copy) into one run, queued and written as one slice.
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
    src_run.flush(&mut l.by_source);
    dst_run.flush(&mut l.by_destination);
    t.publish(counters);
}

/// Most out-of-band ICMP errors a worker sends per second: they cost a seal each, and a peer
/// must not be able to make us spend unbounded work on its bad frames.
const ICMP_PER_SECOND: u32 = 200;

/// Sends an out-of-band ICMP error about `frame` back to its source, as the reference does
/// (silently nothing if the source's key is not known, or over the rate limit).
fn send_icmp(
    shared: &Shared,
    keys: &mut HashMap<PublicKey, SealingKey>,
    peers: &HashMap<hyphae_proto::PeerId, std::sync::Arc<PeerHandle>>,
    icmp_type: u8,
    frame: &DataFrame<BytesMut>,
    t: &mut Tally,
) {
    thread_local! {
        static BUDGET: std::cell::Cell<(Option<Instant>, u32)> = const { std::cell::Cell::new((None, 0)) };
    }
    let now = Instant::now();
    let allowed = BUDGET.with(|b| {
        let (since, n) = b.get();
        match since {
            Some(s) if now.duration_since(s) < Duration::from_secs(1) => {
                b.set((Some(s), n + 1));
                n < ICMP_PER_SECOND
            }
            _ => {
                b.set((Some(now), 1));
                true
            }
        }
    });
    let (src, dst) = (frame.src(), frame.dst());
    if !allowed || shared.node.subnet.contains_ip(src.into()) {
        return;
    }
    let Some(pk) = shared.keys.load().get(&Subnet::v6_64(src)).copied() else {
        return;
    };
    let Some(egress) = shared.fib.lookup(src).and_then(|p| peers.get(&p)) else {
        return;
    };
    let Ok(nonce) = hyphae_wire::seal::random_nonce() else {
        return;
    };
    if keys.len() >= MAX_KEYS && !keys.contains_key(&pk) {
        keys.clear();
    }
    let key = keys
        .entry(pk)
        .or_insert_with(|| SealingKey::new(&shared.node.secret.shared_secret(&pk)));
    let own = shared.node.address;
    let err = icmp::error_frame(key, nonce, icmp_type, own, src, dst, frame.body());
    if egress.enqueue(err.freeze(), 1) {
        t.icmp += 1;
    }
}

/// Holds a frame until the route for `net` (a /64's upper bits) appears, as the reference
/// does; asks the control thread for that route with the first frame. False if over the caps.
fn hold(
    shared: &Shared,
    l: &mut WorkerLocal,
    net: u128,
    frame: DataFrame<BytesMut>,
    local: bool,
) -> Result<(), DataFrame<BytesMut>> {
    let subnet = Subnet::v6_64(Ipv6Addr::from(net << 64));
    let q = l.pending.entry(net as u64).or_default();
    if q.is_empty() {
        let _ = shared.ctl.try_send(ControlMsg::NeedRoute(subnet));
    }
    if q.len() >= MAX_PENDING_PER_SUBNET || l.pending_len >= MAX_PENDING {
        return Err(frame);
    }
    q.push_back(Held {
        since: Instant::now(),
        frame,
        local,
    });
    l.pending_len += 1;
    if l.pending_len == 1 {
        l.pending_wake.notify_one();
    }
    Ok(())
}

/// Sends (or opens) the held frames whose route has appeared; drops and counts those that
/// waited too long. Called by the worker while frames are held.
pub(crate) fn flush_pending(
    shared: &Shared,
    counters: &WorkerCounters,
    local: &Local,
    now: Instant,
) {
    let mut l = local.borrow_mut();
    let WorkerLocal {
        pending,
        pending_len,
        keys,
        ..
    } = &mut *l;
    let peers = shared.peers.load();
    let mut t = Tally::default();
    pending.retain(|net, q| {
        let subnet = Subnet::v6_64(Ipv6Addr::from(u128::from(*net) << 64));
        let next = shared.fib.lookup(Ipv6Addr::from(u128::from(*net) << 64));
        let known_key = shared.keys.load().contains_key(&subnet);
        while let Some(h) = q.front() {
            let ready = if h.local { known_key } else { next.is_some() };
            let expired = now.duration_since(h.since) >= PENDING_TIMEOUT;
            if !ready && !expired {
                break;
            }
            let Some(h) = q.pop_front() else { break };
            *pending_len -= 1;
            match (ready, h.local) {
                (false, true) => t.local_unopened += 1,
                (false, false) => t.no_route += 1,
                (true, true) => match open_local(shared, keys, h.frame) {
                    Ok(true) => t.local_opened += 1,
                    _ => t.local_unopened += 1,
                },
                (true, false) => match next.and_then(|p| peers.get(&p)) {
                    Some(egress) => match egress.enqueue(h.frame.into_inner().freeze(), 1) {
                        true => t.forwarded += 1,
                        false => t.queue_full += 1,
                    },
                    None => t.no_route += 1,
                },
            }
        }
        !q.is_empty()
    });
    t.publish(counters);
}

/// Opens a frame for this node and hands a message packet to the message task (other
/// kinds have no consumer yet: TUN comes later). Returns whether it opened, or gives the frame
/// back if the source's key is not known yet (no route to the source).
fn open_local(
    shared: &Shared,
    keys: &mut HashMap<PublicKey, SealingKey>,
    mut frame: DataFrame<BytesMut>,
) -> Result<bool, DataFrame<BytesMut>> {
    let src_subnet = Subnet::v6_64(frame.src());
    let Some(pk) = shared.keys.load().get(&src_subnet).copied() else {
        return Err(frame);
    };
    if keys.len() >= MAX_KEYS && !keys.contains_key(&pk) {
        keys.clear();
    }
    let key = keys
        .entry(pk)
        .or_insert_with(|| SealingKey::new(&shared.node.secret.shared_secret(&pk)));
    let body_len = frame.body().len();
    let Ok((kind, _)) = key.open(frame.body_mut()) else {
        return Ok(false);
    };
    if kind == UserDataKind::MESSAGE {
        // The plaintext sits in place: the payload is a slice of the receive buffer.
        let start = hyphae_wire::data::DATA_OVERHEAD + hyphae_wire::seal::USER_HEADER_LEN;
        let end = hyphae_wire::data::DATA_OVERHEAD + body_len - TAG_AND_NONCE;
        let payload = frame.into_inner().freeze().slice(start..end);
        let _ = shared.msg.try_send(MsgCmd::Packet { src: pk, payload });
    }
    Ok(true)
}

/// Tag and nonce after the ciphertext of a sealed body.
const TAG_AND_NONCE: usize = hyphae_wire::seal::TAG_LEN + hyphae_wire::seal::NONCE_LEN;

#[cfg(test)]
mod tests {
    use super::*;

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
