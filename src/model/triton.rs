//! Triton model repositories: `<name>/config.pbtxt` and `<name>/<version>/model.onnx`, so the
//! volume Triton serves can be mounted into integrad unchanged.
//!
//! `config.pbtxt` is protobuf text format. [`parse`] reads the subset Triton configs use
//! (fields, nested messages, lists, strings, numbers, enum names, `#` comments) into a tree,
//! and [`TritonConfig::from_text`] reads the fields integrad needs from it, strictly: a known
//! field of the wrong kind is an error, a field that would change what the model computes and
//! that integrad does not implement (`reshape`, `sequence_batching`, `ensemble_scheduling`...)
//! refuses the model, and fields about Triton's own scheduling (`instance_group`,
//! `dynamic_batching`...) are tolerated and listed in [`TritonConfig::ignored`].

use std::path::{Path, PathBuf};

use super::{DType, TensorSpec};

pub const TRITON_CONFIG_FILE: &str = "config.pbtxt";

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
    /// Top-level fields read but not acted on (Triton's scheduling and tuning).
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

/// Top-level fields that only tune how Triton schedules the model; integrad serves the same
/// results without them.
const TOLERATED: &[&str] = &[
    "instance_group",
    "dynamic_batching",
    "optimization",
    "parameters",
    "model_warmup",
    "model_operation_policy",
    "response_cache",
    "runtime",
    "metric_tags",
    "model_repository_agents",
    "model_transaction_policy",
    "cc_model_filenames",
];

/// Fields whose meaning integrad does not implement: serving the model without them would
/// answer differently from Triton.
const REFUSED: &[&str] = &[
    "sequence_batching",
    "ensemble_scheduling",
    "batch_input",
    "batch_output",
];

