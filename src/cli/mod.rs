//! Client subcommands. Each runs against a server (`--server URL`) or in-process, through the
//! same [`Engine`](crate::engine::Engine) the server uses.

mod autodiff;
mod connect;
mod explain;
mod predict;

pub use autodiff::{run_autodiff, AutodiffArgs};
pub use connect::{connect, BearerToken, Client, ConnectArgs};
pub use explain::{run_explain, ExplainArgs};
pub use predict::{run_predict, PredictArgs};

use std::path::Path;

use crate::npy::{self, NpyArray};
use crate::proto::integrad::v1 as pb;

/// What every client command takes: the input, and where the model runs.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// An image file (PNG, JPEG, WebP, BMP, GIF).
    #[arg(required_unless_present = "tensor", conflicts_with = "tensor")]
    pub image: Option<std::path::PathBuf>,
    /// A preprocessed input tensor (.npy, without the batch dimension).
    #[arg(long)]
    pub tensor: Option<std::path::PathBuf>,
    /// A running integrad server, e.g. http://127.0.0.1:50051 [default: run in-process].
    #[arg(long, env = "INTEGRAD_SERVER", conflicts_with_all = ["models", "model_file"])]
    pub server: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The model to use [default: the default model].
    #[arg(long)]
    pub model: Option<String>,
    #[command(flatten)]
    pub models: crate::config::ModelArgs,
    #[command(flatten)]
    pub runtime: crate::config::RuntimeArgs,
}

/// Reads an image file or a `.npy` tensor into the API's `Input`.
pub fn read_input(image: Option<&Path>, tensor: Option<&Path>) -> anyhow::Result<pb::Input> {
    let kind = match (image, tensor) {
        (Some(path), None) => pb::input::Kind::Image(
            std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        ),
        (None, Some(path)) => {
            let (shape, dtype, data): (Vec<usize>, pb::DataType, Vec<u8>) = match npy::read(path)? {
                NpyArray::F32 { shape, data } => (
                    shape,
                    pb::DataType::Float32,
                    data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ),
                NpyArray::I64 { shape, data } => (
                    shape,
                    pb::DataType::Int64,
                    data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ),
            };
            pb::input::Kind::Tensor(pb::Tensor {
                shape: shape.iter().map(|&d| d as i64).collect(),
                dtype: dtype as i32,
                data,
            })
        }
        _ => anyhow::bail!("give exactly one of IMAGE or --tensor FILE.npy"),
    };
    Ok(pb::Input { kind: Some(kind) })
}

/// An engine over the models of `models`, in this process (for commands without --server).
pub async fn local_engine(
    models: &crate::config::ModelArgs,
    runtime: &crate::config::RuntimeArgs,
) -> anyhow::Result<std::sync::Arc<crate::engine::Engine>> {
    let source = models.source();
    let runtime = runtime.clone();
    let (repository, explainers) = tokio::task::spawn_blocking(move || {
        crate::server::load_repository(
            &source,
            &runtime.runtime_options(),
            &runtime.load_options(),
            None,
        )
    })
    .await??;
    if let Some((name, reason)) = repository
        .failures()
        .next()
        .filter(|_| repository.len() == 1)
    {
        anyhow::bail!("model {name:?} failed to load: {reason}");
    }
    Ok(std::sync::Arc::new(crate::engine::Engine::new(
        std::sync::Arc::new(repository),
        explainers,
        Default::default(),
    )))
}
