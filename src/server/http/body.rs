//! KServe V1 bodies: `{"instances": [...], "parameters": {...}}` in, JSON answers out.
//!
//! An instance is, by its JSON shape and the model's inputs:
//! - a nested list: a tensor without the batch dimension, for a model with one input (its
//!   dtype is the input's);
//! - `{"b64": "..."}` or `{"image_bytes": {"b64": "..."}}`: an encoded image (TF Serving's
//!   convention);
//! - a string, or `{"text": ..., "pair": ...}`: a text, for a text model;
//! - an object keyed by input names: several inputs, each one of the above or a feature row;
//! - any other object: a tabular row, `{feature: number}`.
//!
//! Explain's `parameters` are `ExplainRequest`'s fields in protobuf's JSON mapping (either
//! spelling of a name), with shorthands: `"target": 3` or `"target": "cat"`, enum values
//! without their prefix in any case (`"method": "gauss-legendre"`, `"objective": "logit"`,
//! `"technique": "blur-ig"`, `"ig"` for integrated gradients, and a noise tunnel's `"kind":
//! "vargrad"`), and `"baseline": "black"` (white, zeros, uniform, reference, and pad, unk, mask
//! for texts).
//! Nothing is ignored: an unknown key is a 400 naming it.

use std::collections::HashMap;

use base64::Engine as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, SerializeOptions};
use serde_json::{json, Map, Value};

use super::error::HttpError;
use crate::proto::integrad::v1 as pb;

/// A request body.
pub struct Payload {
    pub instances: Vec<Value>,
    parameters: Map<String, Value>,
}

impl Payload {
    pub fn parse(bytes: &[u8]) -> Result<Self, HttpError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| HttpError::invalid("body", format!("not JSON: {e}")))?;
        let Value::Object(mut body) = value else {
            return Err(HttpError::invalid(
                "body",
                "expected an object {\"instances\": [...]}",
            ));
        };
        let instances = match body.remove("instances") {
            Some(Value::Array(instances)) if !instances.is_empty() => instances,
            Some(Value::Array(_)) => {
                return Err(HttpError::invalid("instances", "at least one instance is required"))
            }
            Some(_) => return Err(HttpError::invalid("instances", "must be a list")),
            None => {
                return Err(HttpError::invalid(
                    "instances",
                    "missing: the body is {\"instances\": [...], \"parameters\": {...}} (KServe's V1 protocol)",
                ))
            }
        };
        let parameters = match body.remove("parameters") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(parameters)) => parameters,
            Some(_) => return Err(HttpError::invalid("parameters", "must be an object")),
        };
        if let Some(key) = body.keys().next() {
            return Err(HttpError::invalid(
                key.clone(),
                "unknown key; the body has \"instances\" and optional \"parameters\"",
            ));
        }
        Ok(Self {
            instances,
            parameters,
        })
    }

    /// Predict's one parameter, `top_k` (0, the default, is the server's default).
    pub fn predict_top_k(&self) -> Result<u32, HttpError> {
        let mut top_k = 0;
        for (key, value) in &self.parameters {
            match (key.as_str(), value.as_u64()) {
                ("top_k" | "topK", Some(k)) => {
                    top_k = u32::try_from(k)
                        .map_err(|_| HttpError::invalid("parameters.top_k", "too large"))?
                }
                ("top_k" | "topK", None) => {
                    return Err(HttpError::invalid(
                        "parameters.top_k",
                        "must be a non-negative integer",
                    ))
                }
                _ => {
                    return Err(HttpError::invalid(
                        format!("parameters.{key}"),
                        "unknown parameter; predict takes only top_k",
                    ))
                }
            }
        }
        Ok(top_k)
    }

    /// The Explain options of `parameters`, for `model` (the instances fill in the input).
    pub fn explain_request(&self, model: &str) -> Result<pb::ExplainRequest, HttpError> {
        let mut parameters = Map::new();
        for (key, value) in &self.parameters {
            let value = match key.as_str() {
                "model" | "input" | "inputs" => {
                    return Err(HttpError::invalid(
                        format!("parameters.{key}"),
                        "comes from the URL and the instances, not from parameters",
                    ))
                }
                "target" => target(value),
                "method" => enum_value(value, "METHOD_"),
                "technique" => match value {
                    Value::String(name) if name.trim().eq_ignore_ascii_case("ig") => {
                        Value::String("TECHNIQUE_INTEGRATED_GRADIENTS".into())
                    }
                    other => enum_value(other, "TECHNIQUE_"),
                },
                "noise_tunnel" | "noiseTunnel" => match value {
                    Value::Object(tunnel) => Value::Object(
                        tunnel
                            .iter()
                            .map(|(k, v)| match k.as_str() {
                                "kind" => (k.clone(), enum_value(v, "NOISE_KIND_")),
                                _ => (k.clone(), v.clone()),
                            })
                            .collect(),
                    ),
                    other => other.clone(),
                },
                "objective" => enum_value(value, "OBJECTIVE_"),
                "token_normalization" | "tokenNormalization" => {
                    enum_value(value, "TOKEN_NORMALIZATION_")
                }
                "baseline" => baseline(value).map_err(|e| e.field("parameters.baseline"))?,
                "baselines" => match value {
                    Value::Object(map) => {
                        let mut out = Map::new();
                        for (name, b) in map {
                            let b = baseline(b)
                                .map_err(|e| e.field(format!("parameters.baselines.{name}")))?;
                            out.insert(name.clone(), b);
                        }
                        Value::Object(out)
                    }
                    other => other.clone(),
                },
                _ => value.clone(),
            };
            parameters.insert(key.clone(), value);
        }
        let mut request: pb::ExplainRequest =
            from_parameters("integrad.v1.ExplainRequest", parameters)?;
        request.model = model.to_string();
        Ok(request)
    }
}

