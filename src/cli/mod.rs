//! Client subcommands. Each runs against a server (`--server URL`) or in-process, through the
//! same [`Engine`](crate::engine::Engine) the server uses.

mod autodiff;
pub(crate) mod connect;
mod evaluate;
mod explain;
mod explain_batch;
mod fetch_weights;
pub mod json;
mod predict;

pub use autodiff::{run_autodiff, AutodiffArgs};
pub use connect::{connect, BearerToken, Client, ConnectArgs};
pub use evaluate::{run_evaluate, EvaluateArgs};
pub use explain::{run_explain, ExplainArgs, ExplainOptions};
pub use explain_batch::{run_explain_batch, ExplainBatchArgs};
pub use fetch_weights::{run_fetch_weights, FetchWeightsArgs};
pub use predict::{run_predict, PredictArgs};

use std::collections::HashMap;
use std::path::Path;

use crate::npy::{self, NpyArray};
use crate::proto::integrad::v1 as pb;

/// What every client command takes: the input, and where the model runs.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub endpoint: Endpoint,
}

/// One instance's input: an image, a tensor, a feature row, or tensors by input name.
#[derive(Debug, Clone, clap::Args)]
pub struct InputArgs {
    /// An image file (PNG, JPEG, WebP, BMP, GIF).
    #[arg(required_unless_present_any = ["tensor", "features", "features_json", "inputs", "text"],
          conflicts_with_all = ["tensor", "features", "features_json", "text"])]
    pub image: Option<std::path::PathBuf>,
    /// A preprocessed input tensor (.npy, without the batch dimension).
    #[arg(long, conflicts_with_all = ["features", "features_json", "text"])]
    pub tensor: Option<std::path::PathBuf>,
    /// A text, for a text model (one with a tokenizer.json).
    #[arg(long, conflicts_with_all = ["features", "features_json"])]
    pub text: Option<String>,
    /// A second text for the same model input (a question's context, say).
    #[arg(long, requires = "text")]
    pub pair: Option<String>,
    /// A tabular row: NAME=VALUE,NAME=VALUE,... (every feature of the model, once).
    #[arg(long, conflicts_with = "features_json")]
    pub features: Option<String>,
    /// A tabular row as a JSON object {"NAME": VALUE, ...}, or @FILE holding one.
    #[arg(long)]
    pub features_json: Option<String>,
    /// A tensor for one graph input of a model with several: NAME=FILE.npy (repeatable).
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    pub inputs: Vec<String>,
}

/// Where the model runs: a server, or in-process over a model repository.
#[derive(Debug, Clone, clap::Args)]
pub struct Endpoint {
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

impl InputArgs {
    /// The request's `input` (an image, a tensor or a feature row) and `inputs` (by name).
    pub fn read(&self) -> anyhow::Result<(Option<pb::Input>, HashMap<String, pb::Input>)> {
        let mut inputs = HashMap::new();
        for spec in &self.inputs {
            let (name, file) = spec
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--input {spec:?}: expected NAME=FILE.npy"))?;
            let input = read_input(None, Some(Path::new(file)))?;
            anyhow::ensure!(
                inputs.insert(name.to_string(), input).is_none(),
                "--input {name:?} is given twice"
            );
        }
        let row = match (&self.features, &self.features_json) {
            (Some(list), _) => Some(parse_feature_list(list)?),
            (None, Some(json)) => Some(parse_feature_json(json)?),
            (None, None) => None,
        };
        if let Some(text) = &self.text {
            let input = pb::Input {
                kind: Some(pb::input::Kind::Text(pb::Text {
                    text: text.clone(),
                    pair: self.pair.clone().unwrap_or_default(),
                })),
            };
            return Ok((Some(input), inputs));
        }
        let input = match (row, &self.image, &self.tensor) {
            (Some(values), _, _) => Some(pb::Input {
                kind: Some(pb::input::Kind::Features(pb::FeatureRow { values })),
            }),
            (None, None, None) => None,
            (None, image, tensor) => Some(read_input(image.as_deref(), tensor.as_deref())?),
        };
        Ok((input, inputs))
    }
}

/// `NAME=VALUE,NAME=VALUE,...` as feature values (each name once).
fn parse_feature_list(list: &str) -> anyhow::Result<HashMap<String, f64>> {
    let mut values = HashMap::new();
    for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--features: {pair:?} is not NAME=VALUE"))?;
        let number: f64 = value.trim().parse().map_err(|_| {
            anyhow::anyhow!("--features: the value of {name:?} is {value:?}, not a number")
        })?;
        anyhow::ensure!(
            values.insert(name.trim().to_string(), number).is_none(),
            "--features: {name:?} is given twice"
        );
    }
    Ok(values)
}

/// A JSON object of numbers (or `@FILE` holding one) as feature values.
fn parse_feature_json(json: &str) -> anyhow::Result<HashMap<String, f64>> {
    let text = match json.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("--features-json {file}: {e}"))?,
        None => json.to_string(),
    };
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("--features-json: not JSON: {e}"))?;
    feature_values(&value).map_err(|e| anyhow::anyhow!("--features-json: {e}"))
}

/// A JSON object `{name: number}` as feature values.
pub fn feature_values(value: &serde_json::Value) -> Result<HashMap<String, f64>, String> {
    let object = value
        .as_object()
        .ok_or_else(|| "expected an object {\"feature\": value, ...}".to_string())?;
    object
        .iter()
        .map(|(name, v)| match v.as_f64() {
            Some(number) => Ok((name.clone(), number)),
            None => Err(format!("the value of {name:?} is {v}, not a number")),
        })
        .collect()
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
/// The models in this process, with gradient models for `explained` only: `Some(model)` (""
/// for the default), or None for a command that only predicts.
pub async fn local_engine(
    models: &crate::config::ModelArgs,
    runtime: &crate::config::RuntimeArgs,
    explained: Option<&str>,
) -> anyhow::Result<std::sync::Arc<crate::engine::Engine>> {
    let source = models.source();
    let runtime = runtime.clone();
    let explained = explained.map(|m| (!m.is_empty()).then(|| m.to_string()));
    let (repository, explainers) = tokio::task::spawn_blocking(move || {
        use crate::explain::gradients::Explained;
        crate::server::load_repository(
            &source,
            &runtime.runtime_options(),
            &runtime.load_options(),
            None,
            match &explained {
                Some(model) => Explained::Only(model.as_deref()),
                None => Explained::None,
            },
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
