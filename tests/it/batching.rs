//! Cross-request batching (src/model/batch.rs, src/model/worker.rs) through real servers: merged
//! runs give what unmerged ones give, jobs that can't merge still get their own right answer,
//! the metrics show merging really happened, and a short Explain is not starved by a long one.

use crate::common;

use common::*;
use integrad::proto::integrad::v1 as pb;
use integrad::proto::onnx;
use tokio::sync::mpsc;

const MODEL: &str = "efficientnet-lite0";

fn image_input(name: &str) -> Option<pb::Input> {
    Some(pb::Input {
        kind: Some(pb::input::Kind::Image(sample(name))),
    })
}

/// Explains of different photos, targets, objectives, step and batch counts.
fn explain_requests() -> Vec<pb::ExplainRequest> {
    let class = |c: i64| {
        Some(pb::Target {
            kind: Some(pb::target::Kind::ClassIndex(c)),
        })
    };
    vec![
        pb::ExplainRequest {
            model: MODEL.into(),
            input: image_input("coffee.png"),
            // The longest by far (8 gradient runs) and the first to start them (a given
            // target and trapezoid steps need no forward run first), so that the top-k
            // request, on the same (probability) gradient worker, starts while it runs.
            target: class(967),
            steps: Some(28),
            batch_size: 4,
            ..Default::default()
        },
        pb::ExplainRequest {
            model: MODEL.into(),
            input: image_input("chelsea.png"),
            target: class(281),
            objective: pb::Objective::Logit as i32,
            steps: Some(10),
            batch_size: 6,
            ..Default::default()
        },
        pb::ExplainRequest {
            model: MODEL.into(),
            input: image_input("rocket.jpg"),
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::TopK(2)),
            }),
            steps: Some(8),
            batch_size: 4,
            ..Default::default()
        },
    ]
}

/// The results of an Explain (its last events).
async fn explain(url: String, request: pb::ExplainRequest) -> Vec<pb::Explanation> {
    let channel = connect_channel(&url, None).await.unwrap();
    let mut client =
        pb::explainer_client::ExplainerClient::new(channel).max_decoding_message_size(64 << 20);
    let mut stream = client.explain(request).await.unwrap().into_inner();
    let mut results = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(pb::explain_event::Event::Result(r)) = event.event {
            results.push(r);
        }
    }
    results
}

async fn predict(url: String, photo: &str) -> Vec<f32> {
    let channel = connect_channel(&url, None).await.unwrap();
    let mut client = pb::explainer_client::ExplainerClient::new(channel);
    let response = client
        .predict(image_request(MODEL, sample(photo), 1))
        .await
        .unwrap()
        .into_inner();
    logits(&response)
}

const PHOTOS: [&str; 4] = ["coffee.png", "chelsea.png", "rocket.jpg", "coffee.png"];

/// Merged runs on the batcher's rows: (runs, jobs) of `worker` from /metrics.
fn batches(metrics: std::net::SocketAddr, worker: &str) -> (f64, f64) {
    let samples = parse(&scrape(metrics).1);
    let labels = [("worker", worker)];
    (
        value(&samples, "integrad_batch_jobs_count", &labels),
        value(&samples, "integrad_batch_jobs_sum", &labels),
    )
}

