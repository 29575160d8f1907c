//! The message task, on the home worker: runs the sans-IO
//! [`hyphae_proto::message::Messages`] state machine, seals what it sends into data frames for
//! the forwarding path, and answers the message requests of the front ends (push, wait for a
//! reply, receive with long-poll, reply, status) without ever blocking one caller on another:
//! waiting callers are parked as data with deadlines, never as held locks.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hyphae_proto::message::{
    Config, Event, Messages, PushError, ReceivedMessage, State as MsgState,
};
use hyphae_wire::Subnet;
use hyphae_wire::data::{DATA_OVERHEAD, DataHeader};
use hyphae_wire::identity::PublicKey;
use hyphae_wire::message::MessageId;
use hyphae_wire::seal::{SEAL_OVERHEAD, UserDataKind};
use tokio::sync::{mpsc, oneshot};

use super::inbox::{MsgCmd, Pushed, ReplyError, TopicAnswer, TopicOp, sleep_until};
use super::keys::KeyCache;
use super::shared::Shared;
use super::topic_forward::{self, MAX_FORWARDS};

/// Messages kept for applications that have not asked for them yet.
const MAX_INBOX: usize = 4096;
/// Received message ids remembered (with their sender) so replies can be addressed.
const MAX_SENDERS: usize = 65_536;
/// A message whose destination has had no route for this long is aborted, instead of being
/// tried for the whole 5-minute send window as the reference does: a crashed receiver is
/// reported to the sender in seconds. (The route query timeout.)
const UNREACHABLE_ABORT: Duration = Duration::from_secs(15);
/// Callers parked waiting for a message (long polls, subscriptions between messages), and
/// callers waiting for the reply to their push, at most; a caller beyond either is answered
/// at once (no message; or its message's id, without waiting) and counted.
const MAX_WAITERS: usize = 4096;
/// A topic someone asked for by name within this long is held: a caller asking for any topic
/// does not get its messages (a subscription asks again at once after each message).
const HOLD: Duration = Duration::from_secs(2);

struct Receiver {
    topic: Option<Bytes>,
    peek: bool,
    deadline: Instant,
    tx: oneshot::Sender<Option<ReceivedMessage>>,
}

/// The message task's state: the state machine, and the callers and messages waiting on it.
struct MessageTask {
    shared: Arc<Shared>,
    m: Messages,
    keys: KeyCache,
    /// Received messages no application has taken yet.
    queued: VecDeque<ReceivedMessage>,
    receivers: Vec<Receiver>,
    replies: HashMap<MessageId, (Instant, oneshot::Sender<Result<Pushed, PushError>>)>,
    /// Topics callers asked for by name, and when last (see [`HOLD`]); at most
    /// [`MAX_WAITERS`].
    held: HashMap<Bytes, Instant>,
    senders: HashMap<MessageId, PublicKey>,
    sender_order: VecDeque<MessageId>,
    /// Outbound messages in progress, by destination.
    active: HashMap<MessageId, PublicKey>,
    /// Topics whose messages go to a Unix socket.
    forwards: HashMap<Vec<u8>, PathBuf>,
    /// Bounds the messages handed to forward sockets at once.
    forward_slots: Arc<tokio::sync::Semaphore>,
    /// Destinations without a route, since when.
    unreachable: HashMap<PublicKey, Instant>,
    /// Messages pushed so far (numbers their ids).
    pushed: u64,
}

/// The message subsystem's task, until shutdown. It runs on the home worker, beside the peer
/// links that worker owns: a packet to or from such a peer, and an application's request on
/// the local socket (served on the same thread), reach the state machine without a thread hop.
pub(crate) async fn run(shared: Arc<Shared>, mut inbox: mpsc::Receiver<MsgCmd>) {
    let own = shared.node.public;
    let mut t = MessageTask {
        m: Messages::new(Instant::now(), Config::default(), own),
        shared: shared.clone(),
        keys: KeyCache::default(),
        queued: VecDeque::new(),
        receivers: Vec::new(),
        replies: HashMap::new(),
        held: HashMap::new(),
        senders: HashMap::new(),
        sender_order: VecDeque::new(),
        active: HashMap::new(),
        unreachable: HashMap::new(),
        forwards: HashMap::new(),
        forward_slots: Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS)),
        pushed: 0,
    };
    let mut shutdown = shared.shutdown.clone();
    loop {
        let deadline = t.next_deadline();
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            cmd = inbox.recv() => {
                let Some(cmd) = cmd else { break };
                let now = Instant::now();
                t.handle(now, cmd);
                for _ in 0..256 {
                    match inbox.try_recv() {
                        Ok(cmd) => t.handle(now, cmd),
                        Err(_) => break,
                    }
                }
            }
            () = sleep_until(deadline) => {
                t.timeout(Instant::now());
            }
        }
        // The state machine runs beside the home worker's peer links: seal and send a slice at a
        // time, letting forwarding go on in between.
        while t.flush(Instant::now()) {
            tokio::task::yield_now().await;
        }
    }
}

