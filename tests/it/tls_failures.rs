//! Why a TLS connection failed, said on both sides: the server logs each refused handshake at
//! WARN with its likely cause, and the CLI names the flag to change. The certificates are made
//! with the `openssl` command line, as a user would (one client certificate without X.509 v3
//! extensions, what `openssl x509 -req` without `-extfile` makes); the v1 certificate is
//! presented by a real grpcio client, since rustls refuses to even load it on the client side.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// A CA, a server certificate for localhost and 127.0.0.1, and client certificates with and
/// without v3 extensions, all made by `openssl` in `dir`.
fn openssl_pki(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command line (Debian package openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key = |name: &str| {
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            name,
        ])
    };
    key("ca.key");
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, subject) in [("server", "/CN=localhost"), ("client", "/CN=client")] {
        key(&format!("{name}.key"));
        openssl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ]);
    }
    let sign = |csr: &str, out: &str, ext: Option<&str>| {
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            out,
            "-days",
            "2",
        ];
        if let Some(ext) = ext {
            args.extend(["-extfile", ext]);
        }
        openssl(&args);
    };
    sign("server.csr", "server.pem", Some("server.ext"));
    sign("client.csr", "client.pem", Some("client.ext"));
    sign("client.csr", "client-v1.pem", None);
    key("other.key");
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "other.key",
        "-out",
        "other.pem",
        "-days",
        "2",
        "-subj",
        "/CN=other CA",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "other.pem",
        "-CAkey",
        "other.key",
        "-CAcreateserial",
        "-out",
        "client-other.pem",
        "-days",
        "2",
        "-extfile",
        "client.ext",
    ]);
}

/// `integrad serve` with TLS (mutual when `mutual`), its log going to `log`.
async fn serve_tls(dir: &Path, mutual: bool, log: &Path) -> (Process, String) {
    let address = free_address().to_string();
    let mut command = Command::new(binary());
    command
        .args([
            "serve",
            "--listen",
            &address,
            "--models",
            demo_models().to_str().unwrap(),
        ])
        .args(["--tls-cert", "server.pem", "--tls-key", "server.key"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("INTEGRAD_CONFIG")
        .stderr(std::fs::File::create(log).unwrap());
    if mutual {
        command.args(["--tls-client-ca", "ca.pem"]);
    }
    let child = Process::spawn(&mut command);
    let url = format!("https://localhost:{}", address.rsplit(':').next().unwrap());
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(dir.join("ca.pem")).unwrap(),
        ))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(dir.join("client.pem")).unwrap(),
            std::fs::read(dir.join("client.key")).unwrap(),
        ));
    wait_serving(&url, Some(tls)).await;
    (child, url)
}