/// Triton's element types, by their config names, with the protocol's name for each.
const DATA_TYPES: &[(&str, &str)] = &[
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
    let config_path = dir.join(TRITON_CONFIG_FILE);
    let config = match std::fs::read_to_string(&config_path) {
        Ok(text) => {
            TritonConfig::from_text(&text).map_err(|e| format!("{}: {e}", config_path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TritonConfig::default(),
        Err(e) => return Err(format!("{}: {e}", config_path.display())),
    };
    if let Some(configured) = &config.name {
        if configured != name {
            return Err(format!(
                "{} names the model {configured:?} but its directory is {name:?} (Triton requires them equal)",
                config_path.display()
            ));
        }
    }
    if let Some(platform) = config.platform.as_deref() {
        if platform != "onnxruntime_onnx" {
            return Err(format!("platform {platform:?}: integrad serves ONNX models (platform \"onnxruntime_onnx\")"));
        }
    }
    if let Some(backend) = config.backend.as_deref() {
        if backend != "onnxruntime" {
            return Err(format!(
                "backend {backend:?}: integrad serves ONNX models (backend \"onnxruntime\")"
            ));
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
        return Err(format!(
            "{} has no version directory the version policy allows (found {found:?}, policy {:?})",
            dir.display(),
            config.version_policy
        ));
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
        return Err(format!(
            "version {version} (the newest allowed) has no {}",
            file.display()
        ));
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
        let config = &self.config;
        let inputs = if config.inputs.is_empty() {
            inputs
        } else {
            if let Some(missing) = inputs
                .iter()
                .find(|g| !config.inputs.iter().any(|c| c.name == g.name))
            {
                return Err(format!(
                    "graph input {:?} is not in config.pbtxt (integrad feeds every input)",
                    missing.name
                ));
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
        what: &str,
    ) -> Result<TensorSpec, String> {
        let Some(found) = graph.iter().find(|g| g.name == configured.name) else {
            let names: Vec<&str> = graph.iter().map(|g| g.name.as_str()).collect();
            return Err(format!(
                "config.pbtxt {what} {:?} is not in the graph, whose {what}s are {names:?}",
                configured.name
            ));
        };
        let graph_type = datatype(found.dtype);
        if graph_type != configured.datatype {
            return Err(format!(
                "config.pbtxt {what} {:?} is {} but the graph's is {graph_type}",
                configured.name, configured.datatype
            ));
        }
        let mut shape = Vec::with_capacity(configured.dims.len() + 1);
        if self.config.max_batch_size > 0 {
            shape.push(-1);
        }
        shape.extend_from_slice(&configured.dims);
        let mismatch = || {
            format!(
                "config.pbtxt {what} {:?} has shape {shape:?} (max_batch_size {}), which does not fit the graph's {:?}",
                configured.name, self.config.max_batch_size, found.shape
            )
        };
        if shape.len() != found.shape.len() {
            return Err(mismatch());
        }
        let batch = usize::from(self.config.max_batch_size > 0);
        if batch == 1 && found.shape[0] > 0 {
            return Err(format!(
                "config.pbtxt sets max_batch_size {} but the graph's {what} {:?} has a fixed batch of {}",
                self.config.max_batch_size, configured.name, found.shape[0]
            ));
        }
        let mut merged = shape.clone();
        for (i, (&c, &g)) in shape.iter().zip(&found.shape).enumerate().skip(batch) {
            merged[i] = match (c, g) {
                (-1, g) => g,
                (c, -1) => c,
                (c, g) if c == g => c,
                _ => return Err(mismatch()),
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
    pub fn from_text(text: &str) -> Result<Self, String> {
        let fields = parse(text)?;
        let mut config = TritonConfig::default();
        let mut seen: Vec<&str> = Vec::new();
        for field in &fields {
            let name = field.name.as_str();
            let repeated = matches!(name, "input" | "output");
            if !repeated && seen.contains(&name) {
                return Err(format!("line {}: {name} is set twice", field.line));
            }
            seen.push(name);
            match name {
                "name" => config.name = Some(field.string()?),
                "platform" => config.platform = Some(field.string()?),
                "backend" => config.backend = Some(field.string()?),
                "default_model_filename" => config.default_model_filename = Some(field.string()?),
                "max_batch_size" => {
                    config.max_batch_size = field.integer()?;
                    if config.max_batch_size < 0 {
                        return Err(format!(
                            "line {}: max_batch_size must be 0 or more",
                            field.line
                        ));
                    }
                }
                "input" => {
                    for message in field.messages()? {
                        config.inputs.push(tensor(message, field.line, "input")?);
                    }
                }
                "output" => {
                    for message in field.messages()? {
                        config.outputs.push(tensor(message, field.line, "output")?);
                    }
                }
                "version_policy" => config.version_policy = version_policy(field)?,
                refused if REFUSED.contains(&refused) => {
                    return Err(format!(
                        "line {}: {refused} is not supported by integrad",
                        field.line
                    ))
                }
                other => {
                    if !TOLERATED.contains(&other) {
                        tracing::warn!(
                            field = other,
                            line = field.line,
                            "config.pbtxt field unknown to integrad, not used"
                        );
                    }
                    config.ignored.push(other.to_string());
                }
            }
        }
        Ok(config)
    }
}

fn tensor(fields: &[Field], line: usize, what: &str) -> Result<TritonTensor, String> {
    let mut name = None;
    let mut datatype = None;
    let mut dims = None;
    for field in fields {
        match field.name.as_str() {
            "name" => name = Some(field.string()?),
            "data_type" => {
                let config_name = field.enum_name()?;
                let found = DATA_TYPES.iter().find(|(c, _)| *c == config_name);
                let Some((_, protocol)) = found else {
                    return Err(format!(
                        "line {}: unknown data_type {config_name}",
                        field.line
                    ));
                };
                datatype = Some(protocol.to_string());
            }
            "dims" => {
                let values = field.integers()?;
                if let Some(bad) = values.iter().find(|&&d| d < -1 || d == 0) {
                    return Err(format!(
                        "line {}: dims must be positive or -1, got {bad}",
                        field.line
                    ));
                }
                dims = Some(values);
            }
            // Informational for an ONNX model: the graph fixes the layout.
            "format" => {
                field.enum_name()?;
            }
            "optional" | "is_shape_tensor" | "allow_ragged_batch" | "is_non_linear_format_io" => {
                if field.enum_name()? == "true" {
                    return Err(format!(
                        "line {}: {what} {} is not supported by integrad",
                        field.line, field.name
                    ));
                }
            }
            "reshape" => {
                return Err(format!(
                    "line {}: {what} reshape is not supported by integrad",
                    field.line
                ))
            }
            "label_filename" => {
                field.string()?;
            }
            other => return Err(format!("line {}: unknown {what} field {other}", field.line)),
        }
    }
    let missing = |what_field: &str| format!("line {line}: {what} without {what_field}");
    Ok(TritonTensor {
        name: name.ok_or_else(|| missing("name"))?,
        datatype: datatype.ok_or_else(|| missing("data_type"))?,
        dims: dims.ok_or_else(|| missing("dims"))?,
    })
}

fn version_policy(field: &Field) -> Result<VersionPolicy, String> {
    let [choice] = field.message()? else {
        return Err(format!(
            "line {}: version_policy takes one of latest, all, specific",
            field.line
        ));
    };
    let inner = choice.message()?;
    match choice.name.as_str() {
        "latest" => {
            let mut n = 1;
            for f in inner {
                match f.name.as_str() {
                    "num_versions" => n = f.integer()?,
                    other => return Err(format!("line {}: unknown latest field {other}", f.line)),
                }
            }
            if n < 1 {
                return Err(format!(
                    "line {}: num_versions must be 1 or more",
                    choice.line
                ));
            }
            Ok(VersionPolicy::Latest(n as u64))
        }
        "all" if inner.is_empty() => Ok(VersionPolicy::All),
        "specific" => {
            let mut versions = Vec::new();
            for f in inner {
                match f.name.as_str() {
                    "versions" => versions.extend(f.integers()?.into_iter().map(|v| v as u64)),
                    other => {
                        return Err(format!("line {}: unknown specific field {other}", f.line))
                    }
                }
            }
            Ok(VersionPolicy::Specific(versions))
        }
        other => Err(format!(
            "line {}: version_policy {other} is not latest, all or specific",
            choice.line
        )),
    }
}

/// One `name: value` or `name { ... }` of a text-format message.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub value: Value,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A quoted string, unescaped.
    String(String),
    /// A number, an enum name or true/false, as written.
    Word(String),
    Message(Vec<Field>),
    List(Vec<Value>),
}

impl Field {
    fn kind_error(&self, wanted: &str) -> String {
        format!("line {}: {} must be {wanted}", self.line, self.name)
    }

    fn string(&self) -> Result<String, String> {
        match &self.value {
            Value::String(s) => Ok(s.clone()),
            _ => Err(self.kind_error("a quoted string")),
        }
    }

    fn integer(&self) -> Result<i64, String> {
        match &self.value {
            Value::Word(w) => w.parse().map_err(|_| self.kind_error("an integer")),
            _ => Err(self.kind_error("an integer")),
        }
    }

    fn integers(&self) -> Result<Vec<i64>, String> {
        let words: Vec<&Value> = match &self.value {
            Value::List(values) => values.iter().collect(),
            single => vec![single],
        };
        words
            .into_iter()
            .map(|v| match v {
                Value::Word(w) => w.parse().ok(),
                _ => None,
            })
            .collect::<Option<Vec<i64>>>()
            .ok_or_else(|| self.kind_error("a list of integers"))
    }

    fn enum_name(&self) -> Result<&str, String> {
        match &self.value {
            Value::Word(w) if w.starts_with(|c: char| c.is_ascii_alphabetic()) => Ok(w),
            _ => Err(self.kind_error("a name (no quotes)")),
        }
    }

    fn message(&self) -> Result<&[Field], String> {
        match &self.value {
            Value::Message(fields) => Ok(fields),
            _ => Err(self.kind_error("a message { ... }")),
        }
    }

    /// A repeated message field: one message or a list of them.
    fn messages(&self) -> Result<Vec<&[Field]>, String> {
        match &self.value {
            Value::Message(fields) => Ok(vec![fields]),
            Value::List(values) => values
                .iter()
                .map(|v| match v {
                    Value::Message(fields) => Ok(fields.as_slice()),
                    _ => Err(self.kind_error("a list of messages")),
                })
                .collect(),
            _ => Err(self.kind_error("a message or a list of messages")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    String(String),
    Punct(char),
}

fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '{' | '}' | '[' | ']' | ':' | ',' | ';' | '<' | '>' => {
                tokens.push((Token::Punct(c), line));
                chars.next();
            }
            '"' | '\'' => {
                let quote = c;
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None | Some('\n') => {
                            return Err(format!("line {line}: unterminated string"))
                        }
                        Some(c) if c == quote => break,
                        Some('\\') => match chars.next() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(c @ ('\\' | '"' | '\'')) => s.push(c),
                            other => {
                                return Err(format!(
                                    "line {line}: unsupported escape \\{}",
                                    other.map(String::from).unwrap_or_default()
                                ))
                            }
                        },
                        Some(c) => s.push(c),
                    }
                }
                // Adjacent strings concatenate, as in protobuf.
                if let Some((Token::String(previous), _)) = tokens.last_mut() {
                    previous.push_str(&s);
                } else {
                    tokens.push((Token::String(s), line));
                }
            }
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.') => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.') {
                        word.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push((Token::Word(word), line));
            }
            other => return Err(format!("line {line}: unexpected character {other:?}")),
        }
    }
    Ok(tokens)
}

/// Parses protobuf text format into fields, keeping their order and line numbers.
pub fn parse(text: &str) -> Result<Vec<Field>, String> {
    let tokens = tokenize(text)?;
    let mut parser = Parser { tokens, at: 0 };
    let fields = parser.fields(None)?;
    Ok(fields)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }

    fn line(&self) -> usize {
        self.tokens
            .get(self.at)
            .or(self.tokens.last())
            .map_or(1, |(_, l)| *l)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).map(|(t, _)| t.clone());
        self.at += 1;
        token
    }

    /// Fields until `close` (or the end of the text, for the top level).
    fn fields(&mut self, close: Option<char>) -> Result<Vec<Field>, String> {
        let mut fields = Vec::new();
        loop {
            let line = self.line();
            match self.next() {
                None if close.is_none() => return Ok(fields),
                None => return Err(format!("line {line}: missing {}", close.unwrap_or('}'))),
                Some(Token::Punct(c)) if Some(c) == close => return Ok(fields),
                Some(Token::Word(name))
                    if name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') =>
                {
                    let colon = self.peek() == Some(&Token::Punct(':'));
                    if colon {
                        self.next();
                    }
                    let value = match self.peek() {
                        Some(Token::Punct('{' | '<' | '[')) => self.value()?,
                        _ if colon => self.value()?,
                        _ => return Err(format!("line {line}: expected ':' or '{{' after {name}")),
                    };
                    fields.push(Field { name, value, line });
                    if matches!(self.peek(), Some(Token::Punct(',' | ';'))) {
                        self.next();
                    }
                }
                Some(other) => return Err(format!("line {line}: unexpected {other:?}")),
            }
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        let line = self.line();
        match self.next() {
            Some(Token::Punct('{')) => Ok(Value::Message(self.fields(Some('}'))?)),
            Some(Token::Punct('<')) => Ok(Value::Message(self.fields(Some('>'))?)),
            Some(Token::Punct('[')) => {
                let mut values = Vec::new();
                if self.peek() == Some(&Token::Punct(']')) {
                    self.next();
                    return Ok(Value::List(values));
                }
                loop {
                    let value = self.value()?;
                    if matches!(value, Value::List(_)) {
                        return Err(format!("line {line}: lists do not nest"));
                    }
                    values.push(value);
                    let line = self.line();
                    match self.next() {
                        Some(Token::Punct(',')) => {}
                        Some(Token::Punct(']')) => return Ok(Value::List(values)),
                        _ => return Err(format!("line {line}: expected ',' or ']' in a list")),
                    }
                }
            }
            Some(Token::String(s)) => Ok(Value::String(s)),
            Some(Token::Word(w)) => Ok(Value::Word(w)),
            Some(Token::Punct(c)) => Err(format!("line {line}: unexpected {c:?}")),
            None => Err(format!("line {line}: a value is missing")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let config = TritonConfig::from_text(CONFIG).unwrap();
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

    #[test]
    fn should_refuse_what_it_would_misread() {
        let cases = [
            ("max_batch_size: \"8\"", "integer"),
            ("max_batch_size: 8\nmax_batch_size: 4", "twice"),
            (
                "input [{ name: \"x\" data_type: TYPE_FP32 dims: [3] reshape: { shape: [1, 3] } }]",
                "reshape",
            ),
            (
                "input [{ name: \"x\" data_type: TYPE_FLOAT dims: [3] }]",
                "TYPE_FLOAT",
            ),
            (
                "input [{ name: \"x\" data_type: TYPE_FP32 }]",
                "without dims",
            ),
            (
                "input [{ name: \"x\" data_type: TYPE_FP32 dims: [3] colour: 1 }]",
                "colour",
            ),
            ("sequence_batching { }", "sequence_batching"),
            ("name: \"x", "unterminated"),
            ("output [ { name: \"y\" ", "missing"),
            ("version_policy: { newest: {} }", "newest"),
        ];
        for (text, expected) in cases {
            let err = TritonConfig::from_text(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn should_tolerate_unknown_top_level_fields() {
        let config = TritonConfig::from_text("max_batch_size: 0\nfuture_field { a: 1 }").unwrap();
        assert_eq!(config.ignored, vec!["future_field"]);
    }
}