/// The message `name` read from `parameters` in protobuf's JSON mapping.
fn from_parameters<T: prost::Message + Default>(
    name: &str,
    parameters: Map<String, Value>,
) -> Result<T, HttpError> {
    DynamicMessage::deserialize_with_options(
        crate::proto::message_descriptor(name),
        Value::Object(parameters),
        &DeserializeOptions::new(),
    )
    .map_err(|e| HttpError::invalid("parameters", e.to_string()))?
    .transcode_to()
    .map_err(|e| HttpError::invalid("parameters", e.to_string()))
}

impl Payload {
    /// The Evaluate request of `parameters`, for `model` (its one instance fills in the
    /// input). `saliency` is a Tensor object or nested lists of numbers (height x width, or
    /// the input's shape); `metrics`, `objective` and `reduction` take names without their
    /// prefix (`"deletion"`, `"logit"`, `"abs-sum"`).
    pub fn evaluate_request(&self, model: &str) -> Result<pb::EvaluateRequest, HttpError> {
        let mut parameters = Map::new();
        for (key, value) in &self.parameters {
            let value = match key.as_str() {
                "model" | "input" | "inputs" => {
                    return Err(HttpError::invalid(
                        format!("parameters.{key}"),
                        "comes from the URL and the instances, not from parameters",
                    ))
                }
                "target" => target(value),
                "objective" => enum_value(value, "OBJECTIVE_"),
                "reduction" => enum_value(value, "SALIENCY_REDUCTION_"),
                "metrics" => match value {
                    Value::Array(list) => {
                        Value::Array(list.iter().map(|m| enum_value(m, "METRIC_")).collect())
                    }
                    other => other.clone(),
                },
                "saliency" => nested_tensor(value).map_err(|e| e.field("parameters.saliency"))?,
                _ => value.clone(),
            };
            parameters.insert(key.clone(), value);
        }
        let mut request: pb::EvaluateRequest =
            from_parameters("integrad.v1.EvaluateRequest", parameters)?;
        request.model = model.to_string();
        Ok(request)
    }
}

