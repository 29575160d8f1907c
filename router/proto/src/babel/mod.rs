//! The Babel routing state machine as stock mycelium 0.7.10 runs it (WIRE.md section 3;
//! RFC 8966 for the parts mycelium keeps).
//!
//! [`Router`] is sans-IO: see the crate docs for the calling contract. In short, after each
//! `handle_*` call drain [`Router::poll_transmit`], [`Router::poll_fib_change`] and
//! [`Router::poll_event`], then arm one timer at [`Router::poll_timeout`] and call
//! [`Router::handle_timeout`] when it fires.
//!
//! # Where this differs from the reference (all invisible to stock peers on the wire)
//!
//! * A Hello goes out at link-up too (not only on the global timer), so the first IHU
//!   measures the link at once. The Hello interval is configurable ([`Config`]) and the
//!   dead-peer threshold follows it; a closed connection ([`Router::handle_peer_down`]) is
//!   a dead peer at once.
//! * A changed link cost takes effect when the next Update for a route through that link is
//!   handled (selection reruns on every Update), rather than rescanning the table on every
//!   IHU: no update storm when costs move.
//! * An unfeasible Update from a neighbour with a *different* router id than its current
//!   entry is stored as unselectable (RFC 8966 3.5.4) instead of ignored, so that two
//!   incarnations of a restarted node cannot form a loop.
//! * A rate-limited seqno bump is deferred to the end of the 4 s window, not dropped.
//! * A retraction from a neighbour while we still have another route answers that neighbour
//!   with our route (RFC 8966 3.8.2.1), which speeds repair after a cut.
//! * "Only fallback routes ⇒ silent" for RouteRequests counts finite entries only; retracted
//!   entries in their 6 s hold do not silence a request.
//! * Route-expiry timers are lazy: a refresh that pushes expiry later moves no timer; the old
//!   deadline re-arms itself when it fires.
//!
//! Module map: [`neighbour`] (Hello/IHU, link cost), `source` (feasibility), `routes` (route
//! table and selection), `requests` (RouteRequest/SeqnoRequest dedup), `timers` (the one
//! deadline structure), `handlers` (what each TLV does).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use hyphae_wire::babel::{Ihu, RouteRequest, Tlv, Update};
use hyphae_wire::{Interval, Metric, RouterId, SeqNo, Subnet};

use crate::fib::FibChange;
use crate::hash::SeededState;
use crate::peer::PeerId;

mod handlers;
pub mod neighbour;
mod requests;
mod routes;
mod source;
mod timers;

pub use neighbour::{ANSWERS_PER_SECOND, FORWARDS_PER_SECOND, LinkKind};
pub use requests::{ROUTE_QUERY_TIMEOUT, SEQNO_DEDUP_TTL};
pub use routes::SIGNIFICANT_METRIC_IMPROVEMENT;
pub use source::SOURCE_HOLD;

use neighbour::Neighbour;
use requests::{Query, RrCache, SeqnoCache};
use routes::{Advert, RouteTable};
use source::SourceTable;
use timers::{TimerKey, Timers};

/// The reference's Hello interval, and the longest hyphae allows (stock peers expect ≤ 20 s).
pub const HELLO_INTERVAL: Duration = Duration::from_secs(20);
/// The interval written in IHUs (6000 cs).
pub const IHU_INTERVAL: Interval = Interval(6000);
/// Own-route re-announcement period and the interval in Updates we send.
pub const UPDATE_INTERVAL: Duration = Duration::from_secs(300);
/// The reference's dead-peer threshold (2 × 20 s + 3 s).
pub const DEAD_PEER_THRESHOLD: Duration = Duration::from_secs(43);
/// Minimum gap between two bumps of our own seqno.
pub const SEQNO_BUMP_TIMEOUT: Duration = Duration::from_secs(4);
/// A node that loses its selected route asks for a new seqno even if it asked the same
/// earlier, unless that was less than this ago.
pub const SEQNO_RESEND: Duration = Duration::from_secs(1);
/// A selected route's metric change that triggers an update.
pub const BIG_METRIC_CHANGE: u16 = 10;
/// How long a retracted route is held (metric infinite) before removal.
pub const RETRACTED_ROUTE_HOLD: Duration = Duration::from_secs(6);
/// Route requests are forwarded while `generation + 1 <` this.
pub const MAX_RR_GENERATION: u8 = 16;
/// A used route this close to expiry is refreshed with a RouteRequest.
pub const ROUTE_ALMOST_EXPIRED: Duration = Duration::from_secs(15);
/// Period of the cache and source-table sweep.
const GC_INTERVAL: Duration = Duration::from_secs(10);
/// Minimum gap between two answers to wildcard RouteRequests from one peer.
const WILDCARD_DUMP_GAP: Duration = Duration::from_secs(5);

