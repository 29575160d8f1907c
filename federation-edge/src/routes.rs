//! The server-name route map: server name -> the destination edge's overlay public key.
//!
//! Readers (every CONNECT) load an immutable snapshot without locks ([`ArcSwap`]); writers
//! (the bridge API) build a new map, persist it to `<state_dir>/routes.json` by atomic replace
//! (write a temporary file, fsync, rename, fsync the directory) and only then publish it, so a
//! change the API acknowledged survives a crash and one that failed to persist is not served.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

/// The Matrix default federation port.
pub const DEFAULT_PORT: u16 = 8448;
/// Most routes one edge keeps (the API refuses more).
pub const MAX_ROUTES: usize = 65_536;

/// What to do when the overlay path to a destination fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Mark the destination down and tunnel it directly until the overlay answers again.
    #[default]
    Direct,
    /// Overlay only: failures reach the homeserver as 502/504.
    Never,
}

/// One route, as the API and `routes.json` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The Matrix server name (`host` or `host:port`).
    pub server_name: String,
    /// The destination router's x25519 public key, 64 hex digits.
    pub pubkey: String,
    /// Fallback policy.
    #[serde(default)]
    pub fallback: Fallback,
}

/// A checked route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The server name as configured.
    pub server_name: String,
    /// The destination's public key.
    pub pubkey: [u8; 32],
    /// Fallback policy.
    pub fallback: Fallback,
}

impl Entry {
    /// Checks a route from the API or the file.
    pub fn from_route(r: &Route) -> Result<Self, String> {
        let (host, _) = split_server_name(&r.server_name)
            .ok_or_else(|| format!("{:?} is not a server name", r.server_name))?;
        let mut pubkey = [0u8; 32];
        hex::decode_to_slice(&r.pubkey, &mut pubkey)
            .map_err(|_| format!("pubkey {:?} is not 64 hex digits", r.pubkey))?;
        Ok(Self {
            server_name: format!(
                "{}{}",
                host.to_ascii_lowercase(),
                &r.server_name[host.len()..]
            ),
            pubkey,
            fallback: r.fallback,
        })
    }

    /// The API form.
    pub fn to_route(&self) -> Route {
        Route {
            server_name: self.server_name.clone(),
            pubkey: hex::encode(self.pubkey),
            fallback: self.fallback,
        }
    }
}

/// Splits `host[:port]` (host may be `[v6]`). `None` if it is not a valid server name.
pub fn split_server_name(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        let (h, rest) = s.split_at(end + 1);
        match rest {
            "" => (h, None),
            r => (h, Some(r.strip_prefix(':')?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok().filter(|p| *p != 0)?)
        }
        Some(_) => return None,
    };
    let ok = if let Some(v6) = host.strip_prefix('[') {
        v6.strip_suffix(']')
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host.len() <= 255
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    ok.then_some((host, port))
}

/// What a CONNECT target means for the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Relay over the overlay to this route.
    Relay(Arc<Entry>),
    /// `host:443` of a routed name without a port: answer its well-known with `m.server`.
    WellKnown(String),
    /// Not routed: a plain tunnel.
    Tunnel,
}

/// The route map.
#[derive(Debug)]
pub struct Routes {
    map: ArcSwap<HashMap<String, Arc<Entry>>>,
    file: PathBuf,
    /// Serialises writers (readers never take it).
    write: Mutex<()>,
}

