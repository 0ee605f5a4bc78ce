//! Triton model repositories: `<name>/config.pbtxt` and `<name>/<version>/model.onnx`, so the
//! volume Triton serves can be mounted into integrad unchanged.
//!
//! `config.pbtxt` is Triton's `inference.ModelConfig` in protobuf text format. It is parsed by
//! prost-reflect against Triton's own schema (`proto/triton/model_config.proto`, compiled by
//! `build.rs`), so what Triton refuses is refused here too, with the parser's words: an unknown
//! field, a value of the wrong type, an unknown enum name, a field set twice. Then
//! [`TritonConfig::from_text`] reads the fields integrad uses; a field that would change what
//! the model computes and that integrad does not implement (`reshape`, `sequence_batching`,
//! `ensemble_scheduling`...) refuses the model, and the other fields Triton knows (its
//! scheduling and tuning: `instance_group`, `dynamic_batching`...) are accepted and listed in
//! [`TritonConfig::ignored`].

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use prost_reflect::{DynamicMessage, MessageDescriptor};

use super::{DType, TensorSpec};

/// Rust types of Triton's `model_config.proto`: in the Open Inference Protocol's package
/// (`inference`, as in Triton), whose ModelConfig RPC returns them.
use crate::proto::inference as schema;

use schema::model_config::SchedulingChoice;
use schema::model_version_policy::PolicyChoice;

pub const TRITON_CONFIG_FILE: &str = "config.pbtxt";

/// `inference.ModelConfig`, the message a `config.pbtxt` is.
fn model_config_descriptor() -> MessageDescriptor {
    crate::proto::message_descriptor("inference.ModelConfig")
}

/// Why a Triton-layout model is not served.
#[derive(Debug, thiserror::Error)]
pub enum TritonError {
    #[error("{}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not Triton's `ModelConfig` in text format, in the parser's words: a syntax error, an
    /// unknown field or enum name, a value of the wrong type, a field set twice.
    #[error("{}{}: {reason}", .path.display(), position(.at))]
    Parse {
        path: PathBuf,
        /// Line and column (from 1) where the parser stopped, when it says.
        at: Option<(usize, usize)>,
        reason: String,
    },
    /// A value the schema allows but that cannot be served (Triton refuses it too).
    #[error("{}: {field} {reason}", .path.display())]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
    /// A field that would change what the model computes, which integrad does not implement:
    /// serving the model without it would answer differently from Triton.
    #[error("{}: {field} is not supported by integrad", .path.display())]
    Unsupported { path: PathBuf, field: String },
    #[error("{} names the model {configured:?} but its directory is {directory:?} (Triton requires them equal)", .path.display())]
    NameMismatch {
        path: PathBuf,
        configured: String,
        directory: String,
    },
    #[error("{}: platform {platform:?}: integrad serves ONNX models (platform \"onnxruntime_onnx\")", .path.display())]
    Platform { path: PathBuf, platform: String },
    #[error("{}: backend {backend:?}: integrad serves ONNX models (backend \"onnxruntime\")", .path.display())]
    Backend { path: PathBuf, backend: String },
    #[error("{} has no version directory the version policy allows (found {found:?}, policy {policy:?})", .dir.display())]
    NoVersion {
        dir: PathBuf,
        found: Vec<u64>,
        policy: VersionPolicy,
    },
    #[error("version {version} (the newest allowed) has no {}", .file.display())]
    MissingModelFile { version: u64, file: PathBuf },
    #[error("graph input {name:?} is not in config.pbtxt (integrad feeds every input)")]
    InputNotConfigured { name: String },
    #[error("config.pbtxt {what} {name:?} is not in the graph, whose {what}s are {graph:?}")]
    NotInGraph {
        what: &'static str,
        name: String,
        graph: Vec<String>,
    },
    #[error("config.pbtxt {what} {name:?} is {configured} but the graph's is {graph}")]
    DataType {
        what: &'static str,
        name: String,
        configured: String,
        graph: &'static str,
    },
    #[error("config.pbtxt {what} {name:?} has shape {shape:?} (max_batch_size {max_batch_size}), which does not fit the graph's {graph:?}")]
    Shape {
        what: &'static str,
        name: String,
        shape: Vec<i64>,
        max_batch_size: i64,
        graph: Vec<i64>,
    },
    #[error("config.pbtxt sets max_batch_size {max_batch_size} but the graph's {what} {name:?} has a fixed batch of {batch}")]
    FixedBatch {
        what: &'static str,
        name: String,
        max_batch_size: i64,
        batch: i64,
    },
}

