//! Neighbours: Hello/IHU bookkeeping, link cost smoothing and the per-transport static cost.

use std::time::{Duration, Instant};

use hyphae_wire::babel::Hello;
use hyphae_wire::{Interval, Metric, SeqNo};

/// The link cost a new neighbour starts with (`DEFAULT_LINK_COST` of the reference).
pub const DEFAULT_LINK_COST: u16 = 1000;

/// The transport of a peer link; it fixes the static cost added to the measured link cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkKind {
    /// TCP (or TLS over TCP) over IPv6: cost 10.
    TcpV6,
    /// TCP (or TLS over TCP) over IPv4, including v4-mapped addresses: cost 15.
    TcpV4,
    /// QUIC over IPv6: cost 7.
    QuicV6,
    /// QUIC over IPv4: cost 12.
    QuicV4,
    /// vsock: cost 5.
    Vsock,
    /// Any other link, with the given static cost.
    Other(u16),
}

impl LinkKind {
    /// The static cost this transport adds to every route through it.
    pub fn static_cost(self) -> u16 {
        match self {
            Self::TcpV6 => 10,
            Self::TcpV4 => 15,
            Self::QuicV6 => 7,
            Self::QuicV4 => 12,
            Self::Vsock => 5,
            Self::Other(c) => c,
        }
    }
}

/// Most answers to one peer's specific route and seqno requests per second: far more than a
/// node asks for in normal operation (it asks once per route it needs).
pub const ANSWERS_PER_SECOND: u32 = 100;

/// Most of one peer's route and seqno requests forwarded to other peers per second: a link
/// cut far away makes a neighbour ask for hundreds of routes at once (every route through the
/// cut); a peer making requests up by the thousand gets no further.
pub const FORWARDS_PER_SECOND: u32 = 1000;

/// One directly connected peer.
#[derive(Debug, Clone)]
pub(crate) struct Neighbour {
    pub(crate) kind: LinkKind,
    /// Smoothed round-trip estimate in milliseconds.
    pub(crate) smoothed: u16,
    hello_seqno: SeqNo,
    pub(crate) last_hello_sent: Option<Instant>,
    pub(crate) last_ihu: Instant,
    /// When we last answered a wildcard route request from this peer.
    pub(crate) last_dump: Option<Instant>,
    /// Answers to this peer's route and seqno requests in the current second, and since when.
    answers: (Option<Instant>, u32),
    /// This peer's route and seqno requests forwarded to others in the current second, and
    /// since when.
    forwards: (Option<Instant>, u32),
    /// Route entries learned from this peer.
    pub(crate) routes: usize,
}

impl Neighbour {
    pub(crate) fn new(now: Instant, kind: LinkKind) -> Self {
        Self {
            kind,
            smoothed: DEFAULT_LINK_COST,
            hello_seqno: SeqNo(0),
            last_hello_sent: None,
            last_ihu: now,
            last_dump: None,
            answers: (None, 0),
            forwards: (None, 0),
            routes: 0,
        }
    }

    /// Whether one more answer to this peer's requests fits the per-second budget
    /// ([`ANSWERS_PER_SECOND`]); spends it if so. A peer asking for the same route over and
    /// over (or never reading the answers) gets no more than that.
    pub(crate) fn may_answer(&mut self, now: Instant) -> bool {
        spend(&mut self.answers, now, ANSWERS_PER_SECOND)
    }

    /// Whether one more of this peer's requests may be forwarded to other peers this second
    /// ([`FORWARDS_PER_SECOND`]); spends it if so. A peer making up requests by the
    /// thousand must not fill this node's query tables, or its neighbours'.
    pub(crate) fn may_forward(&mut self, now: Instant) -> bool {
        spend(&mut self.forwards, now, FORWARDS_PER_SECOND)
    }

    /// The cost of this link: smoothed RTT plus the static transport cost.
    pub(crate) fn link_cost(&self) -> Metric {
        Metric(self.smoothed) + Metric(self.kind.static_cost())
    }

    /// The next Hello to send; records the send time for the RTT estimate.
    pub(crate) fn next_hello(&mut self, now: Instant, interval: Duration) -> Hello {
        self.last_hello_sent = Some(now);
        let h = Hello::unicast(self.hello_seqno, Interval::from_duration(interval));
        self.hello_seqno = self.hello_seqno.next();
        h
    }

    /// An IHU arrived: smooth the link cost with the time since our last Hello and refresh
    /// liveness.
    pub(crate) fn handle_ihu(&mut self, now: Instant) {
        self.last_ihu = now;
        let Some(sent) = self.last_hello_sent else {
            return;
        };
        let rtt = now.saturating_duration_since(sent).as_millis();
        let rtt = u32::try_from(rtt)
            .unwrap_or(u32::MAX)
            .min(u32::from(u16::MAX));
        let cost = (9 * u32::from(self.smoothed) + rtt) / 10;
        self.smoothed = u16::try_from(cost).unwrap_or(u16::MAX - 1);
    }
}

/// Spends one of `per_second` in the budget `(since, used)`, which renews each second.
fn spend(budget: &mut (Option<Instant>, u32), now: Instant, per_second: u32) -> bool {
    match *budget {
        (Some(since), n) if now < since + Duration::from_secs(1) => {
            budget.1 = n.saturating_add(1);
            n < per_second
        }
        _ => {
            *budget = (Some(now), 1);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_starts_at_default_and_smooths() {
        let t0 = Instant::now();
        let mut n = Neighbour::new(t0, LinkKind::QuicV4);
        assert_eq!(n.link_cost(), Metric(1012));
        let h = n.next_hello(t0, Duration::from_secs(20));
        assert_eq!(h.interval, Interval(2000));
        assert_eq!(h.flags, Hello::UNICAST);
        n.handle_ihu(t0 + Duration::from_millis(50));
        assert_eq!(n.smoothed, (9 * 1000 + 50) / 10);
        assert_eq!(n.link_cost(), Metric(905 + 12));
        // An IHU with no Hello outstanding refreshes liveness but keeps the cost.
        let mut m = Neighbour::new(t0, LinkKind::TcpV6);
        m.handle_ihu(t0 + Duration::from_secs(3));
        assert_eq!(m.link_cost(), Metric(1010));
        assert_eq!(m.last_ihu, t0 + Duration::from_secs(3));
    }

    #[test]
    fn hello_seqno_wraps() {
        let t0 = Instant::now();
        let mut n = Neighbour::new(t0, LinkKind::TcpV4);
        n.hello_seqno = SeqNo(u16::MAX);
        assert_eq!(
            n.next_hello(t0, Duration::from_secs(1)).seqno,
            SeqNo(u16::MAX)
        );
        assert_eq!(n.next_hello(t0, Duration::from_secs(1)).seqno, SeqNo(0));
    }

    #[test]
    fn static_costs_match_reference() {
        let costs = [
            LinkKind::TcpV6,
            LinkKind::TcpV4,
            LinkKind::QuicV6,
            LinkKind::QuicV4,
            LinkKind::Vsock,
        ]
        .map(LinkKind::static_cost);
        assert_eq!(costs, [10, 15, 7, 12, 5]);
    }
}
