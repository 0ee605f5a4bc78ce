//! TLS, mutual TLS and bearer-token auth against a real server, with certificates made in
//! the test; the CLI client against a secured server.

use crate::common;

use common::*;
use integrad::cli::BearerToken;
use integrad::proto::integrad::v1 as pb;
use integrad::proto::integrad::v1::explainer_client::ExplainerClient;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Code;

const TOKEN: &str = "s3cret-token.for_tests";

fn token_file(dir: &std::path::Path, token: &str) -> String {
    let path = dir.join("token");
    // A trailing newline, as `echo` or a Kubernetes secret leaves it: it is not part of the token.
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path.to_str().unwrap().to_string()
}

async fn list_models_with(
    server: &TestServer,
    token: Option<&str>,
) -> Result<pb::ListModelsResponse, tonic::Status> {
    let channel = server.channel().await.unwrap();
    let mut client = ExplainerClient::with_interceptor(channel, BearerToken::new(token).unwrap());
    client
        .list_models(pb::ListModelsRequest {})
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn should_require_the_bearer_token_on_every_service_but_health() {
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(dir.path(), TOKEN);
    let server = TestServer::start(&[
        "--models",
        demo_models().to_str().unwrap(),
        "--auth-token-file",
        &file,
    ])
    .await;
    // TestServer::start waited for SERVING through health without a token: probes stay open.
    assert_eq!(
        server.health().await,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    let missing = list_models_with(&server, None).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    assert!(
        missing.message().contains("Bearer"),
        "{}",
        missing.message()
    );
    for wrong in [
        "s3cret-token.for_test",   // a prefix of the right one
        "s3cret-token.for_testsX", // the right one and more
        "S3CRET-TOKEN.FOR_TESTS",
    ] {
        let refused = list_models_with(&server, Some(wrong)).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Code::Unauthenticated,
            "{wrong}: {refused:?}"
        );
    }
    let listed = list_models_with(&server, Some(TOKEN)).await.unwrap();
    assert_eq!(names(&listed), DEMO_MODELS);

    // The layer guards the whole router, so a service added later (here: the Open Inference
    // Protocol's path, served or not) is refused without a token before any routing.
    let mut grpc = tonic::client::Grpc::new(server.channel().await.unwrap());
    grpc.ready().await.unwrap();
    let unrouted = grpc
        .unary::<(), (), _>(
            tonic::Request::new(()),
            PathAndQuery::from_static("/inference.GRPCInferenceService/ServerLive"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(unrouted.code(), Code::Unauthenticated, "{unrouted:?}");
    server.stop().await;
}

#[tokio::test]
async fn should_serve_tls_and_refuse_clients_outside_mutual_tls() {
    let pki = TestPki::new();
    let mut args = vec![
        "--models".to_string(),
        demo_models().to_str().unwrap().to_string(),
    ];
    args.extend(pki.server_args(true));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let good = pki.client(&pki.ca, true);
    // Waiting for SERVING is the first successful mutual-TLS call.
    let server = TestServer::start_with(&args, Some(good)).await;
    let listed = server
        .client()
        .await
        .list_models(pb::ListModelsRequest {})
        .await;
    assert_eq!(names(&listed.unwrap().into_inner()), DEMO_MODELS);

    // No client certificate: the server refuses the handshake, so no call gets through.
    let anonymous = call_list_models(&server.url, pki.client(&pki.ca, false)).await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate was served"
    );

    // Trusting another CA: the client rejects the server's certificate.
    let wrong_ca = call_list_models(&server.url, pki.client(&pki.other_ca, true)).await;
    let reason = wrong_ca.expect_err("a client trusting another CA was served");
    assert!(reason.contains("certificate"), "{reason}");

    // Plaintext to a TLS port fails too.
    let plain = call_list_models(&server.url.replace("https", "http"), None).await;
    assert!(plain.is_err());

    // And the server still serves good clients after all that.
    let listed = server
        .client()
        .await
        .list_models(pb::ListModelsRequest {})
        .await;
    assert!(listed.is_ok(), "{listed:?}");
    server.stop().await;
}

/// ListModels over a fresh connection; the error (connection or call) as text.
async fn call_list_models(
    url: &str,
    tls: impl Into<Option<tonic::transport::ClientTlsConfig>>,
) -> Result<(), String> {
    let channel = connect_channel(url, tls.into())
        .await
        .map_err(|e| error_chain(&e))?;
    ExplainerClient::new(channel)
        .list_models(pb::ListModelsRequest {})
        .await
        .map(|_| ())
        .map_err(|s| format!("{s:?}"))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text = format!("{text}: {e}");
        source = e.source();
    }
    text
}

#[tokio::test]
async fn should_let_the_cli_call_a_server_with_tls_mutual_tls_and_a_token() {
    let pki = TestPki::new();
    let file = token_file(pki.dir.path(), TOKEN);
    let mut args = vec![
        "--models".to_string(),
        demo_models().to_str().unwrap().to_string(),
        "--auth-token-file".into(),
        file.clone(),
    ];
    args.extend(pki.server_args(true));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = TestServer::start_with(&args, Some(pki.client(&pki.ca, true))).await;
    let (ca, cert, key) = (
        pki.file("ca.pem", &pki.ca),
        pki.file("client.pem", &pki.client_cert),
        pki.file("client.key", &pki.client_key),
    );
    let url = server.url.clone();
    let predict = move |token: Option<(&'static str, String)>| {
        let (ca, cert, key, url) = (ca.clone(), cert.clone(), key.clone(), url.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let mut command = std::process::Command::new(binary());
                command
                    .args(["predict", "--json", "--top-k", "1", "--server", &url])
                    .args(["--tls-ca", &ca, "--tls-client-cert", &cert])
                    .args(["--tls-client-key", &key])
                    .arg(root().join("samples/coffee.png"))
                    .env_remove("INTEGRAD_AUTH_TOKEN")
                    .env_remove("INTEGRAD_AUTH_TOKEN_FILE");
                match token {
                    Some(("file", path)) => {
                        command.args(["--auth-token-file", &path]);
                    }
                    Some((_, value)) => {
                        command.env("INTEGRAD_AUTH_TOKEN", value);
                    }
                    None => {}
                }
                command.output().unwrap()
            })
            .await
            .unwrap()
        }
    };

    let by_file = predict(Some(("file", file.clone()))).await;
    assert!(
        by_file.status.success(),
        "{}",
        String::from_utf8_lossy(&by_file.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&by_file.stdout).unwrap();
    // The demo model calls coffee.png an espresso (class 967), as README shows.
    assert_eq!(json["top"][0]["class_index"], 967, "{json}");

    let by_env = predict(Some(("env", TOKEN.to_string()))).await;
    assert!(
        by_env.status.success(),
        "{}",
        String::from_utf8_lossy(&by_env.stderr)
    );

    let without = predict(None).await;
    assert!(!without.status.success());
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    server.stop().await;
}