/// Nested lists of numbers as a float32 Tensor object (base64 data, as protobuf's JSON
/// mapping writes bytes); any other value as it is (a Tensor object).
fn nested_tensor(value: &Value) -> Result<Value, HttpError> {
    if !value.is_array() {
        return Ok(value.clone());
    }
    let mut shape = Vec::new();
    let mut level = value;
    while let Value::Array(items) = level {
        shape.push(items.len() as i64);
        match items.first() {
            Some(first) => level = first,
            None => break,
        }
    }
    let mut data = Vec::new();
    fn flatten(
        value: &Value,
        depth: usize,
        shape: &[i64],
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        match value {
            Value::Array(items) if depth < shape.len() && items.len() as i64 == shape[depth] => {
                items
                    .iter()
                    .try_for_each(|v| flatten(v, depth + 1, shape, out))
            }
            Value::Number(n) if depth == shape.len() => {
                out.extend_from_slice(&(n.as_f64().unwrap_or(f64::NAN) as f32).to_le_bytes());
                Ok(())
            }
            _ => Err(format!(
                "nested lists must be rectangular numbers of shape {shape:?}"
            )),
        }
    }
    flatten(value, 0, &shape, &mut data)
        .map_err(|e| HttpError::invalid("parameters.saliency", e))?;
    let base64 = base64::engine::general_purpose::STANDARD;
    Ok(json!({
        "shape": shape,
        "dtype": "DATA_TYPE_FLOAT32",
        "data": base64.encode(&data),
    }))
}

/// An Evaluate response in protobuf's JSON mapping (field names as in the proto; the plot
/// in base64).
pub fn evaluation(response: &pb::EvaluateResponse) -> Value {
    proto_json(response, "integrad.v1.EvaluateResponse")
}

/// `3` is a class index, `"cat"` a label; an object is the proto's `Target`.
fn target(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!({ "class_index": n }),
        Value::String(label) => json!({ "label": label }),
        other => other.clone(),
    }
}

/// An enum value written without its prefix, in any case, `-` for `_`: `gauss-legendre` is
/// `METHOD_GAUSS_LEGENDRE`. Full names and numbers pass as they are.
fn enum_value(value: &Value, prefix: &str) -> Value {
    match value {
        Value::String(name) => {
            let upper = name.trim().to_ascii_uppercase().replace('-', "_");
            if upper.starts_with(prefix) {
                Value::String(upper)
            } else {
                Value::String(format!("{prefix}{upper}"))
            }
        }
        other => other.clone(),
    }
}

/// A baseline by name, or the proto's `Baseline` object as it is.
fn baseline(value: &Value) -> Result<Value, HttpError> {
    let Value::String(name) = value else {
        return Ok(value.clone());
    };
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        kind @ ("black" | "white" | "zeros") => json!({ kind: true }),
        "uniform" => json!({ "uniform": {} }),
        "reference" => json!({ "reference": {} }),
        token @ ("pad" | "unk" | "mask") => {
            json!({ "text": { "token": format!("TEXT_BASELINE_TOKEN_{}", token.to_ascii_uppercase()) } })
        }
        _ => {
            return Err(HttpError::invalid(
                "parameters.baseline",
                format!("{name:?} is none of black, white, zeros, uniform, reference, pad, unk, mask; or give a Baseline object such as {{\"blur\": {{\"sigma\": 10}}}}"),
            ))
        }
    })
}

