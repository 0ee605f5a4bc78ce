//! The health-only port (`--health-listen`) of the real binary: plaintext health without a
//! certificate or token beside a mutual-TLS, token-guarded main port; nothing but health on
//! it; the same status as the main port (NOT_SERVING when no model loads, NOT_SERVING while
//! draining); closed with the server; a port that cannot be bound stops the start.

use crate::common;

use common::*;
use integrad::cli::BearerToken;
use integrad::proto::integrad::v1 as pb;
use integrad::proto::integrad::v1::explainer_client::ExplainerClient;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const TOKEN: &str = "health-port-test-token";

/// `integrad serve` with its main port on a free address and `--health-listen` on another;
/// returns the process and the two addresses. Waits for nothing.
fn spawn(args: &[&str]) -> (Process, String, String) {
    let (main, health) = (free_address().to_string(), free_address().to_string());
    let mut command = std::process::Command::new(binary());
    command
        .args(["serve", "--listen", &main, "--health-listen", &health])
        .args(args)
        .env_remove("INTEGRAD_CONFIG")
        .env_remove("INTEGRAD_AUTH_TOKEN");
    (Process::spawn(&mut command), main, health)
}

/// Health of `service` at the plaintext `url`, from a client with no certificate and no token.
async fn check(url: &str, service: &str) -> Result<ServingStatus, tonic::Status> {
    let channel = connect_channel(url, None)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap())
}

/// A unary call to `path` with an empty message, over a plaintext connection to `url`.
async fn call_path(url: &str, path: &'static str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(connect_channel(url, None).await.unwrap());
    grpc.ready().await.unwrap();
    grpc.unary::<(), (), _>(
        tonic::Request::new(()),
        PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .expect_err("answered on the health port")
}

#[tokio::test]
async fn should_serve_plaintext_health_alone_beside_a_mutual_tls_port_with_a_token() {
    let pki = TestPki::new();
    let token = pki.dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let mut args = vec![
        "--models".to_string(),
        demo_models().to_str().unwrap().to_string(),
        "--auth-token-file".into(),
        token.to_str().unwrap().to_string(),
    ];
    args.extend(pki.server_args(true));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_server, main, health) = spawn(&args);
    let health = format!("http://{health}");
    // The first SERVING answer is a plaintext call with no certificate and no token.
    wait_serving(&health, None).await;
    assert_eq!(
        check(&health, "integrad.v1.Explainer").await.unwrap(),
        ServingStatus::Serving
    );

    // The main port agrees, through mutual TLS (health needs no token there either).
    let secure = format!("https://{main}");
    let good_tls = pki.client(&pki.ca, true);
    assert_eq!(
        common::health(&secure, Some(good_tls.clone()))
            .await
            .unwrap(),
        ServingStatus::Serving
    );

    // Nothing else is routed on the health port: not the Explainer, whose Predict would
    // otherwise run here without TLS or a token...
    let predict = ExplainerClient::new(connect_channel(&health, None).await.unwrap())
        .predict(image_request("", sample("coffee.png"), 1))
        .await
        .unwrap_err();
    assert_eq!(predict.code(), Code::Unimplemented, "{predict:?}");
    // ...nor the Open Inference Protocol, nor reflection (which would list the services).
    for path in [
        "/inference.GRPCInferenceService/ServerLive",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ] {
        let refused = call_path(&health, path).await;
        assert_eq!(refused.code(), Code::Unimplemented, "{path}: {refused:?}");
    }

    // The main port still refuses plaintext, and still wants the token over mutual TLS.
    let plain = match connect_channel(&format!("http://{main}"), None).await {
        Ok(channel) => ExplainerClient::new(channel)
            .list_models(pb::ListModelsRequest {})
            .await
            .err()
            .map(|s| format!("{s:?}")),
        Err(e) => Some(e.to_string()),
    };
    assert!(plain.is_some(), "the TLS port answered a plaintext call");
    let channel = connect_channel(&secure, Some(good_tls)).await.unwrap();
    let without = ExplainerClient::new(channel.clone())
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap_err();
    assert_eq!(without.code(), Code::Unauthenticated, "{without:?}");
    let listed = ExplainerClient::with_interceptor(channel, BearerToken::new(Some(TOKEN)).unwrap())
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap();
    assert_eq!(names(&listed.into_inner()), DEMO_MODELS);
}

#[tokio::test]
async fn should_report_not_serving_on_the_health_port_when_no_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("broken")).unwrap();
    std::fs::write(
        dir.path().join("broken/model.onnx"),
        b"this is a text file, not an ONNX model",
    )
    .unwrap();
    let (_server, main, health) = spawn(&["--models", dir.path().to_str().unwrap()]);
    let (main, health) = (format!("http://{main}"), format!("http://{health}"));
    // Loading is over once ListModels answers (the repository is in place, the failure
    // recorded); health has then settled for good.
    let mut listed = None;
    for _ in 0..1200 {
        if let Ok(channel) = connect_channel(&main, None).await {
            if let Ok(r) = ExplainerClient::new(channel)
                .list_models(pb::ListModelsRequest {})
                .await
            {
                listed = Some(r.into_inner());
                break;
            }
        }
        // A cold first run fetches ONNX Runtime with pip: a generous bound.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let listed = listed.expect("the server never answered ListModels");
    assert_eq!(listed.models.len(), 1);
    assert_eq!(listed.models[0].state, pb::ModelState::Failed as i32);

    for service in ["", "integrad.v1.Explainer"] {
        assert_eq!(
            check(&health, service).await.unwrap(),
            ServingStatus::NotServing,
            "health port, service {service:?}"
        );
        assert_eq!(
            check(&main, service).await.unwrap(),
            ServingStatus::NotServing,
            "main port, service {service:?}"
        );
    }
}

#[tokio::test]
async fn should_say_not_serving_on_the_health_port_while_draining_then_close_it() {
    // A grace period long enough for the test to watch the drain, short enough not to wait
    // long for the cancellation that ends it.
    let (mut server, main, health) = spawn(&[
        "--models",
        demo_models().to_str().unwrap(),
        "--shutdown-grace",
        "10",
    ]);
    let (main, health) = (format!("http://{main}"), format!("http://{health}"));
    wait_serving(&health, None).await;
    // The most steps allowed: minutes of work, so the drain lasts the whole grace period.
    let mut stream = explain_in_flight(&main, 4096).await;
    sigterm(&server);
    // The port stays open through the drain and says NOT_SERVING there.
    let mut status = check(&health, "").await;
    while matches!(status, Ok(ServingStatus::Serving)) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        status = check(&health, "").await;
    }
    assert!(
        matches!(status, Ok(ServingStatus::NotServing)),
        "{status:?}"
    );
    // The grace period ends the Explain, and the process exits...
    while let Ok(Some(_)) = stream.message().await {}
    let exit = exit_status(&mut server).await;
    assert!(exit.success(), "{exit}");
    // ...with the health port closed.
    let closed = check(&health, "").await.unwrap_err();
    assert_eq!(closed.code(), Code::Unavailable, "{closed:?}");
}

#[tokio::test]
async fn should_refuse_to_start_when_the_health_port_cannot_be_bound() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let flag = address.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary())
            .args(["serve", "--listen", &free_address().to_string()])
            .args(["--health-listen", &flag])
            .args(["--models", demo_models().to_str().unwrap()])
            .env_remove("INTEGRAD_CONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    drop(taken);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--health-listen") && stderr.contains(&address),
        "{stderr}"
    );
}