/// Router settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Hello period; clamped to 10 ms ..= 20 s. hyphae peers may use less than the reference's
    /// 20 s to detect silent failures sooner; it is announced in every Hello.
    pub hello_interval: Duration,
    /// No IHU (nor other sign of life, [`Router::handle_peer_heard`]) for this long ⇒ the
    /// peer is dead. `None`: `2 × hello_interval + min(3 s, 3 × hello_interval)`: 43 s for the
    /// reference's 20 s, 1.5 s for 300 ms.
    pub dead_peer_threshold: Option<Duration>,
    /// Own-route re-announcement period, also the interval in our Updates (300 s).
    pub update_interval: Duration,
    /// Cap on route entries in total.
    pub max_routes: usize,
    /// Cap on route entries learned from one peer.
    pub max_routes_per_peer: usize,
    /// Cap on each dedup cache and on the source table (times 4).
    pub max_cache_entries: usize,
    /// Seed for the hash tables (use a random one in production, a fixed one in tests).
    pub hash_seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hello_interval: HELLO_INTERVAL,
            dead_peer_threshold: None,
            update_interval: UPDATE_INTERVAL,
            max_routes: 1 << 20,
            max_routes_per_peer: 1 << 18,
            max_cache_entries: 1 << 16,
            hash_seed: 0,
        }
    }
}

impl Config {
    fn hello(&self) -> Duration {
        self.hello_interval
            .clamp(Duration::from_millis(10), HELLO_INTERVAL)
    }

    fn dead_threshold(&self) -> Duration {
        self.dead_peer_threshold
            .unwrap_or_else(|| 2 * self.hello() + (3 * self.hello()).min(Duration::from_secs(3)))
    }

    fn update_interval(&self) -> Duration {
        self.update_interval
            .clamp(Duration::from_secs(1), Duration::from_secs(655))
    }
}

/// A TLV to send to one peer. Encode it with `Tlv::encode_frame`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// The peer link.
    pub peer: PeerId,
    /// The TLV (one per frame).
    pub tlv: Tlv,
}

/// Something the driver should act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// No IHU from this peer for the dead-peer threshold; its routes are gone. Close the link.
    PeerDead(PeerId),
    /// A route this node asked for ([`Router::request_route`]) was not found in time: drop
    /// the packets queued for it.
    QueryTimedOut(Subnet),
}

/// A route as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteView {
    /// Destination.
    pub subnet: Subnet,
    /// The neighbour it goes through.
    pub next_hop: PeerId,
    /// The source's router id.
    pub router_id: RouterId,
    /// The source's seqno.
    pub seqno: SeqNo,
    /// Advertised metric plus link cost; infinite for a retracted route in its hold time.
    pub metric: Metric,
    /// Whether this is the selected route for the subnet.
    pub selected: bool,
    /// When the entry expires unless refreshed.
    pub expires: Instant,
}

/// A neighbour as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerView {
    /// The link.
    pub peer: PeerId,
    /// Its transport.
    pub kind: LinkKind,
    /// Smoothed RTT estimate plus static cost.
    pub link_cost: Metric,
    /// When it last sent an IHU.
    pub last_ihu: Instant,
    /// Route entries learned from it.
    pub routes: usize,
}

