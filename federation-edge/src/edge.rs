//! The edge's shared state ([`Edge`]), the relay task that drives [`Relay`], and the delivery
//! of peers' requests to our homeserver. The front ends (the proxy and the bridge API) share one
//! `Arc<Edge>`; the `server` module starts it and them, and shuts them down.
//!
//! One task owns the [`Relay`] state machine. HTTP handlers (the proxy's relayed requests, the
//! deliveries) talk to it through one bounded command channel and get their events on a small
//! bounded channel each; everything the relay task takes in one wake-up is handled before it
//! polls for envelopes, so requests that arrive together leave in one envelope.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyphae_wire::message::MessageId;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::body::{ChannelBody, FirstPart, StreamEnd, read_first, send_rest};
use crate::ca::SiteCa;
use crate::config::Config;
use crate::egress::{self, Egress};
use crate::metrics::Metrics;
use crate::overlay::{Incoming, Overlay};
use crate::relay::{
    Delivery, Event, Failure, Limits, PeerKey, Relay, RequestHead, ResponseHead,
    Stats as RelayStats,
};
use crate::router_api::router_has_route;
use crate::routes::Routes;

/// Commands to the relay task.
const COMMAND_QUEUE: usize = 16 * 1024;
/// Events queued for one request's handler (a window of body parts plus its head).
const REQUEST_EVENTS: usize = 64;
/// Messages from the router queued for the relay task.
const INCOMING_QUEUE: usize = 1024;

/// What a relayed request's handler hears.
#[derive(Debug)]
pub enum RequestEvent {
    /// The response head and first body bytes.
    Response {
        /// The head.
        head: ResponseHead,
        /// The body or its first part.
        body: Bytes,
        /// Whether more follows.
        more: bool,
    },
    /// More body.
    Body {
        /// The bytes.
        data: Bytes,
        /// Whether more follows.
        more: bool,
    },
    /// Failed.
    Failed(Failure),
    /// Credit for our upload.
    Credit(u64),
}

/// What a delivery task hears.
#[derive(Debug)]
enum DeliveryEvent {
    Body { data: Bytes, more: bool },
    Credit(u64),
    Abandoned,
}

#[derive(Debug)]
enum Cmd {
    Start {
        peer: PeerKey,
        head: RequestHead,
        body: Bytes,
        more: bool,
        events: mpsc::Sender<RequestEvent>,
        id: oneshot::Sender<Result<u64, Failure>>,
    },
    SendBody {
        peer: Option<PeerKey>,
        id: u64,
        data: Bytes,
        more: bool,
    },
    Consumed {
        peer: Option<PeerKey>,
        id: u64,
        n: u64,
    },
    Cancel {
        id: u64,
    },
    Respond {
        peer: PeerKey,
        id: u64,
        head: ResponseHead,
        body: Bytes,
        more: bool,
    },
    Refuse {
        peer: PeerKey,
        id: u64,
        status: u16,
    },
    /// A push ended: the router took the envelope (`msg`) or not; `ping` when it carried one.
    Pushed {
        peer: PeerKey,
        from_requester: bool,
        ping: Option<u64>,
        msg: Option<MessageId>,
    },
    Delivery {
        peer: PeerKey,
        nonce: u64,
        delivery: Delivery,
    },
    Forget {
        peer: PeerKey,
    },
}

/// Everything the edge's tasks share.
#[derive(Debug)]
pub struct Edge {
    /// The configuration.
    pub config: Config,
    /// Server-name routes.
    pub routes: Routes,
    /// The site CA.
    pub ca: SiteCa,
    /// The router connection.
    pub overlay: Overlay,
    /// Delivery to our homeserver.
    pub egress: Egress,
    /// Counters.
    pub metrics: Metrics,
    /// Destinations (by key) whose overlay path is down: lock-free reads for every CONNECT.
    down: ArcSwap<HashSet<PeerKey>>,
    /// The relay's counters, as of its last wake-up.
    relay_stats: Mutex<RelayStats>,
    cmd: mpsc::Sender<Cmd>,
    /// Requests in flight (relayed or delivered), for the shutdown drain.
    active: AtomicUsize,
    idle: Notify,
    started: Instant,
    relay_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The relay's limits (the relay task and the body streams use the same).
    limits: Limits,
}

