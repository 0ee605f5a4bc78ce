//! Shared by the benches: reading criterion's saved results back for the summaries they print.

use std::path::{Path, PathBuf};

/// The median of bench `name` in milliseconds, from criterion's saved estimates under the
/// target directory of the repository at `root`; None when that bench has not run.
pub fn median_ms(root: &Path, name: &str) -> Option<f64> {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let text = std::fs::read_to_string(
        target
            .join("criterion")
            .join(name)
            .join("new/estimates.json"),
    )
    .ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(json["median"]["point_estimate"].as_f64()? / 1e6)
}