/// Message packets sealed and sent per turn of the message task, between turns of the links.
const FLUSH_BUDGET: usize = 256;

/// The `n`th message id of a node whose id key is `key`: unpredictable to anyone without the
/// key, and distinct from the ids before it as random ids are.
fn message_id(key: &[u8; 32], n: u64) -> MessageId {
    let h = blake3::keyed_hash(key, &n.to_le_bytes());
    let b = h.as_bytes();
    MessageId([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl MessageTask {
    fn next_deadline(&mut self) -> Option<Instant> {
        let waits = self
            .receivers
            .iter()
            .map(|r| r.deadline)
            .chain(self.replies.values().map(|(d, _)| *d));
        self.m.poll_timeout().into_iter().chain(waits).min()
    }

    fn handle(&mut self, now: Instant, cmd: MsgCmd) {
        match cmd {
            MsgCmd::Packet { src, payload } => {
                if let Err(e) = self.m.handle_datagram(now, src, &payload) {
                    tracing::debug!(%src, "bad message packet: {e}");
                }
            }
            MsgCmd::Push {
                dst,
                topic,
                payload,
                wait,
                tx,
            } => {
                self.pushed += 1;
                let id = message_id(&self.shared.node.message_id_key, self.pushed);
                match self.m.push(now, id, dst, &topic, payload) {
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                    Ok(()) => {
                        self.active.insert(id, dst);
                        if self.replies.len() >= MAX_WAITERS {
                            self.replies.retain(|_, (_, tx)| !tx.is_closed());
                        }
                        match wait {
                            Some(w) if !tx.is_closed() && self.replies.len() < MAX_WAITERS => {
                                self.replies.insert(id, (now + w, tx));
                            }
                            Some(_) if !tx.is_closed() => {
                                self.shared.message_waits_refused.fetch_add(1, Relaxed);
                                let _ = tx.send(Ok(Pushed::Queued(id)));
                            }
                            _ => {
                                let _ = tx.send(Ok(Pushed::Queued(id)));
                            }
                        }
                    }
                }
            }
            MsgCmd::Reply {
                id,
                dst,
                payload,
                tx,
            } => {
                let r = match self.senders.get(&id).copied().or(dst) {
                    None => Err(ReplyError::UnknownId),
                    Some(to) => self
                        .m
                        .push_reply(now, id, to, payload)
                        .map_err(ReplyError::Push),
                };
                let _ = tx.send(r);
            }
            MsgCmd::Receive {
                topic,
                peek,
                timeout,
                tx,
            } => {
                // A caller that has gone (its request timed out while this waited in the
                // inbox) takes nothing.
                if tx.is_closed() {
                    return;
                }
                if let Some(t) = &topic {
                    self.hold(now, t);
                }
                let pos = self
                    .queued
                    .iter()
                    .position(|m| self.wants(now, topic.as_ref(), &m.topic));
                match pos {
                    Some(i) if peek => {
                        let _ = tx.send(Some(self.queued[i].clone()));
                    }
                    Some(i) => {
                        let Some(msg) = self.queued.remove(i) else {
                            return;
                        };
                        // A caller gone meanwhile leaves it queued.
                        if let Some(msg) = self.hand_over(now, tx, msg) {
                            self.queued.insert(i, msg);
                        }
                    }
                    None if timeout.is_zero() => {
                        let _ = tx.send(None);
                    }
                    None => {
                        if self.receivers.len() >= MAX_WAITERS {
                            self.receivers.retain(|r| !r.tx.is_closed());
                        }
                        if self.receivers.len() >= MAX_WAITERS {
                            self.shared.message_waits_refused.fetch_add(1, Relaxed);
                            let _ = tx.send(None);
                            return;
                        }
                        self.receivers.push(Receiver {
                            topic,
                            peek,
                            deadline: now + timeout,
                            tx,
                        });
                    }
                }
            }
            MsgCmd::Topics { op, tx } => {
                let acl = self.m.acl_mut();
                let answer = match op {
                    TopicOp::GetDefault => TopicAnswer::Default(acl.default_accept()),
                    TopicOp::SetDefault(a) => {
                        acl.set_default_accept(a);
                        TopicAnswer::Done
                    }
                    TopicOp::List => {
                        TopicAnswer::Topics(acl.topics().map(<[u8]>::to_vec).collect())
                    }
                    TopicOp::Add(t) => {
                        acl.add_topic(&t);
                        TopicAnswer::Done
                    }
                    TopicOp::Remove(t) => {
                        acl.remove_topic(&t);
                        self.forwards.remove(&t);
                        TopicAnswer::Done
                    }
                    TopicOp::GetForward(t) => TopicAnswer::Forward(self.forwards.get(&t).cloned()),
                    TopicOp::SetForward(t, None) => {
                        self.forwards.remove(&t);
                        TopicAnswer::Done
                    }
                    TopicOp::SetForward(t, Some(p)) => {
                        if acl.sources(&t).is_some() {
                            self.forwards.insert(t, p);
                        }
                        TopicAnswer::Done
                    }
                    TopicOp::Sources(t) => {
                        TopicAnswer::Sources(acl.sources(&t).map(<[Subnet]>::to_vec))
                    }
                    TopicOp::AddSource(t, s) => {
                        acl.add_source(&t, s);
                        TopicAnswer::Done
                    }
                    TopicOp::RemoveSource(t, s) => {
                        acl.remove_source(&t, &s);
                        TopicAnswer::Done
                    }
                };
                let _ = tx.send(answer);
            }
            MsgCmd::Status { id, tx } => {
                let _ = tx.send(self.m.status(id).map(|s| (s, now)));
            }
            MsgCmd::Unforwarded(msg) => self.queue(now, msg),
        }
    }

    fn timeout(&mut self, now: Instant) {
        self.m.handle_timeout(now);
        let (due, keep): (Vec<_>, Vec<_>) = self
            .receivers
            .drain(..)
            .filter(|r| !r.tx.is_closed())
            .partition(|r| r.deadline <= now);
        self.receivers = keep;
        self.replies.retain(|_, (_, tx)| !tx.is_closed());
        for r in due {
            let _ = r.tx.send(None);
        }
        let due: Vec<MessageId> = self
            .replies
            .iter()
            .filter(|(_, (d, _))| *d <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some((_, tx)) = self.replies.remove(&id) {
                let _ = tx.send(Ok(Pushed::TimedOut(id)));
            }
        }
    }

    /// Sends what the state machine has ready and acts on its events (acting on an event, a
    /// delivery marked read, can make more ready), sending at most [`FLUSH_BUDGET`] packets;
    /// returns whether more is ready (the caller yields to the data plane, then flushes again).
    fn flush(&mut self, now: Instant) -> bool {
        let mut sent = 0;
        loop {
            let mut busy = false;
            while sent < FLUSH_BUDGET
                && let Some(t) = self.m.poll_transmit(now)
            {
                self.send(t.dst, &t.payload);
                sent += 1;
                busy = true;
            }
            while let Some(e) = self.m.poll_event() {
                busy = true;
                match e {
                    Event::Received(msg) => self.deliver(now, msg),
                    Event::StateChanged { id, state, .. } => {
                        if matches!(
                            state,
                            MsgState::Received | MsgState::Read | MsgState::Aborted
                        ) {
                            self.active.remove(&id);
                        }
                    }
                }
            }
            self.abort_unreachable(now);
            if sent >= FLUSH_BUDGET {
                return true;
            }
            if !busy {
                return false;
            }
        }
    }

    /// Aborts the messages whose destination has had no route for [`UNREACHABLE_ABORT`].
    fn abort_unreachable(&mut self, now: Instant) {
        if self.unreachable.is_empty() {
            return;
        }
        let fib = self.shared.fib.snapshot();
        self.unreachable
            .retain(|dst, _| fib.lookup(dst.address()).is_none());
        let unreachable = &self.unreachable;
        let gone: Vec<MessageId> = self
            .active
            .iter()
            .filter(|(_, dst)| {
                unreachable
                    .get(dst)
                    .is_some_and(|t| now.duration_since(*t) >= UNREACHABLE_ABORT)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            tracing::debug!(%id, "no route to the destination: aborting the message");
            self.m.abort(now, id);
            self.active.remove(&id);
        }
        // Forget destinations no message waits for any more.
        let active = &self.active;
        self.unreachable
            .retain(|dst, _| active.values().any(|d| d == dst));
    }

    fn deliver(&mut self, now: Instant, msg: ReceivedMessage) {
        if msg.reply
            && let Some((_, tx)) = self.replies.remove(&msg.id)
        {
            let _ = tx.send(Ok(Pushed::Reply(msg)));
            return;
        }
        if let Some(path) = self.forwards.get(&msg.topic[..]) {
            // Handed to the topic's socket; back to the queue if it cannot be given there.
            match self.forward_slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    tokio::task::spawn_local(topic_forward::hand_over(
                        self.shared.clone(),
                        path.clone(),
                        msg,
                        slot,
                    ));
                    return;
                }
                Err(_) => tracing::warn!(
                    "{MAX_FORWARDS} messages already wait on topic forward sockets; queueing"
                ),
            }
        }
        self.queue(now, msg);
    }

    /// Hands a received message to a waiting receiver, or queues it.
    fn queue(&mut self, now: Instant, msg: ReceivedMessage) {
        if !msg.reply {
            if self.sender_order.len() >= MAX_SENDERS
                && let Some(old) = self.sender_order.pop_front()
            {
                self.senders.remove(&old);
            }
            self.senders.insert(msg.id, msg.src);
            self.sender_order.push_back(msg.id);
        }
        // A parked receiver that asked for this topic takes it at once; one that asked for any
        // topic, if no one holds this one.
        self.receivers.retain(|r| !r.tx.is_closed());
        let mut msg = msg;
        loop {
            let exact = self
                .receivers
                .iter()
                .position(|r| r.topic.as_ref() == Some(&msg.topic));
            let held = exact.is_some() || self.held_recently(now, &msg.topic);
            let Some(i) = exact.or_else(|| {
                (!held)
                    .then(|| self.receivers.iter().position(|r| r.topic.is_none()))
                    .flatten()
            }) else {
                break;
            };
            let r = self.receivers.remove(i);
            if let Some(t) = &r.topic {
                self.hold(now, t);
            }
            if r.peek {
                if self.queued.len() < MAX_INBOX {
                    self.queued.push_back(msg.clone());
                }
                let _ = r.tx.send(Some(msg));
                return;
            }
            // Its caller went in the meantime: the next one, or the queue.
            match self.hand_over(now, r.tx, msg) {
                Some(back) => msg = back,
                None => return,
            }
        }
        if self.queued.len() < MAX_INBOX {
            self.queued.push_back(msg);
        } else {
            tracing::warn!("message inbox full: dropping a message from {}", msg.src);
        }
    }

    /// Notes that a caller asked for `topic` by name now.
    fn hold(&mut self, now: Instant, topic: &Bytes) {
        if let Some(t) = self.held.get_mut(topic) {
            *t = now;
            return;
        }
        if self.held.len() >= MAX_WAITERS {
            self.held
                .retain(|_, t| now.saturating_duration_since(*t) < HOLD);
        }
        if self.held.len() < MAX_WAITERS {
            self.held.insert(topic.clone(), now);
        }
    }

    /// Gives `msg` to the caller behind `tx` and marks it read to its sender; if that caller
    /// has gone, it is not marked and comes back.
    fn hand_over(
        &mut self,
        now: Instant,
        tx: oneshot::Sender<Option<ReceivedMessage>>,
        msg: ReceivedMessage,
    ) -> Option<ReceivedMessage> {
        let (src, id) = (msg.src, msg.id);
        match tx.send(Some(msg)) {
            Ok(()) => {
                self.m.mark_read(now, src, id);
                None
            }
            Err(back) => back,
        }
    }

    /// Whether a caller asked for `topic` by name within [`HOLD`].
    fn held_recently(&self, now: Instant, topic: &[u8]) -> bool {
        self.held
            .get(topic)
            .is_some_and(|t| now.saturating_duration_since(*t) < HOLD)
    }

    /// Whether a caller asked for `topic` by name within [`HOLD`], or waits for it now.
    fn is_held(&self, now: Instant, topic: &[u8]) -> bool {
        self.held_recently(now, topic)
            || self
                .receivers
                .iter()
                .any(|r| r.topic.as_deref() == Some(topic))
    }

    /// Whether a caller that asked for `want` (any topic if `None`) takes a message on `topic`.
    fn wants(&self, now: Instant, want: Option<&Bytes>, topic: &Bytes) -> bool {
        match want {
            Some(w) => w == topic,
            None => !self.is_held(now, topic),
        }
    }

    /// Seals one message packet into a data frame and queues it toward `dst`.
    fn send(&mut self, dst: PublicKey, packet: &[u8]) {
        let shared = &self.shared;
        let addr = dst.address();
        let peers = shared.peers.load();
        let Some(egress) = shared.fib.lookup(addr).and_then(|p| peers.get(&p)) else {
            // No route yet: ask for one; the state machine retransmits.
            shared.inbox.need_route(Subnet::v6_64(addr));
            self.unreachable.entry(dst).or_insert_with(Instant::now);
            return;
        };
        self.unreachable.remove(&dst);
        let Ok(nonce) = hyphae_wire::seal::random_nonce() else {
            return;
        };
        let key = self
            .keys
            .get(&shared.node.secret, dst, &shared.key_cache_evictions);
        // Our own frames leave with hop limit 63, as the reference's (which counts its own hop).
        let header = DataHeader {
            hop_limit: 63,
            src: shared.node.address,
            dst: addr,
        };
        let mut frame = BytesMut::with_capacity(DATA_OVERHEAD + SEAL_OVERHEAD + packet.len());
        let kind = UserDataKind::MESSAGE;
        if header
            .emit_sealed(key, nonce, kind, &[packet], &mut frame)
            .is_ok()
        {
            egress.enqueue(frame.freeze(), 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A message task on a node of its own (no links, no threads), and the inbox receiver that
    /// keeps its command channel open.
    fn task() -> (
        MessageTask,
        mpsc::Receiver<MsgCmd>,
        mpsc::Receiver<super::super::inbox::ControlMsg>,
    ) {
        let dir = std::env::temp_dir().join(format!("hyphae-mt-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let key = dir.join("key");
        let settings = super::super::config::Cli::try_parse_from([
            "hyphae-router",
            "-k",
            key.to_str().unwrap(),
            "--no-tun",
        ])
        .unwrap()
        .settings()
        .unwrap();
        let secret = hyphae_wire::identity::SecretKey::from_bytes([5; 32]);
        let public = secret.public_key();
        let node = super::super::shared::Node {
            address: public.address(),
            subnet: public.subnet(),
            secret,
            public,
            router_id: hyphae_wire::RouterId::new(&public, 0, [1, 2, 3, 4, 5, 6]),
            start_time: 0,
            hash_seed: 1,
            message_id_key: [3; 32],
        };
        let (ctl_tx, ctl_rx) = mpsc::channel(1024);
        let (msg_tx, msg_rx) = mpsc::channel(1024);
        let (_sd_tx, sd_rx) = tokio::sync::watch::channel(false);
        let fib = hyphae_proto::fib::FibWriter::new(1);
        let shared = Arc::new(Shared {
            node,
            fib: fib.reader(),
            peers: super::super::peers::PeerTable::default(),
            route_keys: arc_swap::ArcSwap::default(),
            inbox: super::super::inbox::Inboxes {
                control: ctl_tx,
                messages: msg_tx,
            },
            counters: Vec::new(),
            key_cache_evictions: std::sync::atomic::AtomicU64::new(0),
            local_socket_unread_closes: std::sync::atomic::AtomicU64::new(0),
            message_waits_refused: std::sync::atomic::AtomicU64::new(0),
            route_use: super::super::shared::RouteUse::new(),
            shutdown: sd_rx,
            admission: super::super::admission::Admission::new(8, 8),
            settings,
        });
        let t = MessageTask {
            m: Messages::new(Instant::now(), Config::default(), public),
            shared,
            keys: KeyCache::default(),
            queued: VecDeque::new(),
            receivers: Vec::new(),
            replies: HashMap::new(),
            held: HashMap::new(),
            senders: HashMap::new(),
            sender_order: VecDeque::new(),
            active: HashMap::new(),
            unreachable: HashMap::new(),
            forwards: HashMap::new(),
            forward_slots: Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS)),
            pushed: 0,
        };
        (t, msg_rx, ctl_rx)
    }

    /// Asks `t` for a message (`topic`, or any), parking for `timeout`; the answer comes on the
    /// returned receiver.
    fn receive(
        t: &mut MessageTask,
        now: Instant,
        topic: Option<Bytes>,
        timeout: Duration,
    ) -> oneshot::Receiver<Option<ReceivedMessage>> {
        let (tx, rx) = oneshot::channel();
        let peek = false;
        t.handle(
            now,
            MsgCmd::Receive {
                topic,
                peek,
                timeout,
                tx,
            },
        );
        rx
    }

    fn received(n: u8) -> ReceivedMessage {
        ReceivedMessage {
            id: MessageId([n; 8]),
            src: hyphae_wire::identity::SecretKey::from_bytes([9; 32]).public_key(),
            reply: false,
            topic: Bytes::new(),
            payload: Bytes::from_static(b"accepted message"),
        }
    }

    /// A Receive whose caller has gone (the API gave up after its answer timeout, or the HTTP
    /// client / subscription went away while the command sat in the inbox) must not consume a
    /// queued message (it would be marked read to its sender, and nobody would get it).
    #[test]
    fn a_receive_whose_caller_has_gone_takes_nothing() {
        let (mut t, _i, _c) = task();
        let now = Instant::now();
        t.queue(now, received(1));
        assert_eq!(t.queued.len(), 1);
        // The caller's end is gone before the task gets to the request.
        let (tx, rx) = oneshot::channel();
        drop(rx);
        t.handle(
            now,
            MsgCmd::Receive {
                topic: None,
                peek: false,
                timeout: Duration::ZERO,
                tx,
            },
        );
        // The next receiver must still get the message.
        let mut rx = receive(&mut t, now, None, Duration::ZERO);
        let got = rx.try_recv().expect("answered");
        let read_sent = std::iter::from_fn(|| t.m.poll_transmit(now)).count();
        assert!(
            got.is_some(),
            "the accepted message was lost to a caller that had gone ({read_sent} READ sent to its sender)"
        );
    }

    /// Long-polls whose callers have gone must not stay parked until their deadline (up to an
    /// hour), each holding its topic filter: an HTTP client that opens
    /// `GET /messages?timeout=3600` and disconnects, in a loop, would grow `receivers` without
    /// bound.
    #[test]
    fn long_polls_whose_callers_have_gone_are_not_kept() {
        let (mut t, _i, _c) = task();
        let now = Instant::now();
        for _ in 0..10_000 {
            let rx = receive(
                &mut t,
                now,
                Some(Bytes::from(vec![b'x'; 4096])),
                Duration::from_secs(3600),
            );
            drop(rx); // the HTTP client disconnects: axum drops the handler and its receiver
        }
        let _ = t.next_deadline();
        t.timeout(now + Duration::from_secs(1));
        let held: usize = t
            .receivers
            .iter()
            .map(|r| r.topic.as_ref().map_or(0, Bytes::len))
            .sum();
        assert!(
            t.receivers.len() <= 1024,
            "{} abandoned long-polls still parked, holding {held} bytes of topic filters",
            t.receivers.len()
        );
    }

    /// hyphae_wire::framing::Subscribe: "`None` subscribes to messages on every topic no other
    /// subscriber holds": a subscriber to any topic, parked first, must not take a message on
    /// a topic another one asked for (the federation edge's requests, say).
    #[test]
    fn a_catch_all_subscriber_does_not_take_a_held_topic() {
        let (mut t, _i, _c) = task();
        let now = Instant::now();
        let mut any_rx = receive(&mut t, now, None, Duration::from_secs(30));
        let topic = Bytes::from_static(b"hyphae-federation");
        let mut fed_rx = receive(&mut t, now, Some(topic.clone()), Duration::from_secs(30));
        let mut m = received(2);
        m.topic = topic;
        t.queue(now, m);
        assert!(
            fed_rx.try_recv().is_ok(),
            "the topic's own subscriber gets it; the catch-all got it instead: {:?}",
            any_rx.try_recv().map(|m| m.map(|m| m.topic))
        );
    }

    /// The same for pushes that wait for a reply: a waiter whose caller has gone must not stay
    /// in `replies` until its deadline (up to u32::MAX ms over the local socket before it was
    /// capped), after its message finished.
    #[test]
    fn reply_waits_whose_callers_have_gone_are_not_kept() {
        let (mut t, _i, _c) = task();
        let now = Instant::now();
        let dst = hyphae_wire::identity::SecretKey::from_bytes([8; 32]).public_key();
        for _round in 0..3 {
            for _ in 0..4096 {
                let (tx, rx) = oneshot::channel();
                t.handle(
                    now,
                    MsgCmd::Push {
                        dst,
                        topic: Bytes::new(),
                        payload: Bytes::from_static(b"x"),
                        wait: Some(Duration::from_millis(u64::from(u32::MAX))),
                        tx,
                    },
                );
                drop(rx);
            }
            // The messages end (here: aborted, as for a destination without a route).
            let ids: Vec<MessageId> = t.active.keys().copied().collect();
            for id in ids {
                t.m.abort(now, id);
            }
            while t.flush(now) {}
        }
        let _ = t.next_deadline();
        assert!(
            t.replies.len() <= 4096,
            "{} reply waiters kept for callers that have gone",
            t.replies.len()
        );
    }

    #[test]
    fn a_catch_all_takes_what_no_one_holds() {
        let (mut t, _i, _c) = task();
        let now = Instant::now();
        let topic = Bytes::from_static(b"hyphae-federation");
        // Someone asked for the topic by name: its messages queue for them...
        let _rx = receive(&mut t, now, Some(topic.clone()), Duration::ZERO);
        let mut m = received(3);
        m.topic = topic;
        t.queue(now, m);
        let mut other = received(4);
        other.topic = Bytes::from_static(b"other");
        t.queue(now, other);
        let ask_any = |t: &mut MessageTask, at: Instant| {
            let mut rx = receive(t, at, None, Duration::ZERO);
            rx.try_recv().ok().flatten().map(|m| m.topic)
        };
        // ...while a caller asking for any topic gets the others.
        assert_eq!(ask_any(&mut t, now).as_deref(), Some(&b"other"[..]));
        assert_eq!(ask_any(&mut t, now), None);
        // Once no one has asked for it for a while, anyone may take it.
        let later = now + HOLD;
        assert_eq!(
            ask_any(&mut t, later).as_deref(),
            Some(&b"hyphae-federation"[..])
        );
    }

    #[test]
    fn waiters_beyond_the_bound_are_answered_at_once_and_counted() {
        let (mut t, _i, _c) = task();
        let now = Instant::now();
        let mut live = Vec::new();
        for _ in 0..MAX_WAITERS {
            let rx = receive(&mut t, now, None, Duration::from_secs(60));
            live.push(rx);
        }
        let mut rx = receive(&mut t, now, None, Duration::from_secs(60));
        assert_eq!(rx.try_recv(), Ok(None), "answered at once: no message");
        assert_eq!(t.receivers.len(), MAX_WAITERS);
        assert_eq!(t.shared.message_waits_refused.load(Relaxed), 1);
        // A message goes to the first of them.
        t.queue(now, received(5));
        assert!(live[0].try_recv().is_ok_and(|m| m.is_some()));
    }

    #[test]
    fn message_ids_are_distinct_and_keyed() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let ids: std::collections::HashSet<_> = (1..=10_000).map(|n| message_id(&a, n).0).collect();
        assert_eq!(ids.len(), 10_000, "no repeats");
        assert!(!ids.contains(&[0; 8]));
        assert_eq!(
            message_id(&a, 7),
            message_id(&a, 7),
            "a function of key and count"
        );
        assert_ne!(
            message_id(&a, 7),
            message_id(&b, 7),
            "another node's ids differ"
        );
    }
}
