//! What each input does to the tables: Updates, RouteRequests, SeqnoRequests, route loss and
//! expiry, and route selection with its triggered updates (WIRE.md 3.2-3.6).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hyphae_wire::babel::{RouteRequest, SeqnoRequest, Tlv, Update};
use hyphae_wire::{GLOBAL_SUBNET, Interval, Metric, RouterId, SeqNo, Subnet};

use super::routes::{self, PendingSeqno, RouteEntry, RouteSet};
use super::timers::TimerKey;
use super::{
    BIG_METRIC_CHANGE, MAX_RR_GENERATION, RETRACTED_ROUTE_HOLD, Router, SEQNO_DEDUP_TTL,
    SEQNO_RESEND, WILDCARD_DUMP_GAP, rr,
};
use crate::fib::FibChange;
use crate::peer::PeerId;

impl Router {
    /// An Update from `peer` (WIRE.md 3.2, 3.3).
    pub(super) fn handle_update(&mut self, now: Instant, peer: PeerId, u: Update) {
        let s = u.subnet;
        if !GLOBAL_SUBNET.contains_subnet(&s)
            || s.prefix_len() < 64
            || self.own_subnet.contains_subnet(&s)
        {
            self.stats.updates_filtered += 1;
            return;
        }
        if u.metric.is_infinite() {
            self.handle_retraction(now, peer, u);
            return;
        }
        let verified = self
            .routes
            .sets
            .get(&s)
            .is_some_and(|set| set.verified(&u.router_id));
        if !verified && !s.contains_ip(IpAddr::V6(u.router_id.public_key().address())) {
            self.stats.updates_filtered += 1;
            return;
        }
        let feasible = self
            .sources
            .is_feasible(&s, &u.router_id, u.seqno, u.metric);
        let hold = self.hold_time(u.interval);
        let existing = self
            .routes
            .sets
            .get(&s)
            .and_then(|set| set.entry(peer).map(|e| (*e, set.selected == Some(peer))));
        match existing {
            Some((e, selected)) => {
                if !feasible {
                    self.stats.updates_unfeasible += 1;
                    if e.rid == u.router_id && selected {
                        // Not applied (reference behaviour): ask the source for a new seqno.
                        let want = self.wanted_seqno(&s, &u.router_id, u.seqno);
                        self.request_seqno(now, s, u.router_id, want, peer);
                        return;
                    }
                }
                let mut arm = false;
                if let Some(e) = self
                    .routes
                    .sets
                    .get_mut(&s)
                    .and_then(|set| set.entry_mut(peer))
                {
                    e.rid = u.router_id;
                    e.seqno = u.seqno;
                    e.metric = u.metric;
                    e.expires = now + hold;
                    arm = e.needs_arming();
                }
                if arm {
                    self.timers.set(TimerKey::RouteExpiry(s, peer), now + hold);
                }
                self.reselect(now, s);
                if !feasible && self.selected_route(&s).is_none() {
                    let want = self.wanted_seqno(&s, &u.router_id, u.seqno);
                    self.request_seqno(now, s, u.router_id, want, peer);
                }
            }
            None => {
                if !feasible {
                    self.stats.updates_unfeasible += 1;
                    if self.selected_route(&s).is_none() {
                        let want = self.wanted_seqno(&s, &u.router_id, u.seqno);
                        self.request_seqno(now, s, u.router_id, want, peer);
                    }
                    return;
                }
                let per_peer = self.peers.get(&peer).map_or(usize::MAX, |n| n.routes);
                if per_peer >= self.config.max_routes_per_peer
                    || self.routes.total >= self.config.max_routes
                {
                    self.stats.updates_capped += 1;
                    return;
                }
                let set = self.routes.sets.entry(s).or_default();
                set.push(RouteEntry {
                    peer,
                    rid: u.router_id,
                    seqno: u.seqno,
                    metric: u.metric,
                    expires: now + hold,
                    armed: Some(now + hold),
                });
                self.routes.total += 1;
                if let Some(n) = self.peers.get_mut(&peer) {
                    n.routes += 1;
                }
                self.timers.set(TimerKey::RouteExpiry(s, peer), now + hold);
                self.reselect(now, s);
            }
        }
    }

