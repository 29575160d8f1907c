//! The message task, on data-plane worker 0: runs the sans-IO [`hyphae_proto::message::Messages`]
//! state machine, seals what it sends into data frames for the forwarding path, and serves the
//! message API (push, wait for a reply, receive with long-poll, reply, status) without ever
//! blocking one caller on another: waiting callers are parked as data with deadlines, never as
//! held locks.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hyphae_wire::Subnet;
use hyphae_wire::data::DataHeader;
use hyphae_wire::identity::PublicKey;
use hyphae_wire::message::MessageId;
use hyphae_wire::seal::{SEAL_OVERHEAD, SealingKey, UserDataKind};
use tokio::sync::{mpsc, oneshot};

use super::{ControlMsg, Shared};
use hyphae_proto::message::{
    Config, Event, Messages, PushError, ReceivedMessage, State as MsgState, Status,
};

/// Messages kept for applications that have not asked for them yet.
const MAX_INBOX: usize = 4096;
/// Received message ids remembered (with their sender) so replies can be addressed.
const MAX_SENDERS: usize = 65_536;
/// A message whose destination has had no route for this long is aborted, instead of being
/// tried for the whole 5-minute send window as the reference does: a crashed receiver is
/// reported to the sender in seconds. (The route query timeout.)
const UNREACHABLE_ABORT: Duration = Duration::from_secs(15);

/// A request to the message task.
#[derive(Debug)]
pub(crate) enum MsgCmd {
    /// A decrypted message packet from `src`.
    Packet { src: PublicKey, payload: Bytes },
    /// Send a message; with `wait`, answer with its reply (or a timeout).
    Push {
        dst: PublicKey,
        topic: Bytes,
        payload: Bytes,
        wait: Option<Duration>,
        tx: oneshot::Sender<Result<Pushed, PushError>>,
    },
    /// Answer a received message.
    Reply {
        id: MessageId,
        dst: Option<PublicKey>,
        payload: Bytes,
        tx: oneshot::Sender<Result<(), ReplyError>>,
    },
    /// Take (or peek at) the next message, on `topic` if given, waiting up to `timeout`.
    Receive {
        topic: Option<Bytes>,
        peek: bool,
        timeout: Duration,
        tx: oneshot::Sender<Option<ReceivedMessage>>,
    },
    /// Read or change the topic ACL.
    Topics {
        op: TopicOp,
        tx: oneshot::Sender<TopicAnswer>,
    },
    /// A sent message's status.
    Status {
        id: MessageId,
        tx: oneshot::Sender<Option<(Status, Instant)>>,
    },
    /// A message its topic's forward socket did not answer: queue it for receivers.
    Unforwarded(ReceivedMessage),
}

/// An operation on the topic ACL (the reference's topic endpoints).
#[derive(Debug)]
pub(crate) enum TopicOp {
    GetDefault,
    SetDefault(bool),
    List,
    Add(Vec<u8>),
    Remove(Vec<u8>),
    Sources(Vec<u8>),
    AddSource(Vec<u8>, Subnet),
    RemoveSource(Vec<u8>, Subnet),
    /// The topic's forward socket.
    GetForward(Vec<u8>),
    /// Sets (or, with `None`, removes) a configured topic's forward socket. As the reference:
    /// setting one on a topic that is not configured does nothing.
    SetForward(Vec<u8>, Option<PathBuf>),
}

/// The answer to a [`TopicOp`].
#[derive(Debug)]
pub(crate) enum TopicAnswer {
    Done,
    Default(bool),
    Topics(Vec<Vec<u8>>),
    Sources(Option<Vec<Subnet>>),
    Forward(Option<PathBuf>),
}

/// The outcome of a push.
#[derive(Debug)]
pub(crate) enum Pushed {
    /// Queued under this id.
    Queued(MessageId),
    /// The reply arrived.
    Reply(ReceivedMessage),
    /// No reply in time.
    TimedOut(MessageId),
}

