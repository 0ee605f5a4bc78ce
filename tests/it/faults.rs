//! Injected faults: a full disk under the CLI's `--out` (the files are links to `/dev/full`,
//! whose every write fails with ENOSPC), HTTP clients that go away in the middle of a
//! streamed Explain, a gRPC client that stops reading, and ONNX Runtime failing in the middle
//! of a merged gradient run. The CLI says which file could not be written and fails; the
//! server cancels the abandoned work, pauses for the slow reader, fails only the request
//! that broke the run, and keeps serving.

use crate::common;

use std::io::Read;

use common::*;
use integrad::proto::integrad::v1 as pb;
use integrad::proto::integrad::v1::explainer_client::ExplainerClient;
use integrad::proto::onnx;

const ROW: &str =
    "bill_length_mm=39.1,bill_depth_mm=18.7,flipper_length_mm=181,body_mass_g=3750,island=2,sex=1";

/// Asserts that `run` failed saying it could not write `file`, for lack of space.
fn assert_disk_full(run: &std::process::Output, file: &str) {
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success(),
        "it succeeded on a full disk: {stderr}"
    );
    assert!(
        stderr.contains(file) && stderr.contains("No space left on device"),
        "the error names {file} and the cause: {stderr}"
    );
}

#[tokio::test]
async fn should_name_the_file_a_full_disk_refused() {
    let repo = demo_repository(&["penguins"]);
    let dir = tempfile::tempdir().unwrap();

    // explain: the folder is writable, its explanation.json is not.
    let out = dir.path().join("row");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::symlink("/dev/full", out.join("explanation.json")).unwrap();
    let run = integrad(strings(&[
        "explain",
        "--models",
        repo.path().to_str().unwrap(),
        "--model",
        "penguins",
        "--features",
        ROW,
        "--out",
        out.to_str().unwrap(),
    ]))
    .await;
    assert_disk_full(&run, "explanation.json");

    // explain-batch: its JSON-lines file.
    let rows = dir.path().join("rows.jsonl");
    std::fs::copy(root().join("models/penguins/rows.jsonl"), &rows).unwrap();
    let results = dir.path().join("results.jsonl");
    std::os::unix::fs::symlink("/dev/full", &results).unwrap();
    let run = integrad(strings(&[
        "explain-batch",
        "--models",
        repo.path().to_str().unwrap(),
        "--model",
        "penguins",
        "--input",
        rows.to_str().unwrap(),
        "--out",
        results.to_str().unwrap(),
        "--steps",
        "8",
    ]))
    .await;
    assert_disk_full(&run, "results.jsonl");
}

/// HTTP clients that disconnect mid-stream, again and again with the only Explain slot: each
/// abandoned Explain is cancelled and frees its slot within moments (finished, one would hold
/// it for about half a minute), and the server answers afterwards.
#[tokio::test]
async fn should_cancel_explains_whose_http_client_went_away() {
    let http = free_address().to_string();
    let _server = BinaryServer::start(&[
        "--models",
        demo_models().to_str().unwrap(),
        "--http-listen",
        &http,
        "--max-steps",
        "4096",
        "--max-concurrent-explains",
        "1",
        "--max-queued-explains",
        "0",
    ])
    .await;
    // 2,048 steps of the image model: about half a minute on 2 cores.
    let long = explain_body(2048);
    let url = format!("http://{http}/v1/models/efficientnet-lite0:explain");
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        for attempt in 0..3 {
            let mut response = when_free(&agent, &url, &long, "text/event-stream");
            // Read the first progress event, then hang up.
            let mut first = [0u8; 64];
            let read = response.body_mut().as_reader().read(&mut first).unwrap();
            assert!(
                String::from_utf8_lossy(&first[..read]).starts_with("event: progress"),
                "attempt {attempt}"
            );
        }
        let answer = when_free(&agent, &url, &explain_body(4), "application/json");
        assert_eq!(answer.status().as_u16(), 200);
    })
    .await
    .unwrap();
}

fn explain_body(steps: u32) -> String {
    serde_json::json!({
        "instances": [{"b64": base64_of(&sample("coffee.png"))}],
        "parameters": {"steps": steps},
    })
    .to_string()
}