/// Counters of what the router did with its input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// TLVs handled.
    pub tlvs: u64,
    /// TLVs from unknown peers, dropped.
    pub unknown_peer: u64,
    /// Updates dropped by the filters (prefix, length, router id ownership, own subnet).
    pub updates_filtered: u64,
    /// Unfeasible Updates.
    pub updates_unfeasible: u64,
    /// Updates dropped because a route-table cap was reached.
    pub updates_capped: u64,
    /// Own seqno bumps.
    pub seqno_bumps: u64,
    /// SeqnoRequests dropped as duplicates.
    pub seqno_requests_deduped: u64,
    /// RouteRequests forwarded.
    pub route_requests_forwarded: u64,
    /// Route and seqno requests left unanswered: the asking peer's per-second budget
    /// ([`ANSWERS_PER_SECOND`]) was spent.
    pub answers_rate_limited: u64,
    /// Route and seqno requests not forwarded: the asking peer's per-second budget for them
    /// ([`FORWARDS_PER_SECOND`]) was spent.
    pub forwards_rate_limited: u64,
    /// Route queries this node made that pushed out one it only forwarded (the query table
    /// was full).
    pub forwarded_queries_evicted: u64,
}

/// The routing control plane of one node. See the module docs.
#[derive(Debug)]
pub struct Router {
    config: Config,
    router_id: RouterId,
    own_subnet: Subnet,
    seqno: SeqNo,
    last_bump: Option<Instant>,
    peers: BTreeMap<PeerId, Neighbour>,
    routes: RouteTable,
    sources: SourceTable,
    seqno_cache: SeqnoCache,
    rr_cache: RrCache,
    queries: HashMap<Subnet, Query, SeededState>,
    timers: Timers,
    transmits: VecDeque<Transmit>,
    fib_changes: VecDeque<FibChange>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Router {
    /// A router for the node whose router id is `router_id` (seqno 0); it announces the `/64`
    /// of the router id's public key.
    pub fn new(now: Instant, config: Config, router_id: RouterId) -> Self {
        let h = SeededState::new(config.hash_seed);
        let mut timers = Timers::new(h);
        timers.set(TimerKey::Hello, now + config.hello());
        timers.set(TimerKey::OwnUpdate, now + config.update_interval());
        timers.set(TimerKey::Gc, now + GC_INTERVAL);
        let cache_cap = config.max_cache_entries.max(16);
        Self {
            own_subnet: router_id.public_key().subnet(),
            router_id,
            seqno: SeqNo(0),
            last_bump: None,
            peers: BTreeMap::new(),
            routes: RouteTable::new(h),
            sources: SourceTable::new(h, cache_cap.saturating_mul(4)),
            seqno_cache: SeqnoCache::new(h, cache_cap),
            rr_cache: RrCache::new(h, cache_cap),
            queries: HashMap::with_hasher(h),
            timers,
            transmits: VecDeque::new(),
            fib_changes: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            config,
        }
    }

    // ---- inputs -------------------------------------------------------------------------

    /// A peer link is up: greet it with our own route, a Hello and our pending queries.
    /// Calling it for a peer that is already up resets that peer first.
    pub fn handle_peer_up(&mut self, now: Instant, peer: PeerId, kind: LinkKind) {
        if self.peers.contains_key(&peer) {
            self.handle_peer_down(now, peer);
        }
        let mut n = Neighbour::new(now, kind);
        // Entries of an earlier link with this id may still be held (retracted): they count
        // against this peer's cap, and their expiry decrements its count.
        n.routes = self
            .routes
            .sets
            .values()
            .filter(|set| set.entry(peer).is_some())
            .count();
        self.peers.insert(peer, n);
        self.timers
            .set(TimerKey::PeerDead(peer), now + self.config.dead_threshold());
        self.send_own_update(now, Some(peer));
        self.send_hello(now, peer);
        let mut queried: Vec<Subnet> = self
            .queries
            .iter()
            .filter(|(_, q)| q.until > now)
            .map(|(s, _)| *s)
            .collect();
        queried.sort_unstable();
        for prefix in queried {
            self.push(peer, Tlv::RouteRequest(rr(0, prefix)));
        }
    }

    /// A peer link is gone (connection closed): at once, its selected routes are retracted
    /// and held, its other routes removed, and selection reruns.
    pub fn handle_peer_down(&mut self, now: Instant, peer: PeerId) {
        if self.peers.remove(&peer).is_none() {
            return;
        }
        self.timers.cancel(TimerKey::PeerDead(peer));
        self.drop_routes_of(now, peer);
    }

    /// Something other than an IHU arrived from `peer` (data frames, say): it is alive, so
    /// its dead-peer deadline moves as an IHU would move it. A peer busy forwarding is not
    /// declared dead because its IHUs wait behind its data.
    pub fn handle_peer_heard(&mut self, now: Instant, peer: PeerId) {
        if self.peers.contains_key(&peer) {
            let until = now + self.config.dead_threshold();
            self.timers.set(TimerKey::PeerDead(peer), until);
        }
    }

    /// A control TLV arrived from `peer`.
    pub fn handle_tlv(&mut self, now: Instant, peer: PeerId, tlv: Tlv) {
        self.stats.tlvs += 1;
        if !self.peers.contains_key(&peer) {
            self.stats.unknown_peer += 1;
            return;
        }
        match tlv {
            Tlv::Hello(_) => {
                let cost = self.link_cost(peer).unwrap_or(Metric::INFINITE);
                let ihu = Ihu {
                    rx_cost: cost,
                    interval: IHU_INTERVAL,
                    address: None,
                };
                self.push(peer, Tlv::Ihu(ihu));
            }
            Tlv::Ihu(_) => {
                let until = now + self.config.dead_threshold();
                if let Some(n) = self.peers.get_mut(&peer) {
                    n.handle_ihu(now);
                    self.timers.set(TimerKey::PeerDead(peer), until);
                }
            }
            Tlv::Update(u) => self.handle_update(now, peer, u),
            Tlv::RouteRequest(r) => self.handle_route_request(now, peer, r),
            Tlv::SeqnoRequest(s) => self.handle_seqno_request(now, peer, s),
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(key) = self.timers.pop_expired(now) {
            match key {
                TimerKey::Hello => {
                    let peers: Vec<PeerId> = self.peers.keys().copied().collect();
                    for p in peers {
                        self.send_hello(now, p);
                    }
                    self.timers.set(TimerKey::Hello, now + self.config.hello());
                }
                TimerKey::OwnUpdate => {
                    self.send_own_update(now, None);
                    let next = now + self.config.update_interval();
                    self.timers.set(TimerKey::OwnUpdate, next);
                }
                TimerKey::Gc => {
                    self.sources.gc(now);
                    self.seqno_cache.gc(now);
                    self.rr_cache.gc(now);
                    self.timers.set(TimerKey::Gc, now + GC_INTERVAL);
                }
                TimerKey::SeqnoBump => self.bump_seqno(now),
                TimerKey::PeerDead(peer) => {
                    if self.peers.contains_key(&peer) {
                        self.handle_peer_down(now, peer);
                        self.events.push_back(Event::PeerDead(peer));
                    }
                }
                TimerKey::RouteExpiry(subnet, peer) => self.expire_route(now, subnet, peer),
                TimerKey::Query(subnet) => {
                    if self.queries.remove(&subnet).is_some_and(|q| q.local) {
                        self.events.push_back(Event::QueryTimedOut(subnet));
                    }
                }
            }
        }
    }

    /// Looks for a route to `subnet` on demand (a RouteRequest to every peer) unless one is
    /// selected or a query is already in flight. Returns whether a route is selected now (or
    /// the subnet is our own).
    pub fn request_route(&mut self, now: Instant, subnet: Subnet) -> bool {
        if self.own_subnet.contains_subnet(&subnet) || self.selected_route(&subnet).is_some() {
            return true;
        }
        if self.queries.contains_key(&subnet) {
            if let Some(q) = self.queries.get_mut(&subnet) {
                q.local = true;
            }
            return false;
        }
        if !self.mark_queried(now, subnet, true) {
            return false;
        }
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for p in peers {
            if self.rr_cache.should_send(now, subnet, 0, p) {
                self.push(p, Tlv::RouteRequest(rr(0, subnet)));
            }
        }
        false
    }

    /// The data plane used the route to `subnet`: if it is about to expire, refresh it with a
    /// RouteRequest (WIRE.md 3.4 step 4).
    pub fn handle_route_used(&mut self, now: Instant, subnet: Subnet) {
        let Some(e) = self
            .routes
            .sets
            .get(&subnet)
            .and_then(|s| s.selected_entry())
        else {
            return;
        };
        if e.expires.saturating_duration_since(now) > ROUTE_ALMOST_EXPIRED
            || self.queries.contains_key(&subnet)
        {
            return;
        }
        if !self.mark_queried(now, subnet, false) {
            return;
        }
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for p in peers {
            if self.rr_cache.should_send(now, subnet, 0, p) {
                self.push(p, Tlv::RouteRequest(rr(0, subnet)));
            }
        }
    }

    // ---- outputs ------------------------------------------------------------------------

    /// The next TLV to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next change of a selected route, in order, for [`crate::FibWriter::apply`].
    pub fn poll_fib_change(&mut self) -> Option<FibChange> {
        self.fib_changes.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Router::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    // ---- views --------------------------------------------------------------------------

    /// This node's router id.
    pub fn router_id(&self) -> RouterId {
        self.router_id
    }

    /// The subnet this node announces.
    pub fn own_subnet(&self) -> Subnet {
        self.own_subnet
    }

    /// This node's current seqno.
    pub fn seqno(&self) -> SeqNo {
        self.seqno
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Every route entry, selected and fallback (unordered).
    pub fn routes(&self) -> impl Iterator<Item = RouteView> + '_ {
        self.routes.sets.iter().flat_map(move |(subnet, set)| {
            set.entries.iter().map(move |e| RouteView {
                subnet: *subnet,
                next_hop: e.peer,
                router_id: e.rid,
                seqno: e.seqno,
                metric: e.metric + self.link_cost(e.peer).unwrap_or(Metric::INFINITE),
                selected: set.selected == Some(e.peer),
                expires: e.expires,
            })
        })
    }

    /// The selected route for exactly `subnet`.
    pub fn selected_route(&self, subnet: &Subnet) -> Option<RouteView> {
        let set = self.routes.sets.get(subnet)?;
        let e = set.selected_entry()?;
        Some(RouteView {
            subnet: *subnet,
            next_hop: e.peer,
            router_id: e.rid,
            seqno: e.seqno,
            metric: e.metric + self.link_cost(e.peer)?,
            selected: true,
            expires: e.expires,
        })
    }

    /// Subnets being looked for, with the query deadline.
    pub fn queried(&self) -> impl Iterator<Item = (Subnet, Instant)> + '_ {
        self.queries.iter().map(|(s, q)| (*s, q.until))
    }

    /// The neighbours.
    pub fn peers(&self) -> impl Iterator<Item = PeerView> + '_ {
        self.peers.iter().map(|(p, n)| PeerView {
            peer: *p,
            kind: n.kind,
            link_cost: n.link_cost(),
            last_ihu: n.last_ihu,
            routes: n.routes,
        })
    }

    /// Number of route entries and of armed timers (for tests and metrics).
    pub fn table_sizes(&self) -> (usize, usize) {
        (self.routes.total, self.timers.len())
    }

    /// Sizes of the source table, SeqnoRequest cache and RouteRequest cache.
    pub fn cache_sizes(&self) -> (usize, usize, usize) {
        (
            self.sources.len(),
            self.seqno_cache.len(),
            self.rr_cache.len(),
        )
    }

    // ---- helpers ------------------------------------------------------------------------

    fn push(&mut self, peer: PeerId, tlv: Tlv) {
        self.transmits.push_back(Transmit { peer, tlv });
    }

    fn link_cost(&self, peer: PeerId) -> Option<Metric> {
        self.peers.get(&peer).map(Neighbour::link_cost)
    }

    fn interval(&self) -> Interval {
        Interval::from_duration(self.config.update_interval())
    }

    fn send_hello(&mut self, now: Instant, peer: PeerId) {
        let interval = self.config.hello();
        if let Some(n) = self.peers.get_mut(&peer) {
            let h = n.next_hello(now, interval);
            self.push(peer, Tlv::Hello(h));
        }
    }

    /// Our own route, metric 0, to one peer or all.
    fn send_own_update(&mut self, _now: Instant, to: Option<PeerId>) {
        let u = Update {
            flags: 0,
            interval: self.interval(),
            seqno: self.seqno,
            metric: Metric(0),
            subnet: self.own_subnet,
            router_id: self.router_id,
        };
        match to {
            Some(p) => self.push(p, Tlv::Update(u)),
            None => {
                let peers: Vec<PeerId> = self.peers.keys().copied().collect();
                for p in peers {
                    self.push(p, Tlv::Update(u));
                }
            }
        }
    }

    /// The Update advertising the selected route of `subnet`, recorded in the source table.
    fn selected_update(&mut self, now: Instant, subnet: Subnet) -> Option<(PeerId, Update)> {
        let interval = self.interval();
        let set = self.routes.sets.get(&subnet)?;
        let e = *set.selected_entry()?;
        let metric = e.metric + self.link_cost(e.peer)?;
        let u = Update {
            flags: 0,
            interval,
            seqno: e.seqno,
            metric,
            subnet,
            router_id: e.rid,
        };
        self.sources
            .record_sent(now, subnet, e.rid, e.seqno, metric);
        if let Some(set) = self.routes.sets.get_mut(&subnet) {
            set.advertised = Some(Advert {
                rid: e.rid,
                seqno: e.seqno,
                metric,
            });
        }
        Some((e.peer, u))
    }

    /// Sends the selected route of `subnet` to `to`, or to every peer but the next hop.
    fn send_selected(&mut self, now: Instant, subnet: Subnet, to: Option<PeerId>) {
        let Some((next_hop, u)) = self.selected_update(now, subnet) else {
            return;
        };
        match to {
            Some(p) => self.push(p, Tlv::Update(u)),
            None => {
                let peers: Vec<PeerId> = self.peers.keys().copied().collect();
                for p in peers.into_iter().filter(|p| *p != next_hop) {
                    self.push(p, Tlv::Update(u));
                }
            }
        }
    }

    /// A retraction for `subnet` to every peer, if we ever advertised it.
    fn send_retraction(&mut self, subnet: Subnet) {
        let Some(a) = self
            .routes
            .sets
            .get_mut(&subnet)
            .and_then(|s| s.advertised.take())
        else {
            return;
        };
        let u = Update {
            flags: 0,
            interval: Interval(0),
            seqno: a.seqno,
            metric: Metric::INFINITE,
            subnet,
            router_id: a.rid,
        };
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for p in peers {
            self.push(p, Tlv::Update(u));
        }
    }

    /// Marks `subnet` as looked for; `false` if the query table is full.
    fn mark_queried(&mut self, now: Instant, subnet: Subnet, local: bool) -> bool {
        if self.queries.len() >= self.config.max_cache_entries.max(16)
            && !self.queries.contains_key(&subnet)
        {
            // Full: this node's own queries push out ones it only forwarded.
            let forwarded = local
                .then(|| self.queries.iter().find(|(_, q)| !q.local).map(|(s, _)| *s))
                .flatten();
            let Some(old) = forwarded else {
                return false;
            };
            self.queries.remove(&old);
            self.timers.cancel(TimerKey::Query(old));
            self.stats.forwarded_queries_evicted += 1;
        }
        let until = now + ROUTE_QUERY_TIMEOUT;
        self.queries.insert(subnet, Query { until, local });
        self.timers.set(TimerKey::Query(subnet), until);
        true
    }

    fn bump_seqno(&mut self, now: Instant) {
        if let Some(last) = self.last_bump
            && now < last + SEQNO_BUMP_TIMEOUT
        {
            self.timers
                .set(TimerKey::SeqnoBump, last + SEQNO_BUMP_TIMEOUT);
            return;
        }
        self.seqno = self.seqno.next();
        self.last_bump = Some(now);
        self.stats.seqno_bumps += 1;
        self.send_own_update(now, None);
    }
}

fn rr(generation: u8, prefix: Subnet) -> RouteRequest {
    RouteRequest {
        generation,
        prefix: Some(prefix),
    }
}

#[cfg(test)]
mod tests;
