//! `--device`, a model's `device`, and the ONNX Runtime thread settings, on a machine without
//! CUDA: the tests run with the CPU-only ONNX Runtime library that integrad fetches (or the
//! one ORT_DYLIB_PATH names, which must also be a CPU build for these expectations).

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use integrad::proto::integrad::v1 as pb;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn should_refuse_cuda_at_start_with_a_cpu_onnxruntime() {
    // The real binary, as an operator starts it: it must stop, say why, and say what to do.
    let listen = format!("127.0.0.1:{}", free_port());
    let out = Command::new(binary())
        .args(["serve", "--device", "cuda", "--listen", &listen])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve --device cuda must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "device cuda:0",
        "no CUDA execution provider",
        "onnxruntime-gpu 1.31.1",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("SERVING"), "{stderr}");

    // The same through the environment, in-process predict, another GPU index.
    let out = Command::new(binary())
        .args(["predict", "samples/coffee.png"])
        .env("INTEGRAD_DEVICE", "cuda:1")
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("device cuda:1") && stderr.contains("no CUDA execution provider"),
        "{stderr}"
    );
}

#[test]
fn should_reject_unknown_devices_with_the_accepted_forms() {
    for (args, env) in [
        (vec!["serve", "--device", "tpu"], None),
        (vec!["serve", "--device", "cuda:x"], None),
        (vec!["predict", "samples/coffee.png"], Some("cuda:-1")),
    ] {
        let mut command = Command::new(binary());
        command.args(&args).current_dir(root());
        if let Some(value) = env {
            command.env("INTEGRAD_DEVICE", value);
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // clap's usage error: exit status 2, before anything loads.
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("--device") && stderr.contains("cpu, auto, cuda or cuda:N"),
            "{args:?}: {stderr}"
        );
    }
}

#[tokio::test]
async fn should_fall_back_loudly_with_device_auto_and_serve() {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = Command::new(binary())
        .args(["serve", "--device", "auto", "--listen", &listen])
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the log while the server runs: a full pipe would block its writes.
    let mut pipe = server.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut pipe, &mut text).unwrap();
        text
    });
    let url = format!("http://{listen}");
    let started = Instant::now();
    let mut client = loop {
        if let Ok(channel) = tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
        {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            let reply = health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await;
            if reply.ok().map(|r| r.into_inner().status)
                == Some(tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
            {
                break pb::explainer_client::ExplainerClient::new(channel);
            }
        }
        if let Some(status) = server.try_wait().unwrap() {
            panic!("server exited with {status} instead of falling back to the CPU");
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "server never became SERVING"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let info = client
        .get_model(pb::GetModelRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.device, "cpu", "auto resolved to the CPU here");
    let reply = client
        .predict(image_request("", sample("coffee.png"), 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.top[0].class_index, 967,
        "espresso, as on --device cpu"
    );

    // Graceful shutdown waits for open connections: close ours first.
    drop(client);
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    // Waiting without blocking the runtime lets it close our connection's task.
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stderr = log.join().unwrap();
    assert!(status.success(), "{status}: {stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains("CUDA is unavailable"))
        .unwrap_or_else(|| panic!("no fallback warning in: {stderr}"));
    assert!(
        warning.contains("no CUDA execution provider"),
        "the warning names the cause: {warning}"
    );
}

#[tokio::test]
async fn should_place_each_model_as_its_config_says() {
    // Three copies of a tiny model: the server's default device, CUDA (which cannot run here:
    // that model fails with the reason, the others serve), and auto (falls back to the CPU).
    let dir = tempfile::tempdir().unwrap();
    for (name, device) in [
        ("plain", None),
        ("gpu", Some("cuda")),
        ("auto", Some("auto")),
    ] {
        let model_dir = dir.path().join(name);
        std::fs::create_dir(&model_dir).unwrap();
        std::fs::write(model_dir.join("model.onnx"), tiny_classifier("Softmax")).unwrap();
        if let Some(device) = device {
            std::fs::write(
                model_dir.join("integrad.toml"),
                format!("device = \"{device}\"\n"),
            )
            .unwrap();
        }
    }
    let server = TestServer::start(&[
        "--models",
        dir.path().to_str().unwrap(),
        "--intra-threads",
        "1",
        "--inter-threads",
        "2",
        "--intra-spin",
        "false",
    ])
    .await;
    let mut client = server.client().await;
    let models = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let by_name = |name: &str| models.iter().find(|m| m.name == name).unwrap().clone();
    let gpu = by_name("gpu");
    assert_eq!(gpu.state, pb::ModelState::Failed as i32);
    assert!(
        gpu.error.contains("device cuda:0") && gpu.error.contains("no CUDA execution provider"),
        "{}",
        gpu.error
    );
    for name in ["plain", "auto"] {
        let info = by_name(name);
        assert_eq!(info.state, pb::ModelState::Ready as i32, "{name}");
        assert_eq!(info.device, "cpu", "{name}");
        // Parallel execution with 2 inter-op threads computes the same numbers:
        // softmax([x0, 2 x1, -x0]) for x = [1, 0.5] is softmax([1, 1, -1]).
        let reply = client
            .predict(tensor_request(name, &[2], &[1.0, 0.5]))
            .await
            .unwrap()
            .into_inner();
        let top = reply.top[0].probability;
        let e = std::f32::consts::E;
        let expected = 1.0 / (2.0 + 1.0 / (e * e));
        // float32 softmax: a few ulps.
        assert!((top - expected).abs() < 1e-6, "{name}: {top} vs {expected}");
    }
    let err = client
        .predict(tensor_request("gpu", &[2], &[1.0, 0.5]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    server.stop().await;
}
