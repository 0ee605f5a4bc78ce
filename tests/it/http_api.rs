//! The HTTP/JSON API (`--http-listen`) of the real binary, called as KServe's V1 protocol
//! calls it: the same answers as gRPC for each kind of model and instance, one instance alone
//! and in a batch, server-sent events, JSON errors with the right statuses (the server keeps
//! serving), the bearer token, the body and queue limits, and KServe's explainer arguments.

use crate::common;

use std::io::{BufRead, BufReader};

use base64::Engine as _;
use common::*;
use integrad::proto::integrad::v1 as pb;
use integrad::proto::integrad::v1::explainer_client::ExplainerClient;
use serde_json::{json, Value};

/// A row of the penguins demo (models/penguins/rows.jsonl, the first).
fn penguin() -> Value {
    json!({"bill_length_mm": 49.0, "bill_depth_mm": 19.5, "flipper_length_mm": 210.0,
           "body_mass_g": 3950.0, "island": 1, "sex": 1})
}

/// Agrees with gRPC: the same engine computes both, so only float32 -> JSON -> f64 rounding
/// differs (a float32 printed by serde_json reads back exactly; 1e-6 is headroom).
const SAME: f64 = 1e-6;

/// An instance alone and in a batch go through different (padded, merged) runs: the text
/// issue's agreement bound for that, 1e-5 relative.
const BATCHED: f64 = 1e-5;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// POSTs `body` to `url` (blocking; the server is another process): the status, the
/// Retry-After header and the JSON answer.
fn post(url: &str, body: &Value, token: Option<&str>) -> (u16, Option<String>, Value) {
    let mut request = agent().post(url);
    if let Some(token) = token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    let mut response = request.send(body.to_string().as_str()).unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (response.status().as_u16(), retry_after, json)
}

fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = agent().get(url);
    if let Some(token) = token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    let mut response = request.call().unwrap();
    let json = response.body_mut().read_json().unwrap();
    (response.status().as_u16(), json)
}

/// `integrad serve` with the HTTP API on a free port: the server and the API's base URL.
async fn serve(args: &[&str]) -> (BinaryServer, String) {
    let http = free_address().to_string();
    let mut all = vec!["--http-listen", http.as_str()];
    all.extend_from_slice(args);
    let server = BinaryServer::start(&all).await;
    (server, format!("http://{http}"))
}

fn numbers(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn assert_close(actual: &[f64], expected: &[f64], tolerance: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    let scale = expected.iter().fold(1e-3_f64, |m, v| m.max(v.abs()));
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tolerance * scale,
            "{what}[{i}]: {a} vs {e} (tolerance {tolerance} x {scale})"
        );
    }
}

/// The gRPC Explain's result for `request`.
async fn grpc_explain(url: &str, request: pb::ExplainRequest) -> pb::Explanation {
    let mut client = ExplainerClient::new(connect_channel(url, None).await.unwrap())
        .max_decoding_message_size(64 << 20);
    let mut stream = client.explain(request).await.unwrap().into_inner();
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(pb::explain_event::Event::Result(result)) = event.event {
            return result;
        }
    }
    panic!("no result");
}

/// The feature attributions of `explanation` (an HTTP answer for [`penguin`] with 16
/// Gauss-Legendre steps for "Adelie") and of the same Explain over gRPC.
async fn penguin_features(url: &str, explanation: &Value) -> (Vec<f64>, Vec<f64>) {
    let row = penguin()
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
        .collect();
    let grpc = grpc_explain(
        url,
        pb::ExplainRequest {
            model: "penguins".into(),
            input: Some(pb::Input {
                kind: Some(pb::input::Kind::Features(pb::FeatureRow { values: row })),
            }),
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::Label("Adelie".into())),
            }),
            method: pb::Method::GaussLegendre as i32,
            steps: Some(16),
            ..Default::default()
        },
    )
    .await;
    let http = explanation["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["attribution"].as_f64().unwrap())
        .collect();
    let grpc = grpc
        .features
        .iter()
        .map(|f| f64::from(f.attribution))
        .collect();
    (http, grpc)
}

