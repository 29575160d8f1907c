//! The edge's configuration file (TOML).
//!
//! ```toml
//! proxy = "127.0.0.1:8450"                  # HTTPS CONNECT proxy for the homeserver
//! api = "127.0.0.1:8460"                    # bridge API and Prometheus /metrics
//! router = "unix:/run/hyphae/router.sock"   # or "http://127.0.0.1:8989" (message API)
//! router_api = "http://127.0.0.1:8989"      # optional: node info for /mycelium/status
//! state_dir = "/var/lib/hyphae-edge"        # ca.crt, ca.key, routes.json
//! tunnel_allow = ["127.0.0.0/8"]            # optional: non-public tunnel targets allowed
//! api_token = "..."                         # required when `api` is not loopback
//! proxy_user = "..."                        # required (with proxy_password) when `proxy`
//! proxy_password = "..."                    #   is not loopback
//!
//! [homeserver]
//! server_names = ["example.org"]
//! federation_url = "https://127.0.0.1:8448"
//! ca_file = "/etc/ssl/example-ca.pem"       # optional
//! ```
//!
//! Every mistake is one [`ConfigError`] whose `Display` is a single line naming the key.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the edge reaches its router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterAddr {
    /// A hyphae-router's local socket (hyphae framing).
    Unix(PathBuf),
    /// Any mycelium node's HTTP message API (`http://host:port`).
    Http(SocketAddr),
}

impl fmt::Display for RouterAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Http(a) => write!(f, "http://{a}"),
        }
    }
}

/// An IP network (`addr/len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// Whether `ip` lies in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IP network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            "" => max,
            l => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
        };
        Ok(Self { addr, len })
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The homeserver this edge delivers for.
#[derive(Debug, Clone)]
pub struct Homeserver {
    /// Server names this edge delivers for (X-Matrix `destination`).
    pub server_names: Vec<String>,
    /// Its federation listener (`https://host:port`), as given.
    pub federation_url: String,
    /// Host of `federation_url` (TLS name and `Host`).
    pub federation_host: String,
    /// Port of `federation_url`.
    pub federation_port: u16,
    /// Extra trust for that listener (PEM), else the system roots.
    pub ca_file: Option<PathBuf>,
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The CONNECT proxy's listen address.
    pub proxy: SocketAddr,
    /// The bridge API's listen address.
    pub api: SocketAddr,
    /// The router.
    pub router: RouterAddr,
    /// A router HTTP API for node info (defaults to the message API, or 127.0.0.1:8989).
    pub router_api: SocketAddr,
    /// State directory.
    pub state_dir: PathBuf,
    /// Non-public tunnel targets that are allowed anyway.
    pub tunnel_allow: Vec<Cidr>,
    /// Bearer token for changes through the API.
    pub api_token: Option<String>,
    /// Proxy credentials (`Proxy-Authorization: Basic`).
    pub proxy_auth: Option<(String, String)>,
    /// The homeserver.
    pub homeserver: Homeserver,
}

/// A configuration error: one line, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct ConfigError {
    path: String,
    msg: String,
}

impl ConfigError {
    fn new(path: &Path, msg: impl Into<String>) -> Self {
        Self {
            path: path.display().to_string(),
            msg: msg.into(),
        }
    }

