//! QUIC peer links, as the reference makes them on the wire: a self-signed certificate naming
//! the router id, SNI `dummy.mycelium`, no ALPN, TLS 1.3; control frames on one client-opened
//! bidirectional stream, data frames as datagrams.
//!
//! Unlike the reference:
//!
//! * a data frame too large for a datagram is sent on the stream (whose framing carries data
//!   frames as well), never allowed to reset the link;
//! * links run on every worker, not on one: each worker has a socket of its own on the QUIC
//!   port (SO_REUSEPORT: the kernel hashes each remote address to one socket, so a connection
//!   stays with the worker that accepted it) and dials from a socket of its own on another
//!   port (the answers to a dial from the shared port could be hashed to another worker). A
//!   peer whose address changes mid-connection (a NAT rebinding) may then be hashed to another
//!   worker, which does not know the connection; the link fails and is redialed, as after any
//!   path loss.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyphae_wire::DecodeError;
use hyphae_wire::deframer::{Frame, decode_datagram};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::endpoint::{Endpoint, Proto, canonical, link_kind};
use super::error::StartError;
use super::forward::Forwarder;
use super::inbox::ControlMsg;
use super::link::{LinkRead, LinkWrite, READ_MIN};
use super::peer::{self, LinkInfo};
use super::peers::{PeerHandle, PeerType};

/// The SNI the reference's dialers send.
const SNI: &str = "dummy.mycelium";

/// Binds the UDP sockets QUIC peers connect to: `n` of them on one port (SO_REUSEPORT),
/// dual-stack, one per worker. The kernel hashes each remote address to one of them, so all
/// packets of a connection reach the worker that accepted it.
pub(crate) fn bind_sockets(port: u16, n: usize) -> Result<Vec<UdpSocket>, StartError> {
    let bind = |port: u16| -> io::Result<UdpSocket> {
        let addr: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, port).into();
        let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None)?;
        s.set_only_v6(false)?;
        s.set_reuse_port(n > 1)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        Ok(s.into())
    };
    let failed = |port: u16| {
        move |source| StartError::Bind {
            what: "QUIC socket",
            addr: (std::net::Ipv6Addr::UNSPECIFIED, port).into(),
            source,
        }
    };
    let first = bind(port).map_err(failed(port))?;
    // With port 0 the kernel picked one: the others join it.
    let actual = first.local_addr().map_err(failed(port))?.port();
    let mut v = vec![first];
    for _ in 1..n {
        v.push(bind(actual).map_err(failed(actual))?);
    }
    Ok(v)
}

/// A fresh dual-stack UDP socket on an ephemeral port, for dialing.
fn dial_socket() -> io::Result<UdpSocket> {
    let addr: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, 0).into();
    let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None)?;
    s.set_only_v6(false)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// One worker's QUIC endpoints: one on its share of the listening port for the links peers
/// open, one on a port of its own for the links it dials (answers to a dial from the shared
/// port could be hashed to another worker's socket), and the client configuration.
#[derive(Debug, Clone)]
pub(crate) struct Quic {
    listen: quinn::Endpoint,
    dial: quinn::Endpoint,
    client: quinn::ClientConfig,
}

