//! The `integrad` binary as users run it: serve + predict over gRPC, predict in-process,
//! SIGTERM, and clear errors for a missing or wrong ONNX Runtime library.

use crate::common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary());
    // The logs the tests read are the defaults, whatever the environment running them says.
    command
        .args(args)
        .current_dir(root())
        .env_remove("RUST_LOG");
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn top1(output: &Output) -> i64 {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    json["top"][0]["class_index"].as_i64().unwrap()
}

#[test]
fn should_predict_in_process() {
    let out = run(
        &["predict", "samples/coffee.png", "--json", "--top-k", "3"],
        &[],
    );
    assert_eq!(top1(&out), 967);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["top"].as_array().unwrap().len(), 3);
    for key in ["class_index", "label", "probability", "logit"] {
        assert!(json["top"][0].get(key).is_some(), "missing {key}");
    }
    // A preprocessed tensor from a .npy file takes the same path without decoding.
    assert_eq!(
        top1(&run(
            &[
                "predict",
                "--tensor",
                "tests/data/coffee_input.npy",
                "--json"
            ],
            &[]
        )),
        967
    );
    // One ONNX file, ad hoc: tensor input, names read from the graph.
    let model = demo_models().join("efficientnet-lite0/model.onnx");
    let out = run(
        &[
            "predict",
            "--model-file",
            model.to_str().unwrap(),
            "--tensor",
            "tests/data/chelsea_input.npy",
            "--json",
        ],
        &[],
    );
    assert_eq!(
        top1(&out),
        282,
        "tiger cat, as ONNX Runtime Python gives for this tensor"
    );
}