/// The request input(s) of one instance: `(input, inputs)` as Predict and Explain take them.
pub fn instance(
    model: &pb::ModelInfo,
    value: &Value,
) -> Result<(Option<pb::Input>, HashMap<String, pb::Input>), HttpError> {
    let is_input_map = |map: &Map<String, Value>| {
        !map.is_empty()
            && map
                .keys()
                .all(|k| model.inputs.iter().any(|input| &input.name == k))
    };
    match value {
        Value::Object(map) if image(map).is_none() && is_input_map(map) => {
            let mut inputs = HashMap::new();
            for (name, value) in map {
                let info = model.inputs.iter().find(|i| &i.name == name);
                let input = one_input(model, info, value).map_err(|e| e.within(name))?;
                inputs.insert(name.clone(), input);
            }
            Ok((None, inputs))
        }
        _ => {
            // A lone tensor is for the model's one input.
            let only = match model.inputs.as_slice() {
                [only] => Some(only),
                _ => None,
            };
            Ok((Some(one_input(model, only, value)?), HashMap::new()))
        }
    }
}

/// `{"b64": ...}` or `{"image_bytes": {"b64": ...}}`: the base64 text.
fn image(map: &Map<String, Value>) -> Option<&Value> {
    match (map.len(), map.get("b64"), map.get("image_bytes")) {
        (1, Some(b64), _) => Some(b64),
        (1, _, Some(Value::Object(inner))) if inner.len() == 1 => inner.get("b64"),
        _ => None,
    }
}

/// One input from its JSON; `info` is the model input it fills, when known.
fn one_input(
    model: &pb::ModelInfo,
    info: Option<&pb::TensorInfo>,
    value: &Value,
) -> Result<pb::Input, HttpError> {
    use pb::input::Kind;
    let is_text = model.text.is_some();
    let kind = match value {
        Value::Array(_) => Kind::Tensor(tensor(info, value)?),
        Value::String(text) if is_text => Kind::Text(pb::Text {
            text: text.clone(),
            pair: String::new(),
        }),
        Value::String(_) => {
            return Err(HttpError::invalid(
                "",
                format!(
                    "a string is a text, and model {:?} is not a text model; send an image as {{\"b64\": \"...\"}}, a tensor as a nested list, a row as {{feature: value}}",
                    model.name
                ),
            ))
        }
        Value::Object(map) => {
            if let Some(b64) = image(map) {
                let text = b64
                    .as_str()
                    .ok_or_else(|| HttpError::invalid("b64", "must be a base64 string"))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|e| HttpError::invalid("b64", format!("not base64: {e}")))?;
                Kind::Image(bytes)
            } else if is_text && map.contains_key("text") {
                text(map)?
            } else {
                Kind::Features(features(map)?)
            }
        }
        other => {
            return Err(HttpError::invalid(
                "",
                format!("{} is no instance: send a nested list, a string, {{\"b64\": ...}} or an object", kind_of(other)),
            ))
        }
    };
    Ok(pb::Input { kind: Some(kind) })
}

fn text(map: &Map<String, Value>) -> Result<pb::input::Kind, HttpError> {
    let mut text = pb::Text::default();
    for (key, value) in map {
        let slot = match key.as_str() {
            "text" => &mut text.text,
            "pair" => &mut text.pair,
            _ => {
                return Err(HttpError::invalid(
                    key.clone(),
                    "unknown key; a text is {\"text\": ..., \"pair\": ...}",
                ))
            }
        };
        *slot = value
            .as_str()
            .ok_or_else(|| HttpError::invalid(key.clone(), "must be a string"))?
            .to_string();
    }
    Ok(pb::input::Kind::Text(text))
}

fn features(map: &Map<String, Value>) -> Result<pb::FeatureRow, HttpError> {
    let mut values = HashMap::with_capacity(map.len());
    for (name, value) in map {
        let number = value.as_f64().ok_or_else(|| {
            HttpError::invalid(
                name.clone(),
                format!("a feature's value must be a number, not {}", kind_of(value)),
            )
        })?;
        values.insert(name.clone(), number);
    }
    Ok(pb::FeatureRow { values })
}

