//! The Helm chart (helm/integrad) checked with the real Helm engine and the Kubernetes
//! schemas: helm/integrad/tests/check_chart.py lints it, renders every ci/*-values.yaml
//! scenario, validates every manifest (and the examples) and asserts the properties the chart
//! promises (gRPC probes, resources, security context, GPU, Triton sidecar, TLS/auth, HPA,
//! the schema refusing bad values).
//!
//! Its Python is `$INTEGRAD_TEST_HELM_PYTHON`, else a venv this test makes with the pinned packages
//! of helm/integrad/tests/requirements.txt (helm-python-sdk bundles Helm v4's Go SDK, so no
//! helm binary is needed). Without them the test fails and says so: it never skips.

use crate::common;

use std::process::Command;

#[test]
fn chart_lints_renders_and_validates_in_every_scenario() {
    let python = common::python_venv(
        "INTEGRAD_TEST_HELM_PYTHON",
        "python-helm-chart",
        "helm/integrad/tests/requirements.txt",
        "import helm_python, kubernetes_validate, yaml",
    );
    let script = common::root().join("helm/integrad/tests/check_chart.py");
    let out = Command::new(&python).arg(&script).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "check_chart.py failed ({})\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {stdout}"));
    assert_eq!(report["ok"], true, "{report}");
    // The script checks the details; here, that nothing was quietly left out.
    let scenarios: Vec<&String> = report["scenarios"].as_object().unwrap().keys().collect();
    assert_eq!(
        scenarios,
        ["autoscaling", "default", "gpu", "sidecar", "tls-auth"],
        "{report}"
    );
    for (name, objects) in report["scenarios"].as_object().unwrap() {
        let objects: Vec<&str> = objects
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        assert!(
            objects.iter().any(|o| o.starts_with("Deployment/"))
                && objects.iter().any(|o| o.starts_with("Service/")),
            "{name} renders a Deployment and a Service: {objects:?}"
        );
    }
    assert_eq!(
        report["examples"],
        serde_json::json!(["triton-sidecar", "kserve-inferenceservice"]),
        "{report}"
    );
    assert!(report["rejected"].as_u64().unwrap() >= 10, "{report}");
    assert!(
        report["helm_sdk"].as_str().unwrap().starts_with("v4."),
        "{report}"
    );
}
