//! The edge-to-edge relay protocol, sans-IO.
//!
//! # Contract
//!
//! [`Relay`] opens no socket, reads no clock and spawns nothing: the driver passes `now` into
//! every call. After any `handle_*`, `start_request`, `respond`, `send_body`, `cancel` or
//! `body_consumed` call, drain [`Relay::poll_transmit`] (envelopes to push through the router)
//! and [`Relay::poll_event`] until both return `None`, then arm one timer at
//! [`Relay::poll_timeout`] and call [`Relay::handle_timeout`] when it fires.
//!
//! # Protocol
//!
//! Edges exchange [`Envelope`]s as overlay messages on one topic, [`TOPIC`]. The frame kind
//! says which way an envelope goes: `ENVELOPE` carries what the requesting edge sends
//! (requests, request bodies, cancels, windows for response bodies, pings), `RESPONSE_ENVELOPE`
//! what the serving edge sends back (responses, response bodies, refusals, windows for request
//! bodies, pongs). Ids are chosen by the requesting edge (random start, so a restarted edge does
//! not reuse the ids of its previous life), and the direction says which side's id an item
//! names. One topic means one subscription, or one long poll on a stock node's message API
//! (which serves its long polls one at a time).
//!
//! * Everything queued for one peer and direction leaves in one envelope (at most
//!   [`Limits::max_envelope`] bytes), and at most one envelope per peer and direction is being
//!   handed to the router at a time ([`Relay::handle_sent`]): what queues up meanwhile leaves
//!   together in the next one. Under load, batches grow with the load; alone, a request leaves
//!   at once.
//! * A body up to [`Limits::inline_body`] bytes travels inside its request or response. A
//!   larger one is streamed: the first part inline with `more`, the rest as [`BodyPart`]s, each
//!   sent only inside the window the receiver grants ([`RelayItem::Window`]), which it widens as
//!   its side consumes the bytes. No window is granted before the head arrives, so parts never
//!   overtake their head, and an edge holds at most one window of any body.
//! * Nothing is acknowledged early: a request ends with its real response, or fails with
//!   502/504 (see [`Failure`]).
//! * A request, ours or a peer's, on which nothing moved for [`Limits::request_timeout`] (no
//!   head, part or window) ends: ours fails with 504, a peer's is abandoned (the driver stops
//!   delivering it) and the peer gets a 504 cancel. A response that keeps streaming is never
//!   cut off for its length.
//! * What a peer can make us hold is bounded: parts of a body that arrive out of order are
//!   kept only inside its window, without overlaps, copied out of their envelopes, at most
//!   [`MAX_AHEAD_PARTS`]; pongs owed to a peer collapse into one; refusals queued for a peer
//!   stop at [`MAX_QUEUED_REFUSALS`] (the rest are dropped and counted); an envelope holds at
//!   most [`framing::MAX_ENVELOPE_ITEMS`] items, both ways.
//! * Liveness: when a peer has owed us an answer for [`Limits::probe_after`] and has sent
//!   nothing meanwhile, we ping it. A ping unanswered for [`Limits::ping_timeout`] makes the
//!   driver ask the router about the ping's message ([`Event::CheckDelivery`]): if it reached
//!   the peer's router, the peer's edge does not answer and every request to that peer fails
//!   with 504; if the router has no route to the peer, they fail with 502 (the overlay
//!   refuses); if a route exists but the message is still on its way (a busy path, say behind
//!   a large body), the check is repeated until [`Limits::max_pending`] has passed since the
//!   ping, and then it counts as 502. A failed peer is down until it answers a probe.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyphae_wire::framing::{
    self, BodyPart, Envelope, ErrorCode, Header, MAX_ENVELOPE_ITEMS, Message, RelayItem,
    RelayRequest, RelayResponse,
};

/// The overlay message topic of the relay.
pub const TOPIC: &[u8] = b"hyphae/fed/1";

/// A peer edge, named by its router's public key.
pub type PeerKey = [u8; 32];

/// Most parts of one body kept while they wait for a gap before them to fill (a sender of
/// ours sends parts of [`Limits::part_size`], so a window holds a handful).
pub const MAX_AHEAD_PARTS: usize = 1024;

/// Most refusals (503 cancels for requests over a limit) queued for one peer; more are dropped
/// and counted, and those requests time out at the peer.
pub const MAX_QUEUED_REFUSALS: usize = 1024;

/// Limits and timers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Bodies up to this size travel inside their head.
    pub inline_body: usize,
    /// Size of one streamed body part.
    pub part_size: usize,
    /// Bytes of a streamed body the receiver admits beyond what it consumed.
    pub window: u64,
    /// Largest envelope (an envelope holds at least one item whatever its size).
    pub max_envelope: usize,
    /// A request on which nothing moved for this long (no head, body part or window, either
    /// way) ends: ours fails with 504, a peer's is abandoned.
    pub request_timeout: Duration,
    /// Probe a peer that has owed an answer this long without sending anything.
    pub probe_after: Duration,
    /// A ping unanswered this long is checked with the router.
    pub ping_timeout: Duration,
    /// A ping whose message the router has a route for but has not delivered after this
    /// long means the path is broken.
    pub max_pending: Duration,
    /// While a peer is down, probe it this often.
    pub probe_interval: Duration,
    /// Requests of ours in flight at once.
    pub max_outgoing: usize,
    /// Requests served for one peer at once.
    pub max_incoming_per_peer: usize,
    /// Requests served at once in all.
    pub max_incoming: usize,
    /// Peers tracked at once.
    pub max_peers: usize,
    /// Scan interval of the timers.
    pub tick: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            inline_body: 256 * 1024,
            part_size: 256 * 1024,
            window: 2 * 1024 * 1024,
            max_envelope: 1024 * 1024,
            request_timeout: Duration::from_secs(90),
            probe_after: Duration::from_millis(1000),
            ping_timeout: Duration::from_millis(1500),
            max_pending: Duration::from_secs(8),
            probe_interval: Duration::from_millis(1000),
            max_outgoing: 16 * 1024,
            max_incoming_per_peer: 1024,
            max_incoming: 8 * 1024,
            max_peers: 4096,
            tick: Duration::from_millis(100),
        }
    }
}

