//! Evaluate (faithfulness metrics) against independent references: PAIR's own
//! `compute_pic_metric` for SIC and AIC, and RISE's deletion and insertion written in numpy
//! (tests/data/metrics/, made by scripts/make_metric_fixtures.py with ONNX Runtime's Python
//! API on the same model); a property that holds of any sound metric; bad input; and
//! `integrad evaluate` end to end.

use crate::common;

use common::*;
use integrad::proto::integrad::v1 as pb;

fn npy_tensor(name: &str) -> pb::Tensor {
    let (shape, data) = fixture(name);
    tensor(&shape, &data)
}

fn references() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("tests/data/metrics/metrics.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The map file of a fixture case.
fn map_file(map: &str) -> String {
    match map {
        "chelsea_ig" => "metrics/chelsea_ig.npy".into(),
        "coffee_ig" => "ig/coffee_gl50_probability_black.npy".into(),
        "chelsea_random" => "metrics/chelsea_random_saliency.npy".into(),
        other => panic!("unknown map {other}"),
    }
}

/// An Evaluate of a fixture case: its photo's model input as a tensor (so both sides see the
/// same pixels: the fixture's 8-bit crop normalises to exactly this tensor), its map, its
/// target and its random mask.
fn request(case: &serde_json::Value, metrics: &[pb::Metric]) -> pb::EvaluateRequest {
    let photo = case["photo"].as_str().unwrap();
    let min_pred_value = case["sic"]["min_pred_value"].as_f64().unwrap_or(0.8) as f32;
    pb::EvaluateRequest {
        model: "efficientnet-lite0".into(),
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Tensor(npy_tensor(&format!(
                "{photo}_input.npy"
            )))),
        }),
        saliency: Some(npy_tensor(&map_file(case["map"].as_str().unwrap()))),
        target: Some(pb::Target {
            kind: Some(pb::target::Kind::ClassIndex(
                case["target"].as_i64().unwrap(),
            )),
        }),
        metrics: metrics.iter().map(|&m| m as i32).collect(),
        pic: Some(pb::PicOptions {
            random_mask: Some(npy_tensor(&format!("metrics/{photo}_random_mask.npy"))),
            // The cat's SIC reference was made with 0 (its top-1 is only p = 0.38); its AIC
            // with PAIR's 0.8, which an AIC score of 1 passes either way.
            min_pred_value: Some(min_pred_value),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn floats(values: &serde_json::Value) -> Vec<f64> {
    values
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[tokio::test]
async fn sic_and_aic_match_pairs_compute_pic_metric() {
    let server = TestServer::start(&["--models", demo_models().to_str().unwrap()]).await;
    let mut client = server.client().await;
    let references = references();
    let mut compared = 0;
    for case in references["cases"].as_array().unwrap() {
        let response = client
            .evaluate(request(case, &[pb::Metric::Sic, pb::Metric::Aic]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.target_class, case["target"].as_i64().unwrap());
        for (curve, key) in response.curves.iter().zip(["sic", "aic"]) {
            let reference = &case[key];
            let name = format!("{} {key}", case["map"]);
            if let Some(reason) = reference.get("skipped") {
                assert!(
                    !curve.skipped.is_empty(),
                    "{name}: PAIR skipped it ({reason}), integrad gave {}",
                    curve.auc
                );
                continue;
            }
            assert!(
                curve.skipped.is_empty(),
                "{name}: skipped: {}",
                curve.skipped
            );
            // Every picture's information (its lossless WebP size, normalised) is PAIR's
            // exactly: the blurred pictures are scipy's pixel for pixel (Qhull's own
            // triangles), and libwebp with Pillow's settings writes the same bytes. 1e-7:
            // float32's rounding of a value in [0, 1], the proto's type.
            let sizes = floats(&reference["entropies"]);
            let (blurred, original) = (sizes[0], sizes[sizes.len() - 1]);
            assert_eq!(curve.information.len(), sizes.len() - 2, "{name}: points");
            for (i, (&ours, &size)) in curve.information.iter().zip(&sizes[1..]).enumerate() {
                let pair = ((size - blurred) / (original - blurred)).clamp(0.0, 1.0);
                assert!(
                    (f64::from(ours) - pair).abs() < 1e-7,
                    "{name}: information[{i}] {ours} vs PAIR's {pair}"
                );
            }
            // The same pictures through the same model, by ONNX Runtime from Rust and from
            // Python: the probabilities agree to about 1e-5 (as deletion's do, below); 1e-4
            // as there. AIC's scores are 0 or 1 and must be equal.
            let predictions = floats(&reference["predictions"]);
            for (i, (&ours, &pair)) in curve.scores.iter().zip(&predictions[1..]).enumerate() {
                assert!(
                    (f64::from(ours) - pair).abs() < 1e-4,
                    "{name}: score[{i}] {ours} vs PAIR's {pair}"
                );
            }
            let auc = reference["auc"].as_f64().unwrap();
            eprintln!(
                "{name}: AUC {} vs PAIR's {auc}: difference {:.2e}",
                curve.auc,
                (curve.auc - auc).abs()
            );
            // The acceptance bound. With x equal, the areas differ only through y: scores
            // about 1e-5 apart, normalised by the original's and the fully blurred picture's
            // scores (at least 0.38 apart here), move the area by a few 1e-5 at most. Measured:
            // within 1e-15 of PAIR's (the same ONNX Runtime gives the same scores).
            assert!(
                (curve.auc - auc).abs() < 1e-3,
                "{name}: AUC {} against PAIR's {auc}",
                curve.auc
            );
            assert_eq!(curve.x.len(), 1001);
            compared += 1;
        }
    }
    assert!(compared >= 6, "only {compared} curves compared");
    server.stop().await;
}

#[tokio::test]
async fn deletion_and_insertion_match_a_numpy_rise() {
    let server = TestServer::start(&["--models", demo_models().to_str().unwrap()]).await;
    let mut client = server.client().await;
    for case in references()["cases"].as_array().unwrap() {
        let response = client
            .evaluate(request(
                case,
                &[pb::Metric::Deletion, pb::Metric::Insertion],
            ))
            .await
            .unwrap()
            .into_inner();
        for (curve, key) in response.curves.iter().zip(["deletion", "insertion"]) {
            let reference = &case[key];
            let name = format!("{} {key}", case["map"]);
            let (x, y) = (floats(&reference["x"]), floats(&reference["y"]));
            assert_eq!(curve.x.len(), x.len(), "{name}: points");
            for (i, (&a, &b)) in curve.x.iter().zip(&x).enumerate() {
                assert!((f64::from(a) - b).abs() < 1e-6, "{name}: x[{i}] {a} vs {b}");
            }
            // The same perturbed tensors (the same pixel order, substrates to float32
            // rounding) through the same ONNX model, in ONNX Runtime from Rust and from
            // Python: the probabilities agree to ~1e-5 (tests/data/README.md), and the
            // blur's float32 sums in another order move inputs by ~1e-7. 1e-4 is ten times
            // that and a thousandth of the scores' range.
            for (i, (&a, &b)) in curve.y.iter().zip(&y).enumerate() {
                assert!(
                    (f64::from(a) - b).abs() < 1e-4,
                    "{name}: y[{i}] {a} vs numpy's {b}"
                );
            }
            let auc = reference["auc"].as_f64().unwrap();
            assert!(
                (curve.auc - auc).abs() < 1e-4,
                "{name}: AUC {} vs numpy's {auc}",
                curve.auc
            );
        }
    }
    server.stop().await;
}

/// A fair property: IG's map ranks the pixels whose removal lowers the target's probability
/// (to first order, the attributions are those score changes), while a random order removes
/// cat and background alike, so its score falls only as the whole picture goes black. Any
/// faithfulness metric that could not tell the two apart on a confidently classified photo
/// would be useless. The reference areas are 0.027 (IG) and 0.046 (random): the margin is
/// the random order's slower fall over the first steps, not rounding.
#[tokio::test]
async fn a_random_map_deletes_worse_than_ig_on_the_cat() {
    let server = TestServer::start(&["--models", demo_models().to_str().unwrap()]).await;
    let mut client = server.client().await;
    let image = |map: &str| pb::EvaluateRequest {
        model: "efficientnet-lite0".into(),
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Tensor(npy_tensor("chelsea_input.npy"))),
        }),
        saliency: Some(npy_tensor(map)),
        metrics: vec![pb::Metric::Deletion as i32],
        ..Default::default()
    };
    let ig = client
        .evaluate(image("metrics/chelsea_ig.npy"))
        .await
        .unwrap()
        .into_inner();
    let random = client
        .evaluate(image("metrics/chelsea_random_saliency.npy"))
        .await
        .unwrap()
        .into_inner();
    // Default target: the top-1, tiger cat.
    assert_eq!(ig.target_class, 282);
    let (ig, random) = (ig.curves[0].auc, random.curves[0].auc);
    assert!(ig < random, "deletion AUC: IG {ig}, random {random}");
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_are_refused_naming_the_field_and_the_server_keeps_serving() {
    let server = TestServer::start(&["--models", demo_models().to_str().unwrap()]).await;
    let mut client = server.client().await;
    let good = || pb::EvaluateRequest {
        model: "efficientnet-lite0".into(),
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Tensor(npy_tensor("coffee_input.npy"))),
        }),
        saliency: Some(npy_tensor("ig/coffee_gl50_probability_black.npy")),
        metrics: vec![pb::Metric::Deletion as i32],
        ..Default::default()
    };
    let mut nan = vec![0.5f32; 224 * 224];
    nan[1000] = f32::NAN;
    let cases: Vec<(&str, pb::EvaluateRequest, &str)> = vec![
        (
            "wrong shape",
            pb::EvaluateRequest {
                saliency: Some(tensor(&[224, 225], &vec![0.0; 224 * 225])),
                ..good()
            },
            "saliency",
        ),
        (
            "NaN",
            pb::EvaluateRequest {
                saliency: Some(tensor(&[224, 224], &nan)),
                ..good()
            },
            "saliency.data",
        ),
        (
            "no map",
            pb::EvaluateRequest {
                saliency: None,
                ..good()
            },
            "saliency",
        ),
        (
            "a tabular model",
            pb::EvaluateRequest {
                model: "penguins".into(),
                ..good()
            },
            "model",
        ),
        (
            "an unknown metric",
            pb::EvaluateRequest {
                metrics: vec![9],
                ..good()
            },
            "metrics[0]",
        ),
        (
            "thresholds out of order",
            pb::EvaluateRequest {
                pic: Some(pb::PicOptions {
                    thresholds: vec![0.5, 0.1],
                    ..Default::default()
                }),
                ..good()
            },
            "pic.thresholds",
        ),
        (
            "a random mask of the wrong shape",
            pb::EvaluateRequest {
                pic: Some(pb::PicOptions {
                    random_mask: Some(tensor(&[10, 10], &[1.0; 100])),
                    ..Default::default()
                }),
                ..good()
            },
            "pic.random_mask",
        ),
        (
            "several targets",
            pb::EvaluateRequest {
                target: Some(pb::Target {
                    kind: Some(pb::target::Kind::TopK(3)),
                }),
                ..good()
            },
            "target.top_k",
        ),
        (
            "a class beyond the model's",
            pb::EvaluateRequest {
                target: Some(pb::Target {
                    kind: Some(pb::target::Kind::ClassIndex(1000)),
                }),
                ..good()
            },
            "target.class_index",
        ),
        (
            "an even blur",
            pb::EvaluateRequest {
                insertion: Some(pb::CausalOptions {
                    blur_size: Some(10),
                    ..Default::default()
                }),
                ..good()
            },
            "insertion.blur_size",
        ),
    ];
    for (what, request, field) in cases {
        let status = client.evaluate(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
        assert!(
            status.message().starts_with(&format!("{field}: ")),
            "{what}: {:?} does not name {field}",
            status.message()
        );
    }
    // Still serving, and the good request works.
    let response = client.evaluate(good()).await.unwrap().into_inner();
    assert_eq!(response.target_class, 967);
    assert!(response.curves[0].auc.is_finite());
    server.stop().await;
}

