//! The commands the daemon's tasks take, and the one handle front ends and the data plane
//! reach them through. Everything above this module (the HTTP API, the local socket, the
//! workers) talks to the control thread and the message task only by these messages.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyphae_proto::PeerId;
use hyphae_proto::babel::LinkKind;
use hyphae_proto::message::{PushError, ReceivedMessage, Status};
use hyphae_wire::Subnet;
use hyphae_wire::babel::Tlv;
use hyphae_wire::identity::PublicKey;
use hyphae_wire::message::MessageId;
use tokio::sync::{mpsc, oneshot};

use super::endpoint::Endpoint;
use super::peers::{PeerHandle, PeerType};

/// Messages the control thread's inbox holds before TLVs are dropped (and counted): the
/// control thread handles Updates far faster than links deliver them, so this only fills
/// under a flood, and a full queue is about 1.6 MB (65,536 held 6.5 MB at the peak of one).
pub(crate) const CONTROL_QUEUE: usize = 16_384;
/// Requests and packets the message task's inbox holds.
pub(crate) const MESSAGE_QUEUE: usize = 65_536;
/// How long a front end waits to hand a request over, and (beyond any wait the request asks
/// for) for its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long [`Inboxes::resolve_key`] asks the overlay for a route to an unknown address.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A message to the control thread.
#[derive(Debug)]
pub(crate) enum ControlMsg {
    /// A link came up.
    PeerUp {
        /// The link.
        handle: Arc<PeerHandle>,
        /// Its transport, for the static link cost.
        link: LinkKind,
    },
    /// A link went down.
    PeerDown {
        /// The link.
        peer: PeerId,
    },
    /// A control TLV from a peer.
    Tlv {
        /// From whom.
        peer: PeerId,
        /// What.
        tlv: Tlv,
    },
    /// Something has traffic for a subnet it has no route to.
    NeedRoute(Subnet),
    /// A dial failed.
    DialFailed(Endpoint),
    /// Link-local discovery heard a beacon.
    Discovered(Endpoint),
    /// An admin request.
    Admin(Admin),
}

/// Admin requests answered by the control thread.
#[derive(Debug)]
pub(crate) enum Admin {
    /// All peers.
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    /// Add a static peer.
    AddPeer(Endpoint, oneshot::Sender<Result<(), String>>),
    /// Remove a peer.
    RemovePeer(Endpoint, oneshot::Sender<Result<(), String>>),
    /// Selected (true) or fallback (false) routes.
    Routes(bool, oneshot::Sender<Vec<RouteInfo>>),
    /// Subnets being queried, with seconds left.
    Queried(oneshot::Sender<Vec<(Subnet, u64)>>),
    /// The public key of the node owning an address.
    PubKey(IpAddr, oneshot::Sender<Option<PublicKey>>),
    /// Route-table size and router counters, for metrics.
    Stats(oneshot::Sender<ControlStats>),
}

/// A peer as the admin API shows it.
#[derive(Debug, Clone)]
pub(crate) struct PeerInfo {
    /// The endpoint.
    pub(crate) endpoint: Endpoint,
    /// How it came to be.
    pub(crate) kind: PeerType,
    /// "alive", "connecting" or "dead".
    pub(crate) state: &'static str,
    /// Bytes sent.
    pub(crate) tx_bytes: u64,
    /// Bytes received.
    pub(crate) rx_bytes: u64,
    /// Seconds since it was first known.
    pub(crate) discovered: u64,
    /// Seconds since it last connected.
    pub(crate) last_connected: Option<u64>,
}

/// A route as the admin API shows it.
#[derive(Debug, Clone)]
pub(crate) struct RouteInfo {
    /// Destination.
    pub(crate) subnet: Subnet,
    /// The link, described as the reference does.
    pub(crate) next_hop: String,
    /// Metric as advertised plus link cost, or infinite.
    pub(crate) metric: hyphae_wire::Metric,
    /// The source's seqno.
    pub(crate) seqno: u16,
}