    /// A retraction: the neighbour has no route any more. Its entry is held at infinity.
    fn handle_retraction(&mut self, now: Instant, peer: PeerId, u: Update) {
        let Some(set) = self.routes.sets.get_mut(&u.subnet) else {
            return;
        };
        let was_selected = set.selected == Some(peer);
        let has_other = set.selected.is_some() && !was_selected;
        let Some(e) = set.entry_mut(peer) else {
            return;
        };
        if e.metric.is_infinite() {
            return;
        }
        e.metric = Metric::INFINITE;
        e.expires = now + RETRACTED_ROUTE_HOLD;
        if e.needs_arming() {
            let key = TimerKey::RouteExpiry(u.subnet, peer);
            self.timers.set(key, now + RETRACTED_ROUTE_HOLD);
        }
        if was_selected {
            self.reselect(now, u.subnet);
        } else if has_other {
            // The neighbour lost its route and we have one: tell it.
            self.send_selected(now, u.subnet, Some(peer));
        }
    }

    /// A RouteRequest from `peer` (WIRE.md 3.4).
    pub(super) fn handle_route_request(&mut self, now: Instant, peer: PeerId, r: RouteRequest) {
        let Some(p) = r.prefix else {
            self.dump_to(now, peer);
            return;
        };
        if self.own_subnet.contains_subnet(&p) {
            if self.may_answer(now, peer) {
                self.send_own_update(now, Some(peer));
            }
            return;
        }
        if let Some(s) = self.covering_selected(&p) {
            if self.selected_route(&s).is_some_and(|v| v.next_hop != peer)
                && self.may_answer(now, peer)
            {
                self.send_selected(now, s, Some(peer));
            }
            return;
        }
        // Finite fallback routes only (unfeasible, being repaired by a SeqnoRequest) or a query
        // in flight: stay silent. Retracted entries in their hold time don't count.
        if self
            .routes
            .sets
            .get(&p)
            .is_some_and(|s| s.entries.iter().any(|e| !e.metric.is_infinite()))
            || self.queries.contains_key(&p)
            || !GLOBAL_SUBNET.contains_subnet(&p)
        {
            return;
        }
        let generation = r.generation.saturating_add(1);
        if generation >= MAX_RR_GENERATION {
            return;
        }
        if !self.may_forward(now, peer) {
            return;
        }
        if !self.mark_queried(now, p, false) {
            return;
        }
        self.stats.route_requests_forwarded += 1;
        let peers: Vec<PeerId> = self.peers.keys().copied().filter(|q| *q != peer).collect();
        for q in peers {
            if self.rr_cache.should_send(now, p, generation, q) {
                self.push(q, Tlv::RouteRequest(rr(generation, p)));
            }
        }
    }