/// Why a reply could not be sent.
#[derive(Debug)]
pub(crate) enum ReplyError {
    /// No received message with that id and no destination given.
    UnknownId,
    /// The state machine refused it.
    Push(PushError),
}

struct Receiver {
    topic: Option<Bytes>,
    peek: bool,
    deadline: Instant,
    tx: oneshot::Sender<Option<ReceivedMessage>>,
}

struct Thread {
    shared: Arc<Shared>,
    m: Messages,
    keys: HashMap<PublicKey, SealingKey>,
    inbox: VecDeque<ReceivedMessage>,
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
}

/// The message subsystem's task. It runs on data-plane worker 0, beside the peer links that
/// worker owns: a packet to or from such a peer, and an application's request on the local
/// socket (served on the same thread), reach the state machine without a thread hop.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    mut inbox: mpsc::Receiver<MsgCmd>,
    mut local: Option<super::local::LocalListener>,
) {
    let own = shared.node.public;
    let mut t = Thread {
        m: Messages::new(Instant::now(), Config::default(), own),
        shared: shared.clone(),
        keys: HashMap::new(),
        inbox: VecDeque::new(),
        receivers: Vec::new(),
        replies: HashMap::new(),
        senders: HashMap::new(),
        sender_order: VecDeque::new(),
        active: HashMap::new(),
        unreachable: HashMap::new(),
        forwards: HashMap::new(),
        forward_slots: Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDS)),
    };
    if let Some(l) = local.as_mut().and_then(|l| l.take()) {
        tokio::task::spawn_local(super::local::serve(shared.clone(), l));
    }
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
            () = super::sleep_until(deadline) => {
                t.timeout(Instant::now());
            }
        }
        // The state machine runs beside worker 0's peer links: seal and send a slice at a
        // time, letting forwarding go on in between.
        while t.flush(Instant::now()) {
            tokio::task::yield_now().await;
        }
    }
    // `local` goes here: its socket file is removed.
    drop(local);
}

/// How long a topic's forward socket may take to connect and take the payload.
const FORWARD_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long it may take to answer (the reference waits forever).
const FORWARD_REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Message packets sealed and sent per turn of the message task, between turns of the links.
const FLUSH_BUDGET: usize = 256;
/// Messages handed to forward sockets at once; more are queued as usual.
const MAX_FORWARDS: usize = 64;

/// Gives `msg` to the application listening on `path`, as the reference does: a new Unix
/// stream connection per message, the raw payload written, the answer read until the
/// application closes the connection and sent back as the reply (same id). hyphae also closes
/// its write side after the payload, so an application can read to the end first.
///
/// If the payload cannot be handed over (no listener, a write slower than 5 s, a socket that
/// resolves outside the forward directory) the message goes to the ordinary queue. Once the
/// application has it, it is not queued again: an empty answer, none within 60 s or a read
/// error only mean no reply (the reference queues it again after an empty answer).
async fn forward(
    shared: Arc<Shared>,
    path: PathBuf,
    msg: ReceivedMessage,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let handed = handover(&path, &shared.settings.topic_forward_dir, &msg.payload).await;
    let mut s = match handed {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(socket = %path.display(), "topic forward socket: {e}; queueing the message");
            let _ = shared.msg.send(MsgCmd::Unforwarded(msg)).await;
            return;
        }
    };
    match read_answer(&mut s).await {
        // An answer to a message that is itself a reply goes nowhere.
        Ok(reply) if !reply.is_empty() && !msg.reply => {
            let (tx, _) = oneshot::channel();
            let cmd = MsgCmd::Reply {
                id: msg.id,
                dst: Some(msg.src),
                payload: reply,
                tx,
            };
            let _ = shared.msg.send(cmd).await;
        }
        Ok(_) => tracing::debug!(socket = %path.display(), "topic forward socket: no reply"),
        Err(e) => tracing::warn!(socket = %path.display(), "topic forward socket answer: {e}"),
    }
}

