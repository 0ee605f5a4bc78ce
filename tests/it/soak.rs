//! The soak script's short run (scripts/soak.py, docs/reliability.md "Soak and load"): a
//! minute of mixed Predict, Explain, ExplainBatch, cancelled and deadline-bound calls from
//! several clients against the real server and the demo models, failing on any error the
//! script did not cause itself, on RSS that grows from the run's first half to its second by
//! more than 5 %, and on threads or file descriptors left behind.
//!
//! The Python is `$INTEGRAD_TEST_PYTHON` (with grpcio and grpcio-tools), else the venv of
//! tests/it/python_client.rs.

use crate::common;

use std::process::Command;

use common::*;

#[tokio::test]
async fn should_pass_a_short_soak_of_mixed_traffic() {
    let python = python_venv(
        "INTEGRAD_TEST_PYTHON",
        "python-grpc-client",
        "tests/python/requirements.txt",
        "import grpc, grpc_tools.protoc, google.protobuf",
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(root().join("scripts/soak.py"))
            .args(["--duration", "60", "--clients", "6", "--binary"])
            .arg(binary())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "soak.py failed ({})\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    // The script's verdict, and that it really checked each criterion.
    let figures: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(figures["passed"], true, "{stdout}");
    assert_eq!(figures["checks"].as_object().unwrap().len(), 5, "{stdout}");
    for kind in ["predict-image", "explain-batch", "cancel", "deadline"] {
        assert!(
            figures["calls"][kind]["ok"].as_u64().unwrap() > 0,
            "no {kind} call succeeded: {stdout}"
        );
    }
}