    /// A SeqnoRequest from `peer` (WIRE.md 3.5).
    pub(super) fn handle_seqno_request(&mut self, now: Instant, peer: PeerId, sr: SeqnoRequest) {
        let s = sr.prefix;
        if s == self.own_subnet {
            if sr.router_id == self.router_id && sr.seqno.gt(self.seqno) {
                self.bump_seqno(now);
            } else if self.may_answer(now, peer) {
                self.send_own_update(now, Some(peer));
            }
            return;
        }
        // Identical requests are forwarded once a second at most: often enough that a node
        // repairing a route it lost just now is not held up by the same request from long
        // before (the reference waits 60 s), rarely enough that a flood goes nowhere.
        let key = (s, sr.router_id, sr.seqno);
        if self.seqno_cache.is_recent(now, &key, SEQNO_RESEND) {
            self.stats.seqno_requests_deduped += 1;
            return;
        }
        if let Some(v) = self.selected_route(&s)
            && (v.router_id != sr.router_id || !v.seqno.lt(sr.seqno))
        {
            if self.seqno_cache.insert(now, key, false) {
                self.send_selected(now, s, Some(peer));
            }
            return;
        }
        if sr.hop_count < 2 {
            return;
        }
        let Some(set) = self.routes.sets.get(&s) else {
            return;
        };
        let mut candidates: Vec<(bool, Metric, PeerId)> = set
            .entries
            .iter()
            .filter(|e| e.peer != peer && !e.metric.is_infinite())
            .filter_map(|e| {
                let cost = self.link_cost(e.peer)?;
                let feasible = self.sources.is_feasible(&s, &e.rid, e.seqno, e.metric);
                Some((!feasible, e.metric + cost, e.peer))
            })
            .collect();
        candidates.sort_unstable();
        // The best one, each time: a request repeated after SEQNO_RESEND (its first copy lost,
        // or the asker lost its route again) goes where the first went.
        let Some(to) = candidates.into_iter().map(|c| c.2).next() else {
            return;
        };
        // Recorded only once it is forwarded, within the asking peer's budget: requests made
        // up by the thousand take no room from this node's own.
        if !self.may_forward(now, peer) {
            return;
        }
        if !self.seqno_cache.insert(now, key, false) {
            return;
        }
        if let Some(set) = self.routes.sets.get_mut(&s) {
            set.pending_seqno = Some(Box::new(PendingSeqno {
                rid: sr.router_id,
                seqno: sr.seqno,
                until: now + SEQNO_DEDUP_TTL,
            }));
        }
        let fwd = SeqnoRequest {
            hop_count: sr.hop_count - 1,
            ..sr
        };
        self.push(to, Tlv::SeqnoRequest(fwd));
    }

    /// Removes or retracts every route learned from `peer` (it is gone) and reselects.
    pub(super) fn drop_routes_of(&mut self, now: Instant, peer: PeerId) {
        let mut affected: Vec<Subnet> = self
            .routes
            .sets
            .iter()
            .filter(|(_, set)| set.entry(peer).is_some())
            .map(|(s, _)| *s)
            .collect();
        affected.sort_unstable();
        for s in affected {
            let Some(set) = self.routes.sets.get_mut(&s) else {
                continue;
            };
            if set.selected == Some(peer) {
                if let Some(e) = set.entry_mut(peer) {
                    e.metric = Metric::INFINITE;
                    e.expires = now + RETRACTED_ROUTE_HOLD;
                    if e.needs_arming() {
                        let key = TimerKey::RouteExpiry(s, peer);
                        self.timers.set(key, now + RETRACTED_ROUTE_HOLD);
                    }
                }
            } else {
                set.remove(peer);
                self.routes.total -= 1;
                self.timers.cancel(TimerKey::RouteExpiry(s, peer));
            }
            self.reselect(now, s);
        }
    }

    /// A route entry's expiry timer fired.
    pub(super) fn expire_route(&mut self, now: Instant, s: Subnet, peer: PeerId) {
        let alive = self.peers.contains_key(&peer);
        let Some(set) = self.routes.sets.get_mut(&s) else {
            return;
        };
        let selected = set.selected == Some(peer);
        let Some(e) = set.entry_mut(peer) else {
            return;
        };
        // The timer has fired: nothing is armed until we re-arm it here.
        e.armed = None;
        if e.expires > now {
            let at = e.expires;
            e.armed = Some(at);
            self.timers.set(TimerKey::RouteExpiry(s, peer), at);
            return;
        }
        if selected && alive && !e.metric.is_infinite() {
            e.metric = Metric::INFINITE;
            e.expires = now + RETRACTED_ROUTE_HOLD;
            e.armed = Some(e.expires);
            self.timers
                .set(TimerKey::RouteExpiry(s, peer), now + RETRACTED_ROUTE_HOLD);
        } else {
            set.remove(peer);
            self.routes.total -= 1;
            if let Some(n) = self.peers.get_mut(&peer) {
                n.routes = n.routes.saturating_sub(1);
            }
        }
        self.reselect(now, s);
    }

