//! The message task, on the home worker: runs the sans-IO
//! [`hyphae_proto::message::Messages`] state machine, seals what it sends into data frames for
//! the forwarding path, and answers the message requests of the front ends (push, wait for a
//! reply, receive with long-poll, reply, status) without ever blocking one caller on another:
//! waiting callers are parked as data with deadlines, never as held locks.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
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
                        match wait {
                            Some(w) => {
                                self.replies.insert(id, (now + w, tx));
                            }
                            None => {
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
                let pos = self
                    .queued
                    .iter()
                    .position(|m| topic.as_ref().is_none_or(|t| *t == m.topic));
                match pos {
                    Some(i) => {
                        let msg = match peek {
                            true => self.queued[i].clone(),
                            false => {
                                let Some(msg) = self.queued.remove(i) else {
                                    return;
                                };
                                self.m.mark_read(now, msg.src, msg.id);
                                msg
                            }
                        };
                        let _ = tx.send(Some(msg));
                    }
                    None if timeout.is_zero() => {
                        let _ = tx.send(None);
                    }
                    None => self.receivers.push(Receiver {
                        topic,
                        peek,
                        deadline: now + timeout,
                        tx,
                    }),
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
        let (due, keep): (Vec<_>, Vec<_>) =
            self.receivers.drain(..).partition(|r| r.deadline <= now);
        self.receivers = keep;
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
        // A parked receiver whose topic matches takes it at once.
        self.receivers.retain(|r| !r.tx.is_closed());
        if let Some(i) = self
            .receivers
            .iter()
            .position(|r| r.topic.as_ref().is_none_or(|t| *t == msg.topic))
        {
            let r = self.receivers.remove(i);
            if !r.peek {
                self.m.mark_read(now, msg.src, msg.id);
            } else if self.queued.len() < MAX_INBOX {
                self.queued.push_back(msg.clone());
            }
            let _ = r.tx.send(Some(msg));
            return;
        }
        if self.queued.len() < MAX_INBOX {
            self.queued.push_back(msg);
        } else {
            tracing::warn!("message inbox full: dropping a message from {}", msg.src);
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
