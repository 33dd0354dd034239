//! TLS for the ext_proc port: a self-signed certificate generated at startup, or `tls.crt` /
//! `tls.key` from a directory with optional hot reload. ALPN `h2`. rustls on the `ring`
//! provider (no C toolchain beyond the one `ring` needs).
//!
//! Upstream generates an RSA-4096 certificate; `ring` cannot generate RSA keys, so ours is
//! ECDSA P-256. Gateways do not verify the EPP's certificate (see the spec), so only the key type
//! differs.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use thiserror::Error;

/// File name of the certificate chain inside `--cert-path`.
pub const CERT_FILE: &str = "tls.crt";
/// File name of the private key inside `--cert-path`.
pub const KEY_FILE: &str = "tls.key";

/// TLS settings of the ext_proc port.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// Serve TLS (`--secure-serving`, default true). False serves plaintext HTTP/2.
    pub secure_serving: bool,
    /// Directory holding `tls.crt` and `tls.key` (`--cert-path`); `None` generates a self-signed
    /// certificate at startup.
    pub cert_path: Option<PathBuf>,
    /// Reload the files when they change (`--enable-cert-reload`).
    pub enable_cert_reload: bool,
    /// How often the files are checked for changes when reloading is on.
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            secure_serving: true,
            cert_path: None,
            enable_cert_reload: false,
            reload_interval: Duration::from_secs(1),
        }
    }
}

/// Why TLS could not be set up.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file held no usable PEM data.
    #[error("parsing {path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected the key or configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Generates a self-signed server certificate (ECDSA P-256, organisation "Inference Ext", valid
/// ten years, server-auth usage, SAN `localhost`). Returns the PEM certificate and PEM key.
pub fn self_signed_pem() -> Result<(String, String), TlsError> {
    let (cert, key) = self_signed()?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn self_signed() -> Result<(rcgen::Certificate, rcgen::KeyPair), TlsError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "Inference Ext");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
    let year = 1970 + SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() / 31_556_952).unwrap_or(0);
    let year = i32::try_from(year).unwrap_or(2026);
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    let cert = params.self_signed(&key)?;
    Ok((cert, key))
}

fn certified_key(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<CertifiedKey, TlsError> {
    Ok(CertifiedKey::from_der(certs, key, &provider())?)
}

fn generated_key() -> Result<CertifiedKey, TlsError> {
    let (cert, key) = self_signed()?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    certified_key(vec![cert.der().clone()], key)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

/// Loads `tls.crt` and `tls.key` from `dir`.
fn load_dir(dir: &Path) -> Result<CertifiedKey, TlsError> {
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    let pem_err = |path: &Path, reason: String| TlsError::Pem { path: path.to_path_buf(), reason };
    let certs = CertificateDer::pem_slice_iter(&read(&cert_path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(&cert_path, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err(&cert_path, "no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?).map_err(|e| pem_err(&key_path, e.to_string()))?;
    certified_key(certs, key)
}

/// Hands out the current certificate; swapped atomically on reload.
#[derive(Debug)]
struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Builds the rustls server configuration (ALPN `h2`). With reloading on, a background task
/// (ended when the returned configuration is dropped) polls the files every
/// `reload_interval` and swaps in a new certificate when they change and parse.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let key = match &cfg.cert_path {
        Some(dir) => load_dir(dir)?,
        None => generated_key()?,
    };
    let resolver = Arc::new(CertResolver { current: ArcSwap::from_pointee(key) });
    if cfg.enable_cert_reload
        && let Some(dir) = cfg.cert_path.clone()
    {
        spawn_reloader(Arc::downgrade(&resolver), dir, cfg.reload_interval);
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn fingerprint(dir: &Path) -> Option<(Vec<u8>, Vec<u8>)> {
    Some((std::fs::read(dir.join(CERT_FILE)).ok()?, std::fs::read(dir.join(KEY_FILE)).ok()?))
}

fn spawn_reloader(resolver: std::sync::Weak<CertResolver>, dir: PathBuf, every: Duration) {
    let mut last = fingerprint(&dir);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(resolver) = resolver.upgrade() else { return };
            let now = fingerprint(&dir);
            if now.is_none() || now == last {
                continue;
            }
            match load_dir(&dir) {
                Ok(key) => {
                    resolver.current.store(Arc::new(key));
                    last = now;
                    tracing::info!(dir = %dir.display(), "reloaded TLS certificate");
                }
                // Files may be mid-update (cert written, key not yet); retry on the next tick.
                Err(e) => tracing::warn!(error = %e, "TLS certificate reload failed; keeping the old one"),
            }
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_and_loaded() {
        let (cert, key) = self_signed_pem().unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        let dir = std::env::temp_dir().join(format!("igw-extproc-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(CERT_FILE), &cert).unwrap();
        std::fs::write(dir.join(KEY_FILE), &key).unwrap();
        let loaded = load_dir(&dir).unwrap();
        assert_eq!(loaded.cert.len(), 1);
        let cfg = TlsConfig { cert_path: Some(dir.clone()), ..Default::default() };
        let sc = server_config(&cfg).unwrap();
        assert_eq!(sc.alpn_protocols, vec![b"h2".to_vec()]);
        std::fs::write(dir.join(KEY_FILE), "garbage").unwrap();
        assert!(matches!(load_dir(&dir), Err(TlsError::Pem { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(load_dir(&dir), Err(TlsError::Read { .. })));
    }
}
