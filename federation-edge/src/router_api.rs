//! A router's HTTP API (the `router_api` setting): what the edge asks its router about the
//! router itself, apart from the message path in [`overlay`](crate::overlay). The bridge API
//! shows the node info, peers and selected routes from it; the relay task asks it whether there
//! is a route to a peer when a ping's delivery is in doubt.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// GETs a JSON document from a router's HTTP API (3 s at most).
pub async fn router_get(addr: SocketAddr, path: &str) -> Option<Value> {
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri = format!("http://{addr}{path}");
    let fetch = async {
        let res = client.get(uri.parse().ok()?).await.ok()?;
        if !res.status().is_success() {
            return None;
        }
        let body = res.into_body().collect().await.ok()?.to_bytes();
        serde_json::from_slice::<Value>(&body).ok()
    };
    tokio::time::timeout(Duration::from_secs(3), fetch)
        .await
        .ok()
        .flatten()
}

/// Whether the router at `addr` has a selected route to the node with public key `peer`
/// (`None` if its API did not answer).
pub async fn router_has_route(addr: SocketAddr, peer: &[u8; 32]) -> Option<bool> {
    let want = hyphae_wire::identity::PublicKey::from(*peer)
        .address()
        .segments();
    let routes = router_get(addr, "/api/v1/admin/routes/selected").await?;
    let found = routes.as_array()?.iter().any(|r| {
        r["subnet"]
            .as_str()
            .and_then(|s| s.split('/').next())
            .and_then(|a| a.parse::<Ipv6Addr>().ok())
            .is_some_and(|a| a.segments()[..4] == want[..4])
    });
    Some(found)
}
