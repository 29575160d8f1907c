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