#[tokio::test]
async fn should_give_merged_runs_the_results_of_unmerged_ones() {
    let models = demo_models();
    let models = models.to_str().unwrap();
    // The reference: batching off, one request at a time.
    let reference = BinaryServer::start(&["--models", models, "--batching", "off"]).await;
    let mut expected = Vec::new();
    for request in explain_requests() {
        expected.push(explain(reference.url.clone(), request).await);
    }
    let mut expected_logits = Vec::new();
    for photo in PHOTOS {
        expected_logits.push(predict(reference.url.clone(), photo).await);
    }
    drop(reference);

    let metrics = free_address();
    // NOTE: a generous max delay makes merging near certain on a busy machine (a worker waits
    // only while another request is active, and stops as soon as each has a job queued); the
    // results must not depend on it. 16 rows: two requests' batches (4, 6 and 2 x 4 rows) fit
    // together, all three do not (the last goes first in the next run).
    let server = BinaryServer::start(&[
        "--models",
        models,
        "--batching",
        "on",
        "--batch-max-rows",
        "16",
        "--batch-max-delay-us",
        "1000000",
        "--max-concurrent-explains",
        "4",
        "--metrics-listen",
        &metrics.to_string(),
    ])
    .await;
    let grad = format!("{MODEL}-grad");
    let before = batches(metrics, &grad);
    let explains: Vec<_> = explain_requests()
        .into_iter()
        .map(|r| tokio::spawn(explain(server.url.clone(), r)))
        .collect();
    let mut got = Vec::new();
    for e in explains {
        got.push(e.await.unwrap());
    }
    for (request, (want, have)) in expected.iter().zip(&got).enumerate() {
        assert_eq!(want.len(), have.len());
        for (w, h) in want.iter().zip(have) {
            assert_eq!(w.target_class, h.target_class, "request {request}");
            // The same points through the same graph, the sums block-diagonal: only float32
            // rounding differs, from kernels blocked differently at another batch size
            // (tests/it/ig_step.rs measures it per run). A row, path or weight given to the
            // wrong request moves attributions by tens of percents.
            let d = relative_l2(
                &floats(w.attributions.as_ref().unwrap()),
                &floats(h.attributions.as_ref().unwrap()),
            );
            assert!(d < 1e-5, "request {request}: relative L2 {d}");
            assert!((w.score_input - h.score_input).abs() <= 1e-5 * w.score_input.abs().max(1.0));
            assert_eq!(w.evaluations, h.evaluations);
        }
    }
    let after = batches(metrics, &grad);
    let (runs, jobs) = (after.0 - before.0, after.1 - before.1);
    // 8 + 2 + 3 gradient runs if none were merged: fewer runs than jobs means some were.
    assert_eq!(jobs, 13.0, "every gradient batch is one job");
    assert!(
        runs < jobs,
        "no gradient run was merged: {runs} runs, {jobs} jobs"
    );

    // Predicts: concurrent ones share forward runs; each answer is still its own photo's.
    // The first of a burst may run alone (nobody else is active yet), so bursts are repeated
    // until one merged, at most five times.
    let mut merged = false;
    for _ in 0..5 {
        let before = batches(metrics, MODEL);
        let predicts: Vec<_> = PHOTOS
            .iter()
            .map(|photo| tokio::spawn(predict(server.url.clone(), photo)))
            .collect();
        for (want, p) in expected_logits.iter().zip(predicts) {
            let have = p.await.unwrap();
            // Same image, batch of 1 or 4: float32 rounding at most (see above).
            let d = relative_l2(want, &have);
            assert!(d < 1e-5, "predict logits: relative L2 {d}");
        }
        let after = batches(metrics, MODEL);
        if after.0 - before.0 < after.1 - before.1 {
            merged = true;
            break;
        }
    }
    assert!(merged, "no Predict shared a run in five bursts of four");
}

/// `out = ReduceSum(x, axis 1)`: `x` is `[batch, n]` with `n` free, so requests of different
/// widths reach the worker and must not be merged.
fn summing_model() -> Vec<u8> {
    let axes = onnx::TensorProto {
        name: Some("axes".into()),
        dims: vec![1],
        data_type: Some(onnx::tensor_proto::DataType::Int64 as i32),
        int64_data: vec![1],
        ..Default::default()
    };
    let mut x = value_info("x", &[None, None]);
    // A second symbol for the width, so it is not tied to the batch.
    if let Some(onnx::type_proto::Value::TensorType(t)) =
        x.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape.as_mut().unwrap().dim[1].value = Some(
            onnx::tensor_shape_proto::dimension::Value::DimParam("width".into()),
        );
    }
    model_bytes(onnx::GraphProto {
        name: Some("sum".into()),
        node: vec![onnx::NodeProto {
            op_type: Some("ReduceSum".into()),
            name: Some("sum".into()),
            input: vec!["x".into(), "axes".into()],
            output: vec!["out".into()],
            attribute: vec![onnx::AttributeProto {
                name: Some("keepdims".into()),
                r#type: Some(onnx::attribute_proto::AttributeType::Int as i32),
                i: Some(1),
                ..Default::default()
            }],
            ..Default::default()
        }],
        initializer: vec![axes],
        input: vec![x],
        output: vec![value_info("out", &[None, Some(1)])],
        ..Default::default()
    })
}