/// A nested list as a tensor: its shape from the nesting (every list at a depth as long as
/// the first), its dtype the model input's (float32 when not known).
fn tensor(info: Option<&pb::TensorInfo>, value: &Value) -> Result<pb::Tensor, HttpError> {
    let dtype = info.map_or(pb::DataType::Float32, |i| i.dtype());
    let mut shape = Vec::new();
    let mut probe = value;
    while let Value::Array(items) = probe {
        shape.push(items.len() as i64);
        match items.first() {
            Some(first) => probe = first,
            None => break,
        }
    }
    let mut numbers = Vec::new();
    flatten(value, &shape, &mut String::new(), &mut numbers)?;
    let data = match dtype {
        pb::DataType::Int64 => {
            let mut bytes = Vec::with_capacity(numbers.len() * 8);
            for (i, n) in numbers.iter().enumerate() {
                if n.fract() != 0.0 || !(i64::MIN as f64..=i64::MAX as f64).contains(n) {
                    return Err(HttpError::invalid(
                        "",
                        format!("value {i} ({n}) is not an integer, and the input takes int64"),
                    ));
                }
                bytes.extend_from_slice(&(*n as i64).to_le_bytes());
            }
            bytes
        }
        _ => numbers
            .iter()
            .flat_map(|n| (*n as f32).to_le_bytes())
            .collect(),
    };
    Ok(pb::Tensor {
        shape,
        dtype: if dtype == pb::DataType::Int64 {
            pb::DataType::Int64
        } else {
            pb::DataType::Float32
        } as i32,
        data,
    })
}