    /// Reruns selection for `s` and emits what follows from a change: the FIB change, a
    /// triggered update (route acquired, router id changed, metric moved by more than
    /// [`BIG_METRIC_CHANGE`], a pending seqno request satisfied) or a retraction and a
    /// SeqnoRequest (route lost).
    pub(super) fn reselect(&mut self, now: Instant, s: Subnet) {
        let Some(set) = self.routes.sets.get(&s) else {
            return;
        };
        let old = set.selected;
        let idx = routes::select(
            &set.entries,
            old,
            |p| self.peers.get(&p).map(|n| n.link_cost()),
            |e| self.sources.is_feasible(&s, &e.rid, e.seqno, e.metric),
        );
        let new = idx.map(|i| set.entries[i]);
        let new_peer = new.map(|e| e.peer);
        let lost_alternative = match new {
            Some(_) => None,
            None => self.best_unfeasible(&s, set),
        };
        let new_total = new.and_then(|e| Some(e.metric + self.link_cost(e.peer)?));
        let Some(set) = self.routes.sets.get_mut(&s) else {
            return;
        };
        set.selected = new_peer;
        if old != new_peer {
            self.fib_changes.push_back(FibChange {
                subnet: s,
                next_hop: new_peer,
            });
        }
        match new {
            None => {
                if old.is_some() {
                    self.send_retraction(s);
                    if let Some(a) = lost_alternative {
                        let want = self.wanted_seqno(&s, &a.rid, a.seqno);
                        // The route is gone: ask even if the same request went out earlier
                        // (it may have been answered, or lost, long before this loss).
                        self.request_seqno_after(now, s, a.rid, want, a.peer, SEQNO_RESEND);
                    }
                }
                if set_is_empty(self.routes.sets.get(&s)) {
                    self.routes.sets.remove(&s);
                }
            }
            Some(e) => {
                // Any route (new or refreshed) answers a query in flight.
                if !self.queries.is_empty() && self.queries.remove(&s).is_some() {
                    self.timers.cancel(TimerKey::Query(s));
                }
                if old.is_none() {
                    self.send_selected(now, s, None);
                    return;
                }
                let total = new_total.unwrap_or(Metric::INFINITE);
                let adv = set.advertised;
                let changed =
                    adv.is_none_or(|a| a.rid != e.rid || a.metric.delta(total) > BIG_METRIC_CHANGE);
                let satisfied = set
                    .pending_seqno
                    .as_ref()
                    .is_some_and(|p| p.until > now && p.rid == e.rid && !e.seqno.lt(p.seqno));
                if satisfied {
                    set.pending_seqno = None;
                }
                if changed || satisfied {
                    self.send_selected(now, s, None);
                }
                // A new source goes to the next hop too: what it holds from us still names
                // the old one, at a metric below its own; were its own route lost, that stale
                // entry would pass its feasibility check (which compares one source at a
                // time) and the two would forward to each other.
                if adv.is_some_and(|a| a.rid != e.rid) {
                    self.send_selected(now, s, Some(e.peer));
                }
            }
        }
    }

    /// The best finite entry (unfeasible, since selection found none) from a live peer.
    fn best_unfeasible(&self, _s: &Subnet, set: &RouteSet) -> Option<RouteEntry> {
        set.entries
            .iter()
            .filter(|e| !e.metric.is_infinite())
            .filter_map(|e| Some((e.metric + self.link_cost(e.peer)?, e.peer, *e)))
            .min_by_key(|(m, p, _)| (*m, *p))
            .map(|(_, _, e)| e)
    }

