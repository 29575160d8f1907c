//! Start-up and shutdown, on top of the rest: binds the homeserver's CONNECT proxy
//! ([`proxy`](crate::proxy)) and the bridge API ([`api`](crate::api)), starts the shared
//! [`Edge`] they both serve, and stops them in order (no new connections, requests in flight
//! drained, then the router connection and the relay task).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::edge::Edge;

/// How long shutdown waits for requests in flight.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Binds a TCP listener.
pub async fn bind(addr: SocketAddr, what: &str) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{what} {addr}: {e}"))
}

/// A running edge: its listeners' addresses and the handle to stop it.
#[derive(Debug)]
pub struct Serving {
    /// The proxy's address.
    pub proxy: SocketAddr,
    /// The bridge API's address.
    pub api: SocketAddr,
    /// The shared state.
    pub edge: Arc<Edge>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Serving {
    /// Stops accepting, waits up to [`DRAIN`] for requests in flight; whether all finished.
    pub async fn shutdown(self) -> bool {
        let _ = self.stop.send(true);
        for mut t in self.tasks {
            if tokio::time::timeout(DRAIN, &mut t).await.is_err() {
                t.abort();
            }
        }
        let drained = self.edge.drain(DRAIN).await;
        if !drained {
            tracing::warn!(
                "{} requests still in flight after {DRAIN:?}",
                self.edge.active()
            );
        }
        self.edge.stop();
        drained
    }
}

/// How long a client of the bridge API may take to send a request head.
const API_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the bridge API on `listener` until `stop` completes: a connection per task, each
/// given [`API_HEADER_TIMEOUT`] to send a request head (a client that sends half a head and
/// stalls must not hold a connection, or the edge's shutdown).
async fn serve_api(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            () = &mut stop => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("api accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(API_HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            let _ = conn.await;
        });
    }
}

/// Binds the proxy and the API and starts the edge.
pub async fn serve(config: Config) -> Result<Serving, String> {
    let proxy_l = bind(config.proxy, "proxy").await?;
    let api_l = bind(config.api, "api").await?;
    let proxy = proxy_l.local_addr().map_err(|e| e.to_string())?;
    let api = api_l.local_addr().map_err(|e| e.to_string())?;
    let edge = Edge::start(config)?;
    tracing::info!(
        "hyphae-edge: proxy on {proxy}, bridge API on {api}, router {}",
        edge.config.router
    );
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut api_stop = stop_rx.clone();
    let app = crate::api::router(edge.clone());
    let tasks = vec![
        tokio::spawn(crate::proxy::serve(edge.clone(), proxy_l, stop_rx)),
        tokio::spawn(async move {
            serve_api(api_l, app, async move {
                let _ = api_stop.wait_for(|s| *s).await;
            })
            .await;
        }),
    ];
    Ok(Serving {
        proxy,
        api,
        edge,
        stop,
        tasks,
    })
}

/// Runs the edge until SIGTERM or SIGINT: then it stops accepting, lets requests in flight
/// finish for up to [`DRAIN`], and returns.
pub async fn run(config: Config) -> Result<(), String> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM handler: {e}"))?;
    let serving = serve(config).await?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping: no new connections, finishing requests in flight");
    serving.shutdown().await;
    Ok(())
}