/// Appends the numbers of `value` (a list nested as `shape` says) to `out`; `at` is where in
/// the list it is, for messages.
fn flatten(
    value: &Value,
    shape: &[i64],
    at: &mut String,
    out: &mut Vec<f64>,
) -> Result<(), HttpError> {
    match (value, shape.split_first()) {
        (Value::Array(items), Some((&len, rest))) => {
            if items.len() as i64 != len {
                return Err(HttpError::invalid(
                    at.clone(),
                    format!(
                        "a ragged list: {} items where its siblings have {len}",
                        items.len()
                    ),
                ));
            }
            for (i, item) in items.iter().enumerate() {
                let mark = at.len();
                at.push_str(&format!("[{i}]"));
                flatten(item, rest, at, out)?;
                at.truncate(mark);
            }
            Ok(())
        }
        (Value::Number(n), None) => {
            out.push(n.as_f64().unwrap_or(f64::NAN));
            Ok(())
        }
        (other, _) => Err(HttpError::invalid(
            at.clone(),
            format!(
                "{} where the nesting calls for {}",
                kind_of(other),
                if shape.is_empty() {
                    "a number"
                } else {
                    "a list"
                }
            ),
        )),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A message in protobuf's JSON mapping, with the proto's field names and every field (so
/// that `false` and `0` read as answers, not as absences); `full_name` is its proto name.
fn proto_json(message: &impl prost::Message, full_name: &str) -> Value {
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    let descriptor = crate::proto::message_descriptor(full_name);
    DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|e| e.to_string())
        .and_then(|m| {
            m.serialize_with_options(serde_json::value::Serializer, &options)
                .map_err(|e| e.to_string())
        })
        .unwrap_or_else(|e| json!({ "error": format!("cannot write {full_name} as JSON: {e}") }))
}

pub fn model_info(info: &pb::ModelInfo) -> Value {
    proto_json(info, "integrad.v1.ModelInfo")
}

pub fn progress(progress: &pb::Progress) -> Value {
    proto_json(progress, "integrad.v1.Progress")
}

/// One prediction: the top class (its index, label, probability), the top-k list and the
/// model's output values.
pub fn prediction(response: &pb::PredictResponse) -> Value {
    let top: Vec<Value> = response
        .top
        .iter()
        .map(|p| json!({"class_index": p.class_index, "label": p.label, "probability": p.probability, "logit": p.logit}))
        .collect();
    let outputs = response
        .logits
        .as_ref()
        .map(|t| json!({ "shape": t.shape, "values": crate::wire::f32s(&t.data) }));
    let first = top.first().cloned().unwrap_or(Value::Null);
    json!({
        "model": response.model,
        "class_index": first["class_index"],
        "label": first["label"],
        "probability": first["probability"],
        "top": top,
        "logits": outputs,
    })
}

/// An explanation: the JSON the CLI writes to `explanation.json`, with every attributed
/// tensor's values, and the pictures asked for (`render`) in base64.
pub fn explanation(r: &pb::Explanation) -> Value {
    let mut json = crate::cli::json::explanation(r, true);
    let base64 = base64::engine::general_purpose::STANDARD;
    if !r.mask_png.is_empty() {
        json["mask_png"] = json!(base64.encode(&r.mask_png));
    }
    if !r.overlay_png.is_empty() {
        json["overlay_png"] = json!(base64.encode(&r.overlay_png));
    }
    json
}

#[cfg(test)]
mod tests {
    //! Fuzzing the body parser (bounded, as the integration suite's fuzz targets): any bytes,
    //! any JSON as an instance or as parameters, for a tabular, a text and an image model:
    //! an answer or a 4xx error naming a part of the body, never a panic.
    use super::*;
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>().prop_map(|f| json!(f)),
            any::<i64>().prop_map(|i| json!(i)),
            "[a-z_]{0,8}".prop_map(Value::String),
            Just(json!("b64")),
            Just(json!("text")),
            Just(json!("numeric")),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::hash_map(
                    prop_oneof![
                        "[a-z_]{0,8}",
                        Just("b64".to_string()),
                        Just("image_bytes".to_string()),
                        Just("text".to_string()),
                        Just("pair".to_string()),
                        Just("numeric".to_string()),
                        Just("target".to_string()),
                        Just("baseline".to_string()),
                        Just("steps".to_string()),
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn models() -> Vec<pb::ModelInfo> {
        let input = |name: &str, dtype: pb::DataType, features: &[&str]| pb::TensorInfo {
            name: name.into(),
            dtype: dtype as i32,
            features: features.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        };
        vec![
            pb::ModelInfo {
                name: "tabular".into(),
                inputs: vec![
                    input("numeric", pb::DataType::Float32, &["a", "b"]),
                    input("categorical", pb::DataType::Int64, &["c"]),
                ],
                ..Default::default()
            },
            pb::ModelInfo {
                name: "text".into(),
                inputs: vec![input("input_ids", pb::DataType::Int64, &[])],
                text: Some(pb::TextInfo::default()),
                ..Default::default()
            },
            pb::ModelInfo {
                name: "image".into(),
                inputs: vec![input("input", pb::DataType::Float32, &[])],
                ..Default::default()
            },
        ]
    }

    fn client_error(error: &HttpError) -> bool {
        error.status().is_client_error()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_bytes_parse_or_are_a_client_error(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Err(error) = Payload::parse(&bytes) {
                prop_assert!(client_error(&error));
            }
        }

        #[test]
        fn any_instance_is_an_input_or_a_client_error(value in json()) {
            for model in models() {
                if let Err(error) = instance(&model, &value) {
                    prop_assert!(client_error(&error), "{:?}", error);
                }
            }
        }

        #[test]
        fn any_parameters_are_options_or_a_client_error(value in json()) {
            let body = json!({ "instances": [1], "parameters": value });
            match Payload::parse(body.to_string().as_bytes()) {
                Ok(payload) => {
                    if let Err(error) = payload.explain_request("m") {
                        prop_assert!(client_error(&error));
                    }
                    if let Err(error) = payload.predict_top_k() {
                        prop_assert!(client_error(&error));
                    }
                }
                Err(error) => prop_assert!(client_error(&error)),
            }
        }
    }
}