/// Numbers for the metrics endpoint.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ControlStats {
    /// Selected routes.
    pub(crate) selected_routes: usize,
    /// All route entries.
    pub(crate) routes: usize,
    /// Live peers.
    pub(crate) peers: usize,
    /// TLVs handled.
    pub(crate) tlvs: u64,
    /// Updates dropped by filters.
    pub(crate) updates_filtered: u64,
    /// Requests left unanswered over a peer's per-second budget.
    pub(crate) answers_rate_limited: u64,
    /// Requests not forwarded over the asking peer's per-second budget.
    pub(crate) forwards_rate_limited: u64,
    /// Updates for new routes dropped at `--max-routes` or `--max-routes-per-peer`.
    pub(crate) updates_capped: u64,
    /// Beacons from new peers ignored at `--max-discovered-peers`.
    pub(crate) discovered_refused: u64,
    /// Publications of the forwarding table that copied the whole table (a reader held the
    /// previous snapshot, or the batch was large) instead of replaying the batch.
    pub(crate) fib_full_copies: u64,
    /// The same for the route keys.
    pub(crate) route_keys_full_copies: u64,
}

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
    /// A sent message's status, with the instant it was read at.
    Status {
        id: MessageId,
        tx: oneshot::Sender<Option<(Status, Instant)>>,
    },
    /// A message its topic's forward socket did not take, or one a subscription took for a
    /// connection that has gone since: queue it for receivers.
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

/// The task asked is busy (its inbox full past the timeout) or shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} busy or shutting down")]
pub(crate) struct Busy(pub(crate) &'static str);

/// The senders to the control thread and the message task.
#[derive(Debug, Clone)]
pub(crate) struct Inboxes {
    /// The control thread's.
    pub(crate) control: mpsc::Sender<ControlMsg>,
    /// The message task's.
    pub(crate) messages: mpsc::Sender<MsgCmd>,
}

impl Inboxes {
    /// Asks the control thread for a route to `subnet` (the data plane, the message task and
    /// the front ends all do it this way). Never waits: when the inbox is full the request is
    /// dropped, and the next frame or retry for that subnet asks again.
    pub(crate) fn need_route(&self, subnet: Subnet) {
        let _ = self.control.try_send(ControlMsg::NeedRoute(subnet));
    }

    /// Sends an admin request to the control thread and waits for its answer.
    pub(crate) async fn ask_control<T>(
        &self,
        f: impl FnOnce(oneshot::Sender<T>) -> Admin,
    ) -> Result<T, Busy> {
        let (tx, rx) = oneshot::channel();
        let busy = Busy("router");
        self.control
            .send_timeout(ControlMsg::Admin(f(tx)), ANSWER_TIMEOUT)
            .await
            .map_err(|_| busy)?;
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(v)) => Ok(v),
            _ => Err(busy),
        }
    }

    /// Sends a request to the message task and waits up to `wait` (beyond the usual answer
    /// timeout) for its answer.
    pub(crate) async fn ask_messages<T>(
        &self,
        f: impl FnOnce(oneshot::Sender<T>) -> MsgCmd,
        wait: Duration,
    ) -> Result<T, Busy> {
        let (tx, rx) = oneshot::channel();
        let busy = Busy("message subsystem");
        self.messages
            .send_timeout(f(tx), ANSWER_TIMEOUT)
            .await
            .map_err(|_| busy)?;
        match tokio::time::timeout(wait + ANSWER_TIMEOUT, rx).await {
            Ok(Ok(v)) => Ok(v),
            _ => Err(busy),
        }
    }

    /// Pushes a message; with `wait`, its reply (or a timeout) is the answer.
    pub(crate) async fn push(
        &self,
        dst: PublicKey,
        topic: Bytes,
        payload: Bytes,
        wait: Option<Duration>,
    ) -> Result<Result<Pushed, PushError>, Busy> {
        let cmd = |tx| MsgCmd::Push {
            dst,
            topic,
            payload,
            wait,
            tx,
        };
        self.ask_messages(cmd, wait.unwrap_or_default()).await
    }

    /// The public key of the node that owns `ip`, asking the overlay for a route if needed (up
    /// to a few seconds, as a push to an unknown address does on the reference).
    pub(crate) async fn resolve_key(&self, ip: IpAddr) -> Result<PublicKey, String> {
        let deadline = tokio::time::Instant::now() + RESOLVE_TIMEOUT;
        let IpAddr::V6(v6) = ip else {
            return Err("destination must be an overlay (400::/7) address".into());
        };
        loop {
            match self.ask_control(|tx| Admin::PubKey(ip, tx)).await {
                Ok(Some(pk)) => return Ok(pk),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            self.need_route(Subnet::v6_64(v6));
            if tokio::time::Instant::now() > deadline {
                return Err(format!("no route to {ip}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sleeps until `deadline`, or forever if there is none: the next timer of a sans-IO state
/// machine, in a `select!` beside its inbox.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// Unix seconds of a monotonic instant `t`, given that `at` was (about) now: message
/// statuses carry instants, the APIs show Unix times.
pub(crate) fn unix_secs(t: Instant, at: Instant) -> u64 {
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match t.checked_duration_since(at) {
        Some(ahead) => unix_now + ahead.as_secs(),
        None => unix_now.saturating_sub(at.duration_since(t).as_secs()),
    }
}
