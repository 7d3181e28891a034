//! The proxy's certificates: one per domain, chosen by SNI, swappable while the proxy runs
//! (a new handshake picks the new certificate; open connections keep theirs). Until a real
//! certificate exists for a domain it is served with a self-signed one, so an app is never
//! unreachable; unknown names get a neutral self-signed certificate that names no domain.

use crate::error::{Error, Result};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub struct CertStore {
    provider: Arc<CryptoProvider>,
    by_host: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    fallback: Arc<CertifiedKey>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertStore")
    }
}

impl CertStore {
    pub fn new() -> Result<Arc<CertStore>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let fallback = self_signed(&provider, "ilot.invalid")?;
        Ok(Arc::new(CertStore {
            provider,
            by_host: RwLock::new(HashMap::new()),
            fallback,
        }))
    }

    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::failed(format!("TLS setup: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Makes sure every host has a certificate (self-signed until a real one is installed) and
    /// forgets hosts no longer served.
    pub fn sync_hosts(&self, hosts: &[String]) -> Result<()> {
        let missing: Vec<&String> = {
            let map = self.by_host.read().expect("cert lock");
            hosts.iter().filter(|h| !map.contains_key(*h)).collect()
        };
        let mut fresh = Vec::new();
        for host in missing {
            fresh.push((host.clone(), self_signed(&self.provider, host)?));
        }
        let mut map = self.by_host.write().expect("cert lock");
        map.retain(|h, _| hosts.contains(h));
        for (host, key) in fresh {
            map.entry(host).or_insert(key);
        }
        Ok(())
    }

    /// Installs a certificate chain and key (PEM) for a host, replacing what was served.
    pub fn install_pem(&self, host: &str, chain_pem: &str, key_pem: &str) -> Result<()> {
        let bad = |what: &str| Error::failed(format!("certificate for {host}: {what}"));
        let chain: Vec<CertificateDer<'static>> =
            rustls_pemfile_certs(chain_pem).ok_or_else(|| bad("unreadable chain"))?;
        let key = rustls_pemfile_key(key_pem).ok_or_else(|| bad("unreadable key"))?;
        let signer = self
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| bad(&e.to_string()))?;
        let certified = CertifiedKey::new(chain, signer);
        certified
            .keys_match()
            .map_err(|e| bad(&format!("key does not match: {e}")))?;
        self.by_host
            .write()
            .expect("cert lock")
            .insert(host.to_string(), Arc::new(certified));
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(|n| n.to_ascii_lowercase());
        let map = self.by_host.read().expect("cert lock");
        Some(
            name.and_then(|n| map.get(&n).cloned())
                .unwrap_or_else(|| self.fallback.clone()),
        )
    }
}

/// A self-signed certificate and key for `host`, as PEM (for apps given certificate files).
pub fn self_signed_pem(host: &str) -> Result<(String, String)> {
    let generated = rcgen::generate_simple_self_signed(vec![host.to_string()]).map_err(|e| {
        Error::failed(format!(
            "cannot make a self-signed certificate for {host}: {e}"
        ))
    })?;
    Ok((generated.cert.pem(), generated.signing_key.serialize_pem()))
}

fn self_signed(provider: &CryptoProvider, host: &str) -> Result<Arc<CertifiedKey>> {
    let generated = rcgen::generate_simple_self_signed(vec![host.to_string()]).map_err(|e| {
        Error::failed(format!(
            "cannot make a self-signed certificate for {host}: {e}"
        ))
    })?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| Error::failed(format!("self-signed key for {host}: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![generated.cert.der().clone()],
        signer,
    )))
}

/// The certificates of a PEM bundle, in order.
fn rustls_pemfile_certs(pem: &str) -> Option<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    (!certs.is_empty()).then_some(certs)
}

fn rustls_pemfile_key(pem: &str) -> Option<PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).ok()
}
