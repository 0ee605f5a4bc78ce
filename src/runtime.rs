//! ONNX Runtime that provisions itself.
//!
//! integrad loads ONNX Runtime dynamically (`ort`'s `load-dynamic`). The library comes from
//! the `onnxruntime==1.31.1` wheel on PyPI: on first use it is fetched with pip, checked
//! against pinned sha256 digests and cached, so a fresh machine needs no manual step. An
//! explicit path (`--ort-lib` or `ORT_DYLIB_PATH`) always wins and is used as given.
//! `--ort-flavour gpu` fetches `onnxruntime-gpu==1.31.1` instead: the main library and the
//! CUDA execution provider's libraries, together in one directory (see docs/devices.md).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};

/// The ONNX Runtime release integrad is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";
const LIBRARY_NAME: &str = "libonnxruntime.so.1.31.1";
/// Where a wheel keeps its libraries.
const LIBRARY_DIR_IN_WHEEL: &str = "onnxruntime/capi";

/// Which ONNX Runtime build to fetch when no library is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Flavour {
    /// `onnxruntime`: CPU only (about 17 MB download).
    #[default]
    Cpu,
    /// `onnxruntime-gpu`: CPU plus the CUDA 13 execution provider (about 256 MB download;
    /// CUDA 13 and cuDNN 9 libraries must be installed to use it).
    Gpu,
}

/// One pinned wheel: pip is asked for exactly this platform and Python tag, so the bytes (and
/// their digests) do not depend on the local Python.
struct PinnedWheel {
    package: &'static str,
    flavour: Flavour,
    arch: &'static str,
    platform: &'static str,
    python_version: &'static str,
    file_name: &'static str,
    wheel_sha256: &'static str,
    /// The libraries taken from the wheel, all into one directory (ONNX Runtime loads its
    /// execution providers from its own directory), and their sha256. The first is the main
    /// library.
    libraries: &'static [(&'static str, &'static str)],
}

const WHEELS: &[PinnedWheel] = &[
    PinnedWheel {
        package: "onnxruntime",
        flavour: Flavour::Cpu,
        arch: "x86_64",
        platform: "manylinux_2_28_x86_64",
        python_version: "3.11",
        file_name: "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl",
        wheel_sha256: "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f",
        libraries: &[(
            LIBRARY_NAME,
            "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3",
        )],
    },
    PinnedWheel {
        package: "onnxruntime-gpu",
        flavour: Flavour::Gpu,
        arch: "x86_64",
        platform: "manylinux_2_28_x86_64",
        python_version: "3.11",
        file_name: "onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl",
        wheel_sha256: "e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6",
        // NOTE: the TensorRT provider in the wheel is left out: it needs TensorRT's libraries.
        libraries: &[
            (
                LIBRARY_NAME,
                "5104254339ecadae808da771bd0b63b240f0dbd466514234905e54372435c303",
            ),
            (
                "libonnxruntime_providers_shared.so",
                "086ec1d5388f64153d9c63470d126693db9a182c8ce236d3a1119068471b8a0d",
            ),
            (
                "libonnxruntime_providers_cuda.so",
                "d5290158115fa5569a3fe8f1f4037ee9b0e86658a96e52f852bbb7039aa88137",
            ),
        ],
    },
];

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime library {path} does not exist (set by {source_of_path})")]
    MissingLibrary {
        path: PathBuf,
        source_of_path: &'static str,
    },
    #[error("no pinned ONNX Runtime {ORT_VERSION} build for this machine ({arch}); set ORT_DYLIB_PATH or --ort-lib to a libonnxruntime.so {ORT_VERSION}")]
    UnsupportedPlatform { arch: &'static str },
    #[error("could not fetch ONNX Runtime {ORT_VERSION} with pip ({command}): {reason}; set ORT_DYLIB_PATH or --ort-lib to a libonnxruntime.so {ORT_VERSION} instead")]
    Fetch { command: String, reason: String },
    #[error("{what} {path} has sha256 {actual}, expected {expected}; refusing to load it")]
    Checksum {
        what: &'static str,
        path: PathBuf,
        actual: String,
        expected: String,
    },
    #[error("ONNX Runtime cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("could not load ONNX Runtime from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
}

/// Where the library comes from, decided once per process.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// An explicit library path (flag); falls back to `ORT_DYLIB_PATH`, then the cache.
    pub library: Option<PathBuf>,
    /// The cache directory; falls back to `INTEGRAD_CACHE_DIR`, `$XDG_CACHE_HOME/integrad`,
    /// `$HOME/.cache/integrad`.
    pub cache_dir: Option<PathBuf>,
    /// Which wheel to fetch when no library is given.
    pub flavour: Flavour,
}

static ENVIRONMENT: OnceLock<Result<Arc<ort::environment::Environment>, String>> = OnceLock::new();
static LIBRARY: OnceLock<PathBuf> = OnceLock::new();

/// The library the process loaded, once [`environment`] has succeeded.
pub fn loaded_library() -> Option<&'static Path> {
    LIBRARY.get().map(PathBuf::as_path)
}

