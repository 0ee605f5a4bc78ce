//! TLS (rustls) from PEM files, with mutual TLS when a client CA is given.
//!
//! integrad runs the handshakes itself rather than through tonic's TLS option, for one reason:
//! a handshake that fails must leave a reason in the log. A client certificate that is not
//! signed by the client CA, one without X.509 v3 extensions, no client certificate under
//! mutual TLS, a plaintext client on the TLS port, a client that does not trust the server's
//! certificate: each is logged at WARN with the peer's address and what to change, instead of
//! nothing (tonic logs them at DEBUG). A peer that connects and closes without a word (a TCP
//! probe, a port scan) is not a TLS failure and stays at DEBUG.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    CertificateError, RootCertStore, ServerConfig,
};

use super::ServeError;
use crate::config::SecurityArgs;

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's side of TLS: `None` serves plaintext.
#[derive(Clone)]
pub struct Acceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    /// Whether clients must present a certificate (mutual TLS), for the hints.
    mutual: bool,
}

/// The server's TLS configuration, or `None` to serve plaintext.
pub fn acceptor(args: &SecurityArgs) -> Result<Option<Acceptor>, ServeError> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let chain = certificates("--tls-cert", cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read("--tls-key", key)?).map_err(|e| {
        ServeError::Tls(format!("--tls-key {}: no private key: {e}", key.display()))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let builder = match &args.tls_client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates("--tls-client-ca", ca)? {
                roots.add(certificate).map_err(|e| {
                    ServeError::Tls(format!("--tls-client-ca {}: {e}", ca.display()))
                })?;
            }
            // NOTE: client auth is required (not optional) once a CA is set: a client without
            // a certificate signed by it fails the handshake.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ServeError::Tls(format!("--tls-client-ca {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| ServeError::Tls(format!("{e} (check --tls-cert and --tls-key)")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(Acceptor {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        mutual: args.tls_client_ca.is_some(),
    }))
}

impl Acceptor {
    /// The handshake on `stream` from `peer`; a failure is logged with its reason, and None.
    pub async fn accept<IO>(
        &self,
        stream: IO,
        peer: Option<std::net::SocketAddr>,
    ) -> Option<tokio_rustls::server::TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(error)) => {
                match error
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<rustls::Error>())
                {
                    Some(tls) => tracing::warn!(
                        %peer,
                        error = %tls,
                        "TLS handshake failed: {}",
                        hint(tls, self.mutual)
                    ),
                    // The peer closed or reset before a TLS message: no TLS client.
                    None => {
                        tracing::debug!(%peer, %error, "connection closed before a TLS handshake")
                    }
                }
                None
            }
            Err(_) => {
                tracing::warn!(
                    %peer,
                    "TLS handshake not finished after {} s; connection closed",
                    HANDSHAKE_TIMEOUT.as_secs()
                );
                None
            }
        }
    }
}

/// What a failed handshake most likely means, and what to change.
fn hint(error: &rustls::Error, mutual: bool) -> String {
    use rustls::{AlertDescription as Alert, Error as E};
    match error {
        E::InvalidMessage(_) => "the client did not speak TLS (plaintext, e.g. an http:// URL, against this TLS port?): it must use https://".into(),
        E::NoCertificatesPresented => "the client presented no certificate; this server requires one signed by --tls-client-ca (mutual TLS)".into(),
        E::InvalidCertificate(reason) => format!("the client's certificate was refused: {}", certificate_hint(reason, "--tls-client-ca")),
        E::AlertReceived(Alert::BadCertificate | Alert::UnknownCA | Alert::CertificateUnknown | Alert::UnsupportedCertificate | Alert::DecryptError) => {
            "the client refused this server's certificate: the CA it trusts did not sign it, or the name the client dialled is not in its subjectAltName, or it is an X.509 v1 certificate (no extensions)".into()
        }
        E::PeerIncompatible(_) | E::NoApplicationProtocol => "the client offers no TLS version, cipher suite or ALPN protocol (h2) in common with the server".into(),
        other if mutual => format!("{other} (this server requires a client certificate signed by --tls-client-ca)"),
        other => other.to_string(),
    }
}

/// Why a certificate was refused, for the side that trusts `ca_flag`.
pub fn certificate_hint(reason: &CertificateError, ca_flag: &str) -> String {
    match reason {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            format!("it is not signed by the CA given with {ca_flag}")
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "it has expired".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "it is not valid yet (check the clocks)".into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "the name dialled is not in its subjectAltName".into()
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "its extendedKeyUsage does not allow this use (serverAuth for a server, clientAuth for a client)".into()
        }
        other if format!("{other:?}").contains("UnsupportedCertVersion") => {
            "it is an X.509 v1 certificate (no extensions); issue a v3 one, e.g. openssl x509 -req ... -extfile with subjectAltName and extendedKeyUsage".into()
        }
        other => format!("{other:?}"),
    }
}

fn certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ServeError> {
    let bytes = read(flag, path)?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::Tls(format!("{flag} {}: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(ServeError::Tls(format!(
            "{flag} {}: no CERTIFICATE in the PEM file",
            path.display()
        )));
    }
    Ok(certificates)
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, ServeError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ServeError::Tls(format!("{flag} {}: {e}", path.display())))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(ServeError::Tls(format!(
            "{flag} {}: not a PEM file (no -----BEGIN line)",
            path.display()
        )));
    }
    Ok(bytes)
}