/// POSTs `body` until the server has a free Explain slot (429 until then), for at most 10 s:
/// the time a hung-up Explain may take to notice and let go of its slot.
fn when_free(
    agent: &ureq::Agent,
    url: &str,
    body: &str,
    accept: &str,
) -> ureq::http::Response<ureq::Body> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let response = agent.post(url).header("accept", accept).send(body).unwrap();
        match response.status().as_u16() {
            200 => return response,
            429 => assert!(
                std::time::Instant::now() < deadline,
                "an abandoned Explain still holds the slot"
            ),
            other => panic!("only busy, never failing: {other}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A model whose gradient run fails part-way along some paths, in ONNX Runtime itself:
/// logits = x @ W + table[floor(x0 * (6 - x0))], x = [x0, x1], table 4 rows. The lookup
/// index is 0 at x0 = 0 and x0 = 6, and at most 3 for x0 <= 0.7, but reaches 9 in between:
/// an input with x0 = 6 predicts fine (and its baseline, zeros, too), while the straight
/// path to it passes indices 4 to 9, where ONNX Runtime's Gather fails ("out of data
/// bounds"). The lookup is not differentiable (its index is cast to int64), so the gradient
/// graph keeps it as is: the step model evaluates it at every alpha.
fn faulty_path_model() -> Vec<u8> {
    use onnx::tensor_proto::DataType;
    let floats = |name: &str, dims: &[i64], values: &[f32]| onnx::TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Float as i32),
        float_data: values.to_vec(),
        ..Default::default()
    };
    let ints = |name: &str, values: &[i64]| onnx::TensorProto {
        name: Some(name.into()),
        dims: vec![values.len() as i64],
        data_type: Some(DataType::Int64 as i32),
        int64_data: values.to_vec(),
        ..Default::default()
    };
    let attr = |name: &str, value: i64| onnx::AttributeProto {
        name: Some(name.into()),
        r#type: Some(onnx::attribute_proto::AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    };
    let node = |op: &str, inputs: &[&str], output: &str, attrs: Vec<onnx::AttributeProto>| {
        onnx::NodeProto {
            op_type: Some(op.into()),
            name: Some(output.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute: attrs,
            ..Default::default()
        }
    };
    let table: Vec<f32> = (0..12).map(|i| i as f32 / 10.0).collect();
    let graph = onnx::GraphProto {
        name: Some("faulty-path".into()),
        node: vec![
            node("Gather", &["x", "first"], "x0", vec![attr("axis", 1)]),
            node("Sub", &["six", "x0"], "rest", vec![]),
            node("Mul", &["x0", "rest"], "k", vec![]),
            node(
                "Cast",
                &["k"],
                "index",
                vec![attr("to", DataType::Int64 as i64)],
            ),
            node(
                "Gather",
                &["table", "index"],
                "looked",
                vec![attr("axis", 0)],
            ),
            node("Reshape", &["looked", "rows"], "bias", vec![]),
            node("MatMul", &["x", "W"], "scores", vec![]),
            node("Add", &["scores", "bias"], "logits", vec![]),
        ],
        initializer: vec![
            floats("W", &[2, 3], &[1.0, 0.0, -1.0, 0.0, 2.0, 0.0]),
            floats("table", &[4, 3], &table),
            floats("six", &[1], &[6.0]),
            ints("first", &[0]),
            ints("rows", &[-1, 3]),
        ],
        input: vec![value_info("x", &[None, Some(2)])],
        output: vec![value_info("logits", &[None, Some(3)])],
        ..Default::default()
    };
    model_bytes(graph)
}

fn tensor_input(values: [f32; 2]) -> Option<pb::Input> {
    tensor_request("faulty", &[2], &values).input
}

/// Merged gradient runs on `worker`: (runs, jobs) from /metrics.
fn merged(metrics: std::net::SocketAddr, worker: &str) -> (f64, f64) {
    let samples = parse(&scrape(metrics).1);
    let labels = [("worker", worker)];
    (
        value(&samples, "integrad_batch_jobs_count", &labels),
        value(&samples, "integrad_batch_jobs_sum", &labels),
    )
}

/// Reads an Explain to its end: its explanations, or the status that ended it.
async fn explain_to_end(
    url: String,
    request: pb::ExplainRequest,
) -> Result<Vec<pb::Explanation>, tonic::Status> {
    let mut client = ExplainerClient::connect(url).await.unwrap();
    let mut stream = client.explain(request).await?.into_inner();
    let mut results = Vec::new();
    while let Some(event) = stream.message().await? {
        if let Some(pb::explain_event::Event::Result(r)) = event.event {
            results.push(r);
        }
    }
    Ok(results)
}

/// ONNX Runtime fails in the middle of a merged gradient run (the batcher put a request whose
/// path breaks the model together with a healthy one): the broken request gets INTERNAL with
/// ONNX Runtime's message, the healthy one its right answer (the worker runs the jobs of a
/// failed merged run one by one), and later requests are served.
#[tokio::test]
async fn should_fail_only_the_request_that_breaks_a_merged_gradient_run() {
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir(repo.path().join("faulty")).unwrap();
    std::fs::write(repo.path().join("faulty/model.onnx"), faulty_path_model()).unwrap();
    let metrics = free_address();
    // NOTE: a long max delay: while the healthy Explain is running, the worker waits for the
    // broken one's job rather than run its own alone, so the two surely share a run.
    let server = BinaryServer::start(&[
        "--models",
        repo.path().to_str().unwrap(),
        "--batching",
        "on",
        "--batch-max-rows",
        "256",
        "--batch-max-delay-us",
        "2000000",
        "--metrics-listen",
        &metrics.to_string(),
    ])
    .await;
    let class = |c: i64| {
        Some(pb::Target {
            kind: Some(pb::target::Kind::ClassIndex(c)),
        })
    };
    // Thousands of one-row runs: it is still running when the broken request comes.
    let healthy = pb::ExplainRequest {
        model: "faulty".into(),
        input: tensor_input([0.5, 0.5]),
        target: class(0),
        method: pb::Method::Trapezoid as i32,
        steps: Some(4096),
        batch_size: 1,
        ..Default::default()
    };
    let broken = pb::ExplainRequest {
        input: tensor_input([6.0, 0.5]),
        steps: Some(8),
        batch_size: 8,
        ..healthy.clone()
    };
    let mut client = ExplainerClient::connect(server.url.clone()).await.unwrap();
    // Its input and its baseline are fine: only the path between them breaks the model.
    client
        .predict(tensor_request("faulty", &[2], &[6.0, 0.5]))
        .await
        .expect("the broken request's input predicts");

    let before = merged(metrics, "faulty-grad");
    let mut running = client.explain(healthy.clone()).await.unwrap().into_inner();
    let first = running.message().await.unwrap().unwrap();
    assert!(matches!(
        first.event,
        Some(pb::explain_event::Event::Progress(_))
    ));
    let healthy_task = tokio::spawn(async move {
        let mut results = Vec::new();
        while let Some(event) = running.message().await.unwrap() {
            if let Some(pb::explain_event::Event::Result(r)) = event.event {
                results.push(r);
            }
        }
        results
    });
    let failed = explain_to_end(server.url.clone(), broken.clone())
        .await
        .expect_err("the broken path fails");
    assert!(
        !healthy_task.is_finished(),
        "the healthy Explain was still running when the broken one failed (so they shared runs)"
    );
    assert_eq!(failed.code(), tonic::Code::Internal, "{failed:?}");
    assert!(
        failed.message().contains("ONNX Runtime failed on model")
            && failed.message().contains("out of data bounds"),
        "the status carries ONNX Runtime's message: {failed:?}"
    );
    let merged_results = healthy_task.await.unwrap();
    assert_eq!(merged_results.len(), 1);
    let after = merged(metrics, "faulty-grad");
    let (runs, jobs) = (after.0 - before.0, after.1 - before.1);
    assert!(
        runs < jobs,
        "no gradient run was merged: {runs} runs, {jobs} jobs"
    );

    // Later requests: the healthy one alone gives what it gave while merged, the broken one
    // alone fails the same way, and Predict serves.
    let alone = explain_to_end(server.url.clone(), healthy).await.unwrap();
    let attributions = |e: &pb::Explanation| {
        let t = e.attributions.as_ref().unwrap();
        t.data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect::<Vec<_>>()
    };
    // The same rows through the same graph, the sums block-diagonal: float32 rounding at
    // most (tests/it/batching.rs); a row of the broken request's path mixed into the healthy
    // one's sums would move them by far more.
    let d = relative_l2(&attributions(&merged_results[0]), &attributions(&alone[0]));
    assert!(d < 1e-5, "merged and alone differ: relative L2 {d}");
    let again = explain_to_end(server.url.clone(), broken)
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::Internal, "{again:?}");
    client
        .predict(tensor_request("faulty", &[2], &[0.5, 0.5]))
        .await
        .expect("the model still serves");
}

/// The CPU seconds process `pid` has used so far (user and system, from /proc).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (in parentheses, which may hold spaces).
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // NOTE: USER_HZ is 100 on every Linux this runs on (it is fixed in the kernel's ABI).
    ticks / 100.0
}

