//! A client in another language: tests/python/stream_client.py (grpcio, stubs generated from
//! our proto inside the test) streams an Explain from the real `integrad serve` binary.
//!
//! The Python is `$INTEGRAD_TEST_PYTHON`, else a venv this test makes with the packages in
//! tests/python/requirements.txt. Without them the test fails and says so: it never skips.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The server process, killed when the test ends however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `$INTEGRAD_TEST_PYTHON` if set, else a venv made once with tests/python/requirements.txt.
fn python() -> String {
    common::python_with(
        "python-grpc-client",
        "tests/python/requirements.txt",
        "grpc, grpc_tools.protoc, google.protobuf",
    )
}

async fn serving(url: &str) -> bool {
    let Ok(channel) = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
    else {
        return false;
    };
    let request = HealthCheckRequest {
        service: String::new(),
    };
    match HealthClient::new(channel).check(request).await {
        Ok(r) => r.into_inner().status == ServingStatus::Serving as i32,
        Err(_) => false,
    }
}

#[tokio::test]
async fn should_stream_explain_to_a_python_grpcio_client() {
    let python = python();

    // A free port: bind port 0, read it back, release it for the server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let mut server = Server(
        Command::new(binary())
            .args(["serve", "--listen", &listen, "--models"])
            .arg(demo_models())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    // Warm start is well under a second; a cold first run also fetches ONNX Runtime.
    let mut up = false;
    for _ in 0..1200 {
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("integrad serve exited before SERVING: {status}");
        }
        if serving(&url).await {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "integrad serve at {url} never reported SERVING");

    let script = root().join("tests/python/stream_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(&url)
            .arg(root().join("samples/coffee.png"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "stream_client.py failed ({})\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {stdout}"));
    // The script checks the details; here the essentials again, from the Rust side.
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["target_class"], 967, "{summary}");
    assert_eq!(summary["label"], "espresso", "{summary}");
    assert_eq!(
        summary["shape"],
        serde_json::json!([3, 224, 224]),
        "{summary}"
    );
    // 32 steps = 33 alphas in batches of 8: 5 gradient runs, one progress event each.
    assert_eq!(summary["progress"], 5, "{summary}");
    assert_eq!(
        summary["steps_done"],
        serde_json::json!([8, 16, 24, 32, 33])
    );
    assert!(
        summary["relative_delta"].as_f64().unwrap() < 0.10,
        "{summary}"
    );
    drop(server);
}
