//! A fake peer over QUIC (quinn), as the reference makes QUIC links (`../shared/WIRE.md` 1.3):
//! TLS 1.3 with a self-signed certificate, SNI `dummy.mycelium`, no ALPN; the dialer opens one
//! bidirectional stream for control frames; data frames travel as DATAGRAMs. A data frame
//! larger than the link's datagram size goes on the stream, as hyphae sends it.
//!
//! The peer runs on one thread with a current-thread tokio runtime: the endpoint, the link's
//! readers and writer, and the generator are tasks on it, so a generator and a sink are one
//! vCPU each at most, as over TCP.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::{Result, anyhow};
use bytes::{Bytes, BytesMut};
use hyphae_wire::deframer::{Deframer, Frame, decode_datagram};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::sync::{mpsc as tmpsc, watch};
use tokio::time::timeout;

use super::{
    Counters, GenReport, Generator, Job, JobQueue, Peer, Prefixes, QuicStats, STALL, Transport,
};
use crate::sys::set_int_opt;

/// The SNI the reference's dialers send.
const SNI: &str = "dummy.mycelium";
/// Frames queued for a link's stream writer (control answers and oversize data frames).
const STREAM_QUEUE: usize = 1024;
/// Socket buffers of the peer's UDP socket (the kernel caps them at `net.core.[rw]mem_max`).
const UDP_BUFFER: i32 = 8 << 20;