/// An HTTP request's head as relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Method.
    pub method: String,
    /// The raw request target, never percent-decoded.
    pub target: Bytes,
    /// Relayed headers (lower-case names).
    pub headers: Vec<(String, Bytes)>,
}

/// An HTTP response's head as relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Relayed headers (lower-case names).
    pub headers: Vec<(String, Bytes)>,
}

/// What the router says about a ping's message ([`Relay::handle_delivery_check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// It reached the peer's router.
    Delivered,
    /// Not yet, and the router has a route to the peer: it may be queued behind other data.
    Pending,
    /// Not delivered, and the router has no route to the peer (or the push failed).
    NoRoute,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The overlay did not take the request to the peer (no route): 502.
    Unreachable,
    /// The peer edge did not answer in time: 504.
    Timeout,
    /// The peer gave up on it with this HTTP status (e.g. its homeserver is unreachable).
    Peer(u16),
    /// We have too many requests in flight: 503.
    Busy,
}

impl Failure {
    /// The HTTP status the homeserver gets.
    pub fn status(self) -> u16 {
        match self {
            Self::Unreachable => 502,
            Self::Timeout => 504,
            Self::Peer(s) => s,
            Self::Busy => 503,
        }
    }
}

/// Something the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The head (and first body bytes) of the response to our request `id`.
    Response {
        /// Our request.
        id: u64,
        /// The head.
        head: ResponseHead,
        /// The body, or its first part.
        body: Bytes,
        /// Whether more body follows ([`Event::ResponseBody`]).
        more: bool,
    },
    /// More of a response body, in order.
    ResponseBody {
        /// Our request.
        id: u64,
        /// The bytes.
        data: Bytes,
        /// Whether more follows.
        more: bool,
    },
    /// Our request failed; nothing more comes for it.
    Failed {
        /// Our request.
        id: u64,
        /// Why.
        failure: Failure,
    },
    /// `bytes` more of the body of stream `id` may be sent with [`Relay::send_body`].
    Credit {
        /// Our request (request body) or the peer's request (response body).
        id: u64,
        /// The peer, for a response body; `None` for our own request's body.
        peer: Option<PeerKey>,
        /// Additional bytes allowed.
        bytes: u64,
    },
    /// A peer's request for our homeserver.
    Deliver {
        /// The peer.
        peer: PeerKey,
        /// Its id.
        id: u64,
        /// The head.
        head: RequestHead,
        /// The body, or its first part.
        body: Bytes,
        /// Whether more body follows ([`Event::RequestBody`]).
        more: bool,
    },
    /// More of a delivered request's body, in order.
    RequestBody {
        /// The peer.
        peer: PeerKey,
        /// Its id.
        id: u64,
        /// The bytes.
        data: Bytes,
        /// Whether more follows.
        more: bool,
    },
    /// The peer abandoned its request: stop delivering it.
    Abandoned {
        /// The peer.
        peer: PeerKey,
        /// Its id.
        id: u64,
    },
    /// Ask the router whether the message that carried ping `nonce` reached the peer's router,
    /// and answer with [`Relay::handle_delivery_check`].
    CheckDelivery {
        /// The peer.
        peer: PeerKey,
        /// The ping.
        nonce: u64,
    },
    /// The peer stopped answering (its requests failed with this failure).
    PeerDown {
        /// The peer.
        peer: PeerKey,
        /// 502 or 504.
        failure: Failure,
    },
    /// A peer that was down answered again.
    PeerUp {
        /// The peer.
        peer: PeerKey,
    },
}

/// One envelope to push through the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The destination edge.
    pub peer: PeerKey,
    /// The framed envelope (send it on [`TOPIC`]).
    pub payload: Bytes,
    /// Set when the envelope carries this ping: report its message id with
    /// [`Relay::handle_pushed`] so its delivery can be checked.
    pub ping: Option<u64>,
    /// Its direction (from us as the requester, or as the server); report the end of the push
    /// with [`Relay::handle_sent`].
    pub from_requester: bool,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Requests we relayed.
    pub requests_sent: u64,
    /// Responses we received.
    pub responses_received: u64,
    /// Our requests that failed with 502.
    pub failed_unreachable: u64,
    /// Our requests that failed with 504.
    pub failed_timeout: u64,
    /// Our requests the peer gave up on, or refused for lack of room here.
    pub failed_other: u64,
    /// Requests delivered for peers.
    pub requests_delivered: u64,
    /// Peer requests refused (over a limit).
    pub requests_refused: u64,
    /// Envelopes sent.
    pub envelopes_sent: u64,
    /// Items sent.
    pub items_sent: u64,
    /// Envelopes received.
    pub envelopes_received: u64,
    /// Envelopes or items dropped: undecodable or too many items, unknown id, out of window,
    /// overlapping or wrong offset, too many parts out of order, refusals over
    /// [`MAX_QUEUED_REFUSALS`].
    pub dropped: u64,
    /// Peer requests abandoned here because nothing moved on them for
    /// [`Limits::request_timeout`].
    pub incoming_expired: u64,
    /// Body bytes sent (both roles).
    pub body_bytes_sent: u64,
    /// Body bytes received (both roles).
    pub body_bytes_received: u64,
}

