//! The site CA: `<state_dir>/ca.crt` and `<state_dir>/ca.key` (mode 0600), and the
//! certificates the proxy presents for routed server names, minted from it on first use and
//! cached. The homeserver trusts `ca.crt` (Synapse: `federation_custom_ca_list`), so it accepts
//! the edge as any routed destination; the proxy never asks for a certificate for a name
//! without a route.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The CA's subject; the issuer of every leaf is rebuilt from it (no certificate parser needed).
const CA_COMMON_NAME: &str = "hyphae-edge site CA";
const CA_ORG: &str = "hyphae";
/// Cached leaf configurations before the cache is emptied (routes bound it in practice).
const MAX_CACHED: usize = 4096;

/// The site CA and the cache of per-name TLS server configurations.
pub struct SiteCa {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    cache: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

impl std::fmt::Debug for SiteCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteCa").finish_non_exhaustive()
    }
}

/// Paths of the CA files in a state directory.
pub fn paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    (state_dir.join("ca.crt"), state_dir.join("ca.key"))
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, CA_ORG);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// Creates the CA files when missing. Returns whether they were created; existing files are
/// left exactly as they are (a lone `ca.crt` or `ca.key` is an error, never overwritten).
pub fn init(state_dir: &Path) -> Result<bool, String> {
    let (crt, key) = paths(state_dir);
    match (crt.exists(), key.exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        (true, false) | (false, true) => {
            return Err(format!(
                "{} and {} must both exist or both be absent; move the lone one away",
                crt.display(),
                key.display()
            ));
        }
    }
    std::fs::create_dir_all(state_dir)
        .map_err(|e| format!("state_dir {}: {e}", state_dir.display()))?;
    let kp = KeyPair::generate().map_err(|e| format!("CA key: {e}"))?;
    let cert = ca_params()
        .self_signed(&kp)
        .map_err(|e| format!("CA certificate: {e}"))?;
    write_new(&key, kp.serialize_pem().as_bytes(), 0o600)?;
    if let Err(e) = write_new(&crt, cert.pem().as_bytes(), 0o644) {
        let _ = std::fs::remove_file(&key);
        return Err(e);
    }
    Ok(true)
}

/// Creates `path` with exactly `mode`, whatever the umask (the homeserver, another user,
/// must read `ca.crt`; nobody but us `ca.key`).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| f.write_all(bytes))
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

impl SiteCa {
    /// Loads the CA made by [`init`].
    pub fn load(state_dir: &Path) -> Result<Self, String> {
        let (crt, key) = paths(state_dir);
        let hint = "(run `hyphae-edge --config FILE init` first)";
        let key_pem =
            std::fs::read_to_string(&key).map_err(|e| format!("{}: {e} {hint}", key.display()))?;
        let crt_pem =
            std::fs::read_to_string(&crt).map_err(|e| format!("{}: {e} {hint}", crt.display()))?;
        let kp = KeyPair::from_pem(&key_pem).map_err(|e| format!("{}: {e}", key.display()))?;
        let ca_der = pem_certs(&crt_pem)
            .into_iter()
            .next()
            .ok_or_else(|| format!("{}: no certificate", crt.display()))?;
        Ok(Self {
            issuer: Issuer::new(ca_params(), kp),
            ca_der,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate (DER).
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The TLS configuration presenting a certificate for `host` (a DNS name or IP literal),
    /// minted on first use. Call it only for names with a route.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, String> {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(&host) {
            return Ok(c.clone());
        }
        let cfg = Arc::new(self.mint(&host)?);
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(host, cfg.clone());
        Ok(cfg)
    }

    fn mint(&self, host: &str) -> Result<ServerConfig, String> {
        let mut p = CertificateParams::default();
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.to_owned()
                    .try_into()
                    .map_err(|e| format!("certificate name {host:?}: {e}"))?,
            ),
        };
        p.subject_alt_names = vec![san];
        p.distinguished_name.push(DnType::CommonName, host);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let kp = KeyPair::generate().map_err(|e| format!("leaf key: {e}"))?;
        let cert = p
            .signed_by(&kp, &self.issuer)
            .map_err(|e| format!("certificate for {host}: {e}"))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kp.serialize_der()));
        let mut cfg = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone(), self.ca_der.clone()], key)
            .map_err(|e| format!("certificate for {host}: {e}"))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

/// The system CA bundle as one file per certificate under `<state_dir>/system-ca/`, written
/// once (an existing directory is listed as it is). Synapse's `federation_custom_ca_list` reads
/// only the first certificate of each file and replaces the system trust with the list, so the
/// homeserver needs every system CA as a file of its own beside `ca.crt` to keep ordinary
/// federation working.
pub fn system_ca_files(state_dir: &Path, bundle: &Path) -> Result<Vec<PathBuf>, String> {
    let dir = state_dir.join("system-ca");
    if !dir.exists() {
        let pem = std::fs::read_to_string(bundle)
            .map_err(|e| format!("system CA bundle {}: {e}", bundle.display()))?;
        let certs = pem_certs(&pem);
        if certs.is_empty() {
            return Err(format!(
                "system CA bundle {}: no certificate",
                bundle.display()
            ));
        }
        let tmp = state_dir.join(format!("system-ca.tmp.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        for (i, c) in certs.iter().enumerate() {
            let f = tmp.join(format!("{i:04}.crt"));
            std::fs::write(&f, pem_block(c.as_ref()))
                .map_err(|e| format!("{}: {e}", f.display()))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    files.sort();
    Ok(files)
}

fn pem_block(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Every certificate in a PEM text.
pub fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_idempotent_and_the_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("hyphae-edge-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(init(&dir).unwrap());
        let (crt, key) = paths(&dir);
        let before = (std::fs::read(&crt).unwrap(), std::fs::read(&key).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&crt), 0o644, "the homeserver reads it");
        assert!(!init(&dir).unwrap());
        assert_eq!(
            before,
            (std::fs::read(&crt).unwrap(), std::fs::read(&key).unwrap())
        );

        let ca = SiteCa::load(&dir).unwrap();
        let a = ca.server_config("b.example").unwrap();
        let b = ca.server_config("B.example").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one mint per name");
        ca.server_config("127.0.0.1").unwrap();

        // The system bundle, one certificate per file, written once.
        let bundle = dir.join("bundle.pem");
        let two = format!(
            "{}{}",
            std::fs::read_to_string(&crt).unwrap(),
            pem_block(ca.ca_der())
        );
        std::fs::write(&bundle, &two).unwrap();
        let files = system_ca_files(&dir, &bundle).unwrap();
        assert_eq!(files.len(), 2);
        for f in &files {
            let one = pem_certs(&std::fs::read_to_string(f).unwrap());
            assert_eq!(one.len(), 1);
            assert_eq!(&one[0], ca.ca_der());
        }
        std::fs::write(&bundle, "").unwrap();
        assert_eq!(
            system_ca_files(&dir, &bundle).unwrap(),
            files,
            "written once"
        );

        std::fs::remove_file(&key).unwrap();
        assert!(init(&dir).is_err(), "a lone ca.crt is never overwritten");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
