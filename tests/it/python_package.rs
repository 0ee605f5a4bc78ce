//! The Python client package (clients/python): pip builds and installs it into a venv (not
//! editable, so its stubs are generated from proto/ by the build, as for a user), then its
//! pytest suite runs against the real `integrad serve` binary and the demo models (its
//! fixtures start the servers), shap and LIT (lit-nlp) included.
//!
//! The Python is `$INTEGRAD_TEST_PYTHON_PACKAGE` (the client is installed into it), else a
//! venv this test makes with clients/python/requirements-test.txt. It never skips: missing
//! packages, a failed build or a failed or skipped Python test fail it with pytest's output.

use crate::common;

use std::process::Command;
use std::time::Instant;

use common::*;

#[test]
fn should_pass_the_python_client_package_tests() {
    let started = Instant::now();
    let python = python_venv(
        "INTEGRAD_TEST_PYTHON_PACKAGE",
        "python-package",
        "clients/python/requirements-test.txt",
        "import pytest, shap, lit_nlp, matplotlib",
    );
    // Reinstalled on every run, so the wheel is built from the current proto/ and sources;
    // its dependencies are the requirements file's, installed above.
    let install = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--force-reinstall",
            "--no-deps",
        ])
        .arg(root().join("clients/python"))
        .output()
        .expect("pip runs");
    assert!(
        install.status.success(),
        "pip install ./clients/python failed ({})\n{}{}",
        install.status,
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );
    let installed = started.elapsed();

    let tests = Command::new(&python)
        // -p no:cacheprovider: leave no .pytest_cache in the source tree.
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(root().join("clients/python/tests"))
        .env("INTEGRAD_BIN", binary())
        .env("INTEGRAD_MODELS", demo_models())
        .env("MPLBACKEND", "Agg")
        .current_dir(root().join("clients/python"))
        .output()
        .expect("pytest runs");
    let stdout = String::from_utf8_lossy(&tests.stdout);
    let stderr = String::from_utf8_lossy(&tests.stderr);
    assert!(
        tests.status.success(),
        "pytest clients/python/tests failed ({})\n{stdout}\n{stderr}",
        tests.status
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.contains(" passed") && !summary.contains("skipped") && !summary.contains("xfail"),
        "every Python test must run and pass: {summary}\n{stdout}"
    );
    eprintln!(
        "python package: venv and install {:.0?}, pytest {:.0?}: {summary}",
        installed,
        started.elapsed() - installed
    );
}
