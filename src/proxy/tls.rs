//! The proxy's server certificate: loaded from the PEM files `[proxy] tls_cert`/`tls_key`
//! name, handed to rustls through a resolver that can be swapped, so a config reload (or a
//! renewed certificate behind the same file names) takes effect for new connections without
//! a restart. A certificate that fails to load is logged and the previous one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate {cert} or key {key}: {message}")]
    Read {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("{cert} and {key} do not make a usable certificate: {message}")]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

/// The certificate rustls hands to every client, swappable.
#[derive(Debug)]
pub struct Certificate {
    current: ArcSwap<CertifiedKey>,
}

fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    pingora::tls::install_default_crypto_provider();
    let loaded = pingora::tls::load_certs_and_key_files(
        &cert.display().to_string(),
        &key.display().to_string(),
    )
    .map_err(|e| TlsError::Read {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        message: e.to_string(),
    })?;
    let Some((chain, private)) = loaded else {
        return Err(TlsError::Read {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            message: "no certificate or no private key in them".into(),
        });
    };
    let provider = CryptoProvider::get_default()
        .cloned()
        .expect("installed just above");
    CertifiedKey::from_der(chain, private, &provider).map_err(|e| TlsError::Unusable {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        message: e.to_string(),
    })
}

impl Certificate {
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Certificate>, TlsError> {
        let ck = load(cert, key)?;
        Ok(Arc::new(Certificate {
            current: ArcSwap::from_pointee(ck),
        }))
    }

    /// Load the files again (after a reload); keep the old certificate if that fails.
    pub fn reload(&self, cert: &Path, key: &Path) {
        match load(cert, key) {
            Ok(ck) => {
                self.current.store(Arc::new(ck));
                tracing::info!(cert = %cert.display(), "proxy TLS certificate loaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "proxy TLS certificate not reloaded; the previous one keeps serving")
            }
        }
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