/// Stops a QUIC peer's thread when dropped.
#[derive(Debug)]
pub(super) struct Guard {
    stop: watch::Sender<bool>,
    conns: Arc<Mutex<Vec<quinn::Connection>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Guard {
    /// Counters of every connection the peer had, summed.
    pub(super) fn stats(&self) -> QuicStats {
        let conns = self.conns.lock().map(|c| c.clone()).unwrap_or_default();
        conns.iter().fold(QuicStats::default(), |mut a, c| {
            let s = c.stats();
            a.datagram_frames_rx += s.frame_rx.datagram;
            a.datagram_frames_tx += s.frame_tx.datagram;
            a.udp_rx += s.udp_rx.datagrams;
            a.lost_packets += s.path.lost_packets;
            a
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            // The runtime closes the endpoint and returns within about half a second.
            for _ in 0..200 {
                if t.is_finished() {
                    let _ = t.join();
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Shared by the tasks of one peer.
#[derive(Debug)]
struct Ctx {
    prefixes: Arc<Prefixes>,
    counters: Arc<Counters>,
    /// The current link, for the generator.
    link: watch::Sender<Option<LinkIo>>,
    conns: Arc<Mutex<Vec<quinn::Connection>>>,
    next_link: AtomicU64,
}

/// A link's connection and its stream writer's queue.
#[derive(Debug, Clone)]
struct LinkIo {
    id: u64,
    conn: quinn::Connection,
    stream: tmpsc::Sender<Bytes>,
}

enum Mode {
    Listen,
    Dial(SocketAddr),
}

/// A peer listening on a loopback UDP port for the router to dial.
pub fn listen(prefixes: Arc<Prefixes>) -> Result<Peer> {
    start(prefixes, Mode::Listen)
}

/// A peer that dials `to` (the router's QUIC port), and again 1 s after its link is lost.
pub fn dial(prefixes: Arc<Prefixes>, to: SocketAddr) -> Result<Peer> {
    start(prefixes, Mode::Dial(to))
}

fn start(prefixes: Arc<Prefixes>, mode: Mode) -> Result<Peer> {
    let counters = Arc::new(Counters::new(prefixes.len()));
    let conns = Arc::new(Mutex::new(Vec::new()));
    let (stop, stop_rx) = watch::channel(false);
    let (jobs, job_rx) = tmpsc::unbounded_channel::<Job>();
    let (done_tx, done) = mpsc::channel();
    let (ready_tx, ready) = mpsc::channel::<Result<u16, String>>();
    let running = Arc::new(AtomicBool::new(false));
    let ctx = Arc::new(Ctx {
        prefixes,
        counters: counters.clone(),
        link: watch::channel(None).0,
        conns: conns.clone(),
        next_link: AtomicU64::new(0),
    });
    let r = running.clone();
    let is_listen = matches!(mode, Mode::Listen);
    let thread = std::thread::Builder::new()
        .name("fake-quic".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("runtime: {e}")));
                    return;
                }
            };
            rt.block_on(run(ctx, mode, stop_rx, job_rx, r, done_tx, ready_tx));
        })?;
    let port = ready
        .recv_timeout(STALL)
        .map_err(|_| anyhow!("the QUIC peer did not start"))?
        .map_err(|e| anyhow!("QUIC peer: {e}"))?;
    Ok(Peer {
        counters,
        generator: Generator {
            jobs: JobQueue::Task(jobs),
            running,
            done,
        },
        listen_port: is_listen.then_some(port),
        transport: Transport::Quic(Guard {
            stop,
            conns,
            thread: Some(thread),
        }),
    })
}

async fn run(
    ctx: Arc<Ctx>,
    mode: Mode,
    mut stop: watch::Receiver<bool>,
    jobs: tmpsc::UnboundedReceiver<Job>,
    running: Arc<AtomicBool>,
    done: mpsc::Sender<GenReport>,
    ready: mpsc::Sender<Result<u16, String>>,
) {
    let ep = match endpoint(matches!(mode, Mode::Listen)) {
        Ok(ep) => ep,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let port = ep.local_addr().map_or(0, |a| a.port());
    let _ = ready.send(Ok(port));
    tokio::spawn(generator(jobs, ctx.link.subscribe(), running, done));
    match mode {
        Mode::Listen => loop {
            let incoming = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                i = ep.accept() => i,
            };
            let Some(incoming) = incoming else { break };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let setup = async {
                    let conn = incoming.await?;
                    let (send, recv) = conn.accept_bi().await?;
                    Ok::<_, quinn::ConnectionError>((conn, send, recv))
                };
                match timeout(STALL, setup).await {
                    Ok(Ok((conn, send, recv))) => serve(&ctx, conn, send, recv, port).await,
                    Ok(Err(e)) => ctx.counters.link_down(format!("accepting: {e}")),
                    Err(_) => ctx.counters.link_down("accepting: timed out".into()),
                }
            });
        },
        Mode::Dial(to) => loop {
            let client = match client_config() {
                Ok(c) => c,
                Err(e) => {
                    ctx.counters.link_down(format!("client config: {e}"));
                    break;
                }
            };
            let link = async {
                let conn = ep
                    .connect_with(client, to, SNI)
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())?;
                let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((conn, send, recv))
            };
            let setup = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                l = timeout(STALL, link) => l,
            };
            match setup {
                Ok(Ok((conn, send, recv))) => {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        () = serve(&ctx, conn, send, recv, port) => {}
                    }
                }
                Ok(Err(e)) => ctx.counters.link_down(format!("dialing: {e}")),
                Err(_) => ctx.counters.link_down("dialing: timed out".into()),
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        },
    }
    ep.close(0u8.into(), b"done");
    let _ = timeout(Duration::from_millis(500), ep.wait_idle()).await;
}

/// An endpoint on a loopback port: a server (the router dials it) or a client.
fn endpoint(server: bool) -> Result<quinn::Endpoint, String> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    // Bursts of datagrams must not overflow the peer's own socket: that would count as the
    // router's drops.
    set_int_opt(&sock, libc::SOL_SOCKET, libc::SO_RCVBUF, UDP_BUFFER);
    set_int_opt(&sock, libc::SOL_SOCKET, libc::SO_SNDBUF, UDP_BUFFER);
    let server = if server { Some(server_config()?) } else { None };
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        sock,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| e.to_string())
}

