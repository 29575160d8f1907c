//! Deterministic simulation of two edges: envelopes cross a fake overlay with a fixed one-way
//! latency; the clock jumps to the next event.

use std::collections::VecDeque;

use hyphae_wire::framing::Kind;

use super::*;

const A: PeerKey = [0xa; 32];
const B: PeerKey = [0xb; 32];
const LATENCY: Duration = Duration::from_millis(20);

struct Net {
    now: Instant,
    a: Relay,
    b: Relay,
    /// (arrival, to, from, payload)
    wire: VecDeque<(Instant, PeerKey, PeerKey, Bytes)>,
    /// Whether the overlay carries anything (false: the route is gone).
    up: bool,
    /// Whether edge B processes what arrives (false: its router takes messages, the edge is dead).
    b_alive: bool,
    /// Whether the router reports pings as still on their way (a busy path).
    congested: bool,
    events_a: Vec<Event>,
    events_b: Vec<Event>,
    /// Envelopes sent by each side.
    sent: (usize, usize),
    /// Pings pushed while the overlay was down (not delivered).
    lost_pings: Vec<(PeerKey, u64)>,
    /// Pings pushed while the overlay was up.
    delivered_pings: Vec<(PeerKey, u64)>,
}

impl Net {
    fn new() -> Self {
        Self::with(Limits::default())
    }

    fn with(limits: Limits) -> Self {
        let now = Instant::now();
        Self {
            now,
            a: Relay::new(limits.clone(), 1000),
            b: Relay::new(limits, 5000),
            wire: VecDeque::new(),
            up: true,
            b_alive: true,
            congested: false,
            events_a: Vec::new(),
            events_b: Vec::new(),
            sent: (0, 0),
            lost_pings: Vec::new(),
            delivered_pings: Vec::new(),
        }
    }

    /// Moves every transmit onto the wire and collects events.
    fn pump(&mut self) {
        loop {
            let mut any = false;
            while let Some(t) = self.a.poll_transmit() {
                any = true;
                self.sent.0 += 1;
                self.send(A, t);
            }
            while let Some(t) = self.b.poll_transmit() {
                any = true;
                self.sent.1 += 1;
                self.send(B, t);
            }
            while let Some(e) = self.a.poll_event() {
                any = true;
                if let Event::CheckDelivery { peer, nonce } = e {
                    let d = if self.delivered_pings.contains(&(peer, nonce)) && !self.congested {
                        Delivery::Delivered
                    } else if self.up {
                        Delivery::Pending
                    } else {
                        Delivery::NoRoute
                    };
                    self.a.handle_delivery_check(self.now, peer, nonce, d);
                }
                self.events_a.push(e);
            }
            while let Some(e) = self.b.poll_event() {
                any = true;
                self.events_b.push(e);
            }
            if !any {
                return;
            }
        }
    }

    fn send(&mut self, from: PeerKey, t: Transmit) {
        // The simulated router takes every envelope at once.
        if from == A {
            self.a.handle_sent(t.peer, t.from_requester);
        } else {
            self.b.handle_sent(t.peer, t.from_requester);
        }
        if let Some(n) = t.ping {
            if self.up {
                self.delivered_pings.push((t.peer, n));
            } else {
                self.lost_pings.push((t.peer, n));
            }
        }
        if self.up {
            self.wire
                .push_back((self.now + LATENCY, t.peer, from, t.payload));
        }
    }

