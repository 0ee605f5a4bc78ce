//! Graceful shutdown of the real binary on SIGTERM: an Explain in flight finishes within the
//! grace period; one still running when the grace period ends is cancelled with UNAVAILABLE;
//! either way the process exits cleanly.

use crate::common;

use common::*;
use integrad::proto::integrad::v1 as pb;
use tonic::Code;

/// `integrad serve` on a free port with `args`, SERVING, logging JSON lines to `log`.
async fn serve(args: &[&str], log: &std::path::Path) -> (Process, String) {
    let address = free_address().to_string();
    let mut command = std::process::Command::new(binary());
    command
        .args(["serve", "--listen", &address, "--log-format", "json"])
        .args(["--models", demo_models().to_str().unwrap()])
        .args(args)
        .env_remove("INTEGRAD_CONFIG")
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(log).unwrap());
    let child = Process::spawn(&mut command);
    let url = format!("http://{address}");
    wait_serving(&url, None).await;
    (child, url)
}

/// Every line the server wrote to stderr, each one checked to be a JSON log record: nothing
/// (ONNX Runtime's own messages included) leaves the log format.
fn log_records(log: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a stderr line outside the log format ({e}): {line}"))
        })
        .collect()
}

#[tokio::test]
async fn should_let_an_explain_in_flight_finish_after_sigterm() {
    // A grace period far longer than the Explain could take here, so that it must finish.
    let log = tempfile::NamedTempFile::new().unwrap();
    let (mut child, url) = serve(&["--shutdown-grace", "600"], log.path()).await;
    // 64 steps: several batches, so SIGTERM lands mid-way.
    let mut stream = explain_in_flight(&url, 64).await;
    sigterm(&child);
    let mut results = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(pb::explain_event::Event::Result(r)) = event.event {
            results.push(r);
        }
    }
    assert_eq!(
        results.len(),
        1,
        "the Explain finished with its explanation"
    );
    assert_eq!(results[0].steps, 64);
    let status = exit_status(&mut child).await;
    assert!(status.success(), "{status}");
    log_records(log.path());
}

#[tokio::test]
async fn should_cancel_an_explain_still_running_when_the_grace_period_ends() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let (mut child, url) = serve(&["--shutdown-grace", "0"], log.path()).await;
    // The most steps allowed: minutes of work, so it is still running when the grace
    // period (none) ends.
    let mut stream = explain_in_flight(&url, 4096).await;
    sigterm(&child);
    let ended = loop {
        match stream.message().await {
            Ok(Some(event)) => assert!(
                matches!(event.event, Some(pb::explain_event::Event::Progress(_))),
                "the 4096-step Explain finished"
            ),
            Ok(None) => panic!("the stream ended without an explanation or an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(
        ended.message().contains("grace period"),
        "{}",
        ended.message()
    );
    let status = exit_status(&mut child).await;
    assert!(status.success(), "{status}");
    // The cancelled Explain's last gradient run ends before the process does: before, the
    // process exited under it and ONNX Runtime printed a raw error line after "stopped".
    let records = log_records(log.path());
    let errors: Vec<_> = records.iter().filter(|r| r["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        records.last().unwrap()["fields"]["message"],
        "stopped",
        "{records:?}"
    );
}
