//! What a worker does with each frame it reads: control TLVs go to the control thread, data
//! frames are forwarded in place or delivered locally.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::BytesMut;
use hyphae_wire::Subnet;
use hyphae_wire::data::DataFrame;
use hyphae_wire::deframer::Frame;
use hyphae_wire::identity::PublicKey;
use hyphae_wire::seal::SealingKey;
use tokio::sync::mpsc::error::TrySendError;

use super::{ControlMsg, PeerHandle, Shared, WorkerCounters};

/// Most source or destination addresses a worker keeps packet counts for.
const MAX_STATS_ENTRIES: usize = 16_384;
/// Most sealing keys a worker caches.
const MAX_KEYS: usize = 4096;

/// Per-worker state that only its own thread touches.
#[derive(Debug, Default)]
pub(crate) struct WorkerLocal {
    keys: HashMap<PublicKey, SealingKey>,
    /// Packets and bytes by source address.
    pub(crate) by_source: HashMap<Ipv6Addr, (u64, u64)>,
    /// Packets and bytes by destination address.
    pub(crate) by_destination: HashMap<Ipv6Addr, (u64, u64)>,
}

pub(crate) type Local = Rc<RefCell<WorkerLocal>>;

/// Handles one deframed frame from `from`. Returns false if the link must close.
pub(crate) fn handle_frame(
    shared: &Shared,
    counters: &WorkerCounters,
    local: &Local,
    from: &PeerHandle,
    frame: Frame<BytesMut>,
) {
    match frame {
        Frame::Control(tlv) => match shared.ctl.try_send(ControlMsg::Tlv { peer: from.id, tlv }) {
            Ok(()) => {}
            Err(_) => {
                counters.drop_control_queue.fetch_add(1, Relaxed);
            }
        },
        Frame::Skipped(s) => {
            counters.skipped_control.fetch_add(1, Relaxed);
            tracing::debug!(peer = from.id.0, ?s, "skipped control frame");
        }
        Frame::Data(d) => handle_data(shared, counters, local, from, d),
    }
}

fn count(map: &mut HashMap<Ipv6Addr, (u64, u64)>, ip: Ipv6Addr, len: usize) {
    if let Some(e) = map.get_mut(&ip) {
        e.0 += 1;
        e.1 += len as u64;
    } else if map.len() < MAX_STATS_ENTRIES {
        map.insert(ip, (1, len as u64));
    }
}

/// Forwards or delivers one data frame.
pub(crate) fn handle_data(
    shared: &Shared,
    counters: &WorkerCounters,
    local: &Local,
    from: &PeerHandle,
    mut frame: DataFrame<BytesMut>,
) {
    let (src, dst, len) = (frame.src(), frame.dst(), frame.as_bytes().len());
    {
        let mut l = local.borrow_mut();
        count(&mut l.by_source, src, len);
        count(&mut l.by_destination, dst, len);
    }
    if shared.node.subnet.contains_ip(dst.into()) {
        counters.local.fetch_add(1, Relaxed);
        deliver_local(shared, counters, local, &mut frame);
        return;
    }
    let hop = frame.hop_limit();
    if hop < 2 {
        counters.drop_hop_limit.fetch_add(1, Relaxed);
        return;
    }
    frame.set_hop_limit(hop - 1);
    let Some(next) = shared.fib.lookup(dst) else {
        counters.drop_no_route.fetch_add(1, Relaxed);
        let _ = shared
            .ctl
            .try_send(ControlMsg::NeedRoute(Subnet::v6_64(dst)));
        return;
    };
    if next == from.id {
        counters.drop_loop.fetch_add(1, Relaxed);
        return;
    }
    let peers = shared.peers.load();
    let Some(egress) = peers.get(&next) else {
        counters.drop_no_route.fetch_add(1, Relaxed);
        return;
    };
    match egress.data_tx.try_send(frame.into_inner().freeze()) {
        Ok(()) => {
            counters.forwarded.fetch_add(1, Relaxed);
        }
        Err(TrySendError::Full(_)) => {
            counters.drop_queue_full.fetch_add(1, Relaxed);
            egress.counters.dropped_queue_full.fetch_add(1, Relaxed);
        }
        Err(TrySendError::Closed(_)) => {
            counters.drop_no_route.fetch_add(1, Relaxed);
        }
    }
}

/// Opens a frame for this node. The message subsystem is not built yet: an authenticated
/// frame is counted and dropped.
fn deliver_local(
    shared: &Shared,
    counters: &WorkerCounters,
    local: &Local,
    frame: &mut DataFrame<BytesMut>,
) {
    let src_subnet = Subnet::v6_64(frame.src());
    let Some(pk) = shared.keys.load().get(&src_subnet).copied() else {
        counters.local_unopened.fetch_add(1, Relaxed);
        let _ = shared.ctl.try_send(ControlMsg::NeedRoute(src_subnet));
        return;
    };
    let mut l = local.borrow_mut();
    if l.keys.len() >= MAX_KEYS && !l.keys.contains_key(&pk) {
        l.keys.clear();
    }
    let key = l
        .keys
        .entry(pk)
        .or_insert_with(|| SealingKey::new(&shared.node.secret.shared_secret(&pk)));
    match key.open(frame.body_mut()) {
        Ok(_) => counters.local_opened.fetch_add(1, Relaxed),
        Err(_) => counters.local_unopened.fetch_add(1, Relaxed),
    };
}