#[tokio::test]
async fn should_run_jobs_of_different_shapes_apart_and_answer_each() {
    let (_dir, file) = model_file("sum.onnx", summing_model());
    let server = TestServer::start(&[&["--model-file", &file][..], &MERGE_ALL].concat()).await;
    // Widths 3 and 5 interleaved: merging any two of different widths would fail in ONNX
    // Runtime or mix rows.
    let inputs: Vec<Vec<f32>> = (0..8)
        .map(|i| {
            let width = if i % 2 == 0 { 3 } else { 5 };
            (0..width).map(|k| (i * 10 + k) as f32 * 0.5).collect()
        })
        .collect();
    let requests = inputs
        .iter()
        .map(|x| tensor_request("", &[x.len()], x))
        .collect();
    for (x, result) in inputs.iter().zip(predict_all(&server.url, requests).await) {
        let sum: f32 = x.iter().sum();
        // Sums of at most five halves of small integers are exact in float32.
        assert_eq!(result.unwrap(), vec![sum]);
    }
    server.stop().await;
}

/// Batching on, with a max delay long enough (0.2 s) that concurrent requests merge.
const MERGE_ALL: [&str; 4] = ["--batching", "on", "--batch-max-delay-us", "200000"];

/// `bytes` written to `name` in a new temporary directory: the directory (removed when
/// dropped) and the file's path.
fn model_file(name: &str, bytes: Vec<u8>) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, bytes).unwrap();
    let path = file.to_str().unwrap().to_string();
    (dir, path)
}

/// Sends every request at once, each on its own connection: the logits or the error of each,
/// in order.
async fn predict_all(
    url: &str,
    requests: Vec<pb::PredictRequest>,
) -> Vec<Result<Vec<f32>, tonic::Status>> {
    let calls: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let url = url.to_string();
            tokio::spawn(async move {
                let channel = connect_channel(&url, None).await.unwrap();
                let mut client = pb::explainer_client::ExplainerClient::new(channel);
                let response = client.predict(request).await?;
                Ok(logits(&response.into_inner()))
            })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    results
}

/// Which request an event came from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Long,
    Short,
}

#[tokio::test]
async fn should_finish_a_short_explain_while_a_long_one_runs() {
    // 16 rows: the long request's 13-alpha batches and the short one's 4-alpha batches never
    // fit together, so the worker alternates between them run by run.
    let server = TestServer::start(&[
        "--models",
        demo_models().to_str().unwrap(),
        "--batching",
        "on",
        "--batch-max-rows",
        "16",
    ])
    .await;
    let (tx, mut events) = mpsc::unbounded_channel::<(Who, pb::explain_event::Event)>();
    let start = |who: Who, steps: u32, batch_size: u32| {
        let (url, tx) = (server.url.clone(), tx.clone());
        tokio::spawn(async move {
            let channel = connect_channel(&url, None).await.unwrap();
            let mut client = pb::explainer_client::ExplainerClient::new(channel)
                .max_decoding_message_size(64 << 20);
            let request = pb::ExplainRequest {
                model: MODEL.into(),
                input: image_input("coffee.png"),
                steps: Some(steps),
                batch_size,
                ..Default::default()
            };
            let mut stream = client.explain(request).await.unwrap().into_inner();
            while let Some(event) = stream.message().await.unwrap() {
                tx.send((who, event.event.unwrap())).unwrap();
            }
        })
    };
    // 97 alphas in 8 runs of up to 13; the short one starts once the long one is under way.
    let long = start(Who::Long, 96, 13);
    let (who, _) = events.recv().await.unwrap();
    assert_eq!(who, Who::Long);
    // 9 alphas in 3 runs of up to 4.
    let short = start(Who::Short, 8, 4);
    drop(tx);
    let mut order = Vec::new();
    while let Some(event) = events.recv().await {
        order.push(event);
    }
    long.await.unwrap();
    short.await.unwrap();
    let finished = |who: Who| {
        order
            .iter()
            .position(|(w, e)| *w == who && matches!(e, pb::explain_event::Event::Result(_)))
            .unwrap()
    };
    assert!(
        finished(Who::Short) < finished(Who::Long),
        "the short Explain waited for the long one"
    );
    // When the short one finished, the long one was still short of its steps.
    let long_progress = order[..finished(Who::Short)]
        .iter()
        .filter_map(|(w, e)| match e {
            pb::explain_event::Event::Progress(p) if *w == Who::Long => Some(*p),
            _ => None,
        })
        .next_back()
        .unwrap();
    assert!(long_progress.steps_done < long_progress.steps_total);
    server.stop().await;
}

