//! The web viewer (`--web`, docs/web.md): a page that predicts and explains in a browser
//! through the HTTP API's own routes, so it shows exactly what any other client gets.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /` with `Accept: text/html` | the page (other clients still get KServe's liveness) |
//! | `GET /ui/{file}` | the page's scripts and style |
//! | `GET /ui/samples` | `{"samples": [{"name", "url"}]}`: the shipped sample photos |
//! | `GET /ui/samples/{name}` | one of them |
//! | `GET /ui/examples/{model}` | `{"rows": [...]}`: the model's example rows (`rows.jsonl`) |
//!
//! The page and the samples are compiled into the binary (no files to install beside it, and
//! nothing fetched at run time); the example rows are read from the model's directory, as the
//! model is.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::error::HttpError;
use super::HttpApi;

/// A file compiled into the binary: its name under `/ui/`, its content type, its bytes.
type Embedded = (&'static str, &'static str, &'static [u8]);

/// The page's files (hand-written ES modules and CSS: no build step).
const ASSETS: &[Embedded] = &[
    (
        "index.html",
        HTML,
        include_bytes!("../../../web/index.html"),
    ),
    ("app.js", JS, include_bytes!("../../../web/app.js")),
    ("api.js", JS, include_bytes!("../../../web/api.js")),
    ("charts.js", JS, include_bytes!("../../../web/charts.js")),
    ("inputs.js", JS, include_bytes!("../../../web/inputs.js")),
    ("results.js", JS, include_bytes!("../../../web/results.js")),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../web/style.css"),
    ),
];

/// The shipped sample photos (samples/LICENSE.md says where they come from).
const SAMPLES: &[Embedded] = &[
    (
        "chelsea.png",
        "image/png",
        include_bytes!("../../../samples/chelsea.png"),
    ),
    (
        "coffee.png",
        "image/png",
        include_bytes!("../../../samples/coffee.png"),
    ),
    (
        "rocket.jpg",
        "image/jpeg",
        include_bytes!("../../../samples/rocket.jpg"),
    ),
];

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// Example rows the page offers at most (a tabular model's editor starts from the first).
const MAX_EXAMPLE_ROWS: usize = 50;

/// The page loads only its own files; results' pictures come as data: URLs, dropped photos as
/// blob: URLs.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'";

/// The viewer's routes (`/` is [`super`]'s, which calls [`page_or_alive`]).
pub fn routes() -> Router<Arc<HttpApi>> {
    Router::new()
        .route("/ui/samples", get(list_samples))
        .route("/ui/samples/{name}", get(sample))
        .route("/ui/examples/{model}", get(examples))
        .route("/ui/{file}", get(asset))
}

/// Whether `path` is one of the viewer's open routes: the page, its files and the samples
/// need no token (they are the same for everyone); the example rows are model data and do.
pub fn is_open(path: &str) -> bool {
    path.starts_with("/ui/") && !path.starts_with("/ui/examples/")
}

/// `GET /` with the viewer on: the page for a browser, KServe's liveness for anything else
/// (a probe or KServe's client sends no `Accept: text/html`).
pub async fn page_or_alive(headers: HeaderMap) -> Response {
    let browser = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().starts_with("text/html"));
    if browser {
        embedded(ASSETS, "index.html")
    } else {
        super::liveness().into_response()
    }
}

/// The address to open in a browser for a server listening on `address`: a wildcard address
/// is reached on loopback.
pub fn viewer_url(address: std::net::SocketAddr, tls: bool) -> String {
    let mut address = address;
    if address.ip().is_unspecified() {
        address.set_ip(if address.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{address}/")
}

async fn asset(Path(file): Path<String>) -> Response {
    embedded(ASSETS, &file)
}

async fn sample(Path(name): Path<String>) -> Response {
    embedded(SAMPLES, &name)
}

async fn list_samples() -> Json<Value> {
    let samples: Vec<Value> = SAMPLES
        .iter()
        .map(|(name, _, _)| json!({ "name": name, "url": format!("ui/samples/{name}") }))
        .collect();
    Json(json!({ "samples": samples }))
}

/// One of `files` by name, or a JSON 404 naming the ones there are.
fn embedded(files: &[Embedded], name: &str) -> Response {
    let Some((_, content_type, bytes)) = files.iter().find(|(n, _, _)| *n == name) else {
        let names: Vec<&str> = files.iter().map(|(n, _, _)| *n).collect();
        return HttpError::new(
            tonic::Code::NotFound,
            format!("no file {name:?} here; there are {}", names.join(", ")),
        )
        .into_response();
    };
    let mut response = (StatusCode::OK, *bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Compiled in, so a new binary is the only thing that changes them: revalidate cheaply.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if *content_type == HTML {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
    }
    response
}

/// `GET /ui/examples/{model}`: the first rows of `rows.jsonl` beside the model file (a
/// tabular model's examples, one JSON object a line), `{"rows": []}` when there is none.
async fn examples(State(api): State<Arc<HttpApi>>, Path(model): Path<String>) -> Response {
    let info = match api.model_info(&api.model_name(&model)).await {
        Ok(info) => info,
        Err(error) => return error.into_response(),
    };
    let file = std::path::Path::new(&info.path).with_file_name("rows.jsonl");
    // A small file, but a disk read all the same: off the async threads.
    let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(file)).await;
    let rows: Vec<Value> = match read {
        Ok(Ok(text)) => text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(Value::is_object)
            .take(MAX_EXAMPLE_ROWS)
            .collect(),
        _ => Vec::new(),
    };
    Json(json!({ "model": info.name, "rows": rows })).into_response()
}