/// Owned form of a [`RelayItem`] waiting in a queue.
#[derive(Debug, Clone)]
enum Item {
    Request {
        id: u64,
        head: RequestHead,
        body: Bytes,
        more: bool,
    },
    Response {
        id: u64,
        head: ResponseHead,
        body: Bytes,
        more: bool,
    },
    Body {
        id: u64,
        offset: u64,
        data: Bytes,
        more: bool,
    },
    Cancel {
        id: u64,
        code: u16,
    },
    Window {
        id: u64,
        offset: u64,
    },
    Ping(u64),
    Pong(u64),
}

impl Item {
    /// A 503 cancel: what [`Queue::refusals`] counts.
    fn is_refusal(&self) -> bool {
        matches!(self, Self::Cancel { code: 503, .. })
    }

    fn size(&self) -> usize {
        fn hdrs(h: &[(String, Bytes)]) -> usize {
            h.iter().map(|(n, v)| n.len() + v.len() + 4).sum()
        }
        24 + match self {
            Self::Request { head, body, .. } => {
                head.method.len() + head.target.len() + hdrs(&head.headers) + body.len()
            }
            Self::Response { head, body, .. } => hdrs(&head.headers) + body.len(),
            Self::Body { data, .. } => data.len(),
            _ => 0,
        }
    }
}

/// The send side of a streamed body.
#[derive(Debug, Default)]
struct BodyOut {
    /// Next offset to send (the inline part counts).
    sent: u64,
    /// The receiver admits bytes below this offset.
    allowed: u64,
    /// Whether the last part was sent.
    done: bool,
}

/// The receive side of a streamed body.
#[derive(Debug, Default)]
struct BodyIn {
    /// Next offset expected.
    next: u64,
    /// Bytes the driver reported consumed (they count from the inline part).
    consumed: u64,
    /// The window last granted.
    granted: u64,
    /// Parts that arrived ahead of `next`, by offset: inside the window, not overlapping, at
    /// most [`MAX_AHEAD_PARTS`].
    ahead: BTreeMap<u64, (Bytes, bool)>,
    /// Where the body ends, once its last part arrived (perhaps ahead of others).
    end: Option<u64>,
    /// Whether the last part was passed on.
    done: bool,
}

#[derive(Debug)]
struct Outgoing {
    peer: PeerKey,
    sent_at: Instant,
    /// When anything last moved: sent, a window for our body, the head, a body part.
    progress: Instant,
    /// Our request body, when streamed.
    body_out: Option<BodyOut>,
    /// The response body, once its head arrived with `more`.
    body_in: Option<BodyIn>,
    /// Whether the response head arrived.
    answered: bool,
}

#[derive(Debug)]
struct Incoming {
    /// When anything last moved: the request, a part of its body, a window for ours, our
    /// head or a part of our body.
    progress: Instant,
    /// The request body, when streamed.
    body_in: Option<BodyIn>,
    /// Our response body, when streamed.
    body_out: Option<BodyOut>,
    /// Whether the response head was sent.
    responded: bool,
}

#[derive(Debug)]
struct Ping {
    nonce: u64,
    sent_at: Instant,
    /// When to ask the driver about its delivery next.
    check_at: Instant,
    /// Whether the driver was asked and has not answered yet.
    checking: bool,
}

#[derive(Debug, Default)]
struct Peer {
    /// When anything last arrived from the peer.
    last_heard: Option<Instant>,
    ping: Option<Ping>,
    /// Down since the last failed probe; its failure.
    down: Option<Failure>,
    /// Next probe while down.
    next_probe: Option<Instant>,
    /// Our requests to it in flight.
    outstanding: usize,
}

/// What waits to leave for one peer in one direction.
#[derive(Debug)]
struct Queue {
    peer: PeerKey,
    /// From us as the requester.
    from_requester: bool,
    items: VecDeque<Item>,
    /// The pong owed (the last ping's nonce): one however many pings came.
    pong: Option<u64>,
    /// Refusals among `items`.
    refusals: usize,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.items.is_empty() && self.pong.is_none()
    }
}

/// The relay state of one edge. See the module docs.
#[derive(Debug)]
pub struct Relay {
    limits: Limits,
    next_id: u64,
    next_nonce: u64,
    outgoing: HashMap<u64, Outgoing>,
    incoming: HashMap<(PeerKey, u64), Incoming>,
    incoming_per_peer: HashMap<PeerKey, usize>,
    peers: HashMap<PeerKey, Peer>,
    /// Queued items by destination and direction.
    queues: Vec<Queue>,
    queue_index: HashMap<(PeerKey, bool), usize>,
    /// Peers and directions with an envelope being handed to the router.
    sending: std::collections::HashSet<(PeerKey, bool)>,
    events: VecDeque<Event>,
    next_tick: Option<Instant>,
    stats: Stats,
}