/// The transport the reference configures on both sides (WIRE.md 1.3, since 0.7.5), hyphae's
/// too, plus the reference's CUBIC initial window of 4 MiB. Two differences, both to keep the
/// load steady rather than to mimic a node: the datagram send buffer is smaller than the
/// reference's 16 MiB, so that a generator stopping leaves little queued; and the minimum MTU
/// is the reference's datagram path size (1472, safe on loopback), so that quinn's black-hole
/// detection, set off by the router's losses under saturation, does not shrink the datagram
/// size in mid-run and move 1340-byte frames onto the stream.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(4 << 20);
    t.max_concurrent_uni_streams(0u8.into())
        .max_concurrent_bidi_streams(5u8.into())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .initial_mtu(1500)
        .min_mtu(1472)
        .datagram_receive_buffer_size(Some(16 << 20))
        .datagram_send_buffer_size(2 << 20)
        .send_window(80 << 20)
        .stream_receive_window(quinn::VarInt::from_u32(10 << 20))
        .congestion_controller_factory(Arc::new(cubic));
    if let Ok(idle) = Duration::from_secs(60).try_into() {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config() -> Result<quinn::ServerConfig, String> {
    let cert = rcgen::generate_simple_self_signed(vec![SNI.to_owned()])
        .map_err(|e| format!("certificate: {e}"))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .map_err(|e| e.to_string())?;
    let mut c = quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?,
    ));
    c.transport_config(transport());
    Ok(c)
}

fn client_config() -> Result<quinn::ClientConfig, String> {
    let p = provider();
    let tls = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(p)))
        .with_no_client_auth();
    let mut c = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?,
    ));
    c.transport_config(transport());
    Ok(c)
}

/// Serves one link until it closes: announces our prefixes on the stream, makes the link the
/// generator's, and counts what arrives on datagrams and on the stream.
async fn serve(
    ctx: &Arc<Ctx>,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    port: u16,
) {
    let id = ctx.next_link.fetch_add(1, Relaxed);
    if let Ok(mut c) = ctx.conns.lock() {
        c.push(conn.clone());
    }
    ctx.counters.link_up(port);
    let (stream, mut queue) = tmpsc::channel::<Bytes>(STREAM_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(b) = queue.recv().await {
            if send.write_chunk(b).await.is_err() {
                break;
            }
        }
    });
    let _ = stream.send(ctx.prefixes.announcement()).await;
    ctx.link.send_replace(Some(LinkIo {
        id,
        conn: conn.clone(),
        stream: stream.clone(),
    }));
    let datagrams = tokio::spawn(read_datagrams(ctx.clone(), conn.clone()));
    let reader = tokio::spawn(read_stream(ctx.clone(), conn.clone(), recv, stream));
    let why = conn.closed().await;
    ctx.link.send_if_modified(|l| {
        let current = l.as_ref().is_some_and(|l| l.id == id);
        if current {
            *l = None;
        }
        current
    });
    for t in [writer, datagrams, reader] {
        t.abort();
    }
    ctx.counters.link_down(why.to_string());
}

async fn read_datagrams(ctx: Arc<Ctx>, conn: quinn::Connection) {
    while let Ok(d) = conn.read_datagram().await {
        match decode_datagram(d) {
            Ok(Frame::Data(f)) => ctx.counters.data(f.as_bytes(), f.body()),
            Ok(_) => {
                ctx.counters.control.fetch_add(1, Relaxed);
            }
            Err(_) => {
                conn.close(1u8.into(), b"bad datagram");
                return;
            }
        }
    }
}