/// `out = Gather(table, ids)` with a 10-entry table `table[i] = i + 0.5`, or with `abs`,
/// `Gather(table, Abs(ids))`: `ids` is int64 `[batch, 2]`. The server checks plain ids against
/// the table before any work; through `Abs` it can't tell the range, and an id outside 0..10
/// makes ONNX Runtime fail the whole run.
fn lookup_model(abs: bool) -> Vec<u8> {
    let table = onnx::TensorProto {
        name: Some("table".into()),
        dims: vec![10],
        data_type: Some(onnx::tensor_proto::DataType::Float as i32),
        float_data: (0..10).map(|i| i as f32 + 0.5).collect(),
        ..Default::default()
    };
    let mut node = vec![onnx::NodeProto {
        op_type: Some("Gather".into()),
        name: Some("lookup".into()),
        input: vec!["table".into(), if abs { "abs_ids" } else { "ids" }.into()],
        output: vec!["out".into()],
        ..Default::default()
    }];
    if abs {
        node.insert(
            0,
            onnx::NodeProto {
                op_type: Some("Abs".into()),
                name: Some("abs".into()),
                input: vec!["ids".into()],
                output: vec!["abs_ids".into()],
                ..Default::default()
            },
        );
    }
    model_bytes(onnx::GraphProto {
        name: Some("lookup".into()),
        node,
        initializer: vec![table],
        input: vec![typed_value_info(
            "ids",
            &[None, Some(2)],
            onnx::tensor_proto::DataType::Int64,
        )],
        output: vec![value_info("out", &[None, Some(2)])],
        ..Default::default()
    })
}

fn lookup_request(pair: &[i64; 2]) -> pb::PredictRequest {
    pb::PredictRequest {
        input: Some(pb::Input {
            kind: Some(pb::input::Kind::Tensor(pb::Tensor {
                shape: vec![2],
                dtype: pb::DataType::Int64 as i32,
                data: pair.iter().flat_map(|v| v.to_le_bytes()).collect(),
            })),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn should_fail_only_the_job_that_fails_a_merged_run() {
    let (_dir, file) = model_file("lookup.onnx", lookup_model(true));
    let metrics = free_address().to_string();
    let flags = [
        &["--model-file", &file, "--metrics-listen", &metrics][..],
        &MERGE_ALL,
    ]
    .concat();
    let server = BinaryServer::start(&flags).await;
    // Eight concurrent lookups, the fourth with id 50 (out of the table): merged with it,
    // the others' run fails in ONNX Runtime; each must still get its own answer. Whether
    // eight requests from one client meet in the worker's queue depends on the scheduler, so
    // a round that merged nothing is tried again (a few times at most).
    let ids: Vec<[i64; 2]> = (0..8)
        .map(|i| if i == 3 { [1, 50] } else { [i, 9 - i] })
        .collect();
    let mut merged = false;
    for _round in 0..6 {
        let before = batches(metrics.parse().unwrap(), "lookup");
        let requests = ids.iter().map(lookup_request).collect();
        for (pair, result) in ids.iter().zip(predict_all(&server.url, requests).await) {
            if pair[1] == 50 {
                let status = result.expect_err("id 50 is out of the table");
                assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
            } else {
                // Table entries i + 0.5 are exact in float32.
                let want: Vec<f32> = pair.iter().map(|&i| i as f32 + 0.5).collect();
                assert_eq!(result.unwrap(), want, "ids {pair:?}");
            }
        }
        let after = batches(metrics.parse().unwrap(), "lookup");
        // The point of the test: the bad job did share a run with others.
        if after.1 - before.1 > after.0 - before.0 {
            merged = true;
            break;
        }
    }
    assert!(
        merged,
        "no round of eight requests merged into a shared run"
    );
    drop(server);
}

#[tokio::test]
async fn should_refuse_an_id_outside_its_table_before_any_work() {
    let (_dir, file) = model_file("lookup.onnx", lookup_model(false));
    let server = TestServer::start(&["--model-file", &file]).await;
    let results = predict_all(
        &server.url,
        vec![
            lookup_request(&[1, 50]),
            lookup_request(&[-1, 2]),
            lookup_request(&[0, 9]),
        ],
    )
    .await;
    for (result, (id, element)) in results
        .iter()
        .take(2)
        .zip([("50", "element 1"), ("-1", "element 0")])
    {
        let status = result.as_ref().expect_err("an id outside 0..=9");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        let message = status.message();
        assert!(
            message.contains(&format!("id {id}"))
                && message.contains(element)
                && message.contains("0..=9"),
            "{message}"
        );
    }
    // The server kept serving: the good ids' entries (i + 0.5, exact in float32).
    assert_eq!(results[2].as_ref().unwrap(), &vec![0.5, 9.5]);
}
