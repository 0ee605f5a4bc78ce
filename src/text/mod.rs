//! Text models: a `tokenizer.json` beside the ONNX file turns text into the token ids, the
//! attention mask and the token type ids the graph takes, with Hugging Face's `tokenizers`
//! (the library Python's `tokenizers` wraps, so ids and offsets are the same).
//!
//! Offsets are in Unicode code points of the original text, as Python reports them, so that
//! `text[start:end]` is a token's text. The graph inputs are found by their usual names
//! (`input_ids`, `attention_mask`, `token_type_ids`) unless `[text]` in `integrad.toml` names
//! them. Texts longer than the model takes are truncated (the tokenizer's own truncation, or
//! `max_length`), and the result says so.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use tokenizers::{EncodeInput, Tokenizer, TruncationParams};

use crate::model::{DType, TensorData, TensorSpec, Values};

pub mod show;

/// Where the texts go, from `[text]` in `integrad.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSection {
    /// The tokenizer file, relative to the model's folder [default: tokenizer.json].
    pub tokenizer: Option<String>,
    /// The graph inputs taking the ids, the mask and the token types.
    pub ids: Option<String>,
    pub mask: Option<String>,
    pub type_ids: Option<String>,
    /// The most tokens a text becomes, special tokens included [default: the tokenizer's
    /// truncation or the model's position table, whichever is shorter, else 512].
    pub max_length: Option<usize>,
    /// The token whose id pads the default baseline [default: the tokenizer's padding token,
    /// else `[PAD]`, `<pad>`].
    pub pad_token: Option<String>,
}

/// Why a text model could not be set up; the model then fails to load with this reason.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("{} is not a tokenizer this server can read: {reason}", path.display())]
    Tokenizer {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("the model has a tokenizer but no int64 input {0:?} for the token ids; name it in [text] ids = \"...\" in integrad.toml")]
    NoIds(String),
    #[error("[text] names input {0:?}, which the model does not have or is not int64")]
    NoInput(String),
    #[error("[text] max_length must be at least 2, not {0}")]
    MaxLength(usize),
    #[error("[text] max_length {0} is longer than the model's position table ({1} positions)")]
    PastPositions(usize, usize),
}

/// A text model's tokenizer and where its outputs go.
#[derive(Clone)]
pub struct TextSpec {
    tokenizer: Arc<Tokenizer>,
    /// The graph inputs: ids always, the mask and token types where the model has them.
    pub ids: String,
    pub mask: Option<String>,
    pub type_ids: Option<String>,
    pub max_length: usize,
    /// Tokens with ids the baselines use, where the vocabulary has them.
    pub pad: Option<(String, i64)>,
    pub unk: Option<(String, i64)>,
    pub mask_token: Option<(String, i64)>,
}

impl std::fmt::Debug for TextSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextSpec")
            .field("ids", &self.ids)
            .field("mask", &self.mask)
            .field("type_ids", &self.type_ids)
            .field("max_length", &self.max_length)
            .field("pad", &self.pad)
            .finish_non_exhaustive()
    }
}

impl PartialEq for TextSpec {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.ids,
            &self.mask,
            &self.type_ids,
            self.max_length,
            &self.pad,
        ) == (
            &other.ids,
            &other.mask,
            &other.type_ids,
            other.max_length,
            &other.pad,
        )
    }
}

/// A text as the model takes it: its tokens with where they are in the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    /// The text and its pair (empty when none), as sent.
    pub text: String,
    pub pair: String,
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub tokens: Vec<String>,
    /// `[start, end)` in code points of the text the token came from (`sequence`).
    pub offsets: Vec<(u32, u32)>,
    /// 0 for the text, 1 for the pair, None for special tokens.
    pub sequence: Vec<Option<usize>>,
    pub special: Vec<bool>,
    /// The pre-tokenizer's word of each token (None for special tokens).
    pub words: Vec<Option<u32>>,
    /// Whether truncation dropped tokens (the text was longer than the model takes).
    pub truncated: bool,
}

/// The number of positions of a transformer's position-embedding table: a 2-D float
/// initializer named for positions (`position_embeddings`, as Hugging Face and PyTorch exports
/// keep the parameter's name) that a Gather looks rows up in. None when there is none, or when
/// fused ops hide it (then the tokenizer or `[text] max_length` must say).
pub fn position_table(model: &crate::proto::onnx::ModelProto) -> Option<usize> {
    let graph = model.graph.as_ref()?;
    let gathered: std::collections::HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| n.op_type() == "Gather")
        .filter_map(|n| n.input.first().map(String::as_str))
        .collect();
    graph
        .initializer
        .iter()
        .filter(|t| t.dims.len() == 2 && gathered.contains(t.name()))
        .filter(|t| t.name().to_ascii_lowercase().contains("position"))
        .filter_map(|t| usize::try_from(t.dims[0]).ok())
        .min()
}

