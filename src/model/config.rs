//! `integrad.toml`: what a model needs that its ONNX graph does not say.
//!
//! ```toml
//! device = "cuda:0"             # optional: cpu, auto, cuda, cuda:N; default: the server's --device
//!
//! [input]
//! name = "input"                # default: the graph's first input
//! layout = "NCHW"               # the image fields below are all-or-nothing: without them
//! height = 224                  # the model takes tensors only
//! width = 224
//! resize = "shorter-side-crop"  # or "stretch"
//! crop_fraction = 0.875
//! scale = 0.00392156862745098   # value = (pixel * scale - mean[c]) / std[c]
//! mean = [0.485, 0.456, 0.406]
//! std = [0.229, 0.224, 0.225]
//!
//! [output]
//! name = "logits"               # default: the graph's first output
//! kind = "logits"               # or "probabilities", or "scores" (regression: raw values);
//!                               # default: read from the graph (a Softmax or Sigmoid output
//!                               # holds probabilities); a one-column output or one that ends
//!                               # in a Sigmoid is a sigmoid head, never a softmax
//! labels = "labels.txt"         # one class (or score) name per line, relative to this file
//!
//! [features]                    # tabular inputs: named columns, baselines, groups
//! files = { numeric = "features.txt", categorical = "categorical.txt" }
//!                               # column names of [batch, n] inputs, by input name; default:
//!                               # a features.txt beside the model names the only 2-D input
//! reference = "reference.csv"   # rows with a header of feature names: baseline statistics
//! baseline = "median"           # the default baseline: "median", "mean", "zeros" or "rows"
//! baseline_rows = 16            # "rows": IG averaged over this many reference rows
//! groups = { size = ["flipper_length_mm", "body_mass_g"] }  # reported summed as well
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::image::{Layout, Preprocessing, ResizePolicy};

pub const CONFIG_FILE: &str = "integrad.toml";

/// What is wrong with a model's `integrad.toml`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("[input] sets resize/crop_fraction but not the image fields (layout, height, width, scale, mean, std)")]
    ResizeWithoutImage,
    #[error("[input] describes an image but lacks {}", missing.join(", "))]
    PartialImage { missing: Vec<&'static str> },
    #[error("[input] {0}")]
    BadPreprocessing(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputKind {
    Logits,
    Probabilities,
    /// Raw values (regression, several outputs): no classes, no probabilities.
    Scores,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Where this model runs, overriding the server's `--device`.
    #[serde(default)]
    pub device: Option<crate::device::Device>,
    #[serde(default)]
    pub input: InputSection,
    #[serde(default)]
    pub output: OutputSection,
    #[serde(default)]
    pub features: FeaturesSection,
    /// For a text model: its tokenizer and the inputs a text fills.
    pub text: Option<crate::text::TextSection>,
    /// For a model in a Triton layout: its `config.pbtxt` and the version served.
    #[serde(skip)]
    pub triton: Option<super::triton::TritonModel>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSection {
    pub name: Option<String>,
    pub layout: Option<Layout>,
    pub height: Option<u32>,
    pub width: Option<u32>,
    pub resize: Option<ResizePolicy>,
    pub crop_fraction: Option<f32>,
    pub scale: Option<f32>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    pub name: Option<String>,
    pub kind: Option<OutputKind>,
    pub labels: Option<PathBuf>,
}

/// Named columns of tabular inputs, their reference rows and default baseline.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesSection {
    /// Files of column names (one per line), by graph input name, relative to this file.
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, PathBuf>,
    /// A CSV file whose header names features: the rows baseline statistics come from.
    pub reference: Option<PathBuf>,
    pub baseline: Option<TabularBaseline>,
    /// For `baseline = "rows"`: how many reference rows (expected gradients).
    pub baseline_rows: Option<u32>,
    /// Named groups of features, reported summed.
    #[serde(default)]
    pub groups: std::collections::BTreeMap<String, Vec<String>>,
}

/// A tabular model's default baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TabularBaseline {
    Zeros,
    Median,
    Mean,
    /// Reference rows themselves (expected gradients).
    Rows,
}

impl ModelConfig {
    /// Reads `path`; a missing file is an empty config (everything read from the graph).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                source: Box::new(e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

impl InputSection {
    /// The image preprocessing, if the section describes one; all its fields or none.
    pub fn preprocessing(&self) -> Result<Option<Preprocessing>, ConfigError> {
        let required = [
            ("layout", self.layout.is_some()),
            ("height", self.height.is_some()),
            ("width", self.width.is_some()),
            ("scale", self.scale.is_some()),
            ("mean", self.mean.is_some()),
            ("std", self.std.is_some()),
        ];
        let missing: Vec<&'static str> = required
            .iter()
            .filter(|(_, set)| !set)
            .map(|(name, _)| *name)
            .collect();
        if missing.len() == required.len() {
            if self.resize.is_some() || self.crop_fraction.is_some() {
                return Err(ConfigError::ResizeWithoutImage);
            }
            return Ok(None);
        }
        if !missing.is_empty() {
            return Err(ConfigError::PartialImage { missing });
        }
        let p = Preprocessing {
            layout: self.layout.unwrap_or(Layout::Nchw),
            height: self.height.unwrap_or_default(),
            width: self.width.unwrap_or_default(),
            resize: self.resize.unwrap_or_default(),
            crop_fraction: self.crop_fraction.unwrap_or(1.0),
            scale: self.scale.unwrap_or_default(),
            mean: self.mean.unwrap_or_default(),
            std: self.std.unwrap_or_default(),
        };
        p.validate().map_err(ConfigError::BadPreprocessing)?;
        Ok(Some(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_image_section_names_what_is_missing() {
        let config: ModelConfig =
            toml::from_str("[input]\nlayout = \"NCHW\"\nheight = 224\n").unwrap();
        let err = config.input.preprocessing().unwrap_err().to_string();
        assert!(err.contains("width") && err.contains("std"), "{err}");
    }

    #[test]
    fn device_is_read_and_checked() {
        let config: ModelConfig = toml::from_str("device = \"cuda:1\"\n[input]\n").unwrap();
        assert_eq!(config.device, Some(crate::device::Device::Cuda(1)));
        let err = toml::from_str::<ModelConfig>("device = \"tpu\"\n").unwrap_err();
        assert!(err.to_string().contains("cuda:N"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<ModelConfig>("[input]\nmaen = [0, 0, 0]\n").is_err());
    }
}
