//! Command-line and environment configuration. Every flag has an `INTEGRAD_*` variable; the
//! doc comments here are the `--help` text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::device::Device;
use crate::image::DecodeLimits;
use crate::model::LoadOptions;
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
    /// Serve the models over gRPC (integrad.v1.Explainer and grpc.health.v1.Health).
    Serve(ServeArgs),
    /// Classify an image or a tensor, through a server or in-process.
    Predict(crate::cli::PredictArgs),
    /// Explain a prediction with Integrated Gradients, through a server or in-process.
    Explain(crate::cli::ExplainArgs),
    /// Write the gradient model of an ONNX file (runs in any ONNX Runtime).
    Autodiff(crate::cli::AutodiffArgs),
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
    /// Let idle ONNX Runtime threads spin briefly before sleeping while a run is in progress
    /// (lower latency); false gives the cores back to neighbours at once on a crowded node.
    #[arg(long, env = "INTEGRAD_INTRA_SPIN", default_value_t = true, action = clap::ArgAction::Set)]
    pub intra_spin: bool,
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

    pub fn load_options(&self) -> LoadOptions {
        let mut options = LoadOptions {
            device: self.device,
            inter_threads: self.inter_threads.max(1),
            intra_spin: self.intra_spin,
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
    /// The model repository: one directory per model with model.onnx and integrad.toml
    /// [default: the built-in demo repository].
    #[arg(long, env = "INTEGRAD_MODELS", conflicts_with = "model_file")]
    pub models: Option<PathBuf>,
    /// Serve or run one ONNX file instead of a repository (configured by PATH.toml or an
    /// integrad.toml beside it, if present).
    #[arg(long, env = "INTEGRAD_MODEL_FILE")]
    pub model_file: Option<PathBuf>,
}

/// Where the models come from, resolved.
#[derive(Debug, Clone)]
pub enum ModelSource {
    Repository(PathBuf),
    File(PathBuf),
}

impl ModelArgs {
    pub fn source(&self) -> ModelSource {
        match (&self.model_file, &self.models) {
            (Some(file), _) => ModelSource::File(file.clone()),
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

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub models: ModelArgs,
    /// Address to listen on.
    #[arg(long, env = "INTEGRAD_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// The model for requests that name none [default: the only model, if there is one].
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
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl ServeArgs {
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits::with_max_pixels(self.max_image_pixels)
    }
}