impl Relay {
    /// A relay whose request ids start at `seed` (draw it at random).
    pub fn new(limits: Limits, seed: u64) -> Self {
        Self {
            limits,
            next_id: seed,
            next_nonce: seed.rotate_left(32),
            outgoing: HashMap::new(),
            incoming: HashMap::new(),
            incoming_per_peer: HashMap::new(),
            peers: HashMap::new(),
            queues: Vec::new(),
            queue_index: HashMap::new(),
            sending: std::collections::HashSet::new(),
            events: VecDeque::new(),
            next_tick: None,
            stats: Stats::default(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Our requests in flight.
    pub fn outgoing_len(&self) -> usize {
        self.outgoing.len()
    }

    /// Peer requests being served.
    pub fn incoming_len(&self) -> usize {
        self.incoming.len()
    }

    /// Whether a peer is marked down (since a failed request or probe).
    pub fn is_down(&self, peer: &PeerKey) -> bool {
        self.peers.get(peer).is_some_and(|p| p.down.is_some())
    }

    // ---- requesting side ----

    /// Relays a request to `peer`. With `more`, the rest of the body follows through
    /// [`Relay::send_body`] as [`Event::Credit`] allows. Returns the request's id, or
    /// `Err(Failure::Busy)` when too many are in flight.
    pub fn start_request(
        &mut self,
        now: Instant,
        peer: PeerKey,
        head: RequestHead,
        body: Bytes,
        more: bool,
    ) -> Result<u64, Failure> {
        if self.outgoing.len() >= self.limits.max_outgoing || !self.track_peer(peer) {
            self.stats.failed_other += 1;
            return Err(Failure::Busy);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let body_len = body.len() as u64;
        self.stats.body_bytes_sent += body_len;
        self.outgoing.insert(
            id,
            Outgoing {
                peer,
                sent_at: now,
                progress: now,
                body_out: more.then_some(BodyOut {
                    sent: body_len,
                    allowed: 0,
                    done: false,
                }),
                body_in: None,
                answered: false,
            },
        );
        if let Some(p) = self.peers.get_mut(&peer) {
            p.outstanding += 1;
        }
        self.stats.requests_sent += 1;
        self.queue(
            peer,
            true,
            Item::Request {
                id,
                head,
                body,
                more,
            },
        );
        self.arm(now);
        Ok(id)
    }

    /// Sends more of a streamed body: our request `id` (`peer` = `None`) or our response to
    /// `peer`'s request `id`. `data` must fit the credit granted; anything beyond it, or for an
    /// unknown or finished stream, is refused with `false` (the stream is then cancelled).
    pub fn send_body(
        &mut self,
        now: Instant,
        peer: Option<PeerKey>,
        id: u64,
        data: Bytes,
        more: bool,
    ) -> bool {
        let (dst, to_peer_req, out) = match peer {
            None => match self.outgoing.get_mut(&id) {
                Some(o) => {
                    o.progress = now;
                    (o.peer, true, o.body_out.as_mut())
                }
                None => return false,
            },
            Some(p) => match self.incoming.get_mut(&(p, id)) {
                Some(i) => {
                    i.progress = now;
                    (p, false, i.body_out.as_mut())
                }
                None => return false,
            },
        };
        let Some(out) = out else { return false };
        let end = out.sent + data.len() as u64;
        if out.done || end > out.allowed {
            return false;
        }
        let offset = out.sent;
        out.sent = end;
        out.done = !more;
        self.stats.body_bytes_sent += data.len() as u64;
        self.queue(
            dst,
            to_peer_req,
            Item::Body {
                id,
                offset,
                data,
                more,
            },
        );
        if !more && peer.is_some() {
            self.finish_incoming(dst, id);
        }
        self.arm(now);
        true
    }

    /// The homeserver gave up on our request `id` (its connection closed): tell the peer.
    pub fn cancel(&mut self, now: Instant, id: u64) {
        if let Some(o) = self.remove_outgoing(id) {
            self.queue(o.peer, true, Item::Cancel { id, code: 499 });
            self.arm(now);
        }
    }

    /// The driver consumed `n` more bytes of a received streamed body (our response `id` with
    /// `peer` = `None`, or `peer`'s request `id`): the window moves on.
    pub fn body_consumed(&mut self, now: Instant, peer: Option<PeerKey>, id: u64, n: u64) {
        let window = self.limits.window;
        let (dst, to_peer_req, body) = match peer {
            None => match self.outgoing.get_mut(&id) {
                Some(o) => (o.peer, true, o.body_in.as_mut()),
                None => return,
            },
            Some(p) => match self.incoming.get_mut(&(p, id)) {
                Some(i) => (p, false, i.body_in.as_mut()),
                None => return,
            },
        };
        let Some(b) = body else { return };
        b.consumed += n;
        if b.done || b.consumed + window < b.granted + window / 2 {
            return;
        }
        b.granted = b.consumed + window;
        let offset = b.granted;
        self.queue(dst, to_peer_req, Item::Window { id, offset });
        self.arm(now);
    }

    // ---- serving side ----

    /// Our homeserver's response to `peer`'s request `id`. With `more`, the body continues
    /// through [`Relay::send_body`] as [`Event::Credit`] allows. `false` if the request is
    /// unknown (abandoned) or already answered.
    pub fn respond(
        &mut self,
        now: Instant,
        peer: PeerKey,
        id: u64,
        head: ResponseHead,
        body: Bytes,
        more: bool,
    ) -> bool {
        let Some(i) = self.incoming.get_mut(&(peer, id)) else {
            return false;
        };
        if i.responded {
            return false;
        }
        i.responded = true;
        i.progress = now;
        let len = body.len() as u64;
        if more {
            i.body_out = Some(BodyOut {
                sent: len,
                allowed: 0,
                done: false,
            });
        }
        self.stats.body_bytes_sent += len;
        self.queue(
            peer,
            false,
            Item::Response {
                id,
                head,
                body,
                more,
            },
        );
        if !more {
            self.finish_incoming(peer, id);
        }
        self.arm(now);
        true
    }

    /// We cannot serve `peer`'s request `id` (our homeserver is unreachable, say): it fails
    /// at the requester with `status`.
    pub fn refuse(&mut self, now: Instant, peer: PeerKey, id: u64, status: u16) {
        if self.incoming.contains_key(&(peer, id)) {
            self.finish_incoming(peer, id);
            self.queue(peer, false, Item::Cancel { id, code: status });
            self.arm(now);
        }
    }

    // ---- from the overlay ----

    /// An overlay message from `peer` on [`TOPIC`].
    pub fn handle_message(&mut self, now: Instant, peer: PeerKey, payload: &Bytes) {
        let Some((from_requester, items)) = decode_envelope(payload) else {
            self.stats.dropped += 1;
            return;
        };
        self.stats.envelopes_received += 1;
        self.heard(now, peer);
        for item in items {
            if from_requester {
                self.handle_from_requester(now, peer, item);
            } else {
                self.handle_from_server(now, peer, item);
            }
        }
        self.arm(now);
    }

    fn handle_from_requester(&mut self, now: Instant, peer: PeerKey, item: Item) {
        match item {
            Item::Request {
                id,
                head,
                body,
                more,
            } => {
                if self.incoming.contains_key(&(peer, id)) {
                    self.stats.dropped += 1;
                    return;
                }
                let n = self.incoming_per_peer.get(&peer).copied().unwrap_or(0);
                if n >= self.limits.max_incoming_per_peer
                    || self.incoming.len() >= self.limits.max_incoming
                {
                    self.stats.requests_refused += 1;
                    self.queue_refusal(peer, id);
                    return;
                }
                *self.incoming_per_peer.entry(peer).or_default() += 1;
                let mut body_in = None;
                if more {
                    let b = BodyIn::after_head(body.len() as u64, self.limits.window);
                    let offset = b.granted;
                    body_in = Some(b);
                    self.queue(peer, false, Item::Window { id, offset });
                }
                self.incoming.insert(
                    (peer, id),
                    Incoming {
                        progress: now,
                        body_in,
                        body_out: None,
                        responded: false,
                    },
                );
                self.stats.requests_delivered += 1;
                self.stats.body_bytes_received += body.len() as u64;
                self.events.push_back(Event::Deliver {
                    peer,
                    id,
                    head,
                    body,
                    more,
                });
            }
            Item::Body {
                id,
                offset,
                data,
                more,
            } => {
                let ok = match self.incoming.get_mut(&(peer, id)) {
                    Some(Incoming {
                        body_in: Some(b),
                        progress,
                        ..
                    }) => accept_part(b, offset, data, more).inspect(|_| *progress = now),
                    _ => None,
                };
                match ok {
                    Some(parts) => {
                        for (data, more) in parts {
                            self.stats.body_bytes_received += data.len() as u64;
                            self.events.push_back(Event::RequestBody {
                                peer,
                                id,
                                data,
                                more,
                            });
                        }
                    }
                    None => self.stats.dropped += 1,
                }
            }
            Item::Cancel { id, .. } => {
                if self.incoming.contains_key(&(peer, id)) {
                    self.finish_incoming(peer, id);
                    self.events.push_back(Event::Abandoned { peer, id });
                }
            }
            Item::Window { id, offset } => {
                let credit = match self.incoming.get_mut(&(peer, id)) {
                    Some(Incoming {
                        body_out: Some(o),
                        progress,
                        ..
                    }) => widen(o, offset).inspect(|_| *progress = now),
                    _ => None,
                };
                match credit {
                    Some(0) => {}
                    Some(bytes) => self.events.push_back(Event::Credit {
                        id,
                        peer: Some(peer),
                        bytes,
                    }),
                    None => self.stats.dropped += 1,
                }
            }
            Item::Ping(nonce) => {
                let q = self.queue_for(peer, false);
                self.queues[q].pong = Some(nonce);
            }
            Item::Response { .. } | Item::Pong(_) => self.stats.dropped += 1,
        }
    }

    fn handle_from_server(&mut self, now: Instant, peer: PeerKey, item: Item) {
        match item {
            Item::Response {
                id,
                head,
                body,
                more,
            } => {
                let Some(o) = self.outgoing.get_mut(&id).filter(|o| o.peer == peer) else {
                    self.stats.dropped += 1;
                    return;
                };
                if o.answered {
                    self.stats.dropped += 1;
                    return;
                }
                o.answered = true;
                o.progress = now;
                // The response ends the upload too: whatever of our body is unsent is moot.
                o.body_out = None;
                self.stats.responses_received += 1;
                self.stats.body_bytes_received += body.len() as u64;
                if more {
                    let b = BodyIn::after_head(body.len() as u64, self.limits.window);
                    let offset = b.granted;
                    o.body_in = Some(b);
                    self.queue(peer, true, Item::Window { id, offset });
                } else {
                    self.remove_outgoing(id);
                }
                self.events.push_back(Event::Response {
                    id,
                    head,
                    body,
                    more,
                });
            }
            Item::Body {
                id,
                offset,
                data,
                more,
            } => {
                let parts = match self.outgoing.get_mut(&id).filter(|o| o.peer == peer) {
                    Some(Outgoing {
                        body_in: Some(b),
                        progress,
                        ..
                    }) => accept_part(b, offset, data, more).inspect(|_| *progress = now),
                    _ => None,
                };
                let Some(parts) = parts else {
                    self.stats.dropped += 1;
                    return;
                };
                let mut finished = false;
                for (data, more) in parts {
                    finished |= !more;
                    self.stats.body_bytes_received += data.len() as u64;
                    self.events
                        .push_back(Event::ResponseBody { id, data, more });
                }
                if finished {
                    self.remove_outgoing(id);
                }
            }
            Item::Cancel { id, code } => {
                if self.outgoing.get(&id).is_some_and(|o| o.peer == peer) {
                    self.remove_outgoing(id);
                    self.stats.failed_other += 1;
                    let status = if (400..600).contains(&code) {
                        code
                    } else {
                        502
                    };
                    self.events.push_back(Event::Failed {
                        id,
                        failure: Failure::Peer(status),
                    });
                } else {
                    self.stats.dropped += 1;
                }
            }
            Item::Window { id, offset } => {
                let credit = match self.outgoing.get_mut(&id).filter(|o| o.peer == peer) {
                    Some(Outgoing {
                        body_out: Some(o),
                        progress,
                        ..
                    }) => widen(o, offset).inspect(|_| *progress = now),
                    _ => None,
                };
                match credit {
                    Some(0) => {}
                    Some(bytes) => self.events.push_back(Event::Credit {
                        id,
                        peer: None,
                        bytes,
                    }),
                    // A window for an upload the response already ended is harmless.
                    None => {}
                }
            }
            Item::Pong(_) => {} // `heard` already cleared the ping.
            Item::Request { .. } | Item::Ping(_) => self.stats.dropped += 1,
        }
    }

    /// The driver pushed the envelope that carried ping `nonce` (or failed to: `pushed` =
    /// false, which counts as "not delivered" at once).
    pub fn handle_pushed(&mut self, now: Instant, peer: PeerKey, nonce: u64, pushed: bool) {
        if !pushed {
            self.handle_delivery_check(now, peer, nonce, Delivery::NoRoute);
        }
    }

    /// The answer to [`Event::CheckDelivery`].
    pub fn handle_delivery_check(
        &mut self,
        now: Instant,
        peer: PeerKey,
        nonce: u64,
        delivery: Delivery,
    ) {
        let max_pending = self.limits.max_pending;
        let ping_timeout = self.limits.ping_timeout;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(pg) = p.ping.as_mut().filter(|pg| pg.nonce == nonce) else {
            return;
        };
        let failure = match delivery {
            Delivery::Delivered => Failure::Timeout,
            Delivery::NoRoute => Failure::Unreachable,
            Delivery::Pending if now.saturating_duration_since(pg.sent_at) >= max_pending => {
                Failure::Unreachable
            }
            Delivery::Pending => {
                // Still on its way over a path the router believes in: ask again later.
                pg.checking = false;
                pg.check_at = now + ping_timeout;
                self.arm(now);
                return;
            }
        };
        p.ping = None;
        let was_down = p.down.replace(failure).is_some();
        p.next_probe = Some(now + self.limits.probe_interval);
        let ids: Vec<u64> = self
            .outgoing
            .iter()
            .filter(|(_, o)| o.peer == peer && !o.answered)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.fail(id, failure);
        }
        if !was_down {
            self.events.push_back(Event::PeerDown { peer, failure });
        }
        self.arm(now);
    }

    /// Stops probing `peer` and forgets it is down (its route was removed). Requests in
    /// flight to it are not affected.
    pub fn forget(&mut self, peer: &PeerKey) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.down = None;
            p.next_probe = None;
        }
    }

    // ---- timers ----

    /// When [`Relay::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_tick
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_tick.is_none_or(|t| now < t) {
            return;
        }
        self.next_tick = None;
        // Requests on which nothing moved for too long.
        let deadline = self.limits.request_timeout;
        let late: Vec<u64> = self
            .outgoing
            .iter()
            .filter(|(_, o)| now.saturating_duration_since(o.progress) >= deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(o) = self.outgoing.get(&id) {
                let peer = o.peer;
                self.queue(peer, true, Item::Cancel { id, code: 504 });
            }
            self.fail(id, Failure::Timeout);
        }
        let stalled: Vec<(PeerKey, u64)> = self
            .incoming
            .iter()
            .filter(|(_, i)| now.saturating_duration_since(i.progress) >= deadline)
            .map(|(key, _)| *key)
            .collect();
        for (peer, id) in stalled {
            self.finish_incoming(peer, id);
            self.stats.incoming_expired += 1;
            self.queue(peer, false, Item::Cancel { id, code: 504 });
            self.events.push_back(Event::Abandoned { peer, id });
        }
        // Pings and probes.
        let mut oldest: HashMap<PeerKey, Instant> = HashMap::new();
        for o in self.outgoing.values().filter(|o| !o.answered) {
            let e = oldest.entry(o.peer).or_insert(o.sent_at);
            *e = (*e).min(o.sent_at);
        }
        let mut pings = Vec::new();
        let mut checks = Vec::new();
        let mut lost_checks = Vec::new();
        for (key, p) in &mut self.peers {
            if let Some(pg) = &mut p.ping {
                if !pg.checking && now >= pg.check_at {
                    pg.checking = true;
                    checks.push((*key, pg.nonce));
                } else if pg.checking
                    && now.saturating_duration_since(pg.check_at) >= 4 * self.limits.ping_timeout
                {
                    // The driver never answered the check: treat it as undelivered.
                    lost_checks.push((*key, pg.nonce));
                }
                continue;
            }
            let owed = oldest.get(key).is_some_and(|since| {
                let quiet_since = p.last_heard.map_or(*since, |h| h.max(*since));
                now.saturating_duration_since(quiet_since) >= self.limits.probe_after
            });
            let probe = p.down.is_some() && p.next_probe.is_some_and(|t| now >= t);
            if owed || probe {
                pings.push(*key);
            }
        }
        for (peer, nonce) in lost_checks {
            self.handle_delivery_check(now, peer, nonce, Delivery::NoRoute);
        }
        for (peer, nonce) in checks {
            self.events.push_back(Event::CheckDelivery { peer, nonce });
        }
        for peer in pings {
            let nonce = self.next_nonce;
            self.next_nonce = self.next_nonce.wrapping_add(1);
            if let Some(p) = self.peers.get_mut(&peer) {
                p.ping = Some(Ping {
                    nonce,
                    sent_at: now,
                    check_at: now + self.limits.ping_timeout,
                    checking: false,
                });
                if p.down.is_some() {
                    p.next_probe = Some(now + self.limits.probe_interval);
                }
            }
            self.queue(peer, true, Item::Ping(nonce));
        }
        // Forget idle peers that are up and owe nothing.
        self.peers
            .retain(|_, p| p.outstanding > 0 || p.down.is_some() || p.ping.is_some());
        self.arm(now);
    }

