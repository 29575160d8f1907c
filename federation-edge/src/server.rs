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
        for t in self.tasks {
            let _ = t.await;
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
            let _ = axum::serve(api_l, app)
                .with_graceful_shutdown(async move {
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
