//! A model whose worker thread panics, in a running server: its callers get UNAVAILABLE with
//! the reason, at once and not after a hang; ListModels, GetModel and the HTTP API list it
//! FAILED with the reason; health says NOT_SERVING for it and SERVING for the server and the
//! other model, which keeps serving. The panic is injected through the worker's test-only
//! hook ([`crate::model::panic_next_run`]): no input can make a worker panic.

use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::config::{Cli, Command};
use crate::proto::integrad::v1 as pb;
use crate::proto::integrad::v1::explainer_client::ExplainerClient;

fn penguin() -> pb::PredictRequest {
    let row = [
        ("bill_length_mm", 49.0),
        ("bill_depth_mm", 19.5),
        ("flipper_length_mm", 210.0),
        ("body_mass_g", 3950.0),
        ("island", 1.0),
        ("sex", 1.0),
    ];
    pb::PredictRequest {
        model: "penguins".into(),
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Features(pb::FeatureRow {
                values: row.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            })),
        }),
        ..Default::default()
    }
}

fn review() -> pb::PredictRequest {
    pb::PredictRequest {
        model: "sentiment".into(),
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Text(pb::Text {
                text: "a gripping, beautifully shot film".into(),
                pair: String::new(),
            })),
        }),
        ..Default::default()
    }
}

async fn health(channel: &tonic::transport::Channel, service: &str) -> ServingStatus {
    let answer = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap();
    ServingStatus::try_from(answer.into_inner().status).unwrap()
}

/// GET `url`: (status, JSON body).
async fn get(url: String) -> (u16, serde_json::Value) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent.get(&url).call().unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_json().unwrap())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn should_fail_a_model_whose_worker_panics_and_serve_the_others() {
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let repo = tempfile::tempdir().unwrap();
    for name in ["penguins", "sentiment"] {
        std::os::unix::fs::symlink(models.join(name), repo.path().join(name)).unwrap();
    }
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http_address = http.local_addr().unwrap();
    drop(http);
    let argv = [
        "integrad",
        "serve",
        "--models",
        repo.path().to_str().unwrap(),
        "--http-listen",
        &http_address.to_string(),
    ];
    let Command::Serve(args) = Cli::parse_with_config(argv).unwrap().command else {
        unreachable!()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(super::serve(args, listener, async move {
        let _ = stopped.await;
    }));
    let channel = loop {
        if let Ok(channel) = tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
        {
            if health(&channel, "").await == ServingStatus::Serving {
                break channel;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut client = ExplainerClient::new(channel.clone());
    assert_eq!(health(&channel, "penguins").await, ServingStatus::Serving);
    client.predict(penguin()).await.expect("penguins serves");

    crate::model::panic_next_run("penguins");
    // The caller of the run that panicked, then a later one: each told why, none left hanging
    // (10 s: far above the milliseconds either takes, far below a hang's forever).
    for call in ["the run that panicked", "a later call"] {
        let refused = tokio::time::timeout(Duration::from_secs(10), client.predict(penguin()))
            .await
            .unwrap_or_else(|_| panic!("{call} hangs"))
            .expect_err(call);
        assert_eq!(
            refused.code(),
            tonic::Code::Unavailable,
            "{call}: {refused:?}"
        );
        assert!(
            refused.message().contains("panicked")
                && refused.message().contains("injected by a test"),
            "{call} says why: {refused:?}"
        );
    }
    let explained = client
        .explain(pb::ExplainRequest {
            model: "penguins".into(),
            input: penguin().input,
            ..Default::default()
        })
        .await
        .expect_err("a failed model explains nothing");
    assert_eq!(explained.code(), tonic::Code::Unavailable, "{explained:?}");

    let listed = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let state = |name: &str| {
        let model = listed.models.iter().find(|m| m.name == name).unwrap();
        (model.state(), model.error.clone())
    };
    let (penguins, reason) = state("penguins");
    assert_eq!(penguins, pb::ModelState::Failed);
    assert!(reason.contains("panicked"), "ListModels says why: {reason}");
    assert_eq!(state("sentiment").0, pb::ModelState::Ready);
    let described = client
        .get_model(pb::GetModelRequest {
            model: "penguins".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.state(), pb::ModelState::Failed);

    // Health turns as soon as the server's watcher hears of the failure: within moments.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while health(&channel, "penguins").await != ServingStatus::NotServing {
        assert!(tokio::time::Instant::now() < deadline, "penguins health");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(health(&channel, "sentiment").await, ServingStatus::Serving);
    assert_eq!(health(&channel, "").await, ServingStatus::Serving);

    let (status, listed) = get(format!("http://{http_address}/v1/models")).await;
    assert_eq!(status, 200);
    let failed = listed["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "penguins")
        .unwrap()
        .to_string();
    assert!(failed.contains("panicked"), "GET /v1/models: {failed}");
    let (status, _) = get(format!("http://{http_address}/v1/models/penguins")).await;
    assert_eq!(status, 503, "GET /v1/models/penguins");
    let (status, _) = get(format!("http://{http_address}/v2/health/ready")).await;
    assert_eq!(status, 200, "the server still serves a model");

    let answer = client.predict(review()).await.expect("sentiment serves");
    assert!(!answer.into_inner().top.is_empty());

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
