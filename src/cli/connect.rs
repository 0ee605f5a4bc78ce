//! Connecting the client commands to a server: plaintext, TLS (`https://` URL and
//! `--tls-ca`), mutual TLS (`--tls-client-cert`/`--tls-client-key`) and a bearer token.

use std::path::{Path, PathBuf};

use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::proto::integrad::v1::explainer_client::ExplainerClient;

/// How to reach a secured server (see docs/security.md).
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Trust this PEM CA for an https:// server.
    #[arg(long, env = "INTEGRAD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Present this PEM certificate to a server that requires mutual TLS (needs
    /// --tls-client-key).
    #[arg(long, env = "INTEGRAD_TLS_CLIENT_CERT", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    /// The PEM private key of --tls-client-cert.
    #[arg(long, env = "INTEGRAD_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
    /// Send the bearer token in this file (or set the token itself in INTEGRAD_AUTH_TOKEN).
    #[arg(long, env = "INTEGRAD_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
}

/// Adds `authorization: Bearer <token>` to every call when there is a token.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        let value = token
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .map_err(|_| anyhow::anyhow!("the bearer token must be printable ASCII"))?;
        Ok(Self(value))
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Client = ExplainerClient<InterceptedService<Channel, BearerToken>>;

/// A client of the server at `url`, with TLS and a token as `args` say.
pub async fn connect(url: &str, args: &ConnectArgs) -> anyhow::Result<Client> {
    // HOST:PORT alone means plaintext, as for grpcurl -plaintext.
    let url = match url.split_once("://") {
        Some(("http" | "https", _)) => url.to_string(),
        Some((scheme, _)) => anyhow::bail!(
            "--server {url}: {scheme}:// is not a gRPC scheme; write http://HOST:PORT, https://HOST:PORT or HOST:PORT"
        ),
        None => format!("http://{url}"),
    };
    let url = url.as_str();
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| anyhow::anyhow!("--server {url}: {e}"))?;
    let https = url.starts_with("https://");
    if https {
        let ca = args.tls_ca.as_deref().ok_or_else(|| {
            anyhow::anyhow!("--server {url} is https: give the CA to trust with --tls-ca FILE.pem")
        })?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&args.tls_client_cert, &args.tls_client_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| anyhow::anyhow!("TLS for {url}: {e}"))?;
    } else if args.tls_ca.is_some() || args.tls_client_cert.is_some() {
        anyhow::bail!("--tls-ca and --tls-client-cert need an https:// --server URL, not {url}");
    }
    let token = crate::config::read_token(args.auth_token_file.as_deref())?;
    if token.is_some() && !https {
        tracing::warn!("sending the bearer token over plaintext to {url}");
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {url}: {}", error_chain(&e)))?;
    Ok(ExplainerClient::with_interceptor(
        channel,
        BearerToken::new(token.as_deref())?,
    ))
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// "transport error: ...: the real reason", since the outermost message alone rarely says
/// what went wrong in a TLS handshake.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
