//! Property-based fuzzing of what integrad reads from the outside: `.npy` files, `Tensor`
//! messages, encoded images, `config.pbtxt` and `integrad.toml`, and requests built from
//! arbitrary field values sent to a running server (texts for the tokenizer among them).
//!
//! Properties: never a panic; an accepted input is consistent (a tensor has as many values as
//! its shape says, an image is within the pixel limit); a refused request has a client-error
//! status, never INTERNAL or UNKNOWN, and the server keeps serving.
//!
//! Bounded for CI: each property runs `PROPTEST_CASES` cases (default below); raise it to
//! fuzz longer. A failure prints the minimal input; its seed is saved under
//! `tests/it/regressions/`, which is committed so that every crash found stays a test.

use crate::common;

use common::*;
use integrad::proto::integrad::v1 as pb;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Cases per cheap property (a parse of a few bytes); server properties take a quarter.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..Config::default()
    })
}

/// `seed` with some of its bytes replaced, some cut off and some inserted: inputs that get
/// past the first checks of a parser, where arbitrary bytes rarely would.
fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = seed.len();
    (
        proptest::collection::vec((0..len.max(1), any::<u8>()), 0..8),
        0..=len,
        proptest::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(move |(flips, cut, tail)| {
            let mut bytes = seed.clone();
            for (at, byte) in flips {
                if at < bytes.len() {
                    bytes[at] = byte;
                }
            }
            bytes.truncate(cut);
            bytes.extend(tail);
            bytes
        })
}

fn bytes_or_mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        mutated(seed),
    ]
}