async fn read_stream(
    ctx: Arc<Ctx>,
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    stream: tmpsc::Sender<Bytes>,
) {
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut d = Deframer::new();
    while let Ok(Some(c)) = recv.read_chunk(1 << 20, true).await {
        buf.extend_from_slice(&c.bytes);
        loop {
            match d.next_frame(&mut buf) {
                Ok(None) => break,
                Ok(Some(Frame::Data(f))) => {
                    ctx.counters.stream_frames.fetch_add(1, Relaxed);
                    ctx.counters.data(f.as_bytes(), f.body());
                }
                Ok(Some(Frame::Control(tlv))) => {
                    ctx.counters.control.fetch_add(1, Relaxed);
                    if let Some(a) = ctx.prefixes.answer(&tlv)
                        && stream.send(a).await.is_err()
                    {
                        return;
                    }
                }
                Ok(Some(Frame::Skipped(_))) => {
                    ctx.counters.control.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    conn.close(1u8.into(), b"broken framing");
                    return;
                }
            }
        }
    }
}

/// Runs the generator's jobs, one at a time, on whatever link is current.
async fn generator(
    mut jobs: tmpsc::UnboundedReceiver<Job>,
    mut link: watch::Receiver<Option<LinkIo>>,
    running: Arc<AtomicBool>,
    done: mpsc::Sender<GenReport>,
) {
    while let Some(job) = jobs.recv().await {
        let r = generate(&job, &mut link, &running).await;
        if done.send(r).is_err() {
            return;
        }
    }
}

/// The current link other than `not`, waiting up to [`STALL`] for one.
async fn next_link(link: &mut watch::Receiver<Option<LinkIo>>, not: Option<u64>) -> Option<LinkIo> {
    let found = timeout(
        STALL,
        link.wait_for(|l| l.as_ref().is_some_and(|l| Some(l.id) != not)),
    )
    .await;
    match found {
        Ok(Ok(l)) => l.clone(),
        _ => None,
    }
}

async fn generate(
    job: &Job,
    link: &mut watch::Receiver<Option<LinkIo>>,
    running: &AtomicBool,
) -> GenReport {
    let mut r = GenReport::default();
    let Some(mut io) = next_link(link, None).await else {
        r.error = Some(format!("no QUIC link within {STALL:?}"));
        return r;
    };
    let n = job.frames.count();
    let mut max = io.conn.max_datagram_size().unwrap_or(0);
    let mut i = 0usize;
    loop {
        if job.repeat {
            if !running.load(Relaxed) {
                break;
            }
        } else if i >= n {
            break;
        }
        let f = job.frames.frame(i);
        let sent = if f.len() <= max {
            match timeout(STALL, io.conn.send_datagram_wait(f.clone())).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(quinn::SendDatagramError::TooLarge)) => {
                    // The path's datagram size shrank: this frame goes on the stream.
                    max = io.conn.max_datagram_size().unwrap_or(0).min(f.len() - 1);
                    continue;
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => {
                    r.error = Some(format!("the router took no datagram for {STALL:?}"));
                    break;
                }
            }
        } else {
            match timeout(STALL, io.stream.send(f)).await {
                Ok(Ok(())) => {
                    r.on_stream += 1;
                    Ok(())
                }
                Ok(Err(_)) => Err("the stream closed".to_owned()),
                Err(_) => {
                    r.error = Some(format!(
                        "the router took nothing on the stream for {STALL:?}"
                    ));
                    break;
                }
            }
        };
        match sent {
            Ok(()) => {
                r.sent += 1;
                i += 1;
                // Let the connection's driver run: quinn takes datagrams without waiting
                // while its send buffer has room.
                if i.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                    max = io.conn.max_datagram_size().unwrap_or(0);
                }
            }
            Err(e) => match next_link(link, Some(io.id)).await {
                Some(l) => {
                    io = l;
                    max = io.conn.max_datagram_size().unwrap_or(0);
                    r.relinks += 1;
                }
                None => {
                    r.error = Some(format!("link lost ({e}), none back within {STALL:?}"));
                    break;
                }
            },
        }
    }
    r
}

/// The reference does not authenticate peers at the link level: any certificate is accepted,
/// but the handshake signature is still checked (as hyphae's and the reference's dialers do).
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