/// `integrad predict` against `url` with `flags`, run in `dir`.
async fn predict(dir: &Path, url: &str, flags: &[&str]) -> Output {
    let mut command = Command::new(binary());
    command
        .args(["predict", "--server", url])
        .args(flags)
        .arg(root().join("samples/coffee.png"))
        .current_dir(dir)
        .env_remove("INTEGRAD_TLS_CA")
        .env_remove("INTEGRAD_TLS_CLIENT_CERT")
        .env_remove("INTEGRAD_TLS_CLIENT_KEY");
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn refused(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The server's WARN lines so far.
fn warnings(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| l.contains(" WARN "))
        .map(str::to_string)
        .collect()
}

/// Waits (briefly) for the server's log to gain a WARN line containing `text`.
async fn logged(log: &Path, text: &str) -> String {
    for _ in 0..50 {
        if let Some(line) = warnings(log).into_iter().find(|l| l.contains(text)) {
            return line;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "no WARN line with {text:?} in the server's log: {:?}",
        warnings(log)
    );
}

#[tokio::test]
async fn should_say_why_a_tls_connection_failed_on_both_sides() {
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    openssl_pki(dir);
    let log: PathBuf = dir.join("server.log");
    let (_server, url) = serve_tls(dir, true, &log).await;
    let mutual = [
        "--tls-ca",
        "ca.pem",
        "--tls-client-cert",
        "client.pem",
        "--tls-client-key",
        "client.key",
    ];
    let served = predict(dir, &url, &mutual).await;
    assert!(
        served.status.success(),
        "{}",
        String::from_utf8_lossy(&served.stderr)
    );

    // A connection that opens and closes without a word (a TCP probe) is no TLS failure.
    drop(std::net::TcpStream::connect(url.replace("https://localhost", "127.0.0.1")).unwrap());

    // No client certificate under mutual TLS.
    let stderr = refused(&predict(dir, &url, &["--tls-ca", "ca.pem"]).await);
    assert!(
        stderr.contains("requires a client certificate") && stderr.contains("--tls-client-cert"),
        "{stderr}"
    );
    let line = logged(&log, "presented no certificate").await;
    assert!(
        line.contains("--tls-client-ca") && line.contains("peer=127.0.0.1:"),
        "{line}"
    );

    // Plaintext against the TLS port.
    let stderr = refused(&predict(dir, &url.replace("https://", "http://"), &[]).await);
    assert!(stderr.contains("use https://"), "{stderr}");
    logged(&log, "did not speak TLS").await;

    // The client trusts another CA (here: the server's own certificate as if it were a CA).
    let stderr = refused(&predict(dir, &url, &["--tls-ca", "server.pem"]).await);
    assert!(
        stderr.contains("not signed by the CA given with --tls-ca"),
        "{stderr}"
    );
    logged(&log, "the client refused this server's certificate").await;

    // A v1 client certificate: rustls will not load it, and says so through the CLI...
    let v1 = [
        "--tls-ca",
        "ca.pem",
        "--tls-client-cert",
        "client-v1.pem",
        "--tls-client-key",
        "client.key",
    ];
    let stderr = refused(&predict(dir, &url, &v1).await);
    assert!(
        stderr.contains("--tls-client-cert was refused") && stderr.contains("X.509 v1"),
        "{stderr}"
    );
    // ...while grpcio sends it, and the server's log says what is wrong with it.
    let python = python_venv(
        "INTEGRAD_TEST_PYTHON",
        "python-grpc-client",
        "tests/python/requirements.txt",
        "import grpc",
    );
    let check = r#"
import grpc, sys
ca, cert, key, target = sys.argv[1:]
read = lambda p: open(p, "rb").read()
channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(read(ca), read(key), read(cert)))
check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=lambda b: b, response_deserializer=lambda b: b)
try:
    check(b"", timeout=10)
    print("served")
except grpc.RpcError as e:
    print("refused", e.code())
"#;
    let target = url.trim_start_matches("https://").to_string();
    let grpcio = |cert: &'static str| {
        let (python, target, dir) = (python.clone(), target.clone(), dir.to_path_buf());
        async move {
            let out = tokio::task::spawn_blocking(move || {
                Command::new(python)
                    .args(["-c", check, "ca.pem", cert, "client.key", &target])
                    .current_dir(dir)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                stdout.starts_with("refused"),
                "{stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    grpcio("client-v1.pem").await;
    logged(
        &log,
        "the client's certificate was refused: it is an X.509 v1 certificate",
    )
    .await;
    // A client certificate from another CA (same key, signed by a CA the server does not know).
    grpcio("client-other.pem").await;
    logged(
        &log,
        "it is not signed by the CA given with --tls-client-ca",
    )
    .await;

    // Every WARN line is a refused handshake: the TCP probe left none.
    let all = warnings(&log);
    assert!(
        all.iter().all(|l| l.contains("TLS handshake failed")),
        "{all:?}"
    );
    assert!(!all.iter().any(|l| l.contains("closed before")), "{all:?}");
    // And good clients are still served.
    assert!(predict(dir, &url, &mutual).await.status.success());
}

#[tokio::test]
async fn should_say_when_a_tls_client_meets_a_plaintext_server() {
    let server = BinaryServer::start(&["--models", demo_models().to_str().unwrap()]).await;
    let dir = tempfile::tempdir().unwrap();
    openssl_pki(dir.path());
    let url = format!("https://{}", server.address);
    let stderr = refused(&predict(dir.path(), &url, &["--tls-ca", "ca.pem"]).await);
    assert!(
        stderr.contains("did not answer in TLS") && stderr.contains("use http://"),
        "{stderr}"
    );
}