/// Counts one request in flight until dropped.
#[derive(Debug)]
pub struct ActiveGuard(Arc<Edge>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Cancels a relayed request at the peer if its handler goes away before the end.
#[derive(Debug)]
pub struct CancelGuard {
    edge: Arc<Edge>,
    id: u64,
    armed: bool,
}

impl CancelGuard {
    /// The request's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The request finished: nothing to cancel.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            self.edge.send_soon(Cmd::Cancel { id: self.id });
        }
    }
}

impl Edge {
    /// Starts the relay task and the router connection.
    pub fn start(config: Config) -> Result<Arc<Self>, String> {
        let routes = Routes::load(&config.state_dir)?;
        let ca = SiteCa::load(&config.state_dir)?;
        let egress = Egress::new(&config.homeserver)?;
        let (in_tx, in_rx) = mpsc::channel(INCOMING_QUEUE);
        let overlay = Overlay::start(config.router.clone(), in_tx);
        let (cmd, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let edge = Arc::new(Self {
            config,
            routes,
            ca,
            overlay,
            egress,
            metrics: Metrics::default(),
            down: ArcSwap::from_pointee(HashSet::new()),
            relay_stats: Mutex::new(RelayStats::default()),
            cmd,
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            started: Instant::now(),
            relay_task: Mutex::new(None),
            limits: Limits::default(),
        });
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| format!("random source: {e}"))?;
        let relay = Relay::new(edge.limits.clone(), u64::from_le_bytes(seed));
        let task = tokio::spawn(relay_task(edge.clone(), relay, cmd_rx, in_rx));
        *edge.relay_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(edge)
    }

    /// Closes the router connection and ends the relay task: nothing is relayed after this
    /// (the last step of a shutdown, after the drain).
    pub fn stop(&self) {
        self.overlay.close();
        let task = self
            .relay_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = task {
            t.abort();
        }
    }

    /// Queues a command for the relay task without waiting; when its queue is full, a task
    /// delivers it as soon as there is room (a window update or a cancel must not be lost).
    fn send_soon(&self, c: Cmd) {
        if let Err(mpsc::error::TrySendError::Full(c)) = self.cmd.try_send(c) {
            let tx = self.cmd.clone();
            tokio::spawn(async move {
                let _ = tx.send(c).await;
            });
        }
    }

    /// The relay's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Seconds since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether the overlay path to `peer` is marked down.
    pub fn is_down(&self, peer: &PeerKey) -> bool {
        self.down.load().contains(peer)
    }

    /// The relay's counters.
    pub fn relay_stats(&self) -> RelayStats {
        *self.relay_stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests in flight.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a request in flight.
    pub fn enter(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(self.clone())
    }

    /// Waits until no request is in flight, or `limit` passed.
    pub async fn drain(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.idle.notified();
            if self.active.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.active.load(Ordering::Acquire) == 0;
            }
        }
    }

    /// A route was removed or changed: stop probing that destination.
    pub fn forget(&self, peer: PeerKey) {
        self.send_soon(Cmd::Forget { peer });
    }

    /// Starts relaying a request to `peer`: its id and the channel its events come on.
    pub async fn start_request(
        self: &Arc<Self>,
        peer: PeerKey,
        head: RequestHead,
        body: Bytes,
        more: bool,
    ) -> Result<(CancelGuard, mpsc::Receiver<RequestEvent>), Failure> {
        let (events, rx) = mpsc::channel(REQUEST_EVENTS);
        let (id_tx, id_rx) = oneshot::channel();
        let cmd = Cmd::Start {
            peer,
            head,
            body,
            more,
            events,
            id: id_tx,
        };
        self.cmd.send(cmd).await.map_err(|_| Failure::Busy)?;
        let id = id_rx.await.map_err(|_| Failure::Busy)??;
        Ok((
            CancelGuard {
                edge: self.clone(),
                id,
                armed: true,
            },
            rx,
        ))
    }

    /// Sends more of our request body (within the credit received).
    pub async fn send_body(&self, id: u64, data: Bytes, more: bool) -> bool {
        let cmd = Cmd::SendBody {
            peer: None,
            id,
            data,
            more,
        };
        self.cmd.send(cmd).await.is_ok()
    }

    /// Our homeserver consumed `n` bytes of the response to request `id`.
    pub fn consumed(&self, id: u64, n: u64) {
        self.send_soon(Cmd::Consumed { peer: None, id, n });
    }
}