/// Connects to `path` (which must resolve inside `dir`), writes `payload`, closes the write side.
async fn handover(
    path: &std::path::Path,
    dir: &std::path::Path,
    payload: &[u8],
) -> std::io::Result<tokio::net::UnixStream> {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::AsyncWriteExt;
    // A symbolic link must not lead the router to a socket outside the directory; and since a
    // link could be swapped in between this check and the connect, nobody but trusted users
    // may write in the directory.
    let (real, real_dir) = (std::fs::canonicalize(path)?, std::fs::canonicalize(dir)?);
    if std::fs::metadata(&real_dir)?.permissions().mode() & 0o002 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} is writable by everyone", real_dir.display()),
        ));
    }
    if !real.starts_with(&real_dir) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "resolves to {}, outside {}",
                real.display(),
                real_dir.display()
            ),
        ));
    }
    tokio::time::timeout(FORWARD_WRITE_TIMEOUT, async {
        let mut s = tokio::net::UnixStream::connect(&real).await?;
        s.write_all(payload).await?;
        s.shutdown().await?;
        Ok(s)
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))?
}

/// Reads the application's answer until it closes the connection.
async fn read_answer(s: &mut tokio::net::UnixStream) -> std::io::Result<Bytes> {
    use tokio::io::AsyncReadExt;
    let mut reply = Vec::new();
    let limit = Config::default().max_message_size;
    tokio::time::timeout(
        FORWARD_REPLY_TIMEOUT,
        s.take(limit + 1).read_to_end(&mut reply),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))??;
    if reply.len() as u64 > limit {
        return Err(std::io::Error::other(
            "answer larger than the largest message",
        ));
    }
    Ok(Bytes::from(reply))
}

/// A fresh random message id.
fn new_id() -> MessageId {
    let n = hyphae_wire::seal::random_nonce().unwrap_or_default();
    MessageId([n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7]])
}

impl Thread {
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
                let id = new_id();
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
                    .inbox
                    .iter()
                    .position(|m| topic.as_ref().is_none_or(|t| *t == m.topic));
                match pos {
                    Some(i) => {
                        let msg = match peek {
                            true => self.inbox[i].clone(),
                            false => {
                                let Some(msg) = self.inbox.remove(i) else {
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

    /// Sends what the state machine queued and acts on its events, until both are empty:
    /// acting on an event (a delivery marked read) can queue more packets.
    /// Sends and delivers what the state machine has ready, at most [`FLUSH_BUDGET`] packets;
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
                    tokio::task::spawn_local(forward(self.shared.clone(), path.clone(), msg, slot));
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
            } else if self.inbox.len() < MAX_INBOX {
                self.inbox.push_back(msg.clone());
            }
            let _ = r.tx.send(Some(msg));
            return;
        }
        if self.inbox.len() < MAX_INBOX {
            self.inbox.push_back(msg);
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
            let _ = shared
                .ctl
                .try_send(ControlMsg::NeedRoute(Subnet::v6_64(addr)));
            self.unreachable.entry(dst).or_insert_with(Instant::now);
            return;
        };
        self.unreachable.remove(&dst);
        let Ok(nonce) = hyphae_wire::seal::random_nonce() else {
            return;
        };
        let key = self
            .keys
            .entry(dst)
            .or_insert_with(|| SealingKey::new(&shared.node.secret.shared_secret(&dst)));
        let mut body = Vec::with_capacity(packet.len() + SEAL_OVERHEAD);
        key.seal(nonce, UserDataKind::MESSAGE, packet, &mut body);
        let mut frame = BytesMut::with_capacity(40 + body.len());
        // Our own frames leave with hop limit 63, as the reference's (which counts its own hop).
        if (DataHeader {
            hop_limit: 63,
            src: shared.node.address,
            dst: addr,
        })
        .emit_frame(&body, &mut frame)
        .is_ok()
        {
            egress.enqueue(frame.freeze(), 1);
        }
    }
}
