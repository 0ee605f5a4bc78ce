//! A client in another language: tests/python/stream_client.py (grpcio, stubs generated from
//! our proto inside the test) streams an Explain from the real `integrad serve` binary.
//!
//! The Python is `$INTEGRAD_TEST_PYTHON`, else a venv this test makes with the packages in
//! tests/python/requirements.txt. Without them the test fails and says so: it never skips.

use crate::common;

use std::process::Command;

use common::*;

#[tokio::test]
async fn should_stream_explain_to_a_python_grpcio_client() {
    let python = python_venv(
        "INTEGRAD_TEST_PYTHON",
        "python-grpc-client",
        "tests/python/requirements.txt",
        "import grpc, grpc_tools.protoc, google.protobuf",
    );
    let server = BinaryServer::start(&["--models", demo_models().to_str().unwrap()]).await;
    let url = server.url.clone();

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
