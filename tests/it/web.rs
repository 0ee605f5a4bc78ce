//! The web viewer (`--web`): its routes over plain HTTP, and the page itself in headless
//! Chromium driven by Playwright for Python (tests/python/web_viewer.py) against the real
//! binary and the demo models.
//!
//! The browser is the system's Chromium (Debian's `chromium` package, or
//! `$INTEGRAD_TEST_CHROMIUM`); Playwright comes from a venv this test makes with
//! tests/python/requirements-browser.txt (or `$INTEGRAD_TEST_BROWSER_PYTHON`) and never
//! downloads a browser of its own. Without Chromium the test fails saying how to install it:
//! it never skips.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use integrad::config::{Cli, Command as CliCommand};
use serde_json::Value;

fn get(url: &str, accept: &str) -> (u16, String, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(url).header("accept", accept).call().unwrap();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response
        .body_mut()
        .with_config()
        .limit(16 << 20)
        .read_to_vec()
        .unwrap();
    (response.status().as_u16(), content_type, body)
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

#[test]
fn should_turn_the_http_api_on_for_web_alone() {
    let serve = |args: &[&str]| {
        let mut argv = vec!["integrad", "serve"];
        argv.extend_from_slice(args);
        match Cli::parse_with_config(argv).unwrap().command {
            CliCommand::Serve(serve) => serve,
            _ => unreachable!(),
        }
    };
    assert_eq!(serve(&[]).http_address(), None);
    assert_eq!(
        serve(&["--web"]).http_address(),
        Some(integrad::config::WEB_HTTP_LISTEN)
    );
    assert_eq!(
        serve(&["--web", "--http-listen", "127.0.0.1:9000"])
            .http_address()
            .map(|a| a.to_string()),
        Some("127.0.0.1:9000".to_string())
    );
}

#[tokio::test]
async fn should_serve_the_page_to_browsers_and_liveness_to_the_rest() {
    let http = free_address().to_string();
    let models = demo_models();
    let models = models.to_str().unwrap();
    let plain = BinaryServer::start(&["--models", models, "--http-listen", &http]).await;
    let base = format!("http://{http}");
    let answers = tokio::task::spawn_blocking(move || {
        (
            get(&format!("{base}/"), "text/html"),
            get(&format!("{base}/ui/app.js"), "*/*"),
        )
    })
    .await
    .unwrap();
    // Without --web: KServe's liveness whatever the client accepts, and no page.
    assert_eq!(json(&answers.0 .2), serde_json::json!({"status": "alive"}));
    assert_eq!(answers.1 .0, 404);
    drop(plain);

    let http = free_address().to_string();
    let _server = BinaryServer::start(&["--models", models, "--http-listen", &http, "--web"]).await;
    let base = format!("http://{http}");
    tokio::task::spawn_blocking(move || {
        let (status, kind, page) = get(&format!("{base}/"), "text/html,application/xhtml+xml");
        assert_eq!((status, kind.as_str()), (200, "text/html; charset=utf-8"));
        assert!(String::from_utf8_lossy(&page).contains("ui/app.js"));
        // KServe's client and probes send no text/html: still the liveness answer.
        let (_, kind, alive) = get(&format!("{base}/"), "application/json");
        assert_eq!(kind, "application/json");
        assert_eq!(json(&alive), serde_json::json!({"status": "alive"}));
        for (path, expected) in [
            ("/ui/app.js", "text/javascript; charset=utf-8"),
            ("/ui/style.css", "text/css; charset=utf-8"),
            ("/ui/samples/chelsea.png", "image/png"),
            ("/ui/samples/rocket.jpg", "image/jpeg"),
        ] {
            let (status, kind, _) = get(&format!("{base}{path}"), "*/*");
            assert_eq!((status, kind.as_str()), (200, expected), "{path}");
        }
        let (_, _, samples) = get(&format!("{base}/ui/samples"), "*/*");
        let names: Vec<Value> = json(&samples)["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].clone())
            .collect();
        assert_eq!(
            names,
            ["chelsea.png", "coffee.png", "rocket.jpg"].map(Value::from)
        );
        let (_, _, rows) = get(&format!("{base}/ui/examples/penguins"), "*/*");
        assert_eq!(json(&rows)["rows"][0]["bill_length_mm"], 49.0);
        let (_, _, rows) = get(&format!("{base}/ui/examples/sentiment"), "*/*");
        assert_eq!(json(&rows)["rows"], serde_json::json!([]));
        let (status, _, missing) = get(&format!("{base}/ui/nothing.js"), "*/*");
        assert_eq!(status, 404);
        assert!(json(&missing)["error"].as_str().unwrap().contains("app.js"));
    })
    .await
    .unwrap();
}

/// The system's Chromium: `$INTEGRAD_TEST_CHROMIUM`, else `chromium` or `chromium-browser` on
/// the PATH.
fn chromium() -> PathBuf {
    if let Ok(path) = std::env::var("INTEGRAD_TEST_CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the web viewer's test needs Chromium: `apt-get install -y chromium` (Debian, \
                 as .ci/run does), or point INTEGRAD_TEST_CHROMIUM at a Chromium binary"
            )
        })
}

#[tokio::test]
async fn should_explain_a_photo_a_text_and_a_row_in_the_browser() {
    let chromium = chromium();
    let python = python_venv(
        "INTEGRAD_TEST_BROWSER_PYTHON",
        "python-browser",
        "tests/python/requirements-browser.txt",
        "import playwright.sync_api",
    );
    let http = free_address().to_string();
    let models = demo_models();
    // One Explain at a time and none queued: were a cancelled Explain still running, the
    // next one would be refused (429), which the script would see.
    let server = BinaryServer::start(&[
        "--models",
        models.to_str().unwrap(),
        "--http-listen",
        &http,
        "--web",
        "--max-concurrent-explains",
        "1",
        "--max-queued-explains",
        "0",
    ])
    .await;
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-viewer");
    let _ = std::fs::remove_dir_all(&out);
    let script = root().join("tests/python/web_viewer.py");
    let url = format!("http://{http}/");
    let run = {
        let out = out.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(python)
                .arg(script)
                .arg(&url)
                .arg(&chromium)
                .arg(&out)
                .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
                .output()
                .unwrap()
        })
    };
    let output = run.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "web_viewer.py failed ({}); screenshots in {}\nstdout: {stdout}\nstderr: {stderr}",
        output.status,
        out.display()
    );
    let seen: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {stdout}"));
    // The script checks the details; the essentials again from here.
    assert_eq!(seen["ok"], true, "{seen}");
    assert_eq!(seen["photo"]["label"], "Egyptian cat", "{seen}");
    assert!(
        seen["photo"]["progress_events"].as_u64().unwrap() >= 1,
        "{seen}"
    );
    assert_eq!(seen["techniques"]["blur_ig"], "blur ig", "{seen}");
    assert_eq!(seen["techniques"]["noise_samples"], "2", "{seen}");
    assert_eq!(seen["cancel"]["next"], "done", "{seen}");
    assert_eq!(
        seen["tabular"]["bars"].as_array().unwrap().len(),
        6,
        "{seen}"
    );
    for name in [
        "viewer-photo.png",
        "viewer-text.png",
        "viewer-tabular.png",
        "viewer-compare.png",
        "viewer-phone-top.png",
        "viewer-phone-result.png",
    ] {
        assert!(
            out.join(name).is_file(),
            "no screenshot {name} in {}",
            out.display()
        );
    }
    drop(server);
}