    /// Runs until `until`, delivering envelopes and firing timers in time order.
    fn run_until(&mut self, until: Instant) {
        loop {
            self.pump();
            let next_wire = self.wire.front().map(|w| w.0);
            let next_timer = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let next = [next_wire, next_timer].into_iter().flatten().min();
            let Some(next) = next.filter(|t| *t <= until) else {
                self.now = until;
                return;
            };
            self.now = self.now.max(next);
            while self.wire.front().is_some_and(|w| w.0 <= self.now) {
                let Some((_, to, from, payload)) = self.wire.pop_front() else {
                    break;
                };
                if to == A {
                    self.a.handle_message(self.now, from, &payload);
                } else if self.b_alive {
                    self.b.handle_message(self.now, from, &payload);
                }
            }
            self.a.handle_timeout(self.now);
            self.b.handle_timeout(self.now);
        }
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// B's homeserver answers every delivered request at once with 200 and the target echoed.
    fn b_answers(&mut self) {
        let delivered: Vec<(PeerKey, u64, RequestHead)> = self
            .events_b
            .drain(..)
            .filter_map(|e| match e {
                Event::Deliver { peer, id, head, .. } => Some((peer, id, head)),
                _ => None,
            })
            .collect();
        for (peer, id, head) in delivered {
            let h = ResponseHead {
                status: 200,
                headers: vec![(
                    "content-type".into(),
                    Bytes::from_static(b"application/json"),
                )],
            };
            assert!(self.b.respond(self.now, peer, id, h, head.target, false));
        }
    }
}

fn get(target: &'static str) -> RequestHead {
    RequestHead {
        method: "GET".into(),
        target: Bytes::from_static(target.as_bytes()),
        headers: vec![(
            "authorization".into(),
            Bytes::from_static(b"X-Matrix origin=\"a\",key=\"ed25519:k\",sig=\"s\""),
        )],
    }
}

#[test]
fn a_request_gets_its_real_response_with_everything_intact() {
    let mut n = Net::new();
    let target = "/_matrix/federation/v1/state_ids/%21room%3Aa?event_id=%24e";
    let id =
        n.a.start_request(n.now, B, get(target), Bytes::new(), false)
            .unwrap();
    n.run_for(LATENCY);
    let Some(Event::Deliver {
        peer, head, more, ..
    }) = n.events_b.first().cloned()
    else {
        panic!("nothing delivered: {:?}", n.events_b);
    };
    assert_eq!((peer, more), (A, false));
    assert_eq!(
        head,
        get(target),
        "method, raw target and headers unchanged"
    );
    n.b_answers();
    n.run_for(LATENCY);
    assert_eq!(
        n.events_a,
        vec![Event::Response {
            id,
            head: ResponseHead {
                status: 200,
                headers: vec![(
                    "content-type".into(),
                    Bytes::from_static(b"application/json")
                )],
            },
            body: Bytes::from_static(target.as_bytes()),
            more: false,
        }]
    );
    assert_eq!(n.a.outgoing_len(), 0);
    assert_eq!(n.b.incoming_len(), 0);
}

#[test]
fn requests_ready_together_share_one_envelope() {
    let mut n = Net::new();
    for _ in 0..50 {
        n.a.start_request(n.now, B, get("/x"), Bytes::from_static(b"{}"), false)
            .unwrap();
    }
    n.run_for(LATENCY);
    assert_eq!(n.sent.0, 1, "50 requests, one envelope");
    assert_eq!(n.events_b.len(), 50);
    n.b_answers();
    n.run_for(LATENCY);
    assert_eq!(n.sent.1, 1, "50 responses, one envelope");
    assert_eq!(n.events_a.len(), 50);
}

/// Streams a body of `len` bytes from one side as credit allows, checking the receiver never
/// holds more than one window beyond what it consumed.
#[test]
fn a_large_response_streams_inside_the_window() {
    let mut n = Net::new();
    let limits = n.a.limits().clone();
    let len: u64 = 50 << 20;
    let id =
        n.a.start_request(n.now, B, get("/big"), Bytes::new(), false)
            .unwrap();
    n.run_for(LATENCY);
    let Some(Event::Deliver { peer, id: bid, .. }) = n.events_b.pop() else {
        panic!("not delivered");
    };
    let first = Bytes::from(vec![7u8; limits.inline_body]);
    let head = ResponseHead {
        status: 200,
        headers: vec![],
    };
    assert!(n.b.respond(n.now, peer, bid, head, first, true));
    let mut sent = limits.inline_body as u64;
    let mut credit = 0u64;
    let mut received = 0u64;
    let mut done = false;
    let mut max_unconsumed = 0u64;
    while !done {
        n.run_for(LATENCY / 4);
        for e in n.events_b.drain(..) {
            if let Event::Credit {
                bytes,
                peer: Some(_),
                ..
            } = e
            {
                credit += bytes;
            }
        }
        while credit > 0 && sent < len {
            let part = (limits.part_size as u64).min(credit).min(len - sent);
            let more = sent + part < len;
            assert!(n.b.send_body(
                n.now,
                Some(A),
                bid,
                Bytes::from(vec![7u8; part as usize]),
                more
            ));
            sent += part;
            credit -= part;
        }
        // A's homeserver reads everything that arrived; the window moves on.
        let mut got = 0;
        for e in n.events_a.drain(..) {
            match e {
                Event::Response { body, more, .. } => {
                    got += body.len() as u64;
                    done |= !more;
                }
                Event::ResponseBody { data, more, .. } => {
                    got += data.len() as u64;
                    done |= !more;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        max_unconsumed = max_unconsumed.max(got);
        received += got;
        n.a.body_consumed(n.now, None, id, got);
    }
    assert_eq!(received, len);
    assert_eq!(sent, len);
    assert!(
        max_unconsumed <= limits.window + limits.inline_body as u64,
        "receiver held {max_unconsumed} bytes at once"
    );
    assert_eq!(n.a.outgoing_len(), 0);
    assert_eq!(n.b.incoming_len(), 0);
    // Sending beyond the end is refused.
    assert!(!n.b.send_body(n.now, Some(A), bid, Bytes::from_static(b"x"), false));
}

#[test]
fn a_streamed_request_body_waits_for_the_window_and_arrives_in_order() {
    let mut n = Net::new();
    let id =
        n.a.start_request(n.now, B, get("/up"), Bytes::from_static(b"ab"), true)
            .unwrap();
    // No credit before the receiver saw the head.
    assert!(!n.a.send_body(n.now, None, id, Bytes::from_static(b"cd"), false));
    n.run_for(LATENCY * 2);
    let credit: u64 = n
        .events_a
        .iter()
        .map(|e| match e {
            Event::Credit {
                id: i,
                peer: None,
                bytes,
            } if *i == id => *bytes,
            _ => 0,
        })
        .sum();
    assert_eq!(credit, n.a.limits().window);
    assert!(n.a.send_body(n.now, None, id, Bytes::from_static(b"cd"), true));
    assert!(n.a.send_body(n.now, None, id, Bytes::from_static(b"ef"), false));
    n.run_for(LATENCY);
    let body: Vec<u8> = n
        .events_b
        .iter()
        .flat_map(|e| match e {
            Event::Deliver { body, .. } => body.to_vec(),
            Event::RequestBody { data, .. } => data.to_vec(),
            _ => vec![],
        })
        .collect();
    assert_eq!(body, b"abcdef");
    assert!(matches!(
        n.events_b.last(),
        Some(Event::RequestBody { more: false, .. })
    ));
}

#[test]
fn no_route_fails_with_502_and_the_peer_comes_back_after_a_probe() {
    let mut n = Net::new();
    n.up = false;
    let start = n.now;
    let id =
        n.a.start_request(n.now, B, get("/x"), Bytes::new(), false)
            .unwrap();
    n.run_for(Duration::from_secs(5));
    let failed_at = n
        .events_a
        .iter()
        .position(|e| {
            *e == Event::Failed {
                id,
                failure: Failure::Unreachable,
            }
        })
        .expect("502");
    assert!(n.events_a[failed_at..].contains(&Event::PeerDown {
        peer: B,
        failure: Failure::Unreachable
    }));
    assert!(n.a.is_down(&B));
    let _ = start;
    // The route comes back: the next probe brings the peer up within a probe interval plus a
    // round trip.
    n.up = true;
    n.events_a.clear();
    n.run_for(n.a.limits().probe_interval + 2 * LATENCY + n.a.limits().tick);
    assert_eq!(n.events_a, vec![Event::PeerUp { peer: B }]);
    assert!(!n.a.is_down(&B));
}

#[test]
fn failure_is_detected_within_three_seconds() {
    for (overlay_up, want) in [(false, Failure::Unreachable), (true, Failure::Timeout)] {
        let mut n = Net::new();
        n.up = overlay_up;
        n.b_alive = false;
        let t0 = n.now;
        let id =
            n.a.start_request(n.now, B, get("/x"), Bytes::new(), false)
                .unwrap();
        let mut when = None;
        while when.is_none() && n.now < t0 + Duration::from_secs(10) {
            n.run_for(Duration::from_millis(10));
            if n.events_a.contains(&Event::Failed { id, failure: want }) {
                when = Some(n.now - t0);
            }
        }
        let when = when.unwrap_or_else(|| panic!("no {want:?}: {:?}", n.events_a));
        assert!(when < Duration::from_secs(3), "{want:?} after {when:?}");
    }
}

#[test]
fn a_slow_homeserver_is_not_a_dead_edge() {
    // B is alive but its homeserver takes 20 s: pings are answered, nothing fails.
    let mut n = Net::new();
    let id =
        n.a.start_request(n.now, B, get("/slow"), Bytes::new(), false)
            .unwrap();
    n.run_for(Duration::from_secs(20));
    assert!(
        !n.events_a
            .iter()
            .any(|e| matches!(e, Event::Failed { .. } | Event::PeerDown { .. })),
        "{:?}",
        n.events_a
    );
    n.b_answers();
    n.run_for(LATENCY);
    assert!(matches!(n.events_a.last(), Some(Event::Response { id: i, .. }) if *i == id));
}

#[test]
fn a_request_past_its_deadline_fails_with_504_and_is_cancelled_at_the_peer() {
    let limits = Limits {
        request_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    let mut n = Net::with(limits);
    let id =
        n.a.start_request(n.now, B, get("/slow"), Bytes::new(), false)
            .unwrap();
    n.run_for(Duration::from_secs(6));
    assert!(n.events_a.contains(&Event::Failed {
        id,
        failure: Failure::Timeout
    }));
    assert!(
        n.events_b
            .iter()
            .any(|e| matches!(e, Event::Abandoned { peer: A, .. }))
    );
    assert_eq!(n.b.incoming_len(), 0);
    // A late response is dropped and counted.
    let dropped = n.a.stats().dropped;
    let Some(Event::Deliver { id: bid, .. }) = n.events_b.first().cloned() else {
        panic!()
    };
    assert!(!n.b.respond(
        n.now,
        A,
        bid,
        ResponseHead {
            status: 200,
            headers: vec![]
        },
        Bytes::new(),
        false
    ));
    n.run_for(LATENCY);
    assert_eq!(n.a.stats().dropped, dropped);
}

#[test]
fn a_refusal_at_the_peer_reaches_the_homeserver_with_its_status() {
    let mut n = Net::new();
    let id =
        n.a.start_request(n.now, B, get("/x"), Bytes::new(), false)
            .unwrap();
    n.run_for(LATENCY);
    let Some(Event::Deliver { id: bid, .. }) = n.events_b.first().cloned() else {
        panic!()
    };
    n.b.refuse(n.now, A, bid, 421);
    n.run_for(LATENCY);
    assert_eq!(
        n.events_a,
        vec![Event::Failed {
            id,
            failure: Failure::Peer(421)
        }]
    );
}

#[test]
fn garbage_and_strays_are_dropped_and_counted() {
    let mut n = Net::new();
    for junk in [
        &b""[..],
        b"HY",
        b"HY\x01\x21\x00\x00\x00\x05abc",
        b"not a frame at all",
    ] {
        n.a.handle_message(n.now, B, &Bytes::copy_from_slice(junk));
    }
    // A frame of another kind (a Push) is not an envelope.
    let mut push = bytes::BytesMut::new();
    Message::Push(framing::Push {
        tag: 1,
        dst: framing::Destination::PublicKey(A),
        topic: b"",
        payload: b"",
        reply_to: None,
        reply_timeout_ms: None,
    })
    .encode(1 << 20, &mut push)
    .unwrap();
    n.a.handle_message(n.now, B, &push.freeze());
    assert_eq!(n.a.stats().dropped, 5);
    // A request sent in a response envelope is a stray: B's request, re-framed as if B were
    // answering.
    n.b.start_request(n.now, A, get("/x"), Bytes::new(), false)
        .unwrap();
    let t = n.b.poll_transmit().unwrap();
    let mut stray = t.payload.to_vec();
    stray[3] = Kind::RESPONSE_ENVELOPE.0;
    n.a.handle_message(n.now, B, &Bytes::from(stray));
    assert_eq!(n.a.stats().dropped, 6);
    assert!(n.a.poll_event().is_none());
    // A response for a request A never made is dropped too.
    let mut resp = bytes::BytesMut::new();
    Message::ResponseEnvelope(Envelope {
        items: vec![RelayItem::Response(RelayResponse {
            id: 42,
            status: 200,
            headers: vec![],
            body: b"",
            more: false,
        })],
    })
    .encode(1 << 20, &mut resp)
    .unwrap();
    n.a.handle_message(n.now, B, &resp.freeze());
    assert_eq!(n.a.stats().dropped, 7);
    assert!(n.a.poll_event().is_none());
}

#[test]
fn too_many_requests_from_one_peer_are_refused_not_queued() {
    let limits = Limits {
        max_incoming_per_peer: 3,
        ..Limits::default()
    };
    let mut n = Net::with(limits);
    let ids: Vec<u64> = (0..5)
        .map(|_| {
            n.a.start_request(n.now, B, get("/x"), Bytes::new(), false)
                .unwrap()
        })
        .collect();
    n.run_for(LATENCY * 2);
    let refused: Vec<u64> = n
        .events_a
        .iter()
        .filter_map(|e| match e {
            Event::Failed {
                id,
                failure: Failure::Peer(503),
            } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(refused, ids[3..].to_vec());
    assert_eq!(n.b.incoming_len(), 3);
    assert_eq!(n.b.stats().requests_refused, 2);
}

#[test]
fn a_ping_stuck_behind_data_on_a_live_route_is_not_a_failure() {
    // A's router has a route and says the ping is still on its way (queued behind a large
    // body, say): A keeps waiting; B's answer, when it comes, settles it.
    let mut n = Net::new();
    n.congested = true;
    n.b_alive = false;
    let id =
        n.a.start_request(n.now, B, get("/x"), Bytes::new(), false)
            .unwrap();
    n.run_for(Duration::from_secs(5));
    assert!(
        !n.events_a.iter().any(|e| matches!(e, Event::Failed { .. })),
        "{:?}",
        n.events_a
    );
    // Past `max_pending` the path counts as broken: 502.
    n.run_for(n.a.limits().max_pending);
    assert!(n.events_a.contains(&Event::Failed {
        id,
        failure: Failure::Unreachable
    }));
}

#[test]
fn what_queues_while_an_envelope_is_being_pushed_leaves_together_next() {
    let mut n = Net::new();
    n.a.start_request(n.now, B, get("/1"), Bytes::new(), false)
        .unwrap();
    let first = n.a.poll_transmit().unwrap();
    // While the router has not taken the first envelope, nothing else leaves...
    for i in 0..10 {
        let t = if i % 2 == 0 { "/even" } else { "/odd" };
        n.a.start_request(n.now, B, get(t), Bytes::new(), false)
            .unwrap();
        assert!(n.a.poll_transmit().is_none());
    }
    // ... and then all ten leave in one.
    n.a.handle_sent(B, first.from_requester);
    let next = n.a.poll_transmit().unwrap();
    assert!(n.a.poll_transmit().is_none());
    assert_eq!(n.a.stats().envelopes_sent, 2);
    assert_eq!(n.a.stats().items_sent, 11);
    n.a.handle_sent(B, next.from_requester);
    assert!(n.a.poll_transmit().is_none());
}

/// B after receiving A's request `id` with a streamed body whose first `first` bytes came
/// inline.
fn serving_a_streamed_request(limits: Limits, id: u64, first: &'static [u8]) -> Relay {
    let mut b = Relay::new(limits, 5000);
    let req = Item::Request {
        id,
        head: get("/_matrix/federation/v1/send/1"),
        body: Bytes::from_static(first),
        more: true,
    };
    b.handle_message(Instant::now(), A, &encode_items(&[req], true));
    b
}

/// Parts of request `id`'s body B holds out of order, and their bytes.
fn held_ahead(b: &Relay, id: u64) -> (usize, u64) {
    let body = b.incoming[&(A, id)].body_in.as_ref().unwrap();
    let bytes = body.ahead.values().map(|(d, _)| d.len() as u64).sum();
    (body.ahead.len(), bytes)
}

fn part(id: u64, offset: u64, data: Vec<u8>, more: bool) -> Item {
    Item::Body {
        id,
        offset,
        data: Bytes::from(data),
        more,
    }
}

#[test]
fn parts_out_of_order_are_held_inside_the_window_without_overlaps() {
    let window = 64 * 1024;
    let limits = Limits {
        window,
        ..Limits::default()
    };
    let mut b = serving_a_streamed_request(limits, 7, b"0123456789");
    let now = Instant::now();
    // The gap at 10 stays open; every part lies inside the window but overlaps the one
    // before it.
    for k in 1..=64u64 {
        let p = part(7, 10 + k, vec![b'x'; (window - k) as usize], true);
        b.handle_message(now, A, &encode_items(&[p], true));
    }
    let (parts, bytes) = held_ahead(&b, 7);
    assert_eq!(parts, 1, "only the first of the overlapping parts");
    assert!(bytes <= window);
    assert_eq!(b.stats().dropped, 63);
    // Empty parts other than the last, and parts beyond a last part, are dropped too.
    let mut b = serving_a_streamed_request(Limits::default(), 7, b"0123456789");
    let empties: Vec<Item> = (0..10_000).map(|k| part(7, 11 + k, vec![], true)).collect();
    b.handle_message(now, A, &encode_items(&empties, true));
    assert_eq!(held_ahead(&b, 7).0, 0);
    let last = part(7, 20, vec![b'z'; 5], false);
    let beyond = part(7, 30, vec![b'z'; 5], true);
    b.handle_message(now, A, &encode_items(&[last, beyond], true));
    assert_eq!(held_ahead(&b, 7), (1, 5));
    // One-byte parts, none overlapping: at most MAX_AHEAD_PARTS kept.
    let mut b = serving_a_streamed_request(Limits::default(), 7, b"0123456789");
    let bytes: Vec<Item> = (0..5_000)
        .map(|k| part(7, 11 + 2 * k, vec![b'y'], true))
        .collect();
    b.handle_message(now, A, &encode_items(&bytes, true));
    assert_eq!(held_ahead(&b, 7).0, MAX_AHEAD_PARTS);
}

#[test]
fn parts_held_out_of_order_do_not_keep_their_envelope_alive() {
    let mut b = serving_a_streamed_request(Limits::default(), 7, b"0123456789");
    let env = encode_items(&[part(7, 20, vec![b'a'; 100], true)], true);
    b.handle_message(Instant::now(), A, &env);
    let body = b.incoming[&(A, 7)].body_in.as_ref().unwrap();
    let (held, _) = &body.ahead[&20];
    let inside = env.as_ptr_range();
    assert!(!inside.contains(&held.as_ptr()), "a slice of the envelope");
}

#[test]
fn a_body_that_arrives_out_of_order_is_passed_on_whole_and_in_order() {
    let mut b = serving_a_streamed_request(Limits::default(), 7, b"0123");
    let now = Instant::now();
    let items = [
        part(7, 12, b"cccc".to_vec(), false),
        part(7, 8, b"bbbb".to_vec(), true),
        part(7, 4, b"aaaa".to_vec(), true),
    ];
    for it in items {
        b.handle_message(now, A, &encode_items(&[it], true));
    }
    let body: Vec<(Bytes, bool)> = std::iter::from_fn(|| b.poll_event())
        .filter_map(|e| match e {
            Event::RequestBody { data, more, .. } => Some((data, more)),
            _ => None,
        })
        .collect();
    assert_eq!(
        body,
        [
            (Bytes::from_static(b"aaaa"), true),
            (Bytes::from_static(b"bbbb"), true),
            (Bytes::from_static(b"cccc"), false)
        ]
    );
    assert_eq!(b.stats().dropped, 0);
}

#[test]
fn a_served_request_nothing_moves_on_is_abandoned_and_frees_its_slot() {
    let limits = Limits {
        max_incoming_per_peer: 4,
        ..Limits::default()
    };
    let timeout = limits.request_timeout;
    let mut b = Relay::new(limits, 5000);
    let mut now = Instant::now();
    for id in 0..4u64 {
        let req = Item::Request {
            id,
            head: get("/_matrix/media/v3/download/b/big"),
            body: Bytes::new(),
            more: false,
        };
        b.handle_message(now, A, &encode_items(&[req], true));
    }
    // Our homeserver answers each with a large body; A never grants a window, never cancels,
    // never sends anything again.
    while let Some(e) = b.poll_event() {
        if let Event::Deliver { peer, id, .. } = e {
            let head = ResponseHead {
                status: 200,
                headers: vec![],
            };
            assert!(b.respond(now, peer, id, head, Bytes::from_static(b"part"), true));
        }
    }
    while let Some(t) = b.poll_transmit() {
        b.handle_sent(t.peer, t.from_requester);
    }
    let mut abandoned = Vec::new();
    let end = now + timeout + Duration::from_secs(1);
    while now < end {
        now += Duration::from_millis(500);
        b.handle_timeout(now);
        abandoned.extend(std::iter::from_fn(|| b.poll_event()));
    }
    abandoned.sort_by_key(|e| match e {
        Event::Abandoned { id, .. } => *id,
        _ => u64::MAX,
    });
    let want: Vec<Event> = (0..4).map(|id| Event::Abandoned { peer: A, id }).collect();
    assert_eq!(abandoned, want);
    assert_eq!(b.incoming_len(), 0);
    assert_eq!(b.stats().incoming_expired, 4);
    // A hears of it: a 504 cancel for each.
    let t = b.poll_transmit().unwrap();
    let (from_requester, items) = decode_envelope(&t.payload).unwrap();
    assert!(!from_requester);
    assert_eq!(
        items
            .iter()
            .filter(|i| matches!(i, Item::Cancel { code: 504, .. }))
            .count(),
        4
    );
    // And a new request from A is served.
    let req = Item::Request {
        id: 99,
        head: get("/_matrix/federation/v1/version"),
        body: Bytes::new(),
        more: false,
    };
    b.handle_message(now, A, &encode_items(&[req], true));
    assert!(matches!(
        b.poll_event(),
        Some(Event::Deliver { id: 99, .. })
    ));
}

#[test]
fn a_response_that_keeps_streaming_outlives_the_request_timeout() {
    let mut n = Net::new();
    let timeout = n.a.limits().request_timeout;
    let id =
        n.a.start_request(
            n.now,
            B,
            get("/_matrix/media/v3/download/b/x"),
            Bytes::new(),
            false,
        )
        .unwrap();
    n.run_for(LATENCY);
    let Some(Event::Deliver { peer, id: bid, .. }) = n.events_b.pop() else {
        panic!("not delivered");
    };
    let head = ResponseHead {
        status: 200,
        headers: vec![],
    };
    assert!(n.b.respond(n.now, peer, bid, head, Bytes::from_static(b"0"), true));
    // B sends 64 KiB every 5 s, inside the window, for twice the request timeout; A's
    // homeserver reads it all.
    let (mut credit, mut received, part_len) = (0u64, 0u64, 64 * 1024u64);
    let start = n.now;
    while n.now.saturating_duration_since(start) < 2 * timeout {
        n.run_for(Duration::from_secs(5));
        for e in n.events_b.drain(..) {
            if let Event::Credit { bytes, .. } = e {
                credit += bytes;
            }
        }
        assert!(credit >= part_len);
        credit -= part_len;
        let data = Bytes::from(vec![1u8; part_len as usize]);
        assert!(n.b.send_body(n.now, Some(A), bid, data, true));
        for e in n.events_a.drain(..) {
            match e {
                Event::ResponseBody { data, .. } => {
                    received += data.len() as u64;
                    n.a.body_consumed(n.now, None, id, data.len() as u64);
                }
                Event::Failed { failure, .. } => panic!("failed while streaming: {failure:?}"),
                _ => {}
            }
        }
    }
    assert!(received >= 30 * part_len, "{received} bytes");
    // Once B stops sending, the stream ends after the timeout: A gives up, or B does first
    // and says so.
    n.run_for(timeout + Duration::from_secs(1));
    let failed = n.events_a.iter().find_map(|e| match e {
        Event::Failed { id: i, failure } if *i == id => Some(*failure),
        _ => None,
    });
    assert!(
        matches!(failed, Some(Failure::Timeout | Failure::Peer(504))),
        "{failed:?}"
    );
}

#[test]
fn pongs_owed_to_a_peer_collapse_into_one() {
    let mut b = Relay::new(Limits::default(), 5000);
    let now = Instant::now();
    b.handle_message(now, A, &encode_items(&[Item::Ping(0)], true));
    // The router has not taken that pong's envelope yet (a slow push).
    let first = b.poll_transmit().unwrap();
    let pings: Vec<Item> = (1..=10_000).map(Item::Ping).collect();
    let env = encode_items(&pings, true);
    for _ in 0..10 {
        b.handle_message(now, A, &env);
    }
    let queued: usize = b.queues.iter().map(|q| q.items.len()).sum();
    assert_eq!(queued, 0);
    b.handle_sent(first.peer, first.from_requester);
    let next = b.poll_transmit().unwrap();
    let (_, items) = decode_envelope(&next.payload).unwrap();
    assert!(matches!(items[..], [Item::Pong(10_000)]), "{items:?}");
    assert!(b.poll_transmit().is_none());
}

#[test]
fn refusals_queued_for_one_peer_stop_at_a_bound() {
    let limits = Limits {
        max_incoming_per_peer: 1,
        ..Limits::default()
    };
    let mut b = Relay::new(limits, 5000);
    let now = Instant::now();
    let request = |id| Item::Request {
        id,
        head: get("/x"),
        body: Bytes::new(),
        more: false,
    };
    b.handle_message(now, A, &encode_items(&[request(0)], true));
    let in_flight = b.poll_transmit();
    assert!(
        in_flight.is_none(),
        "nothing to send before the homeserver answers"
    );
    // Envelopes of requests over the limit while B's answers cannot leave: one refusal
    // each, up to the bound.
    b.handle_message(now, A, &encode_items(&[request(1)], true));
    let first = b.poll_transmit().unwrap();
    for round in 0..10u64 {
        let items: Vec<Item> = (0..1000).map(|k| request(2 + round * 1000 + k)).collect();
        b.handle_message(now, A, &encode_items(&items, true));
    }
    let queued: usize = b.queues.iter().map(|q| q.items.len()).sum();
    assert_eq!(queued, MAX_QUEUED_REFUSALS);
    assert_eq!(b.stats().requests_refused, 10_001);
    assert_eq!(b.stats().dropped, 10_000 - MAX_QUEUED_REFUSALS as u64);
    // Once the router takes the envelope in flight, the queued refusals leave and new ones
    // are queued again.
    b.handle_sent(first.peer, first.from_requester);
    assert!(b.poll_transmit().is_some());
    b.handle_message(now, A, &encode_items(&[request(50_000)], true));
    let queued: usize = b.queues.iter().map(|q| q.items.len()).sum();
    assert_eq!(queued, 1);
}

#[test]
fn an_envelope_never_holds_more_items_than_a_receiver_takes() {
    let limits = Limits {
        max_envelope: 64 << 20,
        max_outgoing: 40_000,
        ..Limits::default()
    };
    let mut a = Relay::new(limits, 1000);
    let now = Instant::now();
    for _ in 0..20_000 {
        a.start_request(now, B, get("/x"), Bytes::new(), false)
            .unwrap();
    }
    let mut b = Relay::new(Limits::default(), 5000);
    let mut delivered = 0;
    while let Some(t) = a.poll_transmit() {
        a.handle_sent(t.peer, t.from_requester);
        b.handle_message(now, A, &t.payload);
        delivered += std::iter::from_fn(|| b.poll_event())
            .filter(|e| matches!(e, Event::Deliver { .. }))
            .count();
    }
    assert_eq!(a.stats().envelopes_sent, 2);
    assert_eq!(b.stats().envelopes_received, 2, "both decoded");
    // B serves at most max_incoming_per_peer at once and refuses the rest, each counted
    // (refusals beyond the queue's bound dropped: nothing drains B's queue here).
    let served = Limits::default().max_incoming_per_peer;
    let refused = 20_000 - served as u64;
    assert_eq!(delivered, served);
    assert_eq!(b.stats().requests_refused, refused);
    assert_eq!(b.stats().dropped, refused - MAX_QUEUED_REFUSALS as u64);
}

/// The mirror of `a_response_that_keeps_streaming_outlives_the_request_timeout`: a
/// request body that keeps streaming (16 KiB every 5 s, well inside the window, so no window
/// comes back for minutes) is a request on which parts move; it must not be cut off at the
/// request timeout.
#[test]
fn a_request_body_that_keeps_streaming_outlives_the_request_timeout() {
    let mut n = Net::new();
    let timeout = n.a.limits().request_timeout;
    let id =
        n.a.start_request(
            n.now,
            B,
            get("/_matrix/federation/v1/send/1"),
            Bytes::from_static(b"0"),
            true,
        )
        .unwrap();
    n.run_for(LATENCY);
    let Some(Event::Deliver { peer, id: bid, .. }) = n.events_b.pop() else {
        panic!("not delivered");
    };
    assert_eq!(peer, A);
    let (mut credit, mut received, part_len) = (0u64, 0u64, 16 * 1024u64);
    let start = n.now;
    while n.now.saturating_duration_since(start) < 2 * timeout {
        n.run_for(Duration::from_secs(5));
        for e in n.events_a.drain(..) {
            match e {
                Event::Credit { bytes, .. } => credit += bytes,
                Event::Failed { failure, .. } => {
                    panic!(
                        "our upload was cut off after {:?} while its parts kept moving: {failure:?}",
                        n.now.saturating_duration_since(start)
                    )
                }
                _ => {}
            }
        }
        assert!(credit >= part_len);
        credit -= part_len;
        let data = Bytes::from(vec![1u8; part_len as usize]);
        assert!(n.a.send_body(n.now, None, id, data, true));
        for e in n.events_b.drain(..) {
            if let Event::RequestBody { data, .. } = e {
                received += data.len() as u64;
                n.b.body_consumed(n.now, Some(A), bid, data.len() as u64);
            }
        }
    }
    assert!(received >= 30 * part_len, "{received} bytes");
}
