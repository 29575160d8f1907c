//! The IPv6 overlay: packets the TUN device gives us are sealed where they were read and
//! forwarded like transit frames; packets addressed to us are written to the device. What the
//! reference answers with an ICMPv6 error, we answer the same way, on the device.
//!
//! The device hands over TCP super-packets (up to 64 KiB, virtio-net header first). Each is cut
//! into segments straight into frame buffers, at [`SEALED_PAYLOAD_OFFSET`] with room for the
//! frame headers before and for tag and nonce after, so sealing writes around the segment and
//! encrypts it in place: it leaves for the peer link in the buffer it was cut into. Segments
//! of one turn lie side by side in one chunk, and consecutive ones for one egress link are
//! rejoined into a single queued run, as transit frames are.
//!
//! The other way, packets opened for us during one batch of frames are collected, and
//! consecutive segments of one TCP flow are written to the device as one super-packet (one
//! gathered write of a header and the payloads where they were opened); anything else is
//! written alone, its virtio-net header in the room the frame header leaves.

use std::net::Ipv6Addr;

use std::io::IoSlice;
use std::ops::Range;
use std::sync::atomic::Ordering::Relaxed;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyphae_proto::PeerId;
use hyphae_wire::data::{DataHeader, SEALED_FRAME_OVERHEAD, SEALED_PAYLOAD_OFFSET};
use hyphae_wire::icmp::{
    IPV6_HEADER_LEN, Icmpv6Code, Icmpv6Packet, Icmpv6Type, MAX_QUOTE, OobIcmp,
};
use hyphae_wire::identity::PublicKey;
use hyphae_wire::offload::{Segments, TcpMerge, VNET_HDR_LEN, VnetHdr};
use hyphae_wire::seal::{NONCE_LEN, TAG_LEN, UserDataKind};

use super::super::peers::{Full, PeerHandle};
use super::{Forwarder, MAX_RUN, Staged, State, Tally, Waiting, adjacent};

/// Largest packet cut from what the device reads: its MTU is 1400, but an operator may raise
/// it (up to a jumbo frame); a longer one is dropped.
const MAX_PACKET: usize = 9000;
/// One packet's room in a chunk.
const SLOT: usize = SEALED_FRAME_OVERHEAD + MAX_PACKET;
/// Largest read: a virtio-net header and a 64 KiB super-packet.
const MAX_READ: usize = VNET_HDR_LEN + u16::MAX as usize + IPV6_HEADER_LEN;
/// Packets cut in one turn before they are forwarded.
const READ_BATCH: usize = 128;
/// Receive chunk: packets are read into it one after another.
const CHUNK: usize = 256 * 1024;
/// How often a run waiting for room looks again without being told (a link that stopped
/// writing is closed by the control plane; the wait must see that).
const ROOM_RECHECK: Duration = Duration::from_millis(20);
/// Room after the payload of a frame laid out for sealing.
const TRAILER: usize = TAG_LEN + NONCE_LEN;

/// A packet opened for us, waiting in its frame buffer to be written to the device.
#[derive(Debug)]
pub(super) struct Delivered {
    buf: BytesMut,
    /// The IPv6 packet's place in `buf`, at least [`VNET_HDR_LEN`] bytes in.
    payload: Range<usize>,
}

/// A packet read from the device, in the frame buffer it will be sealed in.
#[derive(Debug)]
pub(super) struct Outbound {
    /// Room for the headers, the packet, room for tag and nonce.
    buf: BytesMut,
    /// The frame's header: the packet's addresses and its hop limit less our own hop.
    header: DataHeader,
}

impl Outbound {
    /// The same, in a buffer of its own size (see `Waiting::compact`).
    pub(super) fn compact(self) -> Self {
        Self {
            buf: BytesMut::from(&self.buf[..]),
            header: self.header,
        }
    }

    fn packet(&self) -> &[u8] {
        &self.buf[SEALED_PAYLOAD_OFFSET..self.buf.len() - TRAILER]
    }
}

/// Cuts what the device reads into packets, each in a frame buffer laid out for sealing.
struct Cutter {
    /// Where the packets are cut into, side by side.
    chunk: BytesMut,
    /// The packets of this turn.
    packets: Vec<BytesMut>,
    /// Reads or segments that were not valid, not yet counted.
    bad: u64,
}

