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
        endpoint = endpoint.tls_config(tls).map_err(|e| {
            anyhow::anyhow!(
                "TLS for {url}: {}{}",
                error_chain(&e),
                tls_hint(&e, args, Side::Client)
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default()
            )
        })?;
    } else if args.tls_ca.is_some() || args.tls_client_cert.is_some() {
        anyhow::bail!("--tls-ca and --tls-client-cert need an https:// --server URL, not {url}");
    }
    let token = crate::config::read_token(args.auth_token_file.as_deref())?;
    if token.is_some() && !https {
        tracing::warn!("sending the bearer token over plaintext to {url}");
    }
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to {url}: {}{}",
            error_chain(&e),
            tls_hint(&e, args, Side::Server)
                .map(|h| format!(" ({h})"))
                .unwrap_or_default()
        )
    })?;
    probe(url, channel.clone(), args).await?;
    Ok(ExplainerClient::with_interceptor(
        channel,
        BearerToken::new(token.as_deref())?,
    ))
}

/// One health check over the new connection (health is open without a token), so that a
/// connection the server refuses after the handshake fails here with its likely cause, not
/// later as "Unknown: transport error". With TLS 1.3 the client's side of the handshake ends
/// before the server has checked the client's certificate, and a plaintext client learns that
/// the port speaks TLS only when its first call fails.
async fn probe(url: &str, channel: Channel, args: &ConnectArgs) -> anyhow::Result<()> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let mut health = HealthClient::new(channel);
    let checked = tokio::time::timeout(
        PROBE_TIMEOUT,
        health.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await;
    let status = match checked {
        Ok(Ok(_)) => return Ok(()),
        // The server answered: the connection works (a server without health says UNIMPLEMENTED).
        Ok(Err(status)) if !is_transport_failure(&status) => return Ok(()),
        Ok(Err(status)) => status,
        Err(_) => anyhow::bail!(
            "{url} did not answer a health check within {} s{}",
            PROBE_TIMEOUT.as_secs(),
            if url.starts_with("http://") {
                " (if the server serves TLS, use https:// and --tls-ca)"
            } else {
                ""
            }
        ),
    };
    let https = url.starts_with("https://");
    let cause = match (https, args.tls_client_cert.is_some()) {
        (false, _) => "the server did not answer plaintext HTTP/2: if it serves TLS, use https:// and --tls-ca".to_string(),
        (true, false) => "the server closed the connection after the TLS handshake: it most likely requires a client certificate (mutual TLS); pass --tls-client-cert and --tls-client-key".to_string(),
        (true, true) => "the server closed the connection after the TLS handshake: it most likely refused the client certificate (not signed by the server's --tls-client-ca, no clientAuth usage, or an X.509 v1 certificate); the server's log says which".to_string(),
    };
    use std::error::Error;
    let transport = status.source().map(error_chain).unwrap_or_default();
    anyhow::bail!(
        "cannot call {url}: {cause} ({:?}: {}: {transport})",
        status.code(),
        status.message(),
    )
}

/// How long the connection probe waits for the server.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A status made by the client's transport (the connection failed: it carries the transport's
/// error as its source, whatever its code), not one a server sent.
fn is_transport_failure(status: &tonic::Status) -> bool {
    use std::error::Error;
    status.source().is_some()
        || status.message().contains("transport error")
        || status.message().contains("operation was canceled")
}

/// Whose certificate a TLS error is about: ours, while the configuration is built (rustls
/// checks --tls-client-cert then), or the server's, once connecting.
#[derive(Clone, Copy)]
enum Side {
    Client,
    Server,
}

/// The likely cause of a TLS failure in `error`'s chain, in the words of the flags to change.
fn tls_hint(
    error: &(dyn std::error::Error + 'static),
    args: &ConnectArgs,
    side: Side,
) -> Option<String> {
    use tokio_rustls::rustls::Error as E;
    let mut source = Some(error);
    while let Some(e) = source {
        // rustls's errors reach here inside an io::Error, whose source() skips them.
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        if let Some(tls) = inner.unwrap_or(e).downcast_ref::<E>() {
            return Some(match tls {
                E::InvalidCertificate(reason) => match side {
                    Side::Server => format!(
                        "the server's certificate was refused: {}",
                        crate::server::tls::certificate_hint(reason, "--tls-ca")
                    ),
                    Side::Client => format!(
                        "--tls-client-cert was refused: {}",
                        crate::server::tls::certificate_hint(reason, "the server's --tls-client-ca")
                    ),
                },
                E::InvalidMessage(_) => {
                    "the server did not answer in TLS: if it serves plaintext, use http://"
                        .to_string()
                }
                E::AlertReceived(_) if args.tls_client_cert.is_none() => "the server refused the handshake: if it requires a client certificate (mutual TLS), pass --tls-client-cert and --tls-client-key".to_string(),
                E::AlertReceived(_) => "the server refused the handshake, most likely the client certificate; the server's log says why".to_string(),
                _ => return None,
            });
        }
        source = e.source();
    }
    let text = error_chain(error);
    (text.contains("certificate") && text.contains("parse") || text.contains("private key")).then(
        || {
            "check --tls-client-cert and --tls-client-key: PEM files of one certificate and its key"
                .to_string()
        },
    )
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// "transport error: ...: the real reason", since the outermost message alone rarely says
/// what went wrong in a TLS handshake.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        // Wrappers often repeat their source's message: said once.
        let message = e.to_string();
        if !text.ends_with(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = e.source();
    }
    text
}