fn transport(server: bool) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // One stream per link, opened by the dialer: a stream the node never accepts would hold
    // up to its whole window, unread, for as long as the link lives.
    t.max_concurrent_uni_streams(0u8.into())
        .max_concurrent_bidi_streams(u8::from(server).into())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .initial_mtu(1500)
        .datagram_receive_buffer_size(Some(16 << 20))
        .datagram_send_buffer_size(16 << 20)
        .send_window(80 << 20)
        .stream_receive_window(quinn::VarInt::from_u32(10 << 20));
    if let Ok(idle) = Duration::from_secs(60).try_into() {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

impl Quic {
    /// Endpoints listening on `sock` and dialing from a new socket, with a certificate naming
    /// `router_id`.
    pub(crate) fn new(sock: UdpSocket, router_id: &hyphae_wire::RouterId) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = rcgen::generate_simple_self_signed(vec![router_id.to_string()])
            .map_err(|e| format!("certificate: {e}"))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .map_err(|e| e.to_string())?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(
            QuicServerConfig::try_from(server).map_err(|e| e.to_string())?,
        ));
        server.transport_config(transport(true));
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
            .with_no_client_auth();
        let mut client = quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(client).map_err(|e| e.to_string())?,
        ));
        client.transport_config(transport(false));
        let listen = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            sock,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| e.to_string())?;
        let dial = dial_socket()
            .and_then(|s| {
                quinn::Endpoint::new(
                    quinn::EndpointConfig::default(),
                    None,
                    s,
                    Arc::new(quinn::TokioRuntime),
                )
            })
            .map_err(|e| format!("dialing socket: {e}"))?;
        Ok(Self {
            listen,
            dial,
            client,
        })
    }

    /// Closes every connection with CONNECTION_CLOSE and waits (briefly) until sent.
    pub(crate) async fn close(&self) {
        for ep in [&self.listen, &self.dial] {
            ep.close(0u8.into(), b"shutdown");
        }
        let idle = async {
            self.listen.wait_idle().await;
            self.dial.wait_idle().await;
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), idle).await;
    }

    /// Accepts inbound links until shutdown; they run on `fwd`'s worker.
    pub(crate) async fn accept_loop(self, fwd: Forwarder) {
        let mut shutdown = fwd.shared().shutdown.clone();
        loop {
            let incoming = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => {
                    self.listen.close(0u8.into(), b"shutdown");
                    return;
                }
                i = self.listen.accept() => i,
            };
            let Some(incoming) = incoming else { return };
            // The source address of a first Initial is whatever the sender wrote: it takes no
            // place until it has answered a Retry (stateless, costs this node nothing).
            if !incoming.remote_address_validated() {
                if incoming.may_retry() {
                    let _ = incoming.retry();
                } else {
                    incoming.ignore();
                }
                continue;
            }
            let remote = canonical(incoming.remote_address());
            // The place is taken before the handshake: handshakes in flight count.
            let slot = match fwd.shared().admission.admit(remote.ip()) {
                Ok(s) => s,
                Err(why) => {
                    tracing::debug!(%remote, ?why, "inbound QUIC link refused");
                    incoming.refuse();
                    continue;
                }
            };
            let fwd = fwd.clone();
            let local = self.listen.local_addr();
            tokio::task::spawn_local(async move {
                let _slot = slot;
                let setup = async {
                    let conn = incoming.await?;
                    let (send, recv) = conn.accept_bi().await?;
                    Ok::<_, quinn::ConnectionError>((conn, send, recv))
                };
                match tokio::time::timeout(Duration::from_secs(10), setup).await {
                    Ok(Ok((conn, send, recv))) => {
                        let ep = Endpoint {
                            proto: Proto::Quic,
                            addr: remote,
                        };
                        run(fwd, conn, send, recv, ep, PeerType::Inbound, local).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, "QUIC accept: {e}"),
                    Err(_) => tracing::debug!(%remote, "QUIC accept timed out"),
                }
            });
        }
    }

    /// Connects to `ep` (the link runs on `fwd`'s worker); tells the control thread if that
    /// fails.
    pub(crate) async fn dial(self, fwd: Forwarder, ep: Endpoint, kind: PeerType) {
        let setup = async {
            let conn = self
                .dial
                .connect_with(self.client.clone(), ep.addr, SNI)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((conn, send, recv))
        };
        match tokio::time::timeout(Duration::from_secs(10), setup).await {
            Ok(Ok((conn, send, recv))) => {
                let local = self.dial.local_addr();
                return run(fwd, conn, send, recv, ep, kind, local).await;
            }
            Ok(Err(e)) => tracing::debug!(%ep, "QUIC connect: {e}"),
            Err(_) => tracing::debug!(%ep, "QUIC connect timed out"),
        }
        let control = &fwd.shared().inbox.control;
        let _ = control.send(ControlMsg::DialFailed(ep)).await;
    }
}

/// Runs one established QUIC link: control frames on the stream, data frames as datagrams
/// (received by a task of their own beside the link's).
async fn run(
    fwd: Forwarder,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    ep: Endpoint,
    kind: PeerType,
    local: io::Result<SocketAddr>,
) {
    let local = local.map_or(ep.addr, canonical);
    let info = LinkInfo {
        endpoint: ep,
        local,
        kind,
        link: link_kind(Proto::Quic, ep.addr),
    };
    let Some(up) = peer::up(&fwd, info).await else {
        return;
    };
    tokio::task::spawn_local(datagram_loop(fwd.clone(), up.handle.clone(), conn.clone()));
    let writer = QuicWrite {
        send,
        conn,
        fwd: fwd.clone(),
    };
    peer::serve(fwd, up, QuicRead(recv), writer).await;
}

/// Most datagrams taken from the connection before they are handed on together.
const DATAGRAM_BATCH: usize = 64;