    // ---- output ----

    /// The next envelope to push.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let idx = self
            .queues
            .iter()
            .position(|q| !q.is_empty() && !self.sending.contains(&(q.peer, q.from_requester)))?;
        let q = &mut self.queues[idx];
        let (peer, from_requester) = (q.peer, q.from_requester);
        let mut items: Vec<Item> = q.pong.take().map(Item::Pong).into_iter().collect();
        let mut size = 0;
        while let Some(it) = q.items.front() {
            let s = it.size();
            if !items.is_empty() && size + s > self.limits.max_envelope
                || items.len() == MAX_ENVELOPE_ITEMS
            {
                break;
            }
            size += s;
            if let Some(it) = q.items.pop_front() {
                if it.is_refusal() {
                    q.refusals = q.refusals.saturating_sub(1);
                }
                items.push(it);
            }
        }
        if q.is_empty() {
            // Keep the queue list short: drop empty queues.
            self.queues.swap_remove(idx);
            self.queue_index.clear();
            for (i, q) in self.queues.iter().enumerate() {
                self.queue_index.insert((q.peer, q.from_requester), i);
            }
        }
        let ping = items.iter().find_map(|i| match i {
            Item::Ping(n) => Some(*n),
            _ => None,
        });
        self.stats.envelopes_sent += 1;
        self.stats.items_sent += items.len() as u64;
        self.sending.insert((peer, from_requester));
        Some(Transmit {
            peer,
            payload: encode_items(&items, from_requester),
            ping,
            from_requester,
        })
    }

    /// The router took (or refused) the envelope [`Relay::poll_transmit`] gave for `peer` in
    /// this direction: the next one, holding whatever queued up meanwhile, may go.
    pub fn handle_sent(&mut self, peer: PeerKey, from_requester: bool) {
        self.sending.remove(&(peer, from_requester));
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- internals ----

    fn track_peer(&mut self, peer: PeerKey) -> bool {
        if self.peers.contains_key(&peer) {
            return true;
        }
        if self.peers.len() >= self.limits.max_peers {
            return false;
        }
        self.peers.insert(peer, Peer::default());
        true
    }

    fn heard(&mut self, now: Instant, peer: PeerKey) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.last_heard = Some(now);
            p.ping = None;
            p.next_probe = None;
            if p.down.take().is_some() {
                self.events.push_back(Event::PeerUp { peer });
            }
        }
    }

    fn queue(&mut self, peer: PeerKey, req_topic: bool, item: Item) {
        let idx = self.queue_for(peer, req_topic);
        let q = &mut self.queues[idx];
        if item.is_refusal() {
            q.refusals += 1;
        }
        q.items.push_back(item);
    }

    /// Queues a 503 cancel for `peer`'s request `id`, unless [`MAX_QUEUED_REFUSALS`] wait
    /// already (then it is dropped and counted).
    fn queue_refusal(&mut self, peer: PeerKey, id: u64) {
        let idx = self.queue_for(peer, false);
        if self.queues[idx].refusals >= MAX_QUEUED_REFUSALS {
            self.stats.dropped += 1;
            return;
        }
        self.queue(peer, false, Item::Cancel { id, code: 503 });
    }

    /// The index of the queue for `peer` in this direction, made if there is none.
    fn queue_for(&mut self, peer: PeerKey, req_topic: bool) -> usize {
        if let Some(i) = self.queue_index.get(&(peer, req_topic)) {
            return *i;
        }
        self.queues.push(Queue {
            peer,
            from_requester: req_topic,
            items: VecDeque::new(),
            pong: None,
            refusals: 0,
        });
        let i = self.queues.len() - 1;
        self.queue_index.insert((peer, req_topic), i);
        i
    }

    fn fail(&mut self, id: u64, failure: Failure) {
        if self.remove_outgoing(id).is_some() {
            match failure {
                Failure::Unreachable => self.stats.failed_unreachable += 1,
                Failure::Timeout => self.stats.failed_timeout += 1,
                _ => self.stats.failed_other += 1,
            }
            self.events.push_back(Event::Failed { id, failure });
        }
    }

    fn remove_outgoing(&mut self, id: u64) -> Option<Outgoing> {
        let o = self.outgoing.remove(&id)?;
        if let Some(p) = self.peers.get_mut(&o.peer) {
            p.outstanding = p.outstanding.saturating_sub(1);
        }
        Some(o)
    }

    fn finish_incoming(&mut self, peer: PeerKey, id: u64) {
        if self.incoming.remove(&(peer, id)).is_some()
            && let Some(n) = self.incoming_per_peer.get_mut(&peer)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.incoming_per_peer.remove(&peer);
            }
        }
    }

    fn arm(&mut self, now: Instant) {
        let busy = !self.outgoing.is_empty() || !self.peers.is_empty() || !self.incoming.is_empty();
        if busy && self.next_tick.is_none() {
            self.next_tick = Some(now + self.limits.tick);
        }
    }
}

