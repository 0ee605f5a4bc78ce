//! TLS (rustls) from PEM files, with mutual TLS when a client CA is given.

use std::path::Path;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use super::ServeError;
use crate::config::SecurityArgs;

/// The server's TLS configuration, or `None` to serve plaintext.
pub fn server_config(args: &SecurityArgs) -> Result<Option<ServerTlsConfig>, ServeError> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let identity = Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &args.tls_client_ca {
        // NOTE: client auth is required (not optional) once a CA is set: a client without a
        // certificate signed by it fails the handshake.
        config = config.client_ca_root(Certificate::from_pem(read("--tls-client-ca", ca)?));
    }
    Ok(Some(config))
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