    /// The seqno to ask for so that an advertisement of `rid` becomes feasible.
    fn wanted_seqno(&self, s: &Subnet, rid: &RouterId, seen: SeqNo) -> SeqNo {
        match self.sources.get(s, rid) {
            Some(fd) if fd.seqno.gt(seen) => fd.seqno.next(),
            _ => seen.next(),
        }
    }

    /// Sends a SeqnoRequest for (`s`, `rid`, `seqno`) to `to`, unless one went out in the
    /// last [`SEQNO_DEDUP_TTL`].
    fn request_seqno(&mut self, now: Instant, s: Subnet, rid: RouterId, seqno: SeqNo, to: PeerId) {
        self.request_seqno_after(now, s, rid, seqno, to, SEQNO_DEDUP_TTL);
    }

    /// [`Self::request_seqno`], unless the same request went out less than `window` ago.
    fn request_seqno_after(
        &mut self,
        now: Instant,
        s: Subnet,
        rid: RouterId,
        seqno: SeqNo,
        to: PeerId,
        window: Duration,
    ) {
        let key = (s, rid, seqno);
        if self.seqno_cache.is_recent(now, &key, window) || !self.seqno_cache.insert(now, key, true)
        {
            return;
        }
        if let Some(set) = self.routes.sets.get_mut(&s) {
            set.pending_seqno = Some(Box::new(PendingSeqno {
                rid,
                seqno,
                until: now + SEQNO_DEDUP_TTL,
            }));
        }
        let sr = SeqnoRequest {
            seqno,
            hop_count: SeqnoRequest::INITIAL_HOP_COUNT,
            router_id: rid,
            prefix: s,
        };
        self.push(to, Tlv::SeqnoRequest(sr));
    }

    /// Whether `peer`'s request may be answered now (its per-second budget); counts the ones
    /// that may not.
    /// Whether one more of `peer`'s requests may be forwarded this second (counted if not).
    fn may_forward(&mut self, now: Instant, peer: PeerId) -> bool {
        let ok = self
            .peers
            .get_mut(&peer)
            .is_some_and(|n| n.may_forward(now));
        if !ok {
            self.stats.forwards_rate_limited += 1;
        }
        ok
    }

    fn may_answer(&mut self, now: Instant, peer: PeerId) -> bool {
        let ok = self.peers.get_mut(&peer).is_some_and(|n| n.may_answer(now));
        if !ok {
            self.stats.answers_rate_limited += 1;
        }
        ok
    }

    /// Answers a wildcard RouteRequest: own route and every selected route (rate-limited).
    fn dump_to(&mut self, now: Instant, peer: PeerId) {
        let Some(n) = self.peers.get_mut(&peer) else {
            return;
        };
        if n.last_dump.is_some_and(|t| now < t + WILDCARD_DUMP_GAP) {
            return;
        }
        n.last_dump = Some(now);
        self.send_own_update(now, Some(peer));
        let mut selected: Vec<Subnet> = self
            .routes
            .sets
            .iter()
            .filter(|(_, set)| set.selected.is_some())
            .map(|(s, _)| *s)
            .collect();
        selected.sort_unstable();
        for s in selected {
            self.send_selected(now, s, Some(peer));
        }
    }

    /// The selected route whose subnet covers `p` (longest prefix first).
    fn covering_selected(&self, p: &Subnet) -> Option<Subnet> {
        if self.selected_route(p).is_some() {
            return Some(*p);
        }
        (64..p.prefix_len())
            .rev()
            .filter_map(|len| Subnet::new(p.addr(), len).ok())
            .find(|s| self.selected_route(s).is_some())
    }

    /// How long a route learned with `interval` is kept: 3.5 intervals (our own update
    /// interval when the Update says "not repeating").
    fn hold_time(&self, interval: Interval) -> Duration {
        let base = match interval.centis() {
            0 => self.config.update_interval(),
            _ => interval.as_duration(),
        };
        base * 7 / 2
    }
}

fn set_is_empty(set: Option<&RouteSet>) -> bool {
    set.is_some_and(|s| s.entries.is_empty())
}