impl BodyIn {
    /// The receive side once the head arrived with `first` body bytes: one window granted
    /// beyond them (the caller sends it).
    fn after_head(first: u64, window: u64) -> Self {
        Self {
            next: first,
            consumed: first,
            granted: first + window,
            ..Self::default()
        }
    }
}

/// Takes a part for a receiving body: `Some(parts now in order)`, or `None` if it lies outside
/// the window, is empty but not the last, overlaps bytes received, lies beyond the end or moves
/// it, or would be one part too many out of order.
fn accept_part(b: &mut BodyIn, offset: u64, data: Bytes, more: bool) -> Option<Vec<(Bytes, bool)>> {
    let end = offset.checked_add(data.len() as u64)?;
    if b.done || offset < b.next || end > b.granted || (data.is_empty() && more) {
        return None;
    }
    match (b.end, more) {
        (Some(e), true) if end > e => return None,
        (Some(_), false) => return None,
        _ => {}
    }
    if offset == b.next {
        if b.ahead.first_key_value().is_some_and(|(o, _)| *o < end) {
            return None;
        }
        // In order: passed on as it is, with whatever now follows it.
        b.next = end;
        b.done = !more;
        let mut out = vec![(data, more)];
        while !b.done
            && let Some((data, more)) = b.ahead.remove(&b.next)
        {
            b.next += data.len() as u64;
            b.done = !more;
            out.push((data, more));
        }
        if b.done {
            b.ahead.clear();
        }
        return Some(out);
    }
    // Ahead of a gap: kept only where nothing is yet, copied out of its envelope (a slice
    // would keep the whole envelope alive).
    let before = b.ahead.range(..offset).next_back();
    let after = b.ahead.range(offset..).next();
    let overlaps = before.is_some_and(|(o, (d, _))| o + d.len() as u64 > offset)
        || after.is_some_and(|(o, _)| *o < end || (end == *o && !more))
        || (!more && b.ahead.last_key_value().is_some_and(|(o, _)| *o >= end));
    if overlaps || b.ahead.len() >= MAX_AHEAD_PARTS {
        return None;
    }
    if !more {
        b.end = Some(end);
    }
    b.ahead
        .insert(offset, (Bytes::copy_from_slice(&data), more));
    Some(Vec::new())
}