fn position(at: &Option<(usize, usize)>) -> String {
    at.map(|(line, column)| format!(":{line}:{column}"))
        .unwrap_or_default()
}

/// What `config.pbtxt` says, as far as integrad uses it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TritonConfig {
    pub name: Option<String>,
    pub platform: Option<String>,
    pub backend: Option<String>,
    /// 0: the dims are the whole shape; above 0: a batch dimension precedes them.
    pub max_batch_size: i64,
    pub inputs: Vec<TritonTensor>,
    pub outputs: Vec<TritonTensor>,
    pub version_policy: VersionPolicy,
    pub default_model_filename: Option<String>,
    /// Top-level fields set but not acted on (Triton's scheduling and tuning), in the schema's
    /// field-number order.
    pub ignored: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TritonTensor {
    pub name: String,
    /// The protocol's name of the type: "FP32", "INT64", "BYTES"...
    pub datatype: String,
    pub dims: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum VersionPolicy {
    /// The newest `n` versions (Triton's default is 1).
    Latest(u64),
    All,
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

/// The version of a Triton-layout model integrad serves, and its config.
#[derive(Debug, Clone)]
pub struct TritonModel {
    pub config: TritonConfig,
    pub version: u64,
    pub file: PathBuf,
}

/// Top-level fields integrad reads (the others, when set, are listed as ignored).
const READ: &[&str] = &[
    "name",
    "platform",
    "backend",
    "max_batch_size",
    "input",
    "output",
    "version_policy",
    "default_model_filename",
];

/// True when `dir` is laid out for Triton: it has a `config.pbtxt` or a numeric version
/// directory.
pub fn is_triton_layout(dir: &Path) -> bool {
    dir.join(TRITON_CONFIG_FILE).is_file() || !numeric_versions(dir).is_empty()
}

fn numeric_versions(dir: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut versions: Vec<u64> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        // Triton ignores directories that are not version numbers; so do we.
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|n| n.parse().ok())
        .collect();
    versions.sort_unstable();
    versions
}

/// Reads `dir/config.pbtxt` (optional, as for Triton's ONNX auto-complete) and picks the
/// version to serve: the newest the version policy allows.
pub fn locate(name: &str, dir: &Path) -> Result<TritonModel, String> {
    locate_model(name, dir).map_err(|e| e.to_string())
}

fn locate_model(name: &str, dir: &Path) -> Result<TritonModel, TritonError> {
    let config_path = dir.join(TRITON_CONFIG_FILE);
    let config = match std::fs::read_to_string(&config_path) {
        Ok(text) => TritonConfig::from_text(&text, &config_path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TritonConfig::default(),
        Err(source) => {
            return Err(TritonError::Read {
                path: config_path,
                source,
            })
        }
    };
    if let Some(configured) = &config.name {
        if configured != name {
            return Err(TritonError::NameMismatch {
                path: config_path,
                configured: configured.clone(),
                directory: name.to_string(),
            });
        }
    }
    if let Some(platform) = config.platform.as_deref() {
        if platform != "onnxruntime_onnx" {
            return Err(TritonError::Platform {
                path: config_path,
                platform: platform.to_string(),
            });
        }
    }
    if let Some(backend) = config.backend.as_deref() {
        if backend != "onnxruntime" {
            return Err(TritonError::Backend {
                path: config_path,
                backend: backend.to_string(),
            });
        }
    }
    if !config.ignored.is_empty() {
        tracing::info!(model = name, fields = ?config.ignored, "config.pbtxt fields about Triton's scheduling are not used by integrad");
    }
    let found = numeric_versions(dir);
    let allowed: Vec<u64> = match &config.version_policy {
        VersionPolicy::Latest(_) | VersionPolicy::All => found.clone(),
        VersionPolicy::Specific(wanted) => found
            .iter()
            .copied()
            .filter(|v| wanted.contains(v))
            .collect(),
    };
    let Some(&version) = allowed.last() else {
        return Err(TritonError::NoVersion {
            dir: dir.to_path_buf(),
            found,
            policy: config.version_policy,
        });
    };
    let several = !matches!(config.version_policy, VersionPolicy::Latest(1));
    if several && allowed.len() > 1 {
        tracing::warn!(
            model = name,
            version,
            "the version policy allows several versions; integrad serves the newest only"
        );
    }
    let file_name = config
        .default_model_filename
        .clone()
        .unwrap_or_else(|| super::repository::MODEL_FILE.to_string());
    let file = dir.join(version.to_string()).join(&file_name);
    if !file.is_file() {
        return Err(TritonError::MissingModelFile { version, file });
    }
    Ok(TritonModel {
        config,
        version,
        file,
    })
}

impl TritonModel {
    /// The graph's inputs and outputs as the config describes them: the config's order and
    /// shapes (its batch dimension -1 when `max_batch_size` > 0), checked against the graph.
    /// A config without inputs or outputs leaves the graph's as they are.
    pub fn reconcile(
        &self,
        inputs: Vec<TensorSpec>,
        outputs: Vec<TensorSpec>,
    ) -> Result<(Vec<TensorSpec>, Vec<TensorSpec>), String> {
        self.reconcile_specs(inputs, outputs)
            .map_err(|e| e.to_string())
    }

    fn reconcile_specs(
        &self,
        inputs: Vec<TensorSpec>,
        outputs: Vec<TensorSpec>,
    ) -> Result<(Vec<TensorSpec>, Vec<TensorSpec>), TritonError> {
        let config = &self.config;
        let inputs = if config.inputs.is_empty() {
            inputs
        } else {
            if let Some(missing) = inputs
                .iter()
                .find(|g| !config.inputs.iter().any(|c| c.name == g.name))
            {
                return Err(TritonError::InputNotConfigured {
                    name: missing.name.clone(),
                });
            }
            config
                .inputs
                .iter()
                .map(|c| self.merge(c, &inputs, "input"))
                .collect::<Result<_, _>>()?
        };
        let outputs = if config.outputs.is_empty() {
            outputs
        } else {
            config
                .outputs
                .iter()
                .map(|c| self.merge(c, &outputs, "output"))
                .collect::<Result<_, _>>()?
        };
        Ok((inputs, outputs))
    }

    fn merge(
        &self,
        configured: &TritonTensor,
        graph: &[TensorSpec],
        what: &'static str,
    ) -> Result<TensorSpec, TritonError> {
        let Some(found) = graph.iter().find(|g| g.name == configured.name) else {
            return Err(TritonError::NotInGraph {
                what,
                name: configured.name.clone(),
                graph: graph.iter().map(|g| g.name.clone()).collect(),
            });
        };
        let graph_type = datatype(found.dtype);
        if graph_type != configured.datatype {
            return Err(TritonError::DataType {
                what,
                name: configured.name.clone(),
                configured: configured.datatype.clone(),
                graph: graph_type,
            });
        }
        let mut shape = Vec::with_capacity(configured.dims.len() + 1);
        if self.config.max_batch_size > 0 {
            shape.push(-1);
        }
        shape.extend_from_slice(&configured.dims);
        let mismatch = |shape: &[i64]| TritonError::Shape {
            what,
            name: configured.name.clone(),
            shape: shape.to_vec(),
            max_batch_size: self.config.max_batch_size,
            graph: found.shape.clone(),
        };
        if shape.len() != found.shape.len() {
            return Err(mismatch(&shape));
        }
        let batch = usize::from(self.config.max_batch_size > 0);
        if batch == 1 && found.shape[0] > 0 {
            return Err(TritonError::FixedBatch {
                what,
                name: configured.name.clone(),
                max_batch_size: self.config.max_batch_size,
                batch: found.shape[0],
            });
        }
        let mut merged = shape.clone();
        for (i, (&c, &g)) in shape.iter().zip(&found.shape).enumerate().skip(batch) {
            merged[i] = match (c, g) {
                (-1, g) => g,
                (c, -1) => c,
                (c, g) if c == g => c,
                _ => return Err(mismatch(&shape)),
            };
        }
        Ok(TensorSpec {
            name: found.name.clone(),
            dtype: found.dtype,
            shape: merged,
        })
    }
}

/// The protocol's name of an element type ("FP32", "INT64"...).
pub fn datatype(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "FP32",
        DType::I64 => "INT64",
        DType::Other(onnx) => match onnx {
            "float16" => "FP16",
            "float64" => "FP64",
            "int32" => "INT32",
            "int8" => "INT8",
            "uint8" => "UINT8",
            "bool" => "BOOL",
            "string" => "BYTES",
            _ => "UNSUPPORTED",
        },
    }
}

impl TritonConfig {
    /// Parses `text`, the content of the `config.pbtxt` at `path` (named in the errors).
    pub fn from_text(text: &str, path: &Path) -> Result<Self, TritonError> {
        let (patched, added) = colon_before_message_lists(text);
        let message = DynamicMessage::parse_text_format(model_config_descriptor(), &patched)
            .map_err(|error| parse_error(path, text, &added, &error))?;
        let ignored: Vec<String> = message
            .fields()
            .map(|(field, _)| field.name().to_string())
            .filter(|name| !READ.contains(&name.as_str()))
            .collect();
        let config: schema::ModelConfig =
            message.transcode_to().map_err(|error| TritonError::Parse {
                path: path.to_path_buf(),
                at: None,
                reason: error.to_string(),
            })?;
        let invalid = |field: &str, reason: String| TritonError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let unsupported = |field: String| TritonError::Unsupported {
            path: path.to_path_buf(),
            field,
        };

        match &config.scheduling_choice {
            Some(SchedulingChoice::SequenceBatching(_)) => {
                return Err(unsupported("sequence_batching".into()))
            }
            Some(SchedulingChoice::EnsembleScheduling(_)) => {
                return Err(unsupported("ensemble_scheduling".into()))
            }
            Some(SchedulingChoice::DynamicBatching(_)) | None => {}
        }
        if !config.batch_input.is_empty() {
            return Err(unsupported("batch_input".into()));
        }
        if !config.batch_output.is_empty() {
            return Err(unsupported("batch_output".into()));
        }
        if config.max_batch_size < 0 {
            return Err(invalid(
                "max_batch_size",
                format!("must be 0 or more, got {}", config.max_batch_size),
            ));
        }

        let mut inputs = Vec::with_capacity(config.input.len());
        for (i, input) in config.input.iter().enumerate() {
            let field = tensor_field("input", i, &input.name);
            let flags = [
                ("is_shape_tensor", input.is_shape_tensor),
                ("allow_ragged_batch", input.allow_ragged_batch),
                ("optional", input.optional),
                ("is_non_linear_format_io", input.is_non_linear_format_io),
            ];
            if let Some(refused) = refusal(input.reshape.is_some(), &flags) {
                return Err(unsupported(format!("{field} {refused}")));
            }
            // `format` (FORMAT_NCHW...) is informational for an ONNX model: the graph fixes
            // the layout.
            inputs.push(
                tensor(&field, &input.name, input.data_type, &input.dims)
                    .map_err(|(what, reason)| invalid(&what, reason))?,
            );
        }
        let mut outputs = Vec::with_capacity(config.output.len());
        for (i, output) in config.output.iter().enumerate() {
            let field = tensor_field("output", i, &output.name);
            let flags = [
                ("is_shape_tensor", output.is_shape_tensor),
                ("is_non_linear_format_io", output.is_non_linear_format_io),
            ];
            if let Some(refused) = refusal(output.reshape.is_some(), &flags) {
                return Err(unsupported(format!("{field} {refused}")));
            }
            // `label_filename` is Triton's classification extension, which integrad does not
            // serve; integrad.toml names the labels.
            outputs.push(
                tensor(&field, &output.name, output.data_type, &output.dims)
                    .map_err(|(what, reason)| invalid(&what, reason))?,
            );
        }

        let version_policy = match config.version_policy.map(|p| p.policy_choice) {
            // Triton's default.
            None => VersionPolicy::Latest(1),
            Some(None) => {
                return Err(invalid(
                    "version_policy",
                    "takes one of latest, all or specific".into(),
                ))
            }
            // proto3 reads `latest {}` as num_versions 0 too: no version at all.
            Some(Some(PolicyChoice::Latest(latest))) if latest.num_versions == 0 => {
                return Err(invalid(
                    "version_policy latest num_versions",
                    "must be 1 or more".into(),
                ))
            }
            Some(Some(PolicyChoice::Latest(latest))) => {
                VersionPolicy::Latest(u64::from(latest.num_versions))
            }
            Some(Some(PolicyChoice::All(_))) => VersionPolicy::All,
            Some(Some(PolicyChoice::Specific(specific))) => VersionPolicy::Specific(
                specific
                    .versions
                    .iter()
                    .map(|&v| u64::try_from(v))
                    .collect::<Result<_, _>>()
                    .map_err(|_| {
                        invalid(
                            "version_policy specific versions",
                            format!("must be 0 or more, got {:?}", specific.versions),
                        )
                    })?,
            ),
        };

        // proto3 strings cannot tell unset from empty; Triton reads empty as unset.
        let set = |s: String| Some(s).filter(|s| !s.is_empty());
        Ok(TritonConfig {
            name: set(config.name),
            platform: set(config.platform),
            backend: set(config.backend),
            max_batch_size: i64::from(config.max_batch_size),
            inputs,
            outputs,
            version_policy,
            default_model_filename: set(config.default_model_filename),
            ignored,
        })
    }
}

/// How errors name the `i`th input or output: by its name, or its place when it has none.
fn tensor_field(what: &str, i: usize, name: &str) -> String {
    if name.is_empty() {
        format!("{what} {}", i + 1)
    } else {
        format!("{what} {name:?}")
    }
}

/// The first of `reshape` (when set) and the boolean `flags` that is on.
fn refusal(reshape: bool, flags: &[(&'static str, bool)]) -> Option<&'static str> {
    let reshape = reshape.then_some("reshape");
    reshape.or_else(|| flags.iter().find(|(_, on)| *on).map(|(name, _)| *name))
}

/// One input or output, checked; the error is (field, reason).
fn tensor(
    field: &str,
    name: &str,
    data_type: i32,
    dims: &[i64],
) -> Result<TritonTensor, (String, String)> {
    let without = |what: &str| Err((field.to_string(), format!("without {what}")));
    if name.is_empty() {
        return without("name");
    }
    // The parser took only the schema's enum names, so the number is one of them.
    let datatype = match schema::DataType::try_from(data_type) {
        Ok(schema::DataType::TypeInvalid) | Err(_) => return without("data_type"),
        // Triton's TYPE_STRING is the protocol's BYTES; the other names are the same after
        // TYPE_ (TYPE_FP32 is FP32...).
        Ok(schema::DataType::TypeString) => "BYTES",
        Ok(other) => other.as_str_name().trim_start_matches("TYPE_"),
    };
    // proto3 cannot tell `dims: []` from no dims; Triton refuses both.
    if dims.is_empty() {
        return without("dims");
    }
    if let Some(bad) = dims.iter().find(|&&d| d < -1 || d == 0) {
        return Err((
            format!("{field} dims"),
            format!("must be positive or -1, got {bad}"),
        ));
    }
    Ok(TritonTensor {
        name: name.to_string(),
        datatype: datatype.to_string(),
        dims: dims.to_vec(),
    })
}

/// prost-reflect (0.16) wants the colon in `input: [ {...} ]`, which the text format lets a
/// list of messages leave out, as Triton's own examples do (`input [ {...} ]`); this adds it
/// after each field name (a word, not a value after `:`) that `[` follows, outside strings and
/// comments. Returns the text to parse and where in `text` colons were added.
fn colon_before_message_lists(text: &str) -> (Cow<'_, str>, Vec<usize>) {
    let bytes = text.as_bytes();
    // Past whitespace and `#` comments from `i`.
    let skip = |mut i: usize| loop {
        match bytes.get(i) {
            Some(b) if b.is_ascii_whitespace() => i += 1,
            Some(b'#') => {
                while bytes.get(i).is_some_and(|&b| b != b'\n') {
                    i += 1;
                }
            }
            _ => return i,
        }
    };
    let mut added = Vec::new();
    let mut after_colon = false;
    let mut i = skip(0);
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' | b'\'' => {
                i += 1;
                while bytes.get(i).is_some_and(|&c| c != b && c != b'\n') {
                    // An escape: its next byte cannot close the string.
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                after_colon = false;
            }
            b if b.is_ascii_alphanumeric() || b == b'_' => {
                let start = i;
                while bytes
                    .get(i)
                    .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_')
                {
                    i += 1;
                }
                let field_name = !bytes[start].is_ascii_digit() && !after_colon;
                if field_name && bytes.get(skip(i)) == Some(&b'[') {
                    added.push(i);
                }
                after_colon = false;
            }
            _ => {
                after_colon = b == b':';
                i += 1;
            }
        }
        i = skip(i);
    }
    if added.is_empty() {
        return (Cow::Borrowed(text), added);
    }
    let mut patched = String::with_capacity(text.len() + added.len());
    let mut from = 0;
    // Each is the end of an ASCII word, so a char boundary.
    for &at in &added {
        patched.push_str(&text[from..at]);
        patched.push(':');
        from = at;
    }
    patched.push_str(&text[from..]);
    (Cow::Owned(patched), added)
}

/// The parser's error, with the line and column it points at in `text` (the parser read it
/// with colons `added`).
fn parse_error(
    path: &Path,
    text: &str,
    added: &[usize],
    error: &prost_reflect::text_format::ParseError,
) -> TritonError {
    use miette::Diagnostic;
    let at = error
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| {
            // The k-th added colon sits at added[k] + k in the parsed text.
            let offset = label.offset();
            let before = added.iter().enumerate().filter(|&(k, &a)| a + k < offset);
            offset - before.count()
        })
        .and_then(|offset| text.get(..offset))
        .map(|before| {
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            (line, column)
        });
    TritonError::Parse {
        path: path.to_path_buf(),
        at,
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "models/classifier/config.pbtxt";

    fn read(text: &str) -> Result<TritonConfig, String> {
        TritonConfig::from_text(text, Path::new(PATH)).map_err(|e| e.to_string())
    }

    const CONFIG: &str = r#"
        name: "classifier"
        platform: "onnxruntime_onnx"
        max_batch_size: 8   # a comment
        input [
          {
            name: "input"
            data_type: TYPE_FP32
            format: FORMAT_NCHW
            dims: [ 3, 224, 224 ]
          }
        ]
        output {
          name: "logits"
          data_type: TYPE_FP32
          dims: [ 1000 ]
        }
        version_policy: { specific: { versions: [1, 3] } }
        instance_group [ { count: 2, kind: KIND_CPU } ]
        dynamic_batching { max_queue_delay_microseconds: 100 }
    "#;

    #[test]
    fn should_read_a_triton_config() {
        let config = read(CONFIG).unwrap();
        assert_eq!(config.name.as_deref(), Some("classifier"));
        assert_eq!(config.max_batch_size, 8);
        assert_eq!(
            config.inputs,
            vec![TritonTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                dims: vec![3, 224, 224]
            }]
        );
        assert_eq!(config.outputs[0].dims, vec![1000]);
        assert_eq!(config.version_policy, VersionPolicy::Specific(vec![1, 3]));
        assert_eq!(config.ignored, vec!["instance_group", "dynamic_batching"]);
    }

    /// A config as Triton's documentation writes them, with the fields integrad reads and the
    /// scheduling and tuning fields it accepts without using, in both list styles
    /// (`input [ ... ]` and `output: [ ... ]`).
    const REALISTIC: &str = r#"
        # BERT-like: token ids in, one embedding and one label out.
        name: "encoder"
        backend: "onnxruntime"
        max_batch_size: 16
        default_model_filename: "encoder.onnx"
        version_policy { latest { num_versions: 2 } }
        input [
          {
            name: "input_ids"
            data_type: TYPE_INT64
            format: FORMAT_NONE
            dims: [ -1 ]
          },
          {
            name: "text"
            data_type: TYPE_STRING
            dims: [ 1 ]
            optional: false
          }
        ]
        output: [
          {
            name: "embedding"
            data_type: TYPE_FP16
            dims: [ -1, 768 ]
          },
          {
            name: "label"
            data_type: TYPE_BOOL
            dims: [ 1 ]
            label_filename: "labels.txt"
          }
        ]
        instance_group [
          { count: 2 kind: KIND_GPU gpus: [ 0, 1 ] },
          { count: 1 kind: KIND_CPU }
        ]
        dynamic_batching {
          preferred_batch_size: [ 4, 8 ]
          max_queue_delay_microseconds: 100
          priority_levels: 2
          default_priority_level: 1
          priority_queue_policy { key: 1 value: { max_queue_size: 32 } }
        }
        optimization {
          execution_accelerators {
            gpu_execution_accelerator : [ {
              name : "tensorrt"
              parameters { key: "precision_mode" value: "FP16" }
            } ]
          }
        }
        parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
        parameters: { key: "enable_mem_arena" value: { string_value: "1" } }
        model_warmup [
          {
            name: "zeros"
            batch_size: 1
            inputs {
              key: "input_ids"
              value: { data_type: TYPE_INT64 dims: [ 16 ] zero_data: true }
            }
          }
        ]
        response_cache { enable: true }
    "#;

    #[test]
    fn should_read_a_realistic_config_and_accept_what_it_does_not_use() {
        let config = read(REALISTIC).unwrap();
        assert_eq!(
            config,
            TritonConfig {
                name: Some("encoder".into()),
                // Not written: None, not Some("") (proto3 reads both as "").
                platform: None,
                backend: Some("onnxruntime".into()),
                max_batch_size: 16,
                // The config's order; TYPE_STRING is the protocol's BYTES, the other types
                // drop TYPE_; the dims as written (the batch dimension is added later, by
                // reconcile, because max_batch_size > 0).
                inputs: vec![
                    TritonTensor {
                        name: "input_ids".into(),
                        datatype: "INT64".into(),
                        dims: vec![-1],
                    },
                    TritonTensor {
                        name: "text".into(),
                        datatype: "BYTES".into(),
                        dims: vec![1],
                    },
                ],
                outputs: vec![
                    TritonTensor {
                        name: "embedding".into(),
                        datatype: "FP16".into(),
                        dims: vec![-1, 768],
                    },
                    TritonTensor {
                        name: "label".into(),
                        datatype: "BOOL".into(),
                        dims: vec![1],
                    },
                ],
                version_policy: VersionPolicy::Latest(2),
                default_model_filename: Some("encoder.onnx".into()),
                // The fields set and not read, by field number in model_config.proto:
                // instance_group 7, dynamic_batching 11, optimization 12, parameters 14,
                // model_warmup 16, response_cache 24 (not the text's order).
                ignored: [
                    "instance_group",
                    "dynamic_batching",
                    "optimization",
                    "parameters",
                    "model_warmup",
                    "response_cache",
                ]
                .map(String::from)
                .to_vec(),
            }
        );
    }

    #[test]
    fn should_name_each_data_type_as_the_protocol_does() {
        // Every DataType of model_config.proto but TYPE_INVALID, with the Open Inference
        // Protocol's name for it: the same after TYPE_, except TYPE_STRING, which is BYTES.
        let types = [
            ("TYPE_BOOL", "BOOL"),
            ("TYPE_UINT8", "UINT8"),
            ("TYPE_UINT16", "UINT16"),
            ("TYPE_UINT32", "UINT32"),
            ("TYPE_UINT64", "UINT64"),
            ("TYPE_INT8", "INT8"),
            ("TYPE_INT16", "INT16"),
            ("TYPE_INT32", "INT32"),
            ("TYPE_INT64", "INT64"),
            ("TYPE_FP16", "FP16"),
            ("TYPE_FP32", "FP32"),
            ("TYPE_FP64", "FP64"),
            ("TYPE_STRING", "BYTES"),
            ("TYPE_BF16", "BF16"),
        ];
        for (config_name, protocol) in types {
            let text = format!("input [ {{ name: \"x\" data_type: {config_name} dims: 1 }} ]");
            let config = read(&text).unwrap();
            assert_eq!(config.inputs[0].datatype, protocol, "{config_name}");
        }
        // TYPE_INVALID is what an unset data_type reads as.
        let err = read("input [ { name: \"x\" data_type: TYPE_INVALID dims: 1 } ]").unwrap_err();
        assert_eq!(err, format!("{PATH}: input \"x\" without data_type"));
    }

    #[test]
    fn should_refuse_what_it_would_misread() {
        // Each error names the file, then says what; where the parser refused, it says where
        // (line:column) in the parser's words.
        let cases = [
            // The schema's max_batch_size is an int32, not a string.
            ("max_batch_size: \"8\"", ":1:17: expected an integer"),
            // A singular field set twice (the second one is where the parser stops).
            (
                "max_batch_size: 8\nmax_batch_size: 4",
                ":2:17: 'max_batch_size' is already set",
            ),
            // Two of one oneof (dynamic_batching and sequence_batching are scheduling_choice).
            (
                "dynamic_batching {}\nsequence_batching {}",
                ":2:19: a value is already set for oneof 'scheduling_choice'",
            ),
            (
                "max_batch_size: -1",
                ": max_batch_size must be 0 or more, got -1",
            ),
            // integrad does not reshape: serving without would answer differently.
            (
                "input [{ name: \"x\" data_type: TYPE_FP32 dims: [3] reshape: { shape: [1, 3] } }]",
                ": input \"x\" reshape is not supported by integrad",
            ),
            (
                "input [{ name: \"x\" data_type: TYPE_FP32 dims: [3] optional: true }]",
                ": input \"x\" optional is not supported by integrad",
            ),
            // Not one of the schema's DataType names.
            (
                "input [{ name: \"x\" data_type: TYPE_FLOAT dims: [3] }]",
                ":1:31: value 'TYPE_FLOAT' was not found for enum 'inference.DataType'",
            ),
            // proto3 reads no dims and `dims: []` alike; Triton requires dims.
            (
                "input [{ name: \"x\" data_type: TYPE_FP32 }]",
                ": input \"x\" without dims",
            ),
            (
                "output [{ data_type: TYPE_FP32 dims: [2] }]",
                ": output 1 without name",
            ),
            (
                "output [{ name: \"y\" data_type: TYPE_FP32 dims: [2, 0] }]",
                ": output \"y\" dims must be positive or -1, got 0",
            ),
            (
                "input [{ name: \"x\" data_type: TYPE_FP32 dims: [3] colour: 1 }]",
                ":1:51: field 'colour' not found for message 'inference.ModelInput'",
            ),
            (
                "sequence_batching { }",
                ": sequence_batching is not supported by integrad",
            ),
            (
                "ensemble_scheduling { }",
                ": ensemble_scheduling is not supported by integrad",
            ),
            // The parser says no position at the end of the text.
            (
                "name: \"x",
                ": expected string terminator, but reached end of input",
            ),
            (
                "output [ { name: \"y\" ",
                ": expected '}' or a field name, but reached end",
            ),
            (
                "version_policy: { newest: {} }",
                ":1:19: field 'newest' not found for message 'inference.ModelVersionPolicy'",
            ),
            (
                "version_policy {}",
                ": version_policy takes one of latest, all or specific",
            ),
            // num_versions 0 (or `latest {}`, the same in proto3) would serve no version.
            (
                "version_policy { latest {} }",
                ": version_policy latest num_versions must be 1 or more",
            ),
            (
                "version_policy { specific { versions: [2, -1] } }",
                ": version_policy specific versions must be 0 or more, got [2, -1]",
            ),
        ];
        for (text, expected) in cases {
            let err = read(text).unwrap_err();
            assert_eq!(
                err.strip_prefix(PATH)
                    .map(|rest| rest.starts_with(expected)),
                Some(true),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn should_refuse_unknown_fields_naming_them_and_the_file() {
        // Triton refuses a field its schema does not have; so does integrad now (it used to
        // accept unknown top-level fields with a warning). Line 2, column 1 is `future_field`.
        let err = read("max_batch_size: 0\nfuture_field { a: 1 }").unwrap_err();
        assert_eq!(
            err,
            format!(
                "{PATH}:2:1: field 'future_field' not found for message 'inference.ModelConfig'"
            )
        );
        // Inside a field integrad does not read, too: `kind` is ModelInstanceGroup's, `gpu`
        // is not. Column 44 is where `gpu` is in the text as written (the colon added before
        // `[` for the parser is not counted).
        let err = read("instance_group [ { count: 1 kind: KIND_GPU gpu: 0 } ]").unwrap_err();
        assert_eq!(
            err,
            format!(
                "{PATH}:1:44: field 'gpu' not found for message 'inference.ModelInstanceGroup'"
            )
        );
    }

    #[test]
    fn should_add_the_colon_only_before_lists_after_field_names() {
        let (patched, added) = colon_before_message_lists(
            "input [ {} ] # a comment [\noutput: [ {} ]\nname: \"a [\" x: A [ ] y\t[]",
        );
        // Right after `input` (offset 5) and `y` (offset 64, a tab before its `[`); not in the
        // comment or the string, not after `output:`, not after `A` (a value: it follows a
        // colon).
        assert_eq!(added, vec![5, 64]);
        assert_eq!(
            patched,
            "input: [ {} ] # a comment [\noutput: [ {} ]\nname: \"a [\" x: A [ ] y:\t[]"
        );
        let (unchanged, added) = colon_before_message_lists("dims: [1, 2] name: 'it\\'s ['");
        assert!(matches!(unchanged, Cow::Borrowed(_)) && added.is_empty());
    }

    #[test]
    fn should_name_the_file_when_locating_a_model() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("classifier");
        std::fs::create_dir_all(model.join("1")).unwrap();
        let config = model.join(TRITON_CONFIG_FILE);
        std::fs::write(&config, "name: \"classifier\"\nrate_limiter {}\n").unwrap();
        let err = locate("classifier", &model).unwrap_err();
        assert_eq!(
            err,
            format!(
                "{}:2:1: field 'rate_limiter' not found for message 'inference.ModelConfig'",
                config.display()
            )
        );
    }
}
