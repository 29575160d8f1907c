//! TCP peer links: the worker's listener (one per worker on the same port, SO_REUSEPORT),
//! dialing, and the socket options and I/O halves a link starts with before [`peer::serve`]
//! runs it.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::task::spawn_local;

use super::admission::Slot;
use super::endpoint::{Endpoint, Proto, canonical, link_kind};
use super::error::StartError;
use super::forward::Forwarder;
use super::inbox::ControlMsg;
use super::link::{LinkRead, LinkWrite, PortableRead, PortableWrite};
use super::peer::{self, LinkInfo, TCP_NOTSENT_LOWAT};
use super::peers::PeerType;

/// How long a dial may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One TCP listener per worker on the same port (SO_REUSEPORT), dual-stack `[::]`.
pub(crate) fn bind_listeners(
    port: u16,
    n: usize,
    rcvbuf: Option<usize>,
) -> Result<Vec<std::net::TcpListener>, StartError> {
    let addr: SocketAddr = (Ipv6Addr::UNSPECIFIED, port).into();
    let bind = |port_addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        if let Some(b) = rcvbuf {
            // Set before listening, so accepted sockets inherit it and announce a matching
            // window scale.
            s.set_recv_buffer_size(b)?;
        }
        s.bind(&port_addr.into())?;
        s.listen(1024)?;
        Ok(s.into())
    };
    let failed = |addr| {
        move |source| StartError::Bind {
            what: "TCP listener",
            addr,
            source,
        }
    };
    let first = bind(addr).map_err(failed(addr))?;
    // With port 0 the kernel picked one: the others join it.
    let actual = first.local_addr().map_err(failed(addr))?;
    let mut v = vec![first];
    for _ in 1..n {
        v.push(bind(actual).map_err(failed(actual))?);
    }
    Ok(v)
}

/// A worker's TCP side: its forwarder and the I/O driver its links use.
#[derive(Debug, Clone)]
pub(crate) struct Tcp {
    /// Where the links' frames go; also the worker's ring, if it runs the io_uring driver.
    pub(crate) fwd: Forwarder,
}

impl Tcp {
    /// Accepts inbound links until shutdown.
    pub(crate) async fn accept_loop(self, listener: tokio::net::TcpListener) {
        let mut shutdown = self.fwd.shared().shutdown.clone();
        loop {
            let r = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                r = listener.accept() => r,
            };
            match r {
                Ok((stream, remote)) => {
                    let ep = Endpoint {
                        proto: Proto::Tcp,
                        addr: canonical(remote),
                    };
                    match self.fwd.shared().admission.admit(ep.addr.ip()) {
                        Ok(slot) => {
                            self.start(stream, ep, PeerType::Inbound, Some(slot));
                        }
                        Err(why) => tracing::debug!(%ep, ?why, "inbound link refused"),
                    }
                }
                Err(e) => {
                    tracing::warn!(worker = self.fwd.worker(), "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Connects to `ep`; tells the control thread if that fails.
    pub(crate) async fn dial(self, ep: Endpoint, kind: PeerType) {
        let r = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(ep.addr));
        match r.await {
            // A socket that could not be set up counts as a failed dial.
            Ok(Ok(stream)) => {
                if self.start(stream, ep, kind, None) {
                    return;
                }
            }
            Ok(Err(e)) => tracing::debug!(%ep, "connect: {e}"),
            Err(_) => tracing::debug!(%ep, "connect timed out"),
        }
        let control = &self.fwd.shared().inbox.control;
        let _ = control.send(ControlMsg::DialFailed(ep)).await;
    }

    /// Sets a new link's socket options and runs it on this worker; an inbound link holds
    /// its place (`slot`) while it runs. `false` if the socket could not be set up.
    fn start(
        &self,
        stream: tokio::net::TcpStream,
        ep: Endpoint,
        kind: PeerType,
        slot: Option<Slot>,
    ) -> bool {
        let settings = &self.fwd.shared().settings;
        let _ = stream.set_nodelay(true);
        // Keep the kernel's unsent backlog short: frames wait in our bounded per-peer queue,
        // where they can be dropped and counted, rather than in an autotuned send buffer
        // (in-flight data, and so throughput over long paths, is not limited by this).
        let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(TCP_NOTSENT_LOWAT);
        if let Some(n) = settings.tcp_rcvbuf {
            let _ = socket2::SockRef::from(&stream).set_recv_buffer_size(n);
        }
        let info = LinkInfo {
            endpoint: ep,
            local: stream.local_addr().map_or(ep.addr, canonical),
            kind,
            link: link_kind(Proto::Tcp, ep.addr),
        };
        let fwd = self.fwd.clone();
        if let Some(ring) = self.fwd.ring() {
            // The ring's operations wait in the kernel, not on readiness: the socket blocks.
            let std = match stream
                .into_std()
                .and_then(|s| s.set_nonblocking(false).map(|()| s))
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%ep, "socket: {e}");
                    return false;
                }
            };
            let (r, w) = super::link::uring_halves(ring, std);
            run_link(fwd, info, slot, r, w);
            return true;
        }
        let (r, w) = stream.into_split();
        run_link(fwd, info, slot, PortableRead(r), PortableWrite(w));
        true
    }
}

/// Runs a link on its halves on this worker until it ends; an inbound link holds its place
/// (`slot`) meanwhile.
fn run_link<R: LinkRead + 'static, W: LinkWrite + 'static>(
    fwd: Forwarder,
    info: LinkInfo,
    slot: Option<Slot>,
    r: R,
    w: W,
) {
    spawn_local(async move {
        let _slot = slot;
        if let Some(up) = peer::up(&fwd, info).await {
            peer::serve(fwd, up, r, w).await;
        }
    });
}