/// Widens a send window; the additional credit, or `None` for a finished stream.
fn widen(o: &mut BodyOut, offset: u64) -> Option<u64> {
    if o.done {
        return None;
    }
    let base = o.allowed.max(o.sent);
    if offset <= base {
        o.allowed = o.allowed.max(offset);
        return Some(0);
    }
    o.allowed = offset;
    Some(offset - base)
}

fn headers_owned(h: &[Header<'_>], body: &Bytes) -> Vec<(String, Bytes)> {
    h.iter()
        .map(|h| (h.name.to_ascii_lowercase(), body.slice_ref(h.value)))
        .collect()
}

/// The direction (`true`: from the requester) and items of a message that is exactly one
/// envelope frame (byte strings as slices of it).
fn decode_envelope(payload: &Bytes) -> Option<(bool, Vec<Item>)> {
    let h = framing::decode_header(payload, framing::DEFAULT_MAX_BODY).ok()??;
    if payload.len() != framing::HEADER_LEN + h.len {
        return None;
    }
    let body = payload.slice(framing::HEADER_LEN..);
    match Message::decode(h.kind, &body) {
        Ok(Message::Envelope(env)) => Some((true, owned_items(&env, &body))),
        Ok(Message::ResponseEnvelope(env)) => Some((false, owned_items(&env, &body))),
        _ => None,
    }
}

/// Copies an envelope's items out of the frame body (byte strings as slices of it).
fn owned_items(env: &Envelope<'_>, body: &Bytes) -> Vec<Item> {
    let slice = |b: &[u8]| {
        if b.is_empty() {
            Bytes::new()
        } else {
            body.slice_ref(b)
        }
    };
    env.items
        .iter()
        .map(|it| match it {
            RelayItem::Request(r) => Item::Request {
                id: r.id,
                head: RequestHead {
                    method: r.method.to_owned(),
                    target: slice(r.target),
                    headers: headers_owned(&r.headers, body),
                },
                body: slice(r.body),
                more: r.more,
            },
            RelayItem::Response(r) => Item::Response {
                id: r.id,
                head: ResponseHead {
                    status: r.status,
                    headers: headers_owned(&r.headers, body),
                },
                body: slice(r.body),
                more: r.more,
            },
            RelayItem::Body(b) => Item::Body {
                id: b.id,
                offset: b.offset,
                data: slice(b.data),
                more: b.more,
            },
            RelayItem::Cancel { id, code } => Item::Cancel {
                id: *id,
                code: code.0,
            },
            RelayItem::Window { id, offset } => Item::Window {
                id: *id,
                offset: *offset,
            },
            RelayItem::Ping { nonce } => Item::Ping(*nonce),
            RelayItem::Pong { nonce } => Item::Pong(*nonce),
        })
        .collect()
}

fn encode_items(items: &[Item], from_requester: bool) -> Bytes {
    fn hdrs(h: &[(String, Bytes)]) -> Vec<Header<'_>> {
        h.iter()
            .map(|(n, v)| Header { name: n, value: v })
            .collect()
    }
    let env = Envelope {
        items: items
            .iter()
            .map(|it| match it {
                Item::Request {
                    id,
                    head,
                    body,
                    more,
                } => RelayItem::Request(RelayRequest {
                    id: *id,
                    method: &head.method,
                    target: &head.target,
                    headers: hdrs(&head.headers),
                    body,
                    more: *more,
                }),
                Item::Response {
                    id,
                    head,
                    body,
                    more,
                } => RelayItem::Response(RelayResponse {
                    id: *id,
                    status: head.status,
                    headers: hdrs(&head.headers),
                    body,
                    more: *more,
                }),
                Item::Body {
                    id,
                    offset,
                    data,
                    more,
                } => RelayItem::Body(BodyPart {
                    id: *id,
                    offset: *offset,
                    data,
                    more: *more,
                }),
                Item::Cancel { id, code } => RelayItem::Cancel {
                    id: *id,
                    code: ErrorCode(*code),
                },
                Item::Window { id, offset } => RelayItem::Window {
                    id: *id,
                    offset: *offset,
                },
                Item::Ping(n) => RelayItem::Ping { nonce: *n },
                Item::Pong(n) => RelayItem::Pong { nonce: *n },
            })
            .collect(),
    };
    let mut out = bytes::BytesMut::with_capacity(items.iter().map(Item::size).sum::<usize>() + 16);
    // An envelope is bounded by `max_envelope` plus one item, far below the frame limit.
    let msg = if from_requester {
        Message::Envelope(env)
    } else {
        Message::ResponseEnvelope(env)
    };
    if msg.encode(framing::DEFAULT_MAX_BODY, &mut out).is_err() {
        out.clear();
    }
    out.freeze()
}

#[cfg(test)]
mod tests;