#[test]
fn npy_files_parse_or_are_refused() {
    let seed = integrad::npy::encode_f32(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    runner(cases())
        .run(&bytes_or_mutated(seed), |bytes| {
            if let Ok(array) = integrad::npy::parse(&bytes) {
                let elements: usize = array.shape().iter().product();
                let values = match &array {
                    integrad::npy::NpyArray::F32 { data, .. } => data.len(),
                    integrad::npy::NpyArray::I64 { data, .. } => data.len(),
                };
                prop_assert_eq!(elements, values, "a parsed array has its shape's values");
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn tensors_decode_only_when_shape_and_data_agree() {
    let dims = prop_oneof![
        -2i64..8,
        Just(i64::MAX),
        Just(i64::MIN),
        Just(1 << 32),
        Just(1 << 62),
    ];
    let strategy = (
        prop_oneof![
            Just(integrad::model::DType::F32),
            Just(integrad::model::DType::I64)
        ],
        proptest::collection::vec(dims, 0..5),
        proptest::collection::vec(any::<u8>(), 0..512),
    );
    runner(cases())
        .run(&strategy, |(dtype, shape, bytes)| {
            let width = if dtype == integrad::model::DType::F32 {
                4
            } else {
                8
            };
            if integrad::wire::decode(dtype, shape.clone(), &bytes).is_ok() {
                let elements: i64 = shape.iter().product();
                prop_assert!(shape.iter().all(|&d| d >= 1), "{shape:?}");
                prop_assert_eq!(elements as usize * width, bytes.len());
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn images_decode_within_the_pixel_limit_or_are_refused() {
    // A small limit, so that a mutated header claiming a large image must be refused.
    let limits = integrad::image::DecodeLimits::with_max_pixels(64 * 64);
    let small_png = {
        let image = image::RgbImage::from_fn(16, 12, |x, y| image::Rgb([x as u8, y as u8, 7]));
        integrad::image::png(&image)
    };
    let photo = sample("coffee.png");
    let strategy = prop_oneof![
        mutated(small_png),
        mutated(photo[..photo.len().min(4096)].to_vec()),
        proptest::collection::vec(any::<u8>(), 0..256),
    ];
    runner(cases() / 2)
        .run(&strategy, |bytes| {
            if let Ok(image) = integrad::image::decode(&bytes, &limits) {
                prop_assert!(u64::from(image.width()) * u64::from(image.height()) <= 64 * 64);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn config_pbtxt_parses_or_is_refused() {
    let seed = concat!(
        "name: \"m\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: 8\n",
        "input [ { name: \"x\" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]\n",
        "output [ { name: \"y\" data_type: TYPE_FP32 dims: [ 1000 ] } ]\n",
        "version_policy: { latest: { num_versions: 1 } }\n",
    )
    .to_string();
    let path = std::path::Path::new("config.pbtxt");
    runner(cases())
        .run(&bytes_or_mutated(seed.into_bytes()), |bytes| {
            let text = String::from_utf8_lossy(&bytes);
            let _ = integrad::model::triton::TritonConfig::from_text(&text, path);
            Ok(())
        })
        .unwrap();
}

#[test]
fn integrad_toml_loads_or_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("integrad.toml");
    let seed = std::fs::read(root().join("models/penguins/integrad.toml")).unwrap();
    runner(cases() / 2)
        .run(&bytes_or_mutated(seed), |bytes| {
            std::fs::write(&file, &bytes).unwrap();
            let _ = integrad::model::config::ModelConfig::load(&file);
            Ok(())
        })
        .unwrap();
}

/// Statuses a request built from arbitrary values may get: an answer, or a refusal that is
/// the client's (never INTERNAL, UNKNOWN or a dropped connection).
fn acceptable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Ok | InvalidArgument | NotFound | FailedPrecondition | ResourceExhausted | OutOfRange
    )
}

fn arbitrary_input() -> impl Strategy<Value = pb::Input> {
    use pb::input::Kind;
    let feature = (
        prop_oneof![
            Just("bill_length_mm".to_string()),
            Just("island".to_string()),
            Just("sex".to_string()),
            "[a-z_]{0,12}",
        ],
        prop_oneof![
            any::<f64>(),
            -3.0..300.0f64,
            Just(f64::NAN),
            Just(f64::INFINITY)
        ],
    );
    prop_oneof![
        proptest::collection::hash_map(feature.0.clone(), feature.1.clone(), 0..8)
            .prop_map(|values| Kind::Features(pb::FeatureRow { values })),
        (
            any::<String>(),
            prop_oneof![Just(String::new()), any::<String>()]
        )
            .prop_map(|(text, pair)| Kind::Text(pb::Text { text, pair })),
        (
            proptest::collection::vec(-1i64..5, 0..4),
            0..3i32,
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(shape, dtype, data)| Kind::Tensor(pb::Tensor {
                shape,
                dtype,
                data
            })),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Kind::Image),
    ]
    .prop_map(|kind| pb::Input { kind: Some(kind) })
}

fn arbitrary_request() -> impl Strategy<Value = pb::ExplainRequest> {
    use pb::target::Kind as Target;
    let target = prop_oneof![
        any::<i64>().prop_map(Target::ClassIndex),
        "[A-Za-z ]{0,10}".prop_map(Target::Label),
        (0..5u32).prop_map(Target::TopK),
    ];
    let baseline = prop_oneof![
        Just(pb::baseline::Kind::Zeros(true)),
        Just(pb::baseline::Kind::White(true)),
        (any::<u64>()).prop_map(|seed| pb::baseline::Kind::Uniform(pb::UniformBaseline { seed })),
        any::<f32>().prop_map(|sigma| pb::baseline::Kind::Blur(pb::BlurBaseline { sigma })),
        (0..4i32, proptest::collection::vec(any::<i64>(), 0..4))
            .prop_map(|(token, ids)| { pb::baseline::Kind::Text(pb::TextBaseline { token, ids }) }),
    ];
    (
        prop_oneof![
            Just("penguins".to_string()),
            Just("sentiment".to_string()),
            "[a-z]{0,6}"
        ],
        arbitrary_input(),
        proptest::option::of(target),
        (0..5i32, 0..7i32, proptest::option::of(0..70u32)),
        (proptest::option::of(baseline), 0..4u32, any::<u32>()),
        (
            prop_oneof![any::<f32>(), 0.0..1.0f32],
            proptest::collection::vec("[a-z/_]{0,8}", 0..2),
            0..4i32,
        ),
    )
        .prop_map(
            |(
                model,
                input,
                target,
                (objective, method, steps),
                (baseline, samples, batch_size),
                (tolerance, attribute_to, token_normalization),
            )| pb::ExplainRequest {
                model,
                input: Some(input),
                target: target.map(|kind| pb::Target { kind: Some(kind) }),
                objective,
                method,
                steps,
                baseline: baseline.map(|kind| pb::Baseline {
                    kind: Some(kind),
                    samples,
                }),
                batch_size,
                tolerance,
                attribute_to,
                token_normalization,
                ..Default::default()
            },
        )
}

/// Explain and Predict requests of arbitrary field values (features, texts, tensors, image
/// bytes; targets, baselines, methods, steps, tolerances, attribution points) against the
/// tabular and the text demo: every answer is a result or a client error, and the server
/// still answers a good request afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_arbitrary_values_get_a_result_or_a_client_error() {
    integrad::model::weights::provision(
        &root().join("models/sentiment"),
        &integrad::runtime::cache_dir_in_use(),
    )
    .unwrap();
    let repo = demo_repository(&["penguins", "sentiment"]);
    let server = TestServer::start(&[
        "--models",
        repo.path().to_str().unwrap(),
        "--max-steps",
        "64",
    ])
    .await;
    let client = server.client().await;
    let handle = tokio::runtime::Handle::current();
    let cases = (cases() / 4).max(16);
    tokio::task::spawn_blocking(move || {
        runner(cases)
            .run(&arbitrary_request(), |request| {
                let mut client = client.clone();
                let predict = pb::PredictRequest {
                    model: request.model.clone(),
                    input: request.input.clone(),
                    ..Default::default()
                };
                let (predicted, explained) = handle.block_on(async {
                    let predicted = client.predict(predict).await.err().map(|s| s.code());
                    let explained = match client.explain(request.clone()).await {
                        Err(status) => status.code(),
                        Ok(stream) => {
                            let mut stream = stream.into_inner();
                            loop {
                                match stream.message().await {
                                    Ok(Some(_)) => continue,
                                    Ok(None) => break tonic::Code::Ok,
                                    Err(status) => break status.code(),
                                }
                            }
                        }
                    };
                    (predicted.unwrap_or(tonic::Code::Ok), explained)
                });
                prop_assert!(acceptable(predicted), "Predict: {predicted:?}");
                prop_assert!(
                    acceptable(explained),
                    "Explain: {explained:?} for {request:?}"
                );
                Ok(())
            })
            .unwrap();
    })
    .await
    .unwrap();

    let mut client = server.client().await;
    let good = client
        .predict(pb::PredictRequest {
            model: "sentiment".into(),
            input: Some(pb::Input {
                kind: Some(pb::input::Kind::Text(pb::Text {
                    text: "I loved this movie".into(),
                    pair: String::new(),
                })),
            }),
            ..Default::default()
        })
        .await;
    assert!(good.is_ok(), "the server still serves: {good:?}");
}