/// The relay task: the only owner of the [`Relay`].
async fn relay_task(
    edge: Arc<Edge>,
    relay: Relay,
    mut cmds: mpsc::Receiver<Cmd>,
    mut incoming: mpsc::Receiver<Incoming>,
) {
    let mut d = Driver {
        edge,
        relay,
        requests: HashMap::new(),
        deliveries: HashMap::new(),
        ping_msgs: HashMap::new(),
    };
    let mut batch = Vec::with_capacity(256);
    let mut msgs = Vec::with_capacity(256);
    loop {
        let sleep = async {
            match d.relay.poll_timeout() {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = cmds.recv_many(&mut batch, 256) => {
                if n == 0 {
                    return;
                }
            }
            n = incoming.recv_many(&mut msgs, 256) => {
                if n == 0 {
                    return;
                }
            }
            () = sleep => {}
        }
        let now = Instant::now();
        // Take whatever else is ready too, so it leaves in the same envelopes.
        while msgs.len() < 1024
            && let Ok(m) = incoming.try_recv()
        {
            msgs.push(m);
        }
        while batch.len() < 1024
            && let Ok(c) = cmds.try_recv()
        {
            batch.push(c);
        }
        for m in msgs.drain(..) {
            if m.topic == crate::relay::TOPIC {
                d.relay.handle_message(now, m.src, &m.payload);
            }
        }
        d.run(now, &mut batch);
        *d.edge.relay_stats.lock().unwrap_or_else(|p| p.into_inner()) = d.relay.stats();
    }
}

/// The relay and the channels of the requests and deliveries it drives.
struct Driver {
    edge: Arc<Edge>,
    relay: Relay,
    /// Our relayed requests' handlers, by id.
    requests: HashMap<u64, mpsc::Sender<RequestEvent>>,
    /// Deliveries to our homeserver, by requester and id.
    deliveries: HashMap<(PeerKey, u64), mpsc::Sender<DeliveryEvent>>,
    /// The message ids of the pings in flight.
    ping_msgs: HashMap<(PeerKey, u64), MessageId>,
}

impl Driver {
    /// Handles `cmds`, runs the timers, and drains the relay; what its events ask of it in
    /// turn (a cancel for a handler that went away, a refusal) is fed back at once, never
    /// through the task's own queue.
    fn run(&mut self, now: Instant, cmds: &mut Vec<Cmd>) {
        for c in cmds.drain(..) {
            self.command(now, c);
        }
        self.relay.handle_timeout(now);
        loop {
            push_transmits(&self.edge, &mut self.relay);
            while let Some(e) = self.relay.poll_event() {
                self.event(e, cmds);
            }
            if cmds.is_empty() {
                return;
            }
            for c in cmds.drain(..) {
                self.command(now, c);
            }
        }
    }

    fn command(&mut self, now: Instant, c: Cmd) {
        match c {
            Cmd::Start {
                peer,
                head,
                body,
                more,
                events,
                id,
            } => {
                let r = self.relay.start_request(now, peer, head, body, more);
                if let Ok(i) = r {
                    self.requests.insert(i, events);
                }
                let _ = id.send(r);
            }
            Cmd::SendBody {
                peer,
                id,
                data,
                more,
            } => {
                if !self.relay.send_body(now, peer, id, data, more) {
                    tracing::debug!("body part for request {id} refused");
                }
                if peer.is_some() && !more {
                    self.deliveries.remove(&(peer.unwrap_or_default(), id));
                }
            }
            Cmd::Consumed { peer, id, n } => self.relay.body_consumed(now, peer, id, n),
            Cmd::Cancel { id } => {
                self.requests.remove(&id);
                self.relay.cancel(now, id);
            }
            Cmd::Respond {
                peer,
                id,
                head,
                body,
                more,
            } => {
                self.relay.respond(now, peer, id, head, body, more);
                if !more {
                    self.deliveries.remove(&(peer, id));
                }
            }
            Cmd::Refuse { peer, id, status } => {
                self.relay.refuse(now, peer, id, status);
                self.deliveries.remove(&(peer, id));
            }
            Cmd::Pushed {
                peer,
                from_requester,
                ping,
                msg,
            } => {
                self.relay.handle_sent(peer, from_requester);
                match (ping, msg) {
                    (Some(nonce), Some(m)) => {
                        self.ping_msgs.retain(|(p, _), _| *p != peer);
                        self.ping_msgs.insert((peer, nonce), m);
                    }
                    (Some(nonce), None) => self.relay.handle_pushed(now, peer, nonce, false),
                    (None, _) => {}
                }
            }
            Cmd::Delivery {
                peer,
                nonce,
                delivery,
            } => {
                if delivery != Delivery::Pending {
                    self.ping_msgs.remove(&(peer, nonce));
                }
                self.relay.handle_delivery_check(now, peer, nonce, delivery);
            }
            Cmd::Forget { peer } => {
                self.relay.forget(&peer);
                self.edge.down.rcu(|d| {
                    let mut d = HashSet::clone(d);
                    d.remove(&peer);
                    d
                });
            }
        }
    }

    /// Hands `ev` to request `id`'s handler; a handler that is gone or not keeping up ends
    /// the request.
    fn tell_request(&mut self, deferred: &mut Vec<Cmd>, id: u64, ev: RequestEvent, last: bool) {
        let ok = self
            .requests
            .get(&id)
            .is_some_and(|tx| tx.try_send(ev).is_ok());
        if last || !ok {
            self.requests.remove(&id);
        }
        if !ok {
            deferred.push(Cmd::Cancel { id });
        }
    }

    fn event(&mut self, e: Event, deferred: &mut Vec<Cmd>) {
        match e {
            Event::Response {
                id,
                head,
                body,
                more,
            } => self.tell_request(
                deferred,
                id,
                RequestEvent::Response { head, body, more },
                !more,
            ),
            Event::ResponseBody { id, data, more } => {
                self.tell_request(deferred, id, RequestEvent::Body { data, more }, !more);
            }
            Event::Failed { id, failure } => {
                if let Some(tx) = self.requests.remove(&id) {
                    let _ = tx.try_send(RequestEvent::Failed(failure));
                }
            }
            Event::Credit {
                id,
                peer: None,
                bytes,
            } => self.tell_request(deferred, id, RequestEvent::Credit(bytes), false),
            Event::Credit {
                id,
                peer: Some(peer),
                bytes,
            } => {
                if let Some(tx) = self.deliveries.get(&(peer, id)) {
                    let _ = tx.try_send(DeliveryEvent::Credit(bytes));
                }
            }
            Event::Deliver {
                peer,
                id,
                head,
                body,
                more,
            } => {
                tracing::debug!("deliver {id} {} {:?} more={more}", head.method, head.target);
                // Kept until the response is sent: body parts, credits and cancels reach the
                // delivery through it.
                let (tx, rx) = mpsc::channel(REQUEST_EVENTS);
                self.deliveries.insert((peer, id), tx);
                tokio::spawn(deliver(self.edge.clone(), peer, id, head, body, more, rx));
            }
            Event::RequestBody {
                peer,
                id,
                data,
                more,
            } => {
                let ok = self
                    .deliveries
                    .get(&(peer, id))
                    .is_some_and(|tx| tx.try_send(DeliveryEvent::Body { data, more }).is_ok());
                if !ok {
                    self.deliveries.remove(&(peer, id));
                    deferred.push(Cmd::Refuse {
                        peer,
                        id,
                        status: 502,
                    });
                }
            }
            Event::Abandoned { peer, id } => {
                if let Some(tx) = self.deliveries.remove(&(peer, id)) {
                    let _ = tx.try_send(DeliveryEvent::Abandoned);
                }
            }
            Event::CheckDelivery { peer, nonce } => {
                let msg = self.ping_msgs.get(&(peer, nonce)).copied();
                let edge = self.edge.clone();
                tokio::spawn(async move {
                    let delivery = check_delivery(&edge, peer, msg).await;
                    let _ = edge
                        .cmd
                        .send(Cmd::Delivery {
                            peer,
                            nonce,
                            delivery,
                        })
                        .await;
                });
            }
            Event::PeerDown { peer, failure } => {
                tracing::warn!(
                    "overlay path to {} is down ({})",
                    hex::encode(peer),
                    failure.status()
                );
                self.edge.down.rcu(|d| {
                    let mut d = HashSet::clone(d);
                    d.insert(peer);
                    d
                });
            }
            Event::PeerUp { peer } => {
                tracing::info!("overlay path to {} is up again", hex::encode(peer));
                self.edge.down.rcu(|d| {
                    let mut d = HashSet::clone(d);
                    d.remove(&peer);
                    d
                });
            }
        }
    }
}

/// Hands every envelope the relay has ready to the router, each push in its own task.
fn push_transmits(edge: &Arc<Edge>, relay: &mut Relay) {
    while let Some(t) = relay.poll_transmit() {
        let (edge2, overlay) = (edge.clone(), edge.overlay.clone());
        tokio::spawn(async move {
            let r = overlay.push(t.peer, t.payload).await;
            if let Err(e) = &r {
                tracing::debug!("push to {}: {e}", hex::encode(t.peer));
            }
            let cmd = Cmd::Pushed {
                peer: t.peer,
                from_requester: t.from_requester,
                ping: t.ping,
                msg: r.ok(),
            };
            let _ = edge2.cmd.send(cmd).await;
        });
    }
}

/// Where a ping's message is: delivered, or on its way over a route the router has, or
/// without a route (also when the router cannot be asked).
async fn check_delivery(edge: &Edge, peer: PeerKey, msg: Option<MessageId>) -> Delivery {
    let Some(m) = msg else {
        return Delivery::NoRoute;
    };
    if edge.overlay.delivered(m).await.unwrap_or(false) {
        return Delivery::Delivered;
    }
    match router_has_route(edge.config.router_api, &peer).await {
        Some(true) => Delivery::Pending,
        _ => Delivery::NoRoute,
    }
}

/// Delivers a peer's request to our homeserver and relays the response back.
async fn deliver(
    edge: Arc<Edge>,
    peer: PeerKey,
    id: u64,
    head: RequestHead,
    first: Bytes,
    more: bool,
    mut events: mpsc::Receiver<DeliveryEvent>,
) {
    let _active = edge.enter();
    let refuse = |status: u16| Cmd::Refuse { peer, id, status };
    if let Err(e) = edge.egress.check(&head) {
        edge.metrics.inc(&edge.metrics.delivery_refused);
        tracing::info!("refused a relayed request: {e}");
        let _ = edge.cmd.send(refuse(e.status())).await;
        return;
    }
    // The request body: whole, or streamed from the relay's parts.
    let (body_tx, body_rx) = mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(4);
    let req_body: egress::Body = if more {
        let _ = body_tx.try_send(Ok(hyper::body::Frame::data(first)));
        ChannelBody(body_rx).boxed()
    } else {
        http_body_util::Full::new(first)
            .map_err(|e| match e {})
            .boxed()
    };
    // One task forwards what the relay says about this request: body parts into the request
    // body, credits for our response body, and the requester's abandonment.
    let (abandon_tx, mut abandon_rx) = oneshot::channel::<()>();
    let (credit_tx, mut credits) = mpsc::channel::<u64>(REQUEST_EVENTS);
    let body_sink = more.then_some(body_tx);
    let edge2 = edge.clone();
    tokio::spawn(async move {
        let mut body_sink = body_sink;
        let mut abandon = Some(abandon_tx);
        while let Some(ev) = events.recv().await {
            match ev {
                DeliveryEvent::Body { data, more } => {
                    let Some(tx) = &body_sink else { continue };
                    let n = data.len() as u64;
                    if tx.send(Ok(hyper::body::Frame::data(data))).await.is_err() {
                        body_sink = None;
                        continue;
                    }
                    edge2.send_soon(Cmd::Consumed {
                        peer: Some(peer),
                        id,
                        n,
                    });
                    if !more {
                        // Dropping the sender ends the body: it is whole.
                        body_sink = None;
                    }
                }
                DeliveryEvent::Credit(c) => {
                    let _ = credit_tx.try_send(c);
                }
                DeliveryEvent::Abandoned => {
                    if let Some(a) = abandon.take() {
                        let _ = a.send(());
                    }
                    break;
                }
            }
        }
        if let Some(tx) = body_sink {
            // Cut off before its last part: our homeserver must never take it for whole.
            let _ = tx
                .send(Err(std::io::Error::other("request body cut off")))
                .await;
        }
    });
    let t0 = Instant::now();
    let res = tokio::select! {
        r = edge.egress.deliver(&head, req_body) => r,
        Ok(()) = &mut abandon_rx => {
            edge.metrics.inc(&edge.metrics.delivery_abandoned);
            return;
        }
    };
    tracing::debug!(
        "delivered {} {:?}: {:?}",
        head.method,
        head.target,
        res.as_ref().map(|r| r.status())
    );
    let res = match res {
        Ok(r) => r,
        Err(e) => {
            edge.metrics.inc(&edge.metrics.delivery_failed);
            tracing::warn!("delivery to our homeserver failed: {e}");
            let _ = edge.cmd.send(refuse(e.status())).await;
            return;
        }
    };
    edge.metrics.inc(&edge.metrics.delivered);
    edge.metrics.observe_delivery(t0.elapsed());
    let (parts, mut body) = res.into_parts();
    let head = ResponseHead {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .filter(|(n, _)| egress::RESPONSE_HEADERS.contains(&n.as_str()))
            .map(|(n, v)| (n.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
            .collect(),
    };
    let limits = edge.limits();
    // A homeserver that sends a head and stalls its body is given up on like one that sends
    // nothing.
    let idle = Duration::from_secs(60);
    let Ok(FirstPart { first, carry, more }) =
        read_first(&mut body, limits.inline_body, idle).await
    else {
        tracing::warn!("reading our homeserver's response failed");
        let _ = edge.cmd.send(refuse(502)).await;
        return;
    };
    let cmd = Cmd::Respond {
        peer,
        id,
        head,
        body: first,
        more,
    };
    if edge.cmd.send(cmd).await.is_err() || !more {
        return;
    }
    // The rest inside the window the requester grants.
    let send = |data, more| {
        let cmd = Cmd::SendBody {
            peer: Some(peer),
            id,
            data,
            more,
        };
        let tx = edge.cmd.clone();
        async move { tx.send(cmd).await.is_ok() }
    };
    let end = send_rest(&mut body, carry, limits.part_size, idle, &mut credits, send).await;
    match end {
        StreamEnd::SourceFailed => {
            let _ = edge.cmd.send(refuse(502)).await;
        }
        // The requester stopped taking the body: end it there too.
        StreamEnd::ReceiverStalled => {
            let _ = edge.cmd.send(refuse(504)).await;
        }
        StreamEnd::Done | StreamEnd::Abandoned => {}
    }
}