/// The first attributed tensor's values of an HTTP explanation.
fn http_attributions(explanation: &Value) -> Vec<f64> {
    let name = explanation["attributed"][0].as_str().unwrap();
    numbers(&explanation["tensor_attributions"][name]["values"])
}

fn grpc_attributions(explanation: &pb::Explanation) -> Vec<f64> {
    let tensor = &explanation.tensor_attributions[&explanation.attributed[0]];
    integrad::wire::f32s(&tensor.data)
        .into_iter()
        .map(f64::from)
        .collect()
}

#[tokio::test]
async fn should_answer_kserve_v1_bodies_as_grpc_does() {
    let (server, http) = serve(&["--models", demo_models().to_str().unwrap()]).await;

    let (status, listed) = get(&format!("{http}/v1/models"), None);
    assert_eq!(status, 200, "{listed}");
    let names: Vec<&str> = listed["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["efficientnet-lite0", "penguins", "sentiment"]);
    let (status, model) = get(&format!("{http}/v1/models/sentiment"), None);
    assert_eq!((status, &model["ready"]), (200, &json!(true)), "{model}");
    assert_eq!(get(&format!("{http}/v2/health/ready"), None).0, 200);

    // A tabular row as {feature: value}, with shorthand parameters.
    let url = format!("{http}/v1/models/penguins:explain");
    let body = json!({"instances": [penguin()],
                      "parameters": {"steps": 16, "method": "gauss-legendre", "target": "Adelie"}});
    let (status, _, answer) = post(&url, &body, None);
    assert_eq!(status, 200, "{answer}");
    let explanation = &answer["explanations"][0];
    assert_eq!(explanation["label"], "Adelie");
    assert_eq!(explanation["method"], "METHOD_GAUSS_LEGENDRE");
    let (features, expected) = penguin_features(&server.url, explanation).await;
    assert_close(&features, &expected, SAME, "penguins features");

    // A text as a string; its tokens and words as gRPC gives them.
    let sentence = "I loved this movie";
    let body = json!({"instances": [sentence], "parameters": {"steps": 8}});
    let (status, _, answer) = post(&format!("{http}/v1/models/sentiment:explain"), &body, None);
    assert_eq!(status, 200, "{answer}");
    let explanation = &answer["explanations"][0];
    let grpc = grpc_explain(
        &server.url,
        pb::ExplainRequest {
            model: "sentiment".into(),
            input: Some(pb::Input {
                kind: Some(pb::input::Kind::Text(pb::Text {
                    text: sentence.into(),
                    pair: String::new(),
                })),
            }),
            steps: Some(8),
            ..Default::default()
        },
    )
    .await;
    let words: Vec<&str> = explanation["words"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["word"].as_str().unwrap())
        .collect();
    assert_eq!(words, ["I", "loved", "this", "movie"]);
    assert_eq!(explanation["label"], grpc.label);
    assert_close(
        &http_attributions(explanation),
        &grpc_attributions(&grpc),
        SAME,
        "sentiment embedding attributions",
    );

    // An encoded image in TF Serving's convention, with its overlay asked for.
    let photo = sample("coffee.png");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&photo);
    let body = json!({"instances": [{"image_bytes": {"b64": b64}}],
                      "parameters": {"steps": 8, "render": {"overlay": true}}});
    let (status, _, answer) = post(
        &format!("{http}/v1/models/efficientnet-lite0:explain"),
        &body,
        None,
    );
    assert_eq!(status, 200, "{answer}");
    let explanation = &answer["explanations"][0];
    let grpc = grpc_explain(
        &server.url,
        pb::ExplainRequest {
            model: "efficientnet-lite0".into(),
            input: Some(pb::Input {
                kind: Some(pb::input::Kind::Image(photo)),
            }),
            steps: Some(8),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(explanation["label"], "espresso");
    assert_eq!(
        explanation["tensor_attributions"]["input"]["shape"],
        json!([3, 224, 224])
    );
    assert_close(
        &http_attributions(explanation),
        &grpc_attributions(&grpc),
        SAME,
        "image attributions",
    );
    let overlay = base64::engine::general_purpose::STANDARD
        .decode(explanation["overlay_png"].as_str().unwrap())
        .unwrap();
    assert!(overlay.starts_with(b"\x89PNG"), "the overlay is a PNG");

    // Several instances are one ExplainBatch; each agrees with its Explain alone.
    let texts = [
        "I loved this movie",
        "The room was filthy and the staff rude.",
    ];
    let body = json!({"instances": texts, "parameters": {"steps": 8}});
    let (status, _, batch) = post(&format!("{http}/v1/models/sentiment:explain"), &body, None);
    assert_eq!(status, 200, "{batch}");
    for (i, text) in texts.iter().enumerate() {
        let alone = json!({"instances": [text], "parameters": {"steps": 8}});
        let (_, _, alone) = post(&format!("{http}/v1/models/sentiment:explain"), &alone, None);
        let in_batch = &batch["explanations"][i];
        assert_eq!(in_batch["instance"], i, "in the instances' order");
        assert_close(
            &http_attributions(in_batch),
            &http_attributions(&alone["explanations"][0]),
            BATCHED,
            &format!("text {i} in a batch"),
        );
    }

    // Predict: a nested list for the image model's one input is a tensor.
    let tensor = vec![vec![vec![0.25_f32; 224]; 224]; 3];
    let body = json!({"instances": [tensor], "parameters": {"top_k": 3}});
    let (status, _, answer) = post(
        &format!("{http}/v1/models/efficientnet-lite0:predict"),
        &body,
        None,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["predictions"][0]["top"].as_array().unwrap().len(), 3);
    assert_eq!(
        answer["predictions"][0]["logits"]["shape"],
        json!([1000]),
        "the model's output values"
    );
}

/// `Accept: text/event-stream`: progress events, then the explanation, then `done`.
#[tokio::test]
async fn should_stream_server_sent_events() {
    let (_server, http) = serve(&["--models", demo_models().to_str().unwrap()]).await;
    let body = json!({"instances": ["I loved this movie"], "parameters": {"steps": 32}});
    let mut response = agent()
        .post(&format!("{http}/v1/models/sentiment:explain"))
        .header("accept", "text/event-stream")
        .send(body.to_string().as_str())
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let mut events = Vec::new();
    let mut name = String::new();
    for line in BufReader::new(response.body_mut().as_reader()).lines() {
        let line = line.unwrap();
        if let Some(event) = line.strip_prefix("event: ") {
            name = event.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            events.push((name.clone(), serde_json::from_str::<Value>(data).unwrap()));
        }
    }
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let result = names.iter().position(|n| *n == "explanation").unwrap();
    assert!(
        names[..result].contains(&"progress"),
        "progress before the result: {names:?}"
    );
    assert_eq!(names[result + 1..], ["done"], "{names:?}");
    assert_eq!(events[result].1["words"][1]["word"], "loved");
}

/// Bad bodies get 400 (404 for a model or route that does not exist) with a JSON error that
/// names the part of the body; the server answers the next request.
#[tokio::test]
async fn should_refuse_bad_bodies_naming_the_field_and_keep_serving() {
    let repo = demo_repository(&["penguins"]);
    let (_server, http) = serve(&["--models", repo.path().to_str().unwrap()]).await;
    let explain = format!("{http}/v1/models/penguins:explain");
    let cases = [
        (
            json!({"instances": [penguin()], "parameters": {"stepz": 3}}),
            400,
            "stepz",
        ),
        (
            json!({"instances": [penguin()], "parameters": {"baseline": "purple"}}),
            400,
            "parameters.baseline",
        ),
        (
            json!({"instances": [penguin()], "parameters": {"model": "x"}}),
            400,
            "parameters.model",
        ),
        (json!({"instances": []}), 400, "instances"),
        (json!({"rows": [penguin()]}), 400, "instances"),
        (json!({"instances": [penguin()], "extra": 1}), 400, "extra"),
        (json!({"instances": ["a penguin"]}), 400, "not a text model"),
        (
            json!({"instances": [{"bill_length_mm": "long"}]}),
            400,
            "bill_length_mm",
        ),
        (
            json!({"instances": [{"bill_length_mm": 40.0}]}),
            400,
            "missing",
        ),
        (json!({"instances": [{"b64": "not base64!"}]}), 400, "b64"),
        (
            json!({"instances": [{"numeric": [[1, 2], [3]]}]}),
            400,
            "instances[0].numeric[1]",
        ),
    ];
    for (body, status, names) in cases {
        let (got, _, answer) = post(&explain, &body, None);
        assert_eq!(got, status, "{body} -> {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(message.contains(names), "{body} -> {message}");
        assert_eq!(answer["code"], "INVALID_ARGUMENT", "{answer}");
    }
    let (status, _, answer) = post(
        &format!("{http}/v1/models/penguins:explain"),
        &json!("not an object"),
        None,
    );
    assert_eq!((status, answer["field"].as_str()), (400, Some("body")));
    let (status, _, answer) = post(
        &format!("{http}/v1/models/nope:explain"),
        &json!({"instances": [penguin()]}),
        None,
    );
    assert_eq!((status, answer["code"].as_str()), (404, Some("NOT_FOUND")));
    assert_eq!(get(&format!("{http}/v2/unknown"), None).0, 404);

    let (status, _, answer) = post(&explain, &json!({"instances": [penguin()]}), None);
    assert_eq!(status, 200, "still serving: {answer}");
}

/// The token guards the API but not the probes; a body over --max-message-bytes gets 413; an
/// Explain beyond the queue gets 429 with Retry-After.
#[tokio::test]
async fn should_apply_the_token_and_the_limits() {
    const TOKEN: &str = "http-api-test-token";
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let (_server, http) = serve(&[
        "--models",
        demo_models().to_str().unwrap(),
        "--auth-token-file",
        token_file.to_str().unwrap(),
        "--max-message-bytes",
        "2000000",
        "--max-concurrent-explains",
        "1",
        "--max-queued-explains",
        "0",
    ])
    .await;
    let (status, answer) = get(&format!("{http}/v1/models"), None);
    assert_eq!(
        (status, answer["code"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    assert_eq!(get(&format!("{http}/v1/models"), Some("wrong")).0, 401);
    assert_eq!(get(&format!("{http}/v1/models"), Some(TOKEN)).0, 200);
    assert_eq!(get(&format!("{http}/v2/health/ready"), None).0, 200);

    let huge = json!({"instances": [vec![0.5_f32; 600_000]]});
    let (status, _, answer) = post(
        &format!("{http}/v1/models/efficientnet-lite0:predict"),
        &huge,
        Some(TOKEN),
    );
    assert_eq!(
        (status, answer["code"].as_str()),
        (413, Some("RESOURCE_EXHAUSTED"))
    );

    // One slow Explain holds the only slot (a 64-step image explanation takes seconds here)...
    let photo = base64::engine::general_purpose::STANDARD.encode(sample("coffee.png"));
    let slow = json!({"instances": [{"b64": photo}], "parameters": {"steps": 64}});
    let url = format!("{http}/v1/models/efficientnet-lite0:explain");
    let holder = {
        let (url, slow) = (url.clone(), slow.clone());
        std::thread::spawn(move || post(&url, &slow, Some(TOKEN)).0)
    };
    // ...and a second is refused at once while it runs.
    let mut refused = None;
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (status, retry_after, _) = post(&url, &slow, Some(TOKEN));
        if status == 429 {
            refused = retry_after;
            break;
        }
    }
    let retry_after: u64 = refused
        .expect("a 429 with Retry-After while the slot is taken")
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    assert_eq!(holder.join().unwrap(), 200, "the first Explain completes");
}

/// KServe's controller starts a custom explainer with `--model_name`, `--predictor_host`,
/// `--http_port` and `--workers`: all accepted, the HTTP API on the port, and the
/// InferenceService's name answered by the default model.
#[tokio::test]
async fn should_take_kserve_explainer_arguments() {
    let repo = demo_repository(&["penguins"]);
    let port = free_address().port().to_string();
    let _server = BinaryServer::start(&[
        "--models",
        repo.path().to_str().unwrap(),
        "--model_name",
        "penguin-classifier",
        "--predictor_host",
        "penguin-classifier-predictor.default",
        "--http_port",
        &port,
        "--workers",
        "1",
    ])
    .await;
    let http = format!("http://127.0.0.1:{port}");
    let (status, _, answer) = post(
        &format!("{http}/v1/models/penguin-classifier:predict"),
        &json!({"instances": [penguin()]}),
        None,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["predictions"][0]["model"], "penguins");
    assert_eq!(answer["predictions"][0]["label"], "Chinstrap");
}

/// With --tls-cert the HTTP API is HTTPS with the gRPC port's certificate; plaintext fails.
#[tokio::test]
async fn should_serve_https_with_the_grpc_certificate() {
    let pki = TestPki::new();
    let repo = demo_repository(&["penguins"]);
    let http = free_address().to_string();
    let mut args = vec![
        "--models".to_string(),
        repo.path().to_str().unwrap().to_string(),
        "--http-listen".into(),
        http.clone(),
    ];
    args.extend(pki.server_args(false));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _server = TestServer::start_with(&args, Some(pki.client(&pki.ca, false))).await;

    let ca = ureq::tls::parse_pem(pki.ca.as_bytes())
        .filter_map(|item| match item.unwrap() {
            ureq::tls::PemItem::Certificate(cert) => Some(cert),
            _ => None,
        })
        .collect::<Vec<_>>();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(ca)))
        .build();
    let https: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .build()
        .into();
    let body = json!({"instances": [penguin()]}).to_string();
    let (secure, plaintext) = tokio::task::spawn_blocking(move || {
        let secure = https
            .post(&format!("https://{http}/v1/models/penguins:predict"))
            .send(body.as_str())
            .unwrap()
            .status()
            .as_u16();
        let plaintext = agent()
            .get(&format!("http://{http}/v1/models"))
            .call()
            .map(|r| r.status().as_u16());
        (secure, plaintext)
    })
    .await
    .unwrap();
    assert_eq!(secure, 200);
    assert!(plaintext.is_err(), "plaintext was answered: {plaintext:?}");
}

/// HTTP calls are counted in the RPC metrics by route (never by the path a caller wrote),
/// model and code.
#[tokio::test]
async fn should_count_http_calls_in_the_rpc_metrics() {
    let repo = demo_repository(&["penguins"]);
    let metrics = free_address();
    let (_server, http) = serve(&[
        "--models",
        repo.path().to_str().unwrap(),
        "--metrics-listen",
        &metrics.to_string(),
    ])
    .await;
    let body = json!({"instances": [penguin()]});
    assert_eq!(
        post(&format!("{http}/v1/models/penguins:predict"), &body, None).0,
        200
    );
    assert_eq!(
        post(&format!("{http}/v1/models/made-up:predict"), &body, None).0,
        404
    );
    let samples = parse(&scrape(metrics).1);
    let predict = "POST /v1/models/{name}:predict";
    let count = |model: &str, code: &str| {
        value(
            &samples,
            "integrad_rpc_requests_total",
            &[("rpc", predict), ("model", model), ("code", code)],
        )
    };
    assert_eq!(count("penguins", "OK"), 1.0, "{samples:?}");
    assert_eq!(
        count("", "NOT_FOUND"),
        1.0,
        "an unknown model is no label value"
    );
}

/// KServe's own Python SDK (its V1 REST client, as a KServe user calls an InferenceService)
/// checks liveness and readiness, predicts and explains a penguin, and gets a 404 for a model
/// that does not exist; its explanation is the gRPC one.
#[tokio::test]
async fn should_serve_kserves_own_rest_client() {
    let python = python_venv(
        "INTEGRAD_TEST_KSERVE_PYTHON",
        "python-kserve-client",
        "tests/python/requirements-kserve.txt",
        "import kserve, httpx",
    );
    let repo = demo_repository(&["penguins"]);
    let (server, http) = serve(&["--models", repo.path().to_str().unwrap()]).await;
    let script = root().join("tests/python/kserve_client.py");
    let row = penguin().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(&http)
            .arg(row)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&got["live"], &got["ready"], &got["model_ready"]),
        (&json!(true), &json!(true), &json!(true))
    );
    assert_eq!(got["predict"]["predictions"][0]["label"], "Chinstrap");
    assert_eq!(got["unknown_model"], 404);
    let explanation = &got["explain"]["explanations"][0];
    let (features, expected) = penguin_features(&server.url, explanation).await;
    assert_close(
        &features,
        &expected,
        SAME,
        "penguins features via KServe's SDK",
    );
}