    fn key(path: &Path, key: &str, msg: impl fmt::Display) -> Self {
        Self::new(path, format!("`{key}`: {msg}"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    proxy: Option<String>,
    api: Option<String>,
    router: Option<String>,
    router_api: Option<String>,
    state_dir: Option<String>,
    #[serde(default)]
    tunnel_allow: Vec<String>,
    api_token: Option<String>,
    proxy_user: Option<String>,
    proxy_password: Option<String>,
    homeserver: Option<RawHomeserver>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHomeserver {
    server_names: Option<Vec<String>>,
    federation_url: Option<String>,
    ca_file: Option<String>,
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, format!("cannot read: {e}")))?;
        Self::parse(path, &text)
    }

    /// Parses and checks `text` (read from `path`, used in messages).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        let addr = |key: &str, v: Option<String>, default: &str| -> Result<SocketAddr, _> {
            let v = v.unwrap_or_else(|| default.to_owned());
            v.parse::<SocketAddr>().map_err(|_| {
                ConfigError::key(
                    path,
                    key,
                    format!("{v:?} is not an address like 127.0.0.1:8450"),
                )
            })
        };
        let proxy = addr("proxy", raw.proxy, "127.0.0.1:8450")?;
        let api = addr("api", raw.api, "127.0.0.1:8460")?;
        let router_s = raw
            .router
            .unwrap_or_else(|| "unix:/run/hyphae/router.sock".to_owned());
        let router = parse_router(&router_s).ok_or_else(|| {
            ConfigError::key(
                path,
                "router",
                format!(
                    "{router_s:?} is neither \"unix:/path/to/router.sock\" nor \
                     \"http://host:port\""
                ),
            )
        })?;
        let router_api = match (raw.router_api, &router) {
            (Some(v), _) => match parse_router(&v) {
                Some(RouterAddr::Http(a)) => a,
                _ => {
                    return Err(ConfigError::key(
                        path,
                        "router_api",
                        format!("{v:?} is not \"http://host:port\""),
                    ));
                }
            },
            (None, RouterAddr::Http(a)) => *a,
            (None, RouterAddr::Unix(_)) => SocketAddr::from(([127, 0, 0, 1], 8989)),
        };
        let state_dir = PathBuf::from(
            raw.state_dir
                .unwrap_or_else(|| "/var/lib/hyphae-edge".to_owned()),
        );
        if state_dir.as_os_str().is_empty() {
            return Err(ConfigError::key(path, "state_dir", "is empty"));
        }
        let tunnel_allow = raw
            .tunnel_allow
            .iter()
            .map(|c| c.parse::<Cidr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::key(path, "tunnel_allow", e))?;
        if raw.api_token.as_deref() == Some("") {
            return Err(ConfigError::key(path, "api_token", "is empty"));
        }
        // What a client can send as a bearer token (and the `hyphae` CLI sends): one that
        // could never match would lock every client out.
        if raw
            .api_token
            .as_deref()
            .is_some_and(|t| !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError::key(
                path,
                "api_token",
                "a token is visible ASCII without spaces",
            ));
        }
        if !is_loopback(api.ip()) && raw.api_token.is_none() {
            return Err(ConfigError::key(
                path,
                "api_token",
                format!("required because `api` ({api}) is not a loopback address"),
            ));
        }
        let proxy_auth = match (raw.proxy_user, raw.proxy_password) {
            (Some(u), Some(p)) if !u.is_empty() => Some((u, p)),
            (Some(_), Some(_)) => {
                return Err(ConfigError::key(path, "proxy_user", "is empty"));
            }
            (Some(_), None) => {
                return Err(ConfigError::key(path, "proxy_password", "missing"));
            }
            (None, Some(_)) => return Err(ConfigError::key(path, "proxy_user", "missing")),
            (None, None) => None,
        };
        if !is_loopback(proxy.ip()) && proxy_auth.is_none() {
            return Err(ConfigError::key(
                path,
                "proxy_user",
                format!(
                    "required (with proxy_password) because `proxy` ({proxy}) is not a \
                     loopback address"
                ),
            ));
        }
        let hs = raw
            .homeserver
            .ok_or_else(|| ConfigError::key(path, "homeserver", "missing section"))?;
        let server_names = hs
            .server_names
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ConfigError::key(path, "homeserver.server_names", "missing or empty"))?;
        for n in &server_names {
            if crate::routes::split_server_name(n).is_none() {
                return Err(ConfigError::key(
                    path,
                    "homeserver.server_names",
                    format!("{n:?} is not a server name (host or host:port)"),
                ));
            }
        }
        let url = hs
            .federation_url
            .ok_or_else(|| ConfigError::key(path, "homeserver.federation_url", "missing"))?;
        let (federation_host, federation_port) = parse_https_url(&url).ok_or_else(|| {
            ConfigError::key(
                path,
                "homeserver.federation_url",
                format!("{url:?} is not an https://host[:port] URL"),
            )
        })?;
        let ca_file = match hs.ca_file {
            None => None,
            Some(f) => {
                let p = PathBuf::from(&f);
                std::fs::File::open(&p).map_err(|e| {
                    ConfigError::key(path, "homeserver.ca_file", format!("{f}: {e}"))
                })?;
                Some(p)
            }
        };
        Ok(Self {
            proxy,
            api,
            router,
            router_api,
            state_dir,
            tunnel_allow,
            api_token: raw.api_token,
            proxy_auth,
            homeserver: Homeserver {
                server_names,
                federation_url: url,
                federation_host,
                federation_port,
                ca_file,
            },
        })
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    canonical_ip(ip).is_loopback()
}

fn parse_router(s: &str) -> Option<RouterAddr> {
    if let Some(p) = s.strip_prefix("unix:") {
        return (p.starts_with('/') && p.len() > 1).then(|| RouterAddr::Unix(PathBuf::from(p)));
    }
    let rest = s.strip_prefix("http://")?;
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    hostport.parse().ok().map(RouterAddr::Http)
}