/// The resident memory of process `pid`, in MB.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<f64>()
        .unwrap()
        / 1024.0
}

/// A client that stops reading an ExplainBatch of images (128 results of 600 kB of
/// attributions each) after its first event, and later goes away. The stream's buffer is
/// bounded (ExplainJob::events_buffered), so the work pauses: the server's CPU goes idle and
/// its RSS stays flat while results remain to compute; other clients are served meanwhile;
/// reading again resumes the work; and when the client goes away its slot is freed.
#[tokio::test]
async fn should_pause_for_a_slow_reader_and_free_its_slot_when_it_leaves() {
    let repo = demo_repository(&["efficientnet-lite0", "penguins"]);
    let server = BinaryServer::start(&[
        "--models",
        repo.path().to_str().unwrap(),
        "--max-concurrent-explains",
        "1",
        "--max-queued-explains",
        "0",
    ])
    .await;
    let pid = server.pid();
    let connect = || async {
        ExplainerClient::connect(server.url.clone())
            .await
            .unwrap()
            .max_encoding_message_size(64 << 20)
            .max_decoding_message_size(64 << 20)
    };
    let photo = || {
        Some(pb::Input {
            kind: Some(pb::input::Kind::Image(sample("rocket.jpg"))),
        })
    };
    let instances = 128;
    let request = pb::ExplainBatchRequest {
        request: Some(pb::ExplainRequest {
            model: "efficientnet-lite0".into(),
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::ClassIndex(0)),
            }),
            steps: Some(1),
            ..Default::default()
        }),
        instances: (0..instances)
            .map(|_| pb::Instance {
                input: photo(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let mut slow = connect().await;
    let mut stream = slow.explain_batch(request).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();

    // Paused: under a tenth of a CPU second used in 2 s (a gradient run of 16 rows takes
    // about a second of both cores), for at most two minutes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut last = cpu_seconds(pid);
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let now = cpu_seconds(pid);
        if now - last < 0.1 {
            break;
        }
        last = now;
        assert!(
            std::time::Instant::now() < deadline,
            "the work never paused for the slow reader"
        );
    }
    // Flat while paused: nothing is computed or buffered any more. 8 MB is a small fraction
    // of what 16 more results (one gradient run's) would take, and above the allocator's noise.
    let rss = rss_mb(pid);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let grown = rss_mb(pid) - rss;
    assert!(grown < 8.0, "RSS grew {grown:.1} MB while paused");

    // Other clients are served meanwhile; the Explain slot is held by the slow reader.
    let mut other = connect().await;
    other
        .predict(image_request("efficientnet-lite0", sample("coffee.png"), 1))
        .await
        .expect("Predict is served while a reader stalls");
    let busy = other
        .explain(pb::ExplainRequest {
            model: "penguins".into(),
            input: Some(pb::Input {
                kind: Some(pb::input::Kind::Features(pb::FeatureRow {
                    values: [
                        ("bill_length_mm", 39.1),
                        ("bill_depth_mm", 18.7),
                        ("flipper_length_mm", 181.0),
                        ("body_mass_g", 3750.0),
                        ("island", 2.0),
                        ("sex", 1.0),
                    ]
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
                })),
            }),
            steps: Some(4),
            ..Default::default()
        })
        .await;
    match busy {
        Err(status) => assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}"),
        Ok(_) => panic!("the slow reader's slot was free"),
    }

    // Reading again resumes the work: more results than the buffers held come, computed now.
    let resumed_from = cpu_seconds(pid);
    let mut results = 0;
    for _ in 0..40 {
        match stream.message().await.unwrap() {
            Some(pb::ExplainEvent {
                event: Some(pb::explain_event::Event::Result(_)),
            }) => results += 1,
            Some(_) => {}
            None => break,
        }
    }
    assert!(results > 0, "results were buffered");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let worked = cpu_seconds(pid) - resumed_from;
    // Half a gradient run's CPU time at least: the work was waiting, not done.
    assert!(
        worked > 0.5,
        "reading again computed nothing ({worked:.2} s of CPU)"
    );
    // Gone: the rest of the batch (dozens of images) is abandoned, its slot freed.
    drop(stream);
    drop(slow);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let explained = other
            .explain(pb::ExplainRequest {
                model: "efficientnet-lite0".into(),
                input: photo(),
                steps: Some(1),
                target: Some(pb::Target {
                    kind: Some(pb::target::Kind::ClassIndex(0)),
                }),
                ..Default::default()
            })
            .await;
        match explained {
            Ok(_) => break,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => assert!(
                std::time::Instant::now() < deadline,
                "the slow reader's slot was not freed after it left"
            ),
            Err(status) => panic!("only busy, never failing: {status:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