#[tokio::test]
async fn the_cli_evaluates_an_explanation_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let explained = dir.path().join("explained");
    let evaluated = dir.path().join("evaluated");
    let run = |args: Vec<String>| async move {
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(binary())
                .args(&args)
                .current_dir(root())
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    };
    run(strings(&[
        "explain",
        "samples/coffee.png",
        "--steps",
        "16",
        "--out",
        explained.to_str().unwrap(),
    ]))
    .await;
    let output = run(strings(&[
        "evaluate",
        "samples/coffee.png",
        "--saliency",
        explained.join("explanation.json").to_str().unwrap(),
        "--metrics",
        "deletion,insertion,sic",
        "--out",
        evaluated.to_str().unwrap(),
    ]))
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("deletion"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(evaluated.join("evaluation.json")).unwrap())
            .unwrap();
    // The explanation's target, espresso.
    assert_eq!(json["target_class"], 967);
    let curves = json["curves"].as_array().unwrap();
    let metrics: Vec<&str> = curves
        .iter()
        .map(|c| c["metric"].as_str().unwrap())
        .collect();
    assert_eq!(metrics, ["deletion", "insertion", "sic"]);
    for curve in curves {
        let auc = curve["auc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auc), "{curve}");
    }
    // IG of a confident class: deleting its top pixels loses the class much faster than
    // inserting them back from the blur gains it (0.04 against 0.7 at the time of writing).
    assert!(curves[0]["auc"].as_f64() < curves[1]["auc"].as_f64());
    let png = std::fs::read(evaluated.join("curves.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "curves.png is not a PNG");
}

#[tokio::test]
async fn the_http_api_evaluates_as_grpc_does() {
    let http = free_address().to_string();
    let server = TestServer::start(&[
        "--models",
        demo_models().to_str().unwrap(),
        "--http-listen",
        &http,
    ])
    .await;
    let (shape, map) = fixture("metrics/chelsea_random_saliency.npy");
    let rows: Vec<Vec<f32>> = map.chunks(shape[1]).map(<[f32]>::to_vec).collect();
    let photo = sample("coffee.png");
    let body = serde_json::json!({
        "instances": [{"b64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &photo)}],
        "parameters": {"saliency": rows, "metrics": ["deletion"]},
    });
    let url = format!("http://{http}/v1/models/efficientnet-lite0:evaluate");
    let (status, json) = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent.post(&url).send(body.to_string().as_str()).unwrap();
        let status = response.status().as_u16();
        let json: serde_json::Value = response.body_mut().read_json().unwrap();
        (status, json)
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{json}");
    let evaluation = &json["evaluation"];
    // protobuf's JSON mapping writes an int64 as a string.
    assert_eq!(evaluation["target_class"], "967");
    let http_auc = evaluation["curves"][0]["auc"].as_f64().unwrap();

    let grpc = server
        .client()
        .await
        .evaluate(pb::EvaluateRequest {
            model: "efficientnet-lite0".into(),
            input: Some(pb::Input {
                kind: Some(pb::input::Kind::Image(photo)),
            }),
            saliency: Some(tensor(&shape, &map)),
            metrics: vec![pb::Metric::Deletion as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // The same request through the same server and the same batches: the same runs, so the
    // same area, but for ONNX Runtime's thread scheduling (1e-6 is far below a pixel's worth).
    assert!(
        (grpc.curves[0].auc - http_auc).abs() < 1e-6,
        "gRPC {} vs HTTP {http_auc}",
        grpc.curves[0].auc
    );
    server.stop().await;
}

/// The bytes of a uint8 .npy (version 1.0, C order): the data after the header.
fn npy_u8(name: &str) -> Vec<u8> {
    let bytes = std::fs::read(root().join("tests/data").join(name)).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "{name}: npy 1.0");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8_lossy(&bytes[10..10 + header_len]);
    assert!(header.contains("'|u1'"), "{name}: {header}");
    bytes[10 + header_len..].to_vec()
}

/// PIC's two pieces outside the model, against the libraries PAIR calls: the lossless WebP
/// size (Pillow, over libwebp 1.6.0, the version the crate builds) and the interpolated
/// blur (scipy's griddata over Qhull's triangulation).
#[test]
fn webp_sizes_and_the_blur_match_pillow_and_scipy() {
    let references = references();
    let sizes = &references["webp_sizes"];
    // The cat's 8-bit crop: its model input is (pixel - 127) / 128 exactly.
    let (_, input) = fixture("chelsea_input.npy");
    let plane = 224 * 224;
    let crop: Vec<u8> = (0..plane * 3)
        .map(|i| {
            let (p, c) = (i / 3, i % 3);
            (input[c * plane + p] * 128.0 + 127.0).round() as u8
        })
        .collect();
    assert_eq!(crop, npy_u8("chelsea_crop.npy"));
    let size = |image: &[u8]| integrad::metrics::webp_lossless_size(image, 224, 224).unwrap();
    // The same encoder with the same settings on the same pixels: the same bytes.
    assert_eq!(size(&crop) as u64, sizes["chelsea_crop"].as_u64().unwrap());

    let (_, mask) = fixture("metrics/chelsea_random_mask.npy");
    let keep: Vec<bool> = mask.iter().map(|&m| m != 0.0).collect();
    let blurred = integrad::metrics::create_blurred_image(&crop, 224, 224, 3, &keep).unwrap();
    let scipy = npy_u8("metrics/chelsea_fully_blurred.npy");
    let differ = blurred.iter().zip(&scipy).filter(|(a, b)| a != b).count();
    let worst = blurred
        .iter()
        .zip(&scipy)
        .map(|(&a, &b)| (i16::from(a) - i16::from(b)).abs())
        .max()
        .unwrap();
    // Qhull's own triangles (scipy's), the same barycentric weights, the same float32
    // rounding: the same bytes.
    assert_eq!(
        differ,
        0,
        "{differ} of {} values differ from scipy's, by at most {worst}",
        blurred.len()
    );
    assert_eq!(
        size(&blurred) as u64,
        sizes["chelsea_fully_blurred"].as_u64().unwrap()
    );
}

type Client =
    integrad::proto::integrad::v1::explainer_client::ExplainerClient<tonic::transport::Channel>;

/// An Evaluate of a deletion curve one pixel per step: 50,176 steps, minutes of model runs.
fn long_evaluate() -> pb::EvaluateRequest {
    pb::EvaluateRequest {
        model: "efficientnet-lite0".into(),
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Tensor(npy_tensor("chelsea_input.npy"))),
        }),
        saliency: Some(npy_tensor("metrics/chelsea_ig.npy")),
        metrics: vec![pb::Metric::Deletion as i32],
        deletion: Some(pb::CausalOptions {
            pixels_per_step: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A short Explain, admitted or refused at once by a server with one Explain slot and no
/// queue: whether the slot is free.
async fn slot_is_free(client: &mut Client) -> bool {
    let request = pb::ExplainRequest {
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Image(sample("rocket.jpg"))),
        }),
        steps: Some(4),
        ..Default::default()
    };
    match client.explain(request).await {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            while stream.message().await.unwrap().is_some() {}
            true
        }
        Err(status) if status.code() == tonic::Code::ResourceExhausted => false,
        Err(status) => panic!("the Explain failed otherwise: {status:?}"),
    }
}

/// Waits up to 10 s (an Evaluate ended between two of its 60 ms model runs frees its slot in
/// well under a second; the evaluation itself would take minutes) for the slot to be free.
async fn slot_frees_soon(client: &mut Client) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < until {
        if slot_is_free(client).await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test]
async fn an_evaluate_ends_at_its_deadline_or_when_its_client_goes_and_frees_its_slot() {
    // Evaluate takes an Explain slot: one slot, no queue, so a second heavy request is refused
    // while it runs and admitted once it has ended.
    let server = TestServer::one_explain_slot().await;
    let mut client = server.client().await;

    // The client goes away: the evaluation holds the slot while it runs, then frees it.
    let mut other = server.client().await;
    let running = tokio::spawn(async move { other.evaluate(long_evaluate()).await });
    // A probe sent before the Evaluate arrives would take the slot itself: give it a second
    // (it arrives within milliseconds), then the slot must be taken.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(
        !slot_is_free(&mut client).await,
        "the long Evaluate does not hold the slot (it ended: {})",
        running.is_finished()
    );
    running.abort();
    assert!(
        slot_frees_soon(&mut client).await,
        "an abandoned Evaluate kept its slot"
    );

    // Its deadline passes: DEADLINE_EXCEEDED (tonic's own side may say CANCELLED first), long
    // before the evaluation would have ended, and the slot is free again.
    let mut request = tonic::Request::new(long_evaluate());
    request.set_timeout(std::time::Duration::from_secs(2));
    let started = std::time::Instant::now();
    let expired = client.evaluate(request).await.unwrap_err();
    assert!(
        matches!(
            expired.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{expired:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(
        slot_frees_soon(&mut client).await,
        "an Evaluate past its deadline kept its slot"
    );
    server.stop().await;
}