/// The process-wide ONNX Runtime environment, loading the library on first call.
///
/// ONNX Runtime can only be loaded once per process, so the first caller's options win and a
/// failure is remembered (and returned to every later caller) rather than retried.
pub fn environment(
    options: &RuntimeOptions,
) -> Result<Arc<ort::environment::Environment>, RuntimeError> {
    let loaded = ENVIRONMENT.get_or_init(|| load(options).map_err(|e| e.to_string()));
    loaded.clone().map_err(RuntimeError::Unavailable)
}

fn load(options: &RuntimeOptions) -> Result<Arc<ort::environment::Environment>, RuntimeError> {
    let path = locate_library(options)?;
    let builder = ort::init_from(&path).map_err(|e| RuntimeError::Load {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let env = builder
        .with_name("integrad")
        .with_logger(Arc::new(log_to_tracing))
        .build()
        .map_err(|e| RuntimeError::Load {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    env.set_log_level(ort_log_level());
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    let _ = LIBRARY.set(path);
    Ok(Arc::new(env))
}

/// The log target of ONNX Runtime's own messages.
pub const ORT_LOG_TARGET: &str = "onnxruntime";

/// ONNX Runtime's log callback: its messages become events of the process's log (in its format,
/// text or JSON, filtered by RUST_LOG) instead of lines of their own on stderr. Its INFO is
/// chatty session detail, so it is DEBUG here.
fn log_to_tracing(
    level: ort::logging::LogLevel,
    _category: &str,
    _id: &str,
    location: &str,
    message: &str,
) {
    use ort::logging::LogLevel;
    match level {
        LogLevel::Verbose => tracing::trace!(target: ORT_LOG_TARGET, location, "{message}"),
        LogLevel::Info => tracing::debug!(target: ORT_LOG_TARGET, location, "{message}"),
        // A run ends this way only when integrad terminates it (shutdown): expected, not a fault.
        _ if message.contains("terminate flag") => {
            tracing::debug!(target: ORT_LOG_TARGET, location, "{message}")
        }
        LogLevel::Warning => tracing::warn!(target: ORT_LOG_TARGET, location, "{message}"),
        LogLevel::Error | LogLevel::Fatal => {
            tracing::error!(target: ORT_LOG_TARGET, location, "{message}")
        }
    }
}

/// The least severe ONNX Runtime message passed to the log: `ORT_LOG` (verbose, info, warning,
/// error, fatal), else error. Messages below it are not even formatted by ONNX Runtime.
fn ort_log_level() -> ort::logging::LogLevel {
    use ort::logging::LogLevel;
    match std::env::var("ORT_LOG").as_deref() {
        Ok("verbose") => LogLevel::Verbose,
        Ok("info") => LogLevel::Info,
        Ok("warning") => LogLevel::Warning,
        Ok("fatal") => LogLevel::Fatal,
        _ => LogLevel::Error,
    }
}

/// Finds (or fetches) the library, without loading it.
pub fn locate_library(options: &RuntimeOptions) -> Result<PathBuf, RuntimeError> {
    if let Some(path) = &options.library {
        return existing(path, "--ort-lib");
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return existing(Path::new(&path), "ORT_DYLIB_PATH");
    }
    let pinned = WHEELS
        .iter()
        .find(|w| w.arch == std::env::consts::ARCH && w.flavour == options.flavour)
        .ok_or(RuntimeError::UnsupportedPlatform {
            arch: std::env::consts::ARCH,
        })?;
    let dir = cache_dir(options).join(format!("{}-{ORT_VERSION}", pinned.package));
    let library = dir.join(LIBRARY_NAME);
    // NOTE: every library is checked on every start (about 1 s for the GPU flavour's 300 MB):
    // these are native code loaded into the process.
    if pinned
        .libraries
        .iter()
        .all(|(name, _)| dir.join(name).exists())
    {
        for (name, sha256) in pinned.libraries {
            verify(&dir.join(name), sha256, "cached ONNX Runtime library")?;
        }
        return Ok(library);
    }
    fetch(pinned, &dir)?;
    Ok(library)
}

fn existing(path: &Path, source_of_path: &'static str) -> Result<PathBuf, RuntimeError> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(RuntimeError::MissingLibrary {
            path: path.to_path_buf(),
            source_of_path,
        })
    }
}

/// The cache directory of this process: the one ONNX Runtime was provisioned with (the
/// options'), else the default of the environment.
pub fn cache_dir_in_use() -> PathBuf {
    CACHE_DIR
        .get()
        .cloned()
        .unwrap_or_else(|| cache_dir(&RuntimeOptions::default()))
}

static CACHE_DIR: OnceLock<PathBuf> = OnceLock::new();

fn cache_dir(options: &RuntimeOptions) -> PathBuf {
    if let Some(dir) = &options.cache_dir {
        let _ = CACHE_DIR.set(dir.clone());
        return dir.clone();
    }
    if let Some(dir) = std::env::var_os("INTEGRAD_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("integrad");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("integrad")
}

/// Downloads the pinned wheel with pip, checks it, and moves its libraries into `dir`.
fn fetch(pinned: &PinnedWheel, dir: &Path) -> Result<(), RuntimeError> {
    let cache_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RuntimeError::Cache { path, source }
    };
    std::fs::create_dir_all(dir).map_err(cache_err(dir))?;
    // NOTE: a per-process scratch directory keeps concurrent first runs (parallel tests) from
    // seeing each other's half-written files; the final rename is atomic.
    let scratch = dir.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(cache_err(&scratch))?;
    let result = fetch_into(pinned, dir, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// `pip download` of one wheel (`requirement`, no dependencies, binary only, `extra` flags)
/// into `dest`, with `$INTEGRAD_PYTHON` or python3; Err is (the command, why it failed).
pub fn pip_download(
    requirement: &str,
    extra: &[&str],
    dest: &Path,
) -> Result<(), (String, String)> {
    let python = std::env::var("INTEGRAD_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let mut args = vec![
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
    ];
    args.extend(extra);
    args.push("--dest");
    let command = format!(
        "{python} {} {} {requirement}",
        args.join(" "),
        dest.display()
    );
    tracing::info!(target: crate::telemetry::FIRST_RUN, %command, "fetching a pinned wheel (first run only)");
    let output = Command::new(&python)
        .args(&args)
        .arg(dest)
        .arg(requirement)
        .output()
        .map_err(|e| (command.clone(), e.to_string()))?;
    if !output.status.success() {
        let reason = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err((command, reason));
    }
    Ok(())
}

fn fetch_into(pinned: &PinnedWheel, dir: &Path, scratch: &Path) -> Result<(), RuntimeError> {
    let requirement = format!("{}=={ORT_VERSION}", pinned.package);
    let platform = [
        "--python-version",
        pinned.python_version,
        "--platform",
        pinned.platform,
    ];
    pip_download(&requirement, &platform, scratch)
        .map_err(|(command, reason)| RuntimeError::Fetch { command, reason })?;
    let command = format!("pip download {requirement}");
    let wheel = scratch.join(pinned.file_name);
    verify(&wheel, pinned.wheel_sha256, "downloaded wheel")?;

    let file = std::fs::File::open(&wheel).map_err(|source| RuntimeError::Cache {
        path: wheel.clone(),
        source,
    })?;
    let zip_err = |e: zip::result::ZipError| RuntimeError::Fetch {
        command: command.clone(),
        reason: format!("reading {}: {e}", wheel.display()),
    };
    let mut archive = zip::ZipArchive::new(file).map_err(zip_err)?;
    // Staged first, all checked, then renamed: a cache directory never holds a partial set.
    for (name, sha256) in pinned.libraries {
        let mut entry = archive
            .by_name(&format!("{LIBRARY_DIR_IN_WHEEL}/{name}"))
            .map_err(zip_err)?;
        let staged = scratch.join(name);
        let mut out = std::fs::File::create(&staged).map_err(|source| RuntimeError::Cache {
            path: staged.clone(),
            source,
        })?;
        std::io::copy(&mut entry, &mut out).map_err(|source| RuntimeError::Cache {
            path: staged.clone(),
            source,
        })?;
        drop(out);
        verify(&staged, sha256, "library extracted from the wheel")?;
    }
    // The main library goes last: its presence is what marks the cache complete.
    for (name, _) in pinned.libraries.iter().rev() {
        let target = dir.join(name);
        std::fs::rename(scratch.join(name), &target).map_err(|source| RuntimeError::Cache {
            path: target.clone(),
            source,
        })?;
    }
    let library = dir.join(LIBRARY_NAME);
    tracing::info!(target: crate::telemetry::FIRST_RUN, library = %library.display(), "ONNX Runtime cached");
    Ok(())
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn verify(path: &Path, expected: &str, what: &'static str) -> Result<(), RuntimeError> {
    let actual = sha256_file(path).map_err(|source| RuntimeError::Cache {
        path: path.to_path_buf(),
        source,
    })?;
    if actual == expected {
        Ok(())
    } else {
        Err(RuntimeError::Checksum {
            what,
            path: path.to_path_buf(),
            actual,
            expected: expected.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tampered_cache_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lib_dir = dir.path().join(format!("onnxruntime-{ORT_VERSION}"));
        std::fs::create_dir_all(&lib_dir).unwrap();
        std::fs::write(lib_dir.join(LIBRARY_NAME), b"not a library").unwrap();
        let options = RuntimeOptions {
            library: None,
            cache_dir: Some(dir.path().to_path_buf()),
            flavour: Flavour::Cpu,
        };
        // ORT_DYLIB_PATH would bypass the cache; this test only runs the cache branch when it is unset.
        if std::env::var_os("ORT_DYLIB_PATH").is_none() {
            let err = locate_library(&options).unwrap_err();
            assert!(matches!(err, RuntimeError::Checksum { .. }), "{err}");
        }
    }

    #[test]
    fn missing_explicit_library_is_a_clear_error() {
        let options = RuntimeOptions {
            library: Some(PathBuf::from("/nonexistent/libonnxruntime.so")),
            cache_dir: None,
            flavour: Flavour::Cpu,
        };
        let err = locate_library(&options).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/libonnxruntime.so"),
            "{err}"
        );
    }
}