impl TextSpec {
    /// The text spec of a model whose folder has a tokenizer (`tokenizer.json`, or the file
    /// `[text] tokenizer` names); None when there is none and `[text]` names none.
    /// `positions` is the length of the model's position-embedding table, when it has one
    /// ([`position_table`]): no text may be longer.
    pub fn load(
        dir: &Path,
        section: Option<&TextSection>,
        inputs: &[TensorSpec],
        positions: Option<usize>,
    ) -> Result<Option<TextSpec>, TextError> {
        let named = section.and_then(|s| s.tokenizer.as_deref());
        let path = dir.join(named.unwrap_or("tokenizer.json"));
        if named.is_none() && !path.exists() {
            return Ok(None);
        }
        let section = section.cloned().unwrap_or_default();
        let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| TextError::Tokenizer {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let int64 = |name: &str| {
            inputs
                .iter()
                .any(|i| i.name == name && i.dtype == DType::I64)
        };
        let chosen = |given: &Option<String>, usual: &str| -> Result<Option<String>, TextError> {
            match given {
                Some(name) if int64(name) => Ok(Some(name.clone())),
                Some(name) => Err(TextError::NoInput(name.clone())),
                None => Ok(int64(usual).then(|| usual.to_string())),
            }
        };
        let ids = chosen(&section.ids, "input_ids")?
            .ok_or_else(|| TextError::NoIds("input_ids".into()))?;
        let mask = chosen(&section.mask, "attention_mask")?;
        let type_ids = chosen(&section.type_ids, "token_type_ids")?;
        let tokenizer_length = tokenizer.get_truncation().map(|t| t.max_length);
        let max_length = match (section.max_length, tokenizer_length, positions) {
            (Some(given), _, Some(positions)) if given > positions => {
                return Err(TextError::PastPositions(given, positions))
            }
            (Some(given), _, _) => given,
            (None, Some(length), Some(positions)) => length.min(positions),
            (None, Some(length), None) => length,
            (None, None, Some(positions)) => positions,
            (None, None, None) => 512,
        };
        if max_length < 2 {
            return Err(TextError::MaxLength(max_length));
        }
        // Texts are padded here, per batch; the tokenizer truncates at the model's length.
        tokenizer.with_padding(None);
        let truncation = TruncationParams {
            max_length,
            ..tokenizer.get_truncation().cloned().unwrap_or_default()
        };
        tokenizer
            .with_truncation(Some(truncation))
            .map_err(|e| TextError::Tokenizer {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let token = |names: &[&str]| {
            names.iter().find_map(|&name| {
                tokenizer
                    .token_to_id(name)
                    .map(|id| (name.to_string(), i64::from(id)))
            })
        };
        let padding = tokenizer.get_padding().map(|p| p.pad_token.clone());
        let pad = match (&section.pad_token, padding) {
            (Some(name), _) => token(&[name.as_str()]),
            (None, Some(name)) => token(&[name.as_str(), "[PAD]", "<pad>"]),
            (None, None) => token(&["[PAD]", "<pad>"]),
        };
        Ok(Some(TextSpec {
            ids,
            mask,
            type_ids,
            max_length,
            pad,
            unk: token(&["[UNK]", "<unk>"]),
            mask_token: token(&["[MASK]", "<mask>"]),
            tokenizer: Arc::new(tokenizer),
        }))
    }

    /// `text` (and `pair`) as the model takes them, truncated to `max_length` tokens.
    pub fn encode(&self, text: &str, pair: Option<&str>) -> Result<Tokenized, String> {
        let input: EncodeInput = match pair {
            Some(pair) => (text, pair).into(),
            None => text.into(),
        };
        let encoding = self
            .tokenizer
            .encode_char_offsets(input, true)
            .map_err(|e| e.to_string())?;
        let wide = |v: &[u32]| v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>();
        Ok(Tokenized {
            text: text.to_string(),
            pair: pair.unwrap_or_default().to_string(),
            ids: wide(encoding.get_ids()),
            type_ids: wide(encoding.get_type_ids()),
            attention_mask: wide(encoding.get_attention_mask()),
            tokens: encoding.get_tokens().to_vec(),
            offsets: encoding
                .get_offsets()
                .iter()
                .map(|&(s, e)| (s as u32, e as u32))
                .collect(),
            sequence: encoding.get_sequence_ids(),
            special: encoding
                .get_special_tokens_mask()
                .iter()
                .map(|&s| s != 0)
                .collect(),
            words: encoding.get_word_ids().to_vec(),
            truncated: !encoding.get_overflowing().is_empty(),
        })
    }

    /// The graph inputs of `tokenized` (without the batch axis): ids, and the mask and token
    /// types where the model takes them.
    pub fn tensors(&self, tokenized: &Tokenized, ids: &[i64]) -> Vec<(String, TensorData)> {
        let len = ids.len() as i64;
        let tensor = |values: &[i64]| TensorData {
            shape: vec![len],
            values: Values::I64(values.to_vec()),
        };
        let mut out = vec![(self.ids.clone(), tensor(ids))];
        if let Some(mask) = &self.mask {
            out.push((mask.clone(), tensor(&tokenized.attention_mask)));
        }
        if let Some(type_ids) = &self.type_ids {
            out.push((type_ids.clone(), tensor(&tokenized.type_ids)));
        }
        out
    }

    /// The text's own ids with every token that is not special replaced by `id` (the
    /// baselines' "pad, special tokens kept").
    pub fn replaced(tokenized: &Tokenized, id: i64) -> Vec<i64> {
        tokenized
            .ids
            .iter()
            .zip(&tokenized.special)
            .map(|(&own, &special)| if special { own } else { id })
            .collect()
    }

    /// Code points `[start, end)` of the text (`pair`: of the pair).
    pub fn cut(tokenized: &Tokenized, pair: bool, (start, end): (u32, u32)) -> String {
        let source = if pair {
            &tokenized.pair
        } else {
            &tokenized.text
        };
        source
            .chars()
            .skip(start as usize)
            .take(end.saturating_sub(start) as usize)
            .collect()
    }

    /// Whether `name` is one of the graph inputs a text fills.
    pub fn fills(&self, name: &str) -> bool {
        name == self.ids
            || self.mask.as_deref() == Some(name)
            || self.type_ids.as_deref() == Some(name)
    }
}

#[cfg(test)]
mod tests;