impl Cutter {
    /// Cuts one read (a virtio-net header, then a packet or a TCP super-packet).
    fn packet(&mut self, read: &[u8], worker: usize) {
        let segments = VnetHdr::decode(read).and_then(|h| Segments::new(h, &read[VNET_HDR_LEN..]));
        let mut segments = match segments {
            Ok(s) => s,
            Err(e) => {
                self.bad += 1;
                tracing::debug!(worker, "TUN read: {e}");
                return;
            }
        };
        while let Some(len) = segments.next_len() {
            if len > MAX_PACKET {
                self.bad += 1;
                break;
            }
            if self.chunk.len() < SLOT {
                self.chunk = BytesMut::zeroed(CHUNK);
            }
            let room = &mut self.chunk[SEALED_PAYLOAD_OFFSET..SLOT - TRAILER];
            let Some(len) = segments.write_next(room) else {
                break;
            };
            self.packets
                .push(self.chunk.split_to(SEALED_FRAME_OVERHEAD + len));
        }
    }
}

/// `400::/7`, the overlay's addresses.
fn in_overlay(a: Ipv6Addr) -> bool {
    a.octets()[0] & 0xfe == 0x04
}

/// Link-local (`fe80::/10`).
fn link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

impl Forwarder {
    /// Reads this worker's queue of the TUN device until shutdown, forwarding what it reads
    /// a batch at a time. Returns at once without a device.
    ///
    /// Reads follow the queue's readiness under both drivers, a batch of `read`s per wake:
    /// reads as ring operations (one in flight, so a flow's packets stay in order) cost the
    /// nodes about 10 % more CPU per Gbit in `tunbench` for no more throughput. Writes to the
    /// device go through the ring under the io_uring driver (`flush_tun`).
    pub(crate) async fn serve_tun(self) {
        let Some(tun) = self.tun.clone() else { return };
        let mut shutdown = self.shared.shutdown.clone();
        let mut cut = Cutter {
            chunk: BytesMut::zeroed(CHUNK),
            packets: Vec::with_capacity(READ_BATCH + 64),
            bad: 0,
        };
        let mut scratch = vec![0u8; MAX_READ];
        loop {
            let mut ready = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                r = tun.readable() => match r {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(worker = self.worker, "TUN device: {e}");
                        return;
                    }
                },
            };
            while cut.packets.len() < READ_BATCH {
                match ready.read(&mut scratch) {
                    None => break,
                    Some(Ok(n)) => cut.packet(&scratch[..n], self.worker),
                    Some(Err(e)) => {
                        tracing::debug!(worker = self.worker, "TUN read: {e}");
                        break;
                    }
                }
            }
            if cut.bad > 0 {
                self.counters()
                    .drop_tun_invalid
                    .fetch_add(std::mem::take(&mut cut.bad), Relaxed);
            }
            let blocked = self.handle_tun(&mut cut.packets);
            // Runs whose link queue is full wait for room: this node's own traffic is slowed
            // down at the device (the host's TCP sees delay), not dropped (which it would see
            // as loss). The device is not read again until they are queued.
            for b in blocked {
                if !self.wait_for_room(b).await {
                    return;
                }
            }
            // Let the links write what was queued before reading more.
            tokio::task::yield_now().await;
        }
    }

    /// Queues a run that found its link's queue full once there is room, waiting as long as
    /// it takes; false at shutdown. A link that goes away drops it (counted as no route).
    async fn wait_for_room(&self, b: Blocked) -> bool {
        let Blocked {
            peer,
            mut run,
            frames,
        } = b;
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            let drained = peer.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            match peer.try_enqueue(run, frames) {
                Ok(()) => {
                    self.counters()
                        .forwarded
                        .fetch_add(u64::from(frames), Relaxed);
                    return true;
                }
                Err(Full::Closed) => {
                    self.counters()
                        .drop_no_route
                        .fetch_add(u64::from(frames), Relaxed);
                    return true;
                }
                Err(Full::Queue(r)) => run = r,
            }
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return false,
                () = drained => {}
                // A link that stops writing (and is closed later) must not hold the device.
                () = tokio::time::sleep(ROOM_RECHECK) => {}
            }
        }
    }

    /// Forwards the packets of one read turn (each laid out in its frame buffer), leaving
    /// `packets` empty; returns the runs whose link's queue was full, in order.
    fn handle_tun(&self, packets: &mut Vec<BytesMut>) -> Vec<Blocked> {
        let shared = &*self.shared;
        let node = &shared.node;
        let peers = shared.peers.load();
        let route_keys = shared.route_keys.load();
        let mut t = Tally::default();
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let mut staged: Option<Staged> = None;
        let mut blocked: Vec<Blocked> = Vec::new();
        let mut last: Option<(u128, Option<(PeerId, PublicKey)>)> = None;
        // The forwarding table, loaded once per batch at its first lookup.
        let mut fib = None;
        for buf in packets.drain(..) {
            t.tun_read += 1;
            let packet = &buf[SEALED_PAYLOAD_OFFSET..buf.len() - TRAILER];
            if packet.len() < IPV6_HEADER_LEN || packet[0] >> 4 != 6 {
                t.tun_invalid += 1;
                continue;
            }
            let hop = packet[7];
            let src = ipv6_at(packet, 8);
            let dst = ipv6_at(packet, 24);
            // The kernel's own chatter on the device (router solicitations, MLD reports) is
            // not overlay traffic.
            if dst.is_multicast() || link_local(src) || src.is_unspecified() || src.is_multicast() {
                t.tun_invalid += 1;
                continue;
            }
            if !node.subnet.contains_ip(src.into()) {
                t.tun_foreign += 1;
                let kind = (
                    Icmpv6Type::DEST_UNREACHABLE,
                    Icmpv6Code::SOURCE_POLICY_FAILED,
                );
                self.icmp_to_tun(st, kind, src, packet, &mut t);
                continue;
            }
            // Nothing on this host owns that address of our /64 (the reference answers the
            // same).
            if node.subnet.contains_ip(dst.into()) {
                let kind = (
                    Icmpv6Type::DEST_UNREACHABLE,
                    Icmpv6Code::ADDRESS_UNREACHABLE,
                );
                self.icmp_to_tun(st, kind, src, packet, &mut t);
                continue;
            }
            if hop < 2 {
                t.hop_limit += 1;
                let kind = (Icmpv6Type::TIME_EXCEEDED, Icmpv6Code::HOP_LIMIT_EXCEEDED);
                self.icmp_to_tun(st, kind, src, packet, &mut t);
                continue;
            }
            if !in_overlay(dst) {
                t.no_route += 1;
                let kind = (Icmpv6Type::DEST_UNREACHABLE, Icmpv6Code::NO_ROUTE);
                self.icmp_to_tun(st, kind, src, packet, &mut t);
                continue;
            }
            // Our own hop counts, as the reference counts it.
            let header = DataHeader {
                hop_limit: hop - 1,
                src,
                dst,
            };
            let out = Outbound { buf, header };
            let net = u128::from(dst) >> 64;
            let route = match last {
                Some((n, r)) if n == net => r,
                _ => {
                    let pk = route_keys.get(&hyphae_wire::Subnet::v6_64(dst)).copied();
                    let fib = fib.get_or_insert_with(|| shared.fib.snapshot());
                    let r = fib.lookup(dst).zip(pk);
                    if r.is_some() {
                        st.used(shared, net);
                    }
                    last = Some((net, r));
                    r
                }
            };
            let Some((next, pk)) = route else {
                // Held while the route is looked for; when the queue is full, "no route" at
                // once, as the reference.
                if let Err(Waiting::FromTun(out)) = self.hold(st, net, Waiting::FromTun(out)) {
                    t.no_route += 1;
                    self.no_route_to_tun(st, &out, &mut t);
                }
                continue;
            };
            let Some(frame) = self.seal_outbound(st, pk, out) else {
                t.no_route += 1;
                continue;
            };
            match &mut staged {
                Some(s)
                    if s.peer == next
                        && s.run.len() + frame.len() <= MAX_RUN
                        && adjacent(&s.run, &frame) =>
                {
                    s.run.unsplit(frame);
                    s.frames += 1;
                }
                _ => {
                    if let Some(s) = staged.take() {
                        send_or_block(s, &peers, &mut blocked, &mut t);
                    }
                    staged = Some(Staged {
                        peer: next,
                        run: frame,
                        frames: 1,
                    });
                }
            }
        }
        if let Some(s) = staged.take() {
            send_or_block(s, &peers, &mut blocked, &mut t);
        }
        t.publish(self.counters());
        blocked
    }

    /// Seals a packet from the device for `pk`'s node where it lies. `None` only if the
    /// system has no randomness for a nonce.
    pub(super) fn seal_outbound(
        &self,
        st: &mut State,
        pk: PublicKey,
        out: Outbound,
    ) -> Option<BytesMut> {
        let shared = &*self.shared;
        let Outbound { mut buf, header } = out;
        let key = st
            .keys
            .get(&shared.node.secret, pk, &shared.key_cache_evictions);
        let nonce = st.nonces.next()?;
        header
            .seal_in_place(key, nonce, UserDataKind::L3, &mut buf)
            .ok()?;
        Some(buf)
    }

    /// Answers a packet from the device that waited for a route in vain (or found the queue
    /// full) with "no route", as the reference.
    pub(super) fn no_route_to_tun(&self, st: &mut State, out: &Outbound, t: &mut Tally) {
        let kind = (Icmpv6Type::DEST_UNREACHABLE, Icmpv6Code::NO_ROUTE);
        self.icmp_to_tun(st, kind, out.header.src, out.packet(), t);
    }

    /// Writes an ICMPv6 error of `kind` about `invoking` from this node to `to` (on this
    /// host) on the device, within the worker's ICMP budget.
    fn icmp_to_tun(
        &self,
        st: &mut State,
        (ty, code): (Icmpv6Type, Icmpv6Code),
        to: Ipv6Addr,
        invoking: &[u8],
        t: &mut Tally,
    ) {
        if !st.icmp_allowed() {
            return;
        }
        let error = Icmpv6Packet::error(self.shared.node.address, to, ty, code, invoking);
        let mut out = Vec::with_capacity(error.encoded_len());
        if error.encode(&mut out).is_ok() && self.write_tun(&out, t) {
            t.tun_icmp += 1;
        }
    }

    /// Queues a packet addressed to us (at `payload` in the opened frame `buf`) for the
    /// device, with the hop limit the frame arrived with (as the reference); the batch goes
    /// out with [`Self::flush_tun`]. Without a device it is dropped (counted as opened).
    pub(super) fn deliver_l3(
        &self,
        st: &mut State,
        hop: u8,
        mut buf: BytesMut,
        payload: Range<usize>,
        t: &mut Tally,
    ) {
        if self.tun.is_none() {
            return;
        }
        let packet = &mut buf[payload.clone()];
        if packet.len() < IPV6_HEADER_LEN || packet[0] >> 4 != 6 {
            t.tun_invalid += 1;
            return;
        }
        packet[7] = hop;
        st.tun_out.push(Delivered { buf, payload });
    }

    /// Writes the packets [`Self::deliver_l3`] queued: consecutive segments of one TCP flow
    /// as one super-packet, the rest one by one.
    pub(super) fn flush_tun(&self, st: &mut State, t: &mut Tally) {
        let Some(tun) = &self.tun else { return };
        let mut out = std::mem::take(&mut st.tun_out);
        let mut i = 0;
        while i < out.len() {
            let first = &out[i].buf[out[i].payload.clone()];
            let mut end = i + 1;
            let mut merge = TcpMerge::start(first);
            if let Some(m) = &mut merge {
                while end < out.len() && m.push(first, &out[end].buf[out[end].payload.clone()]) {
                    end += 1;
                }
            }
            let packets = (end - i) as u64;
            let mut head = [0u8; VNET_HDR_LEN + 120];
            let merged = match &merge {
                Some(m) if end - i > 1 => Some((m, m.headers(first, &mut head))),
                _ => None,
            };
            if merged.is_none() {
                // The frame's headers lie before the payload: the (zero) virtio-net header
                // goes there.
                let d = &mut out[i];
                let start = d.payload.start - VNET_HDR_LEN;
                d.buf[start..d.payload.start].fill(0);
            }
            // With the ring, the write goes with the turn's other operations and its buffers
            // go with it; its result is counted when it completes.
            if let Some(ring) = &self.ring {
                let bufs: Vec<Bytes> = match merged {
                    Some((m, n)) => std::iter::once(Bytes::copy_from_slice(&head[..n]))
                        .chain(out[i..end].iter_mut().map(|d| {
                            let b = std::mem::take(&mut d.buf).freeze();
                            b.slice_ref(m.payload(&b[d.payload.clone()]))
                        }))
                        .collect(),
                    None => {
                        let d = &mut out[i];
                        let b = std::mem::take(&mut d.buf).freeze();
                        vec![b.slice(d.payload.start - VNET_HDR_LEN..d.payload.end)]
                    }
                };
                if let Err(bufs) = ring.write_detached(tun.clone(), bufs, packets) {
                    let parts: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
                    self.count_tun_write(tun.write(&parts), packets, t);
                }
                i = end;
                continue;
            }
            let r = match merged {
                Some((m, n)) => {
                    let mut parts = Vec::with_capacity(end - i + 1);
                    parts.push(IoSlice::new(&head[..n]));
                    parts.extend(
                        out[i..end]
                            .iter()
                            .map(|d| IoSlice::new(m.payload(&d.buf[d.payload.clone()]))),
                    );
                    tun.write(&parts)
                }
                None => {
                    let d = &out[i];
                    tun.write(&[IoSlice::new(
                        &d.buf[d.payload.start - VNET_HDR_LEN..d.payload.end],
                    )])
                }
            };
            self.count_tun_write(r, packets, t);
            i = end;
        }
        out.clear();
        st.tun_out = out;
    }

    /// Counts a write of `packets` packets to the device.
    fn count_tun_write(&self, r: std::io::Result<()>, packets: u64, t: &mut Tally) {
        match r {
            Ok(()) => t.tun_written += packets,
            Err(e) => {
                t.tun_write_failed += packets;
                tracing::debug!(worker = self.worker, "TUN write: {e}");
            }
        }
    }

    /// Turns an error the overlay reports about a packet we sent (out-of-band ICMP: the
    /// reporting node cannot read our packet, so it quotes it sealed) back into the ICMPv6
    /// error the sender on this host understands: the quote is opened with the key we share
    /// with the packet's destination, and the error goes from the reporting node to us.
    pub(super) fn deliver_oob_icmp(
        &self,
        st: &mut State,
        frame: DataHeader,
        payload: &[u8],
        t: &mut Tally,
    ) {
        if self.tun.is_none() {
            return;
        }
        let Ok(oob) = OobIcmp::decode(payload) else {
            t.tun_invalid += 1;
            return;
        };
        let shared = &*self.shared;
        let subnet = hyphae_wire::Subnet::v6_64(oob.orig_dst);
        let Some(pk) = shared.route_keys.load().get(&subnet).copied() else {
            return;
        };
        let key = st
            .keys
            .get(&shared.node.secret, pk, &shared.key_cache_evictions);
        let mut quote = oob.packet.body.to_vec();
        let Ok((UserDataKind::L3, original)) = key.open(&mut quote) else {
            t.tun_invalid += 1;
            return;
        };
        let error = Icmpv6Packet {
            src: frame.src,
            dst: frame.dst,
            hop_limit: frame.hop_limit,
            body: &original[..original.len().min(MAX_QUOTE)],
            ..oob.packet
        };
        let mut out = Vec::with_capacity(error.encoded_len());
        if error.encode(&mut out).is_ok() && self.write_tun(&out, t) {
            t.tun_icmp += 1;
        }
    }

    /// Writes one packet to the device on its own; whether it was taken.
    fn write_tun(&self, packet: &[u8], t: &mut Tally) -> bool {
        let Some(tun) = &self.tun else { return false };
        let plain = [0u8; VNET_HDR_LEN];
        match tun.write(&[IoSlice::new(&plain), IoSlice::new(packet)]) {
            Ok(()) => {
                t.tun_written += 1;
                true
            }
            Err(e) => {
                t.tun_write_failed += 1;
                tracing::debug!(worker = self.worker, "TUN write: {e}");
                false
            }
        }
    }
}

