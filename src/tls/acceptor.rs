//! The client-facing TLS configuration: certificate and key, optional
//! client-certificate verification, ALPN `postgresql` (required for
//! PostgreSQL 17's direct TLS, optional after an SSLRequest).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use super::{load_certs, load_roots, provider, TlsMode};
use crate::config::General;

/// ALPN protocol name of PostgreSQL.
pub const ALPN: &[u8] = b"postgresql";

/// Client-side TLS as configured.
#[derive(Clone)]
pub struct ClientTls {
    /// The mode clients are held to.
    pub mode: TlsMode,
    /// The acceptor (absent when the mode is `disable`).
    pub acceptor: Option<TlsAcceptor>,
    /// SCRAM channel binding data (`tls-server-end-point`) of the
    /// certificate shown: SCRAM-SHA-256-PLUS is offered over TLS when set.
    pub end_point: Option<Arc<[u8]>>,
}

impl ClientTls {
    /// Builds the acceptor from `[pgmux] client_tls_*`.
    pub fn from_config(g: &General) -> Result<Self, String> {
        let mode = g.client_tls_mode;
        if mode == TlsMode::Disable {
            return Ok(Self {
                mode,
                acceptor: None,
                end_point: None,
            });
        }
        let (Some(cert), Some(key)) = (&g.client_tls_cert, &g.client_tls_key) else {
            return Err("client_tls_mode needs client_tls_cert and client_tls_key".into());
        };
        let certs = load_certs(cert)?;
        let end_point = certs
            .first()
            .and_then(|c| super::end_point::tls_server_end_point(c))
            .map(Arc::from);
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if mode >= TlsMode::VerifyCa {
            let ca = g
                .client_tls_ca
                .as_ref()
                .ok_or("client_tls_mode verify-ca/verify-full needs client_tls_ca")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(load_roots(ca)?, provider())
                .build()
                .map_err(|e| format!("{ca}: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut cfg = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("client_tls_cert/client_tls_key: {e}"))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Self {
            mode,
            acceptor: Some(TlsAcceptor::from(Arc::new(cfg))),
            end_point,
        })
    }
}
