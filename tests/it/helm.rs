//! The Helm chart (helm/integrad) checked with the real Helm engine and the Kubernetes
//! schemas: helm/integrad/tests/check_chart.py lints it, renders every ci/*-values.yaml
//! scenario, validates every manifest (and the examples) and asserts the properties the chart
//! promises (gRPC probes, resources, security context, GPU, Triton sidecar, TLS/auth, HPA,
//! the explain-batch Indexed Job, the schema refusing bad values). The rendered Job of the
//! batch-job scenario comes back in the report and is checked here against its values file.
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
        [
            "autoscaling",
            "batch-job",
            "default",
            "gpu",
            "sidecar",
            "tls-auth"
        ],
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
    check_batch_job(&report);
    assert_eq!(
        report["batch_job_variants"],
        serde_json::json!(["batch-job-mtls-token-file", "batch-job-tls-token-env"]),
        "{report}"
    );
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

/// The Indexed Job of ci/batch-job-values.yaml, as Helm rendered it: `integrad explain-batch
/// --shard $(JOB_COMPLETION_INDEX)/N` against the chart's own Service, the rows on a read-only
/// mount, the results on a writable one.
fn check_batch_job(report: &serde_json::Value) {
    let batch = &report["batch_job"];
    let values = &batch["values"];
    let job = &batch["job"];
    // N as the values file says it (not only as the script read it).
    let file =
        std::fs::read_to_string(common::root().join("helm/integrad/ci/batch-job-values.yaml"))
            .unwrap();
    let shards: Vec<u64> = file
        .lines()
        .filter_map(|l| l.trim().strip_prefix("shards:"))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert_eq!(shards.len(), 1, "one shards: line in batch-job-values.yaml");
    let n = shards[0];
    assert_eq!(values["shards"], n, "{batch}");

    assert_eq!(job["apiVersion"], "batch/v1", "{job}");
    assert_eq!(job["kind"], "Job", "{job}");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed", "{job}");
    assert_eq!(spec["completions"], n, "{job}");
    assert_eq!(spec["parallelism"], values["parallelism"], "{job}");
    assert_eq!(spec["backoffLimit"], values["backoffLimit"], "{job}");
    assert_eq!(
        spec["ttlSecondsAfterFinished"], values["ttlSecondsAfterFinished"],
        "{job}"
    );
    let pod = &spec["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "{job}");
    let c = &containers[0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let arg = |flag: &str| arg_of(&args, flag);
    assert_eq!(args[0], "explain-batch", "{args:?}");
    assert_eq!(
        arg("--shard"),
        format!("$(JOB_COMPLETION_INDEX)/{n}"),
        "{args:?}"
    );
    // $(JOB_COMPLETION_INDEX) expands only for a variable of the container's env.
    let env = c["env"].as_array().unwrap();
    assert!(
        env.iter().any(|e| e["name"] == "JOB_COMPLETION_INDEX"
            && e["valueFrom"]["fieldRef"]["fieldPath"]
                == "metadata.annotations['batch.kubernetes.io/job-completion-index']"),
        "{env:?}"
    );
    // The server is the chart's own Service, on its gRPC port (plaintext in this scenario).
    let service = batch["service"].as_str().unwrap();
    assert_eq!(service, "ci-integrad", "{batch}");
    assert_eq!(
        arg("--server"),
        format!(
            "http://{service}.{}.svc:{}",
            batch["namespace"].as_str().unwrap(),
            batch["grpc_port"]
        ),
        "{args:?}"
    );
    assert_eq!(arg("--model"), values["model"], "{args:?}");
    assert_eq!(arg("--steps"), values["steps"].to_string(), "{args:?}");
    let extra: Vec<&str> = values["extraArgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.ends_with(&extra), "extraArgs last: {args:?}");

    // The volumes, mounted as configured: the rows read-only, the results writable, both on
    // the data claim (results.existingClaim is left to default to it).
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount = |path: &serde_json::Value| {
        let found: Vec<&serde_json::Value> =
            mounts.iter().filter(|m| m["mountPath"] == *path).collect();
        assert_eq!(found.len(), 1, "one mount at {path}: {mounts:?}");
        found[0]
    };
    let (data, results) = (&values["data"], &values["results"]);
    let data_mount = mount(&data["mountPath"]);
    assert_eq!(data_mount["readOnly"], true, "{data_mount}");
    assert_eq!(data_mount["subPath"], data["subPath"], "{data_mount}");
    let results_mount = mount(&results["mountPath"]);
    assert_ne!(results_mount["readOnly"], true, "{results_mount}");
    assert_eq!(
        results_mount["subPath"], results["subPath"],
        "{results_mount}"
    );
    assert_eq!(
        arg("--input"),
        format!(
            "{}/{}",
            data["mountPath"].as_str().unwrap(),
            data["file"].as_str().unwrap()
        ),
        "{args:?}"
    );
    assert_eq!(
        arg("--out"),
        format!(
            "{}/results-$(JOB_COMPLETION_INDEX).jsonl",
            results["mountPath"].as_str().unwrap()
        ),
        "{args:?}"
    );
    let claim = |mount: &serde_json::Value| {
        let volumes = pod["volumes"].as_array().unwrap();
        let found: Vec<&serde_json::Value> = volumes
            .iter()
            .filter(|v| v["name"] == mount["name"])
            .collect();
        assert_eq!(found.len(), 1, "{volumes:?}");
        found[0]["persistentVolumeClaim"]["claimName"].clone()
    };
    assert_eq!(claim(data_mount), data["existingClaim"], "{job}");
    assert_eq!(claim(results_mount), data["existingClaim"], "{job}");

    // The server's hardening, and not a server pod.
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{pod}");
    assert_eq!(pod["restartPolicy"], "Never", "{pod}");
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(
        labels["app.kubernetes.io/component"], "explain-batch",
        "{labels}"
    );
    assert_ne!(labels["app.kubernetes.io/name"], "integrad", "{labels}");
}

/// The value after `flag`, which must be given once.
fn arg_of<'a>(args: &[&'a str], flag: &str) -> &'a str {
    let at: Vec<usize> = (0..args.len()).filter(|&i| args[i] == flag).collect();
    assert_eq!(at.len(), 1, "{flag} once in {args:?}");
    args[at[0] + 1]
}
