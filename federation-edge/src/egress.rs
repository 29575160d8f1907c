//! Delivery of relayed requests to our homeserver's federation listener, over HTTPS with a
//! keep-alive pool, and only there: a relayed request carries a target path, never a host.
//!
//! A signed request (X-Matrix) whose `destination` is not one of our server names is refused
//! with 421 and never delivered; unsigned requests (server keys, version) go through as they
//! are.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::Homeserver;
use crate::relay::RequestHead;
use crate::xmatrix::XMatrix;

/// Request headers relayed from the sending homeserver to ours (besides what hyper sets).
pub const REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "accept",
];
/// Response headers relayed back.
pub const RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-disposition",
    "location",
    "cache-control",
    "retry-after",
    "content-security-policy",
];
/// How long our homeserver may take to answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(80);

/// A body for an egress request.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Why a relayed request was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// Signed for a server this edge does not deliver for (421).
    #[error("request signed for {0:?}, which this edge does not serve")]
    Misdirected(String),
    /// The request could not be expressed (400).
    #[error("bad request: {0}")]
    Bad(String),
    /// Our homeserver could not be reached or did not answer (502/504).
    #[error("homeserver: {0}")]
    Homeserver(String),
    /// Our homeserver took too long (504).
    #[error("homeserver did not answer in time")]
    Timeout,
}

impl EgressError {
    /// The HTTP status the requesting homeserver gets.
    pub fn status(&self) -> u16 {
        match self {
            Self::Misdirected(_) => 421,
            Self::Bad(_) => 400,
            Self::Homeserver(_) => 502,
            Self::Timeout => 504,
        }
    }
}

/// The delivery client.
#[derive(Debug, Clone)]
pub struct Egress {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    /// `https://host:port` of the listener.
    base: String,
    server_names: Vec<String>,
}

impl Egress {
    /// A client for `hs.federation_url`, trusting `hs.ca_file` or else the system roots.
    pub fn new(hs: &Homeserver) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        match &hs.ca_file {
            Some(f) => {
                let pem = std::fs::read_to_string(f)
                    .map_err(|e| format!("homeserver.ca_file {}: {e}", f.display()))?;
                let certs = crate::ca::pem_certs(&pem);
                if certs.is_empty() {
                    return Err(format!(
                        "homeserver.ca_file {}: no certificate",
                        f.display()
                    ));
                }
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| format!("homeserver.ca_file {}: {e}", f.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err("no system CA certificates found; set homeserver.ca_file".into());
                }
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(https);
        let host = if hs.federation_host.contains(':') {
            format!("[{}]", hs.federation_host)
        } else {
            hs.federation_host.clone()
        };
        Ok(Self {
            client,
            base: format!("https://{host}:{}", hs.federation_port),
            server_names: hs
                .server_names
                .iter()
                .map(|n| n.to_ascii_lowercase())
                .collect(),
        })
    }

    /// Refuses a signed request whose destination is not ours.
    pub fn check(&self, head: &RequestHead) -> Result<(), EgressError> {
        check_destination(&self.server_names, head)
    }

    /// Delivers `head` with `body` and returns our homeserver's response.
    pub async fn deliver(
        &self,
        head: &RequestHead,
        body: Body,
    ) -> Result<hyper::Response<Incoming>, EgressError> {
        self.check(head)?;
        let target = std::str::from_utf8(&head.target)
            .ok()
            .filter(|t| t.starts_with('/'))
            .ok_or_else(|| EgressError::Bad("request target is not an origin-form path".into()))?;
        let mut b = hyper::Request::builder()
            .method(head.method.as_str())
            .uri(format!("{}{target}", self.base));
        for (name, value) in &head.headers {
            if REQUEST_HEADERS.contains(&name.as_str()) {
                b = b.header(name.as_str(), value.as_ref());
            }
        }
        let req = b.body(body).map_err(|e| EgressError::Bad(e.to_string()))?;
        match tokio::time::timeout(RESPONSE_TIMEOUT, self.client.request(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(EgressError::Homeserver(error_chain(&e))),
            Err(_) => Err(EgressError::Timeout),
        }
    }
}

/// The X-Matrix rule: a request with an `Authorization: X-Matrix` header naming a destination
/// must name one of `server_names`.
pub fn check_destination(server_names: &[String], head: &RequestHead) -> Result<(), EgressError> {
    for (name, value) in &head.headers {
        if name != "authorization" {
            continue;
        }
        let Ok(x) = XMatrix::parse(value) else {
            continue;
        };
        if let Some(d) = x.destination
            && !server_names.iter().any(|n| n.eq_ignore_ascii_case(&d))
        {
            return Err(EgressError::Misdirected(d));
        }
    }
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(auth: &str) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            target: Bytes::from_static(b"/_matrix/federation/v1/version"),
            headers: vec![(
                "authorization".into(),
                Bytes::copy_from_slice(auth.as_bytes()),
            )],
        }
    }

    #[test]
    fn only_our_destinations_are_delivered() {
        let ours = vec!["b.example:8448".to_owned()];
        let signed = |d: &str| {
            format!(
                "X-Matrix origin=\"a.example\",key=\"ed25519:k\",sig=\"c2ln\",destination=\"{d}\""
            )
        };
        assert!(check_destination(&ours, &head(&signed("b.example:8448"))).is_ok());
        assert!(check_destination(&ours, &head(&signed("B.example:8448"))).is_ok());
        let e = check_destination(&ours, &head(&signed("c.example"))).unwrap_err();
        assert_eq!(e.status(), 421);
        // Unsigned, or signed without a destination (older servers): delivered.
        assert!(check_destination(&ours, &head("Bearer x")).is_ok());
        let old = "X-Matrix origin=a.example,key=\"ed25519:k\",sig=\"c2ln\"";
        assert!(check_destination(&ours, &head(old)).is_ok());
    }
}