/// `https://host[:port][/]` -> (host, port). IPv6 hosts in brackets.
fn parse_https_url(s: &str) -> Option<(String, u16)> {
    let rest = s.strip_prefix("https://")?;
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    if hostport.contains('/') || hostport.is_empty() {
        return None;
    }
    let (host, port) = crate::routes::split_server_name(hostport)?;
    Some((
        host.trim_matches(['[', ']']).to_owned(),
        port.unwrap_or(443),
    ))
}

/// One line for a TOML error, naming the key where the parser says which one.
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let msg = e.message().replace('\n', " ");
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    match line {
        Some(l) => ConfigError::new(path, format!("line {l}: {msg}")),
        None => ConfigError::new(path, msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
proxy = "127.0.0.1:8450"
api = "127.0.0.1:8460"
router = "unix:/run/hyphae/router.sock"
state_dir = "/tmp/edge"
tunnel_allow = ["127.0.0.0/8", "::1"]

[homeserver]
server_names = ["example.org"]
federation_url = "https://127.0.0.1:8448"
"#;

    fn parse(t: &str) -> Result<Config, String> {
        Config::parse(Path::new("edge.toml"), t).map_err(|e| e.to_string())
    }

    #[test]
    fn a_good_file_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.router, RouterAddr::Unix("/run/hyphae/router.sock".into()));
        assert_eq!(c.homeserver.federation_host, "127.0.0.1");
        assert_eq!(c.homeserver.federation_port, 8448);
        assert!(c.tunnel_allow[0].contains("127.1.2.3".parse().unwrap()));
        assert!(c.tunnel_allow[0].contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!c.tunnel_allow[0].contains("128.0.0.1".parse().unwrap()));
        assert!(c.tunnel_allow[1].contains("::1".parse().unwrap()));
        assert_eq!(c.router_api, "127.0.0.1:8989".parse().unwrap());
    }

    #[test]
    fn every_mistake_is_one_line_naming_the_key() {
        let cases = [
            (GOOD.replace("state_dir", "stat_dir"), "stat_dir"),
            (GOOD.replace("127.0.0.1:8450", "nowhere"), "`proxy`"),
            (GOOD.replace("unix:/run", "tcp:/run"), "`router`"),
            (
                GOOD.replace("unix:/run/hyphae/router.sock", "unix:"),
                "`router`",
            ),
            (GOOD.replace("\"::1\"", "\"::1/129\""), "`tunnel_allow`"),
            (GOOD.replace("https://127", "http://127"), "federation_url"),
            (GOOD.replace("[homeserver]", "[homeserve]"), "homeserve"),
            (GOOD.replace("\"example.org\"", ""), "server_names"),
            (
                GOOD.replace("127.0.0.1:8460", "0.0.0.0:8460"),
                "`api_token`",
            ),
            (
                GOOD.replace("127.0.0.1:8450", "0.0.0.0:8450"),
                "`proxy_user`",
            ),
            (
                format!("{GOOD}ca_file = \"/nonexistent/ca.pem\"\n"),
                "homeserver.ca_file",
            ),
        ];
        for (text, key) in cases {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(key), "{key:?} not named in {e:?}");
            assert!(!e.contains('\n'), "more than one line: {e:?}");
            assert!(e.starts_with("edge.toml: "), "{e:?}");
        }
    }

    #[test]
    fn router_forms() {
        let c =
            parse(&GOOD.replace("unix:/run/hyphae/router.sock", "http://127.0.0.1:8989")).unwrap();
        assert_eq!(
            c.router,
            RouterAddr::Http("127.0.0.1:8989".parse().unwrap())
        );
        assert_eq!(c.router.to_string(), "http://127.0.0.1:8989");
    }

    #[test]
    fn a_public_api_with_a_token_is_accepted() {
        let t = GOOD.replace("127.0.0.1:8460", "0.0.0.0:8460");
        let c = parse(&format!("api_token = \"s3cret\"\n{t}")).unwrap();
        assert_eq!(c.api_token.as_deref(), Some("s3cret"));
    }

    /// A token no client can present (the edge trims what it receives; header values are
    /// visible ASCII), or that the `hyphae` CLI refuses to send, is refused in the file.
    #[test]
    fn an_api_token_no_client_can_send_is_refused() {
        let mut accepted = Vec::new();
        for tok in ["two words", " s3cret", "s3cret ", "caf\u{e9}", "tab\there"] {
            let text = format!("api_token = {tok:?}\n{GOOD}");
            if parse(&text).is_ok() {
                accepted.push(tok);
            }
        }
        assert!(accepted.is_empty(), "api_token accepted: {accepted:?}");
    }
}