/// A run of sealed packets for a link whose queue was full.
pub(super) struct Blocked {
    peer: Arc<PeerHandle>,
    run: Bytes,
    frames: u32,
}

/// Queues a run, or sets it aside if its link's queue is full (or another run for that link
/// already waits: order within the link is kept).
fn send_or_block(
    s: Staged,
    peers: &HashMap<PeerId, Arc<PeerHandle>>,
    blocked: &mut Vec<Blocked>,
    t: &mut Tally,
) {
    let n = u64::from(s.frames);
    let Some(peer) = peers.get(&s.peer) else {
        t.no_route += n;
        return;
    };
    let run = s.run.freeze();
    if blocked.iter().any(|b| Arc::ptr_eq(&b.peer, peer)) {
        blocked.push(Blocked {
            peer: peer.clone(),
            run,
            frames: s.frames,
        });
        return;
    }
    match peer.try_enqueue(run, s.frames) {
        Ok(()) => t.forwarded += n,
        Err(Full::Queue(run)) => blocked.push(Blocked {
            peer: peer.clone(),
            run,
            frames: s.frames,
        }),
        Err(Full::Closed) => t.no_route += n,
    }
}

/// The IPv6 address at `at` in a packet at least `at + 16` bytes long.
fn ipv6_at(packet: &[u8], at: usize) -> Ipv6Addr {
    let mut a = [0; 16];
    a.copy_from_slice(&packet[at..at + 16]);
    Ipv6Addr::from(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_and_link_local_ranges() {
        for a in ["400::1", "5ff:ffff::1", "4a9:1::2"] {
            assert!(in_overlay(a.parse().unwrap()), "{a}");
        }
        for a in ["3ff::1", "600::1", "2001:db8::1", "fe80::1"] {
            assert!(!in_overlay(a.parse().unwrap()), "{a}");
        }
        assert!(link_local("fe80::1".parse().unwrap()));
        assert!(link_local("febf::1".parse().unwrap()));
        assert!(!link_local("fec0::1".parse().unwrap()));
    }
}