/// Receives datagrams (one whole frame each) until the link closes. After each wake it takes
/// every datagram already received (up to [`DATAGRAM_BATCH`]) and hands them to the forwarding
/// path in one call, as the TCP reader does with the frames of one read.
async fn datagram_loop(fwd: Forwarder, h: Arc<PeerHandle>, conn: quinn::Connection) {
    let mut deferred = Vec::new();
    let mut datagrams = Vec::with_capacity(DATAGRAM_BATCH);
    let mut frames = Vec::with_capacity(DATAGRAM_BATCH);
    let mut close = h.close.subscribe();
    loop {
        let d = tokio::select! {
            _ = close.wait_for(|c| *c) => break,
            d = conn.read_datagram() => d,
        };
        let Ok(d) = d else { break };
        datagrams.push(d);
        let mut ended = false;
        while datagrams.len() < DATAGRAM_BATCH {
            match ready_datagram(&conn) {
                Some(Ok(d)) => datagrams.push(d),
                Some(Err(_)) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        h.counters
            .rx_frames
            .fetch_add(datagrams.len() as u64, Relaxed);
        let received = decode_batch(&mut datagrams, &mut frames, |e| {
            fwd.counters().skipped_control.fetch_add(1, Relaxed);
            tracing::debug!(peer = h.id.0, "bad datagram: {e}");
        });
        h.counters.rx_bytes.fetch_add(received as u64, Relaxed);
        // Leaves `frames` empty for the next batch.
        fwd.handle_frames(&h, &mut frames, &mut deferred);
        fwd.send_deferred(&mut deferred).await;
        if ended {
            break;
        }
    }
    let _ = h.close.send(true);
}

/// Copies a batch of datagrams back to back into one buffer and decodes each as a frame, in
/// order; a datagram that is not one whole frame goes to `bad` and is dropped. Frames next to
/// each other in the buffer go on to the same peer as one run (one queue entry and one wake
/// for the batch, where a buffer per datagram made every frame a run of its own), and the
/// batch costs one allocation instead of one per datagram. A frame still queued keeps its
/// batch's buffer alive, at most [`DATAGRAM_BATCH`] datagrams (under 100 KB), as a frame from
/// a TCP link keeps its read buffer. Leaves `datagrams` empty; returns the bytes received.
fn decode_batch(
    datagrams: &mut Vec<Bytes>,
    frames: &mut Vec<Frame<BytesMut>>,
    mut bad: impl FnMut(DecodeError),
) -> usize {
    let total = datagrams.iter().map(Bytes::len).sum();
    let mut buf = BytesMut::with_capacity(total);
    for d in datagrams.drain(..) {
        buf.extend_from_slice(&d);
        match decode_datagram(buf.split()) {
            Ok(f) => frames.push(f),
            Err(e) => bad(e),
        }
    }
    total
}

/// A datagram the connection has already received, without waiting for one.
fn ready_datagram(conn: &quinn::Connection) -> Option<Result<Bytes, quinn::ConnectionError>> {
    let mut read = std::pin::pin!(conn.read_datagram());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match read.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => Some(r),
        std::task::Poll::Pending => None,
    }
}

/// Splits a run of whole frames (as queued by the forwarding path) into single frames.
fn frames_in(mut run: Bytes) -> impl Iterator<Item = Bytes> {
    std::iter::from_fn(move || {
        if run.is_empty() {
            return None;
        }
        let len = match run.get(1) {
            Some(0) => hyphae_wire::data::frame_len(&run).ok(),
            _ => hyphae_wire::babel::control_frame_len(&run).ok(),
        };
        let len = len.filter(|l| *l <= run.len()).unwrap_or(run.len());
        Some(run.split_to(len))
    })
}

/// The read half of a QUIC link: its control stream.
pub(crate) struct QuicRead(quinn::RecvStream);

impl LinkRead for QuicRead {
    async fn read(&mut self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        let room = (buf.capacity() - buf.len()).max(READ_MIN);
        match self.0.read_chunk(room, true).await {
            Ok(Some(c)) => {
                buf.extend_from_slice(&c.bytes);
                (Ok(c.bytes.len()), buf)
            }
            Ok(None) => (Ok(0), buf),
            Err(e) => (Err(io::Error::other(e)), buf),
        }
    }
}

/// The write half of a QUIC link: data frames as datagrams where they fit, the rest on the
/// stream.
pub(crate) struct QuicWrite {
    send: quinn::SendStream,
    conn: quinn::Connection,
    fwd: Forwarder,
}

impl LinkWrite for QuicWrite {
    async fn write_batch(&mut self, mut batch: Vec<Bytes>) -> (io::Result<()>, Vec<Bytes>) {
        let max = self.conn.max_datagram_size().unwrap_or(0);
        let mut stream: Vec<Bytes> = Vec::new();
        for f in std::mem::take(&mut batch).into_iter().flat_map(frames_in) {
            let is_data = f.get(1) == Some(&0);
            if is_data && f.len() <= max {
                match self.conn.send_datagram(f.clone()) {
                    Ok(()) => continue,
                    Err(quinn::SendDatagramError::TooLarge) => {}
                    Err(e) => return (Err(io::Error::other(e)), batch),
                }
            }
            if is_data {
                self.fwd
                    .counters()
                    .quic_oversize_on_stream
                    .fetch_add(1, Relaxed);
            }
            stream.push(f);
        }
        if !stream.is_empty()
            && let Err(e) = self.send.write_all_chunks(&mut stream).await
        {
            return (Err(io::Error::other(e)), batch);
        }
        (Ok(()), batch)
    }
}

/// The reference does not authenticate peers at the link level (the overlay's end-to-end
/// encryption does not depend on it): any certificate is accepted, but the handshake
/// signature is still checked.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyphae_wire::babel::{Hello, Tlv};
    use hyphae_wire::data::DataHeader;
    use hyphae_wire::{Interval, SeqNo};

    fn header() -> DataHeader {
        DataHeader {
            hop_limit: 9,
            src: "4a9::1".parse().unwrap(),
            dst: "4a9::2".parse().unwrap(),
        }
    }

    #[test]
    fn runs_split_into_frames() {
        let h = header();
        let mut v = Vec::new();
        h.emit_frame(&[7; 100], &mut v).unwrap();
        Tlv::Hello(Hello::unicast(SeqNo(1), Interval(2000))).encode_frame(&mut v);
        h.emit_frame(&[8; 1400], &mut v).unwrap();
        let lens: Vec<usize> = frames_in(Bytes::from(v)).map(|f| f.len()).collect();
        assert_eq!(lens, vec![140, 16, 1440]);
    }

    #[test]
    fn a_batch_of_datagrams_decodes_in_order_into_one_buffer() {
        let h = header();
        let data = |fill: u8, n: usize| {
            let mut v = Vec::new();
            h.emit_frame(&vec![fill; n], &mut v).unwrap();
            Bytes::from(v)
        };
        let mut hello = Vec::new();
        Tlv::Hello(Hello::unicast(SeqNo(1), Interval(2000))).encode_frame(&mut hello);
        let (a, b, c) = (data(1, 100), data(2, 256), data(3, 1400));
        // A data frame cut short, and one with a byte too many: neither is a whole frame.
        let short = a.slice(..a.len() - 1);
        let mut long = c.to_vec();
        long.push(0);
        let mut datagrams = vec![
            a.clone(),
            b.clone(),
            short,
            Bytes::from(hello),
            Bytes::from(long),
            c.clone(),
        ];
        let mut frames = Vec::new();
        let mut bad = 0;
        let received = decode_batch(&mut datagrams, &mut frames, |_| bad += 1);
        assert!(datagrams.is_empty());
        assert_eq!(received, a.len() * 2 - 1 + b.len() + 16 + c.len() * 2 + 1);
        assert_eq!(
            bad, 2,
            "the two datagrams that are not whole frames are dropped"
        );
        let mut data_frames = Vec::new();
        for f in frames.iter() {
            match f {
                Frame::Data(d) => data_frames.push(d.as_bytes().to_vec()),
                Frame::Control(Tlv::Hello(_)) => data_frames.push(b"hello".to_vec()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            data_frames,
            vec![a.to_vec(), b.to_vec(), b"hello".to_vec(), c.to_vec()],
            "the good frames come out whole, in the order they were received"
        );
        // The first two lie next to each other in one buffer, so the forwarding path joins
        // them into one run without copying.
        let mut frames = frames.into_iter().map(|f| match f {
            Frame::Data(d) => Some(d.into_inner()),
            _ => None,
        });
        let mut first = frames.next().flatten().unwrap();
        let second = frames.next().flatten().unwrap();
        let at = first.as_ptr();
        first.unsplit(second);
        assert_eq!(first.as_ptr(), at, "joined in place");
        assert_eq!(&first[..], [a, b].concat());
    }
}