#[test]
fn should_refuse_a_model_file_that_is_not_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake.onnx");
    std::fs::write(&fake, "a text file with an .onnx name").unwrap();
    let out = run(
        &[
            "predict",
            "--model-file",
            fake.to_str().unwrap(),
            "--tensor",
            "tests/data/coffee_input.npy",
        ],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not an ONNX model"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn should_refuse_a_bad_out_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("afile");
    std::fs::write(&file, b"not a folder").unwrap();
    for (out, says) in [
        (file.to_str().unwrap(), "is a file"),
        ("/proc/nope", "cannot make the folder"),
    ] {
        // --steps past the server's maximum: had the work started, that would be the error.
        let run = run(
            &[
                "explain",
                "samples/coffee.png",
                "--steps",
                "999999",
                "--out",
                out,
            ],
            &[],
        );
        assert!(!run.status.success());
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            stderr.contains(out) && stderr.contains(says),
            "{out}: {stderr}"
        );
        assert!(
            !stderr.contains("steps"),
            "{out}: checked after the request: {stderr}"
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a folder");
}

#[test]
fn should_refuse_a_models_folder_that_holds_no_models() {
    let empty = tempfile::tempdir().unwrap();
    let model_folder = root().join("models/efficientnet-lite0");
    for (dir, says) in [
        (model_folder.to_str().unwrap(), "one model's folder"),
        (empty.path().to_str().unwrap(), "holds no model folders"),
    ] {
        // serve stops at once instead of running NOT_SERVING forever; in-process commands
        // say the same instead of "no default model; models: ".
        for args in [
            vec!["serve", "--listen", "127.0.0.1:0", "--models", dir],
            vec!["predict", "samples/coffee.png", "--models", dir],
        ] {
            let out = run(&args, &[]);
            assert!(!out.status.success(), "{args:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains(says) && stderr.contains(dir),
                "{args:?}: {stderr}"
            );
        }
    }
}

#[test]
fn should_name_a_tensor_file_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("int32.npy");
    // A well-formed .npy of a dtype integrad does not take.
    let dict = "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }\n";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.extend_from_slice(&[0; 8]);
    std::fs::write(&bad, bytes).unwrap();
    let out = run(&["predict", "--tensor", bad.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("int32.npy"), "{stderr}");
    assert!(stderr.contains("<i4"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn should_explain_a_missing_or_wrong_onnxruntime() {
    for (library, expected) in [
        ("/nonexistent/libonnxruntime.so", "does not exist"),
        ("Cargo.toml", "could not load ONNX Runtime"),
    ] {
        let out = run(
            &["predict", "samples/coffee.png"],
            &[("ORT_DYLIB_PATH", library)],
        );
        assert!(!out.status.success(), "{library}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(expected) && stderr.contains(library),
            "{library}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn should_serve_predict_over_grpc_and_stop_on_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    // A host name, as people write it (it listens on localhost's IPv4 address).
    let mut server = Command::new(binary())
        .args(["serve", "--listen", &format!("localhost:{port}")])
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://{listen}");
    // No flags: the built-in demo model. Wait for health to say SERVING.
    let started = Instant::now();
    loop {
        let status = tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await;
        if let Ok(channel) = status {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let reply = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if reply.ok().map(|r| r.into_inner().status)
                == Some(tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
            {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "server never became SERVING"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            run(
                &["predict", "samples/chelsea.png", "--server", &url, "--json"],
                &[],
            )
        }
    })
    .await
    .unwrap();
    assert!([281, 282, 285].contains(&top1(&out)), "a cat class");
    // HOST:PORT without a scheme is plaintext gRPC, like the URL.
    let plain = tokio::task::spawn_blocking({
        let listen = listen.clone();
        move || {
            run(
                &[
                    "predict",
                    "samples/chelsea.png",
                    "--server",
                    &listen,
                    "--json",
                ],
                &[],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(top1(&plain), top1(&out));
    let refused = run(&["serve", "--listen", "http://127.0.0.1:1"], &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("HOST:PORT"), "{stderr}");

    let pid = server.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "server ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(server.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status}; {stderr}"
    );
    assert!(stderr.contains("SIGTERM"), "{stderr}");
}

#[test]
fn should_fetch_check_and_cache_onnxruntime() {
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    let fetch = || {
        let mut command = Command::new(binary());
        command
            .args([
                "predict",
                "--tensor",
                "tests/data/coffee_input.npy",
                "--json",
            ])
            .current_dir(root());
        command
            .env_remove("ORT_DYLIB_PATH")
            .env("INTEGRAD_CACHE_DIR", cache_dir);
        command.output().unwrap()
    };
    // An empty cache: the first run fetches the pinned wheel with pip and keeps the library.
    assert_eq!(top1(&fetch()), 967);
    let library = cache
        .path()
        .join("onnxruntime-1.31.1/libonnxruntime.so.1.31.1");
    assert!(library.is_file());
    // A cached library that was tampered with is refused, not loaded.
    std::fs::write(&library, b"not the library we checked").unwrap();
    let out = fetch();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sha256"), "{stderr}");
}

#[test]
fn should_explain_a_photo_into_files() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let run = run(
        &[
            "explain",
            "samples/coffee.png",
            "--steps",
            "8",
            "--out",
            dir,
        ],
        &[],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for file in [
        "attributions.npy",
        "mask.png",
        "overlay.png",
        "saturation.png",
        "explanation.json",
    ] {
        assert!(out.path().join(file).is_file(), "{file} written");
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("explanation.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["target_class"], 967);
    assert_eq!(json["steps"], 8);
    assert_eq!(json["method"], "METHOD_TRAPEZOID");
    for key in [
        "score_input",
        "score_baseline",
        "attribution_sum",
        "convergence_delta",
        "evaluations",
        "path",
    ] {
        assert!(json.get(key).is_some(), "explanation.json has {key}");
    }
    let attributions = integrad::npy::read(&out.path().join("attributions.npy")).unwrap();
    assert_eq!(attributions.shape(), &[3, 224, 224]);
    // The file's attributions add up to what the JSON reports (same numbers, two files).
    let integrad::npy::NpyArray::F32 { data, .. } = attributions else {
        panic!("float32")
    };
    let sum: f64 = data.iter().map(|&v| f64::from(v)).sum();
    assert!((sum - json["attribution_sum"].as_f64().unwrap()).abs() < 1e-4);
}

#[test]
fn should_write_gradient_models_from_the_command_line() {
    let out = tempfile::tempdir().unwrap();
    // The demo model (TorchScript exporter) and a model from PyTorch's dynamo exporter.
    for (model, objective) in [
        ("models/efficientnet-lite0/model.onnx", "probability"),
        ("tests/data/autodiff/inception_dynamo.onnx", "logit"),
    ] {
        let grad = out.path().join("grad.onnx");
        let run = run(
            &[
                "autodiff",
                model,
                "--output",
                grad.to_str().unwrap(),
                "--objective",
                objective,
            ],
            &[],
        );
        assert!(
            run.status.success(),
            "{model}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let report = String::from_utf8_lossy(&run.stdout);
        assert!(
            report.contains("Conv"),
            "the report lists the op types used: {report}"
        );
        // The written model follows the contract: grad first, cotangent among the inputs.
        let bytes = std::fs::read(&grad).unwrap();
        let proto = <integrad::proto::onnx::ModelProto as prost::Message>::decode(bytes.as_slice())
            .unwrap();
        let graph = proto.graph.unwrap();
        assert_eq!(graph.output[0].name(), "grad");
        assert!(graph.input.iter().any(|i| i.name() == "cotangent"));
    }
    // A model with an op that has no gradient rule is refused, naming it.
    let sin = out.path().join("sin.onnx");
    std::fs::write(&sin, tiny_classifier("Sin")).unwrap();
    let run = run(
        &[
            "autodiff",
            sin.to_str().unwrap(),
            "--output",
            out.path().join("x.onnx").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("Sin"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// A model with no image settings (any ONNX file without an integrad.toml) explains into
/// files: attributions.npy and explanation.json, and no pictures it has nothing to draw on.
#[test]
fn should_explain_a_model_without_image_settings_into_files() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.onnx");
    std::fs::write(&model, tiny_classifier("Softmax")).unwrap();
    let x = dir.path().join("x.npy");
    integrad::npy::write_f32(&x, &[2], &[0.5, 1.5]).unwrap();
    let out = dir.path().join("out");
    let run = run(
        &[
            "explain",
            "--model-file",
            model.to_str().unwrap(),
            "--tensor",
            x.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.join("attributions.npy").exists());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("explanation.json")).unwrap())
            .unwrap();
    assert_eq!(json["attributions_shape"], serde_json::json!([2]));
    assert!(!out.join("mask.png").exists() && !out.join("overlay.png").exists());
}

/// In-process commands build gradient models only where they explain: none for predict, the
/// explained model's alone for explain (each demo model's took about a second or more).
#[test]
fn should_build_gradient_models_only_for_the_model_explained() {
    let info = [("RUST_LOG", "info")];
    let predicted = run(&["predict", "samples/coffee.png"], &info);
    assert_eq!(
        top1(&run(&["predict", "samples/coffee.png", "--json"], &[])),
        top1_of(&predicted)
    );
    let log = String::from_utf8_lossy(&predicted.stderr);
    assert!(!log.contains("gradient models built"), "{log}");

    let dir = tempfile::tempdir().unwrap();
    let explained = run(
        &[
            "explain",
            "--model",
            "penguins",
            "--features",
            "bill_length_mm=39.1,bill_depth_mm=18.7,flipper_length_mm=181,body_mass_g=3750,island=2,sex=1",
            "--out",
            dir.path().to_str().unwrap(),
        ],
        &info,
    );
    assert!(
        explained.status.success(),
        "{}",
        String::from_utf8_lossy(&explained.stderr)
    );
    let log = String::from_utf8_lossy(&explained.stderr);
    let built: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("gradient models built"))
        .collect();
    assert_eq!(built.len(), 1, "{log}");
    assert!(built[0].contains("penguins"), "{log}");
}

/// The class index a plain (not --json) predict printed first.
fn top1_of(output: &Output) -> i64 {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("1."))
        .unwrap();
    let after = line.split("class").nth(1).unwrap();
    after.split_whitespace().next().unwrap().parse().unwrap()
}

/// A user's mistake prints the error and its causes, with no backtrace even under
/// RUST_BACKTRACE=1, and logs written to a pipe carry no colour codes.
#[test]
fn should_print_user_errors_plainly() {
    let run = run(
        &[
            "explain",
            "samples/coffee.png",
            "--target",
            "no-such-label",
            "--out",
            "/proc/nope",
        ],
        &[("RUST_BACKTRACE", "1")],
    );
    assert!(!run.status.success());
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("Error: "), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
    let logged = self::run(&["predict", "samples/coffee.png"], &[("RUST_LOG", "info")]);
    let log = String::from_utf8_lossy(&logged.stderr);
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a pipe: {log:?}");
}

/// An in-process command's answer is its output: the server's INFO lines (models loaded, the
/// device sessions run on) are not shown unless RUST_LOG asks for them.
#[test]
fn should_keep_in_process_commands_quiet() {
    let quiet = run(&["predict", "samples/coffee.png"], &[]);
    assert!(quiet.status.success());
    let log = String::from_utf8_lossy(&quiet.stderr);
    assert!(log.trim().is_empty(), "{log}");
    let stdout = String::from_utf8_lossy(&quiet.stdout);
    assert!(stdout.contains("espresso"), "{stdout}");
}

/// The explanation.json of an explain run into `out`, and the run's stderr.
fn explain_json(args: &[&str], out: &std::path::Path) -> (serde_json::Value, String) {
    let mut all = args.to_vec();
    all.extend(["--out", out.to_str().unwrap()]);
    let run = run(&all, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{stderr}");
    let json =
        serde_json::from_str(&std::fs::read_to_string(out.join("explanation.json")).unwrap())
            .unwrap();
    (json, stderr)
}

/// `converged` is the relative delta (recomputed here from the reported scores) judged against
/// the tolerance, and the CLI warns exactly when it is false, saying what to change.
#[test]
fn should_report_and_warn_when_attributions_do_not_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let check = |json: &serde_json::Value, tolerance: f64| {
        let f = |key: &str| json[key].as_f64().unwrap();
        let relative =
            f("convergence_delta").abs() / (f("score_input") - f("score_baseline")).abs();
        // f32 fields: agreement to f32 rounding of the three numbers the ratio is made of.
        assert!(
            (f("relative_delta") - relative).abs() <= 1e-5 * relative.max(1e-3),
            "{json}"
        );
        assert_eq!(
            f("convergence_tolerance"),
            f64::from(tolerance as f32),
            "an f32 field"
        );
        assert_eq!(
            json["converged"],
            relative <= f64::from(tolerance as f32),
            "{json}"
        );
    };

    // The cat photo at 8 steps: a saturated probability path, far from adding up (48.6 % at
    // the default 50 steps when this was reported).
    let (json, stderr) = explain_json(
        &["explain", "samples/chelsea.png", "--steps", "8"],
        &dir.path().join("a"),
    );
    check(&json, 0.05);
    assert_eq!(json["converged"], false, "{json}");
    assert!(stderr.contains("warning: class"), "{stderr}");
    assert!(stderr.contains("8 steps are too few"), "{stderr}");
    assert!(stderr.contains("--tolerance 0.05"), "{stderr}");

    // A tolerance it cannot reach within the step budget is reported as such.
    let (json, stderr) = explain_json(
        &[
            "explain",
            "samples/chelsea.png",
            "--steps",
            "8",
            "--tolerance",
            "0.001",
            "--max-steps",
            "16",
        ],
        &dir.path().join("b"),
    );
    check(&json, 0.001);
    assert_eq!(json["steps"], 16, "refinement went to the budget");
    assert!(
        stderr.contains("--tolerance 0.001 (0.10 %) was not reached"),
        "{stderr}"
    );
    assert!(stderr.contains("stopped at 16 steps"), "{stderr}");

    // A two-feature softmax is smooth: 50 trapezoid steps add up well within 5 %, silently.
    let model = dir.path().join("tiny.onnx");
    std::fs::write(&model, tiny_classifier("Softmax")).unwrap();
    let x = dir.path().join("x.npy");
    integrad::npy::write_f32(&x, &[2], &[0.5, 1.5]).unwrap();
    let (json, stderr) = explain_json(
        &[
            "explain",
            "--model-file",
            model.to_str().unwrap(),
            "--tensor",
            x.to_str().unwrap(),
        ],
        &dir.path().join("c"),
    );
    check(&json, 0.05);
    assert_eq!(json["converged"], true, "{json}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// --tolerance needs the trapezoid rule; the CLI says so in its own words, before any work.
#[test]
fn should_name_the_cli_method_when_tolerance_needs_trapezoid() {
    let run = run(
        &[
            "explain",
            "samples/chelsea.png",
            "--method",
            "midpoint",
            "--tolerance",
            "0.05",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("--method trapezoid"), "{stderr}");
    assert!(!stderr.contains("METHOD_"), "{stderr}");
}