impl Routes {
    /// Loads `<state_dir>/routes.json` (an absent file is an empty map).
    pub fn load(state_dir: &Path) -> Result<Self, String> {
        let file = state_dir.join("routes.json");
        let map = match std::fs::read(&file) {
            Ok(bytes) => {
                let list: Vec<Route> = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                if list.len() > MAX_ROUTES {
                    return Err(format!(
                        "{}: {} routes, at most {MAX_ROUTES}",
                        file.display(),
                        list.len()
                    ));
                }
                let mut map = HashMap::new();
                for r in &list {
                    let e = Entry::from_route(r).map_err(|e| format!("{}: {e}", file.display()))?;
                    let name = e.server_name.clone();
                    if map.insert(name.clone(), Arc::new(e)).is_some() {
                        return Err(format!("{}: {name} appears twice", file.display()));
                    }
                }
                map
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        Ok(Self {
            map: ArcSwap::from_pointee(map),
            file,
            write: Mutex::new(()),
        })
    }

    /// All routes, sorted by name.
    pub fn list(&self) -> Vec<Route> {
        let mut v: Vec<Route> = self.map.load().values().map(|e| e.to_route()).collect();
        v.sort_by(|a, b| a.server_name.cmp(&b.server_name));
        v
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.map.load().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The route for this server name (names are kept in lower case, as `upsert` and `remove`
    /// take them).
    pub fn get(&self, server_name: &str) -> Option<Arc<Entry>> {
        let map = self.map.load();
        if server_name.bytes().any(|b| b.is_ascii_uppercase()) {
            map.get(&server_name.to_ascii_lowercase()).cloned()
        } else {
            map.get(server_name).cloned()
        }
    }

    /// What a `CONNECT host:port` should become. A route named `host` (no port) serves
    /// `host:8448`; `host:443` of such a name is its well-known fetch.
    pub fn target(&self, host: &str, port: u16) -> Target {
        let map = self.map.load();
        let host = host.to_ascii_lowercase();
        if let Some(e) = map.get(&format!("{host}:{port}")) {
            return Target::Relay(e.clone());
        }
        if port == DEFAULT_PORT
            && let Some(e) = map.get(&host)
        {
            return Target::Relay(e.clone());
        }
        if port == 443 && (map.contains_key(&host) || map.contains_key(&format!("{host}:8448"))) {
            return Target::WellKnown(host);
        }
        Target::Tunnel
    }

    /// Adds or replaces routes, persisted before they are served.
    pub fn upsert(&self, routes: &[Route]) -> Result<(), String> {
        let entries = routes
            .iter()
            .map(Entry::from_route)
            .collect::<Result<Vec<_>, _>>()?;
        self.change(|m| {
            for e in entries {
                m.insert(e.server_name.clone(), Arc::new(e));
            }
            Ok(())
        })
    }

    /// Removes a route; `Ok(false)` if there was none.
    pub fn remove(&self, server_name: &str) -> Result<bool, String> {
        let mut found = false;
        self.change(|m| {
            found = m.remove(server_name).is_some()
                || m.remove(&server_name.to_ascii_lowercase()).is_some();
            Ok(())
        })?;
        Ok(found)
    }

    fn change(
        &self,
        f: impl FnOnce(&mut HashMap<String, Arc<Entry>>) -> Result<(), String>,
    ) -> Result<(), String> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::clone(&self.map.load());
        f(&mut next)?;
        if next.len() > MAX_ROUTES {
            return Err(format!("more than {MAX_ROUTES} routes"));
        }
        let mut list: Vec<Route> = next.values().map(|e| e.to_route()).collect();
        list.sort_by(|a, b| a.server_name.cmp(&b.server_name));
        write_atomic(
            &self.file,
            &serde_json::to_vec_pretty(&list).unwrap_or_default(),
        )
        .map_err(|e| format!("cannot persist {}: {e}", self.file.display()))?;
        self.map.store(Arc::new(next));
        Ok(())
    }
}

/// Replaces `path` with `bytes` atomically (temp file, fsync, rename, fsync the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, fallback: Fallback) -> Route {
        Route {
            server_name: name.into(),
            pubkey: "ab".repeat(32),
            fallback,
        }
    }

    #[test]
    fn server_names() {
        assert_eq!(split_server_name("a.example"), Some(("a.example", None)));
        assert_eq!(
            split_server_name("a.example:8448"),
            Some(("a.example", Some(8448)))
        );
        assert_eq!(split_server_name("[::1]:80"), Some(("[::1]", Some(80))));
        assert_eq!(split_server_name("[::1]"), Some(("[::1]", None)));
        for bad in [
            "", ":80", "a:", "a:0", "a:70000", "a b", "[::1", "[zz]", "a/b", "a:8x",
        ] {
            assert_eq!(split_server_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn connect_targets_and_persistence() {
        let dir = tempdir();
        let r = Routes::load(&dir).unwrap();
        r.upsert(&[
            route("b.example", Fallback::Direct),
            route("c.example:9000", Fallback::Never),
        ])
        .unwrap();
        assert!(
            matches!(r.target("b.example", 8448), Target::Relay(e) if e.server_name == "b.example")
        );
        assert!(matches!(r.target("B.Example", 8448), Target::Relay(_)));
        assert_eq!(
            r.target("b.example", 443),
            Target::WellKnown("b.example".into())
        );
        assert_eq!(r.target("b.example", 8449), Target::Tunnel);
        assert!(matches!(r.target("c.example", 9000), Target::Relay(_)));
        assert_eq!(r.target("c.example", 8448), Target::Tunnel);
        assert_eq!(r.target("c.example", 443), Target::Tunnel);
        assert_eq!(r.target("d.example", 8448), Target::Tunnel);

        let again = Routes::load(&dir).unwrap();
        assert_eq!(again.list(), r.list());
        assert_eq!(again.list()[1].fallback, Fallback::Never);
        assert!(r.remove("b.example").unwrap());
        assert!(!r.remove("b.example").unwrap());
        assert_eq!(Routes::load(&dir).unwrap().len(), 1);
    }

    #[test]
    fn bad_routes_change_nothing() {
        let dir = tempdir();
        let r = Routes::load(&dir).unwrap();
        r.upsert(&[route("b.example", Fallback::Direct)]).unwrap();
        let mut bad = route("x.example", Fallback::Direct);
        bad.pubkey = "zz".into();
        assert!(
            r.upsert(&[route("y.example", Fallback::Direct), bad])
                .is_err()
        );
        assert!(r.upsert(&[route("bad name", Fallback::Direct)]).is_err());
        assert_eq!(Routes::load(&dir).unwrap().len(), 1);
        assert_eq!(r.len(), 1);
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "hyphae-edge-routes-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A routes.json over the cap is refused when loaded (it loaded, and then every change
    /// through the API, even a removal, was refused), and so is one naming a server twice.
    #[test]
    fn a_routes_file_over_the_cap_or_with_a_name_twice_is_refused_at_load() {
        let dir = tempdir();
        let list: Vec<Route> = (0..MAX_ROUTES + 2)
            .map(|i| route(&format!("h{i}.example"), Fallback::Direct))
            .collect();
        std::fs::write(dir.join("routes.json"), serde_json::to_vec(&list).unwrap()).unwrap();
        match Routes::load(&dir) {
            Err(e) => assert!(e.contains("routes"), "{e}"),
            Ok(r) => {
                let removed = r.remove("h0.example");
                panic!(
                    "loaded {} routes (cap {MAX_ROUTES}); removing one then gives {removed:?}",
                    r.len()
                );
            }
        }
        let twice = vec![
            route("a.example", Fallback::Direct),
            route("A.example", Fallback::Direct),
        ];
        std::fs::write(dir.join("routes.json"), serde_json::to_vec(&twice).unwrap()).unwrap();
        let e = Routes::load(&dir).err().unwrap_or_default();
        assert!(e.contains("twice"), "{e:?}");
    }

    /// The bridge API finds the route a POST replaces (to forget its old key) by the name as
    /// sent; `upsert` stores it in lower case: "B.Example" must find "b.example".
    #[test]
    fn a_route_is_found_by_any_case_of_its_name() {
        let dir = tempdir();
        let r = Routes::load(&dir).unwrap();
        r.upsert(&[route("b.example", Fallback::Direct)]).unwrap();
        let before = r.get("B.Example");
        let mut new = route("B.Example", Fallback::Direct);
        new.pubkey = "cd".repeat(32);
        r.upsert(&[new]).unwrap();
        assert_eq!(r.len(), 1, "replaced");
        assert!(
            before.is_some(),
            "the replaced route was not found by the name the API got"
        );
    }
}
