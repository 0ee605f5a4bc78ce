//! Injected faults: a full disk under the CLI's `--out` (the files are links to `/dev/full`,
//! whose every write fails with ENOSPC), and HTTP clients that go away in the middle of a
//! streamed Explain. The CLI says which file could not be written and fails; the server
//! cancels the abandoned work and keeps serving.

use crate::common;

use std::io::Read;

use common::*;

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
