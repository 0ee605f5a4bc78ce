//! The Open Inference Protocol (KServe V2) service `inference.GRPCInferenceService`, so that
//! stock clients (`tritonclient[grpc]`, `kserve`) run the models integrad serves.
//!
//! It runs on the same models and worker threads as the Explainer: a request is checked here
//! (names, datatypes, shapes, byte counts) and then handed to the model's worker, so ONNX
//! Runtime never runs on tokio's threads. Outputs go back as `raw_output_contents`, which is
//! what tritonclient reads.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use tonic::{Request, Response, Status};

use crate::engine::Engine;
use crate::error::Error;
use crate::model::triton::datatype;
use crate::model::{DType, Model, ModelSpec, TensorData, TensorSpec, Values};
use crate::proto::inference as pb;
use crate::proto::inference::grpc_inference_service_server::GrpcInferenceService;
use crate::proto::inference::infer_parameter::ParameterChoice;
use crate::proto::inference::model_infer_request::InferInputTensor;
use crate::wire::{self, TensorError};

/// The platform reported in model metadata (Triton's name for ONNX Runtime models).
const PLATFORM: &str = "onnxruntime_onnx";
/// The backend in a model's configuration (Triton's ONNX Runtime backend).
const BACKEND: &str = "onnxruntime";

/// Serves once the engine (models loaded and warmed up) is set; not ready before.
#[derive(Clone, Default)]
pub struct InferenceService {
    engine: Arc<OnceLock<Arc<Engine>>>,
}

impl InferenceService {
    /// Called once, when every model has loaded (or failed to).
    pub fn set_engine(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
    }

    fn engine(&self) -> Result<&Engine, Status> {
        self.engine.get().map(|e| e.as_ref()).ok_or_else(|| {
            Status::unavailable("models are still loading; retry when ServerReady says ready")
        })
    }
}

/// The ready model a request names, at the version it asks for (empty: the served one).
fn lookup<'e>(engine: &'e Engine, name: &str, version: &str) -> Result<&'e Model, Error> {
    if name.is_empty() {
        return Err(Error::invalid("model_name", "required"));
    }
    let model = engine.model(name)?;
    let served = served_version(&model.spec);
    if !version.is_empty() && version != served {
        return Err(Error::VersionNotFound {
            model: name.to_string(),
            version: version.to_string(),
            served: if served.is_empty() {
                "none: it is not from a Triton layout and has no versions; send an empty version"
                    .to_string()
            } else {
                served
            },
        });
    }
    Ok(model)
}

/// The version a model is served at: its Triton version directory, or "" outside a Triton
/// layout.
fn served_version(spec: &ModelSpec) -> String {
    spec.triton
        .as_ref()
        .map(|t| t.version.to_string())
        .unwrap_or_default()
}

fn tensor_metadata(spec: &TensorSpec) -> pb::model_metadata_response::TensorMetadata {
    pb::model_metadata_response::TensorMetadata {
        name: spec.name.clone(),
        datatype: datatype(spec.dtype).to_string(),
        shape: spec.shape.clone(),
    }
}

/// The model's configuration as Triton returns it for an ONNX model: its `config.pbtxt` once
/// completed from the graph. A Triton-layout model batches as its `config.pbtxt` says
/// (`max_batch_size` above 0: dims without the batch dimension). A model in integrad's layout
/// declares no batching (`max_batch_size` 0) and its dims are the graph's, the batch dimension
/// included: ModelInfer takes any batch on a free first dimension, which a `max_batch_size`
/// would claim to cap (Triton's completion would pick one). -1 is a dimension of any size.
fn model_config(spec: &ModelSpec) -> pb::ModelConfig {
    let max_batch_size = spec.triton.as_ref().map_or(0, |t| t.max_batch_size);
    let batch = usize::from(max_batch_size > 0);
    let dims = |tensor: &TensorSpec| tensor.shape.iter().skip(batch).copied().collect();
    pb::ModelConfig {
        name: spec.name.clone(),
        platform: PLATFORM.into(),
        backend: BACKEND.into(),
        // NOTE: config.pbtxt's max_batch_size is an int32, read into an i64.
        max_batch_size: i32::try_from(max_batch_size).unwrap_or(i32::MAX),
        input: spec
            .inputs
            .iter()
            .map(|input| pb::ModelInput {
                name: input.name().to_string(),
                data_type: data_type(input.tensor.dtype) as i32,
                dims: dims(&input.tensor),
                ..Default::default()
            })
            .collect(),
        output: spec
            .outputs
            .iter()
            .map(|output| pb::ModelOutput {
                name: output.name.clone(),
                data_type: data_type(output.dtype) as i32,
                dims: dims(output),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Triton's `DataType` of an element type: TYPE_ before the protocol's name (TYPE_FP32...),
/// except BYTES, which is TYPE_STRING.
fn data_type(dtype: DType) -> pb::DataType {
    match datatype(dtype) {
        "BYTES" => pb::DataType::TypeString,
        name => pb::DataType::from_str_name(&format!("TYPE_{name}"))
            .unwrap_or(pb::DataType::TypeInvalid),
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _request: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        // As the health service: ready once loading is over and at least one model loaded.
        let ready = self.engine.get().is_some_and(|engine| {
            engine
                .repository()
                .iter()
                .any(|(_, entry)| entry.failure().is_none())
        });
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let request = request.into_inner();
        // NOTE: as Triton does, an unknown or failed model is "not ready" rather than an
        // error: readiness probes ask this before the model exists.
        let ready = self
            .engine
            .get()
            .is_some_and(|engine| lookup(engine, &request.name, &request.version).is_ok());
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _request: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "integrad".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            // Of Triton's extensions, only the model configuration (gRPC ModelConfig).
            extensions: vec!["model_configuration".into()],
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let model = lookup(self.engine()?, &request.name, &request.version)?;
        let spec = &model.spec;
        let version = served_version(spec);
        Ok(Response::new(pb::ModelMetadataResponse {
            name: spec.name.clone(),
            versions: if version.is_empty() {
                Vec::new()
            } else {
                vec![version]
            },
            platform: PLATFORM.into(),
            inputs: spec
                .inputs
                .iter()
                .map(|i| tensor_metadata(&i.tensor))
                .collect(),
            outputs: spec.outputs.iter().map(tensor_metadata).collect(),
        }))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let request = request.into_inner();
        let model = lookup(self.engine()?, &request.name, &request.version)?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(model_config(&model.spec)),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let request = request.into_inner();
        let model = lookup(self.engine()?, &request.model_name, &request.model_version)?;
        let spec = &model.spec;
        let inputs = decode_inputs(spec, &request)?;
        let outputs = requested_outputs(spec, &request.outputs)?;
        let results = model
            .worker
            .run(inputs, outputs.clone())
            .await
            .map_err(Error::from)?;
        let mut response = pb::ModelInferResponse {
            model_name: spec.name.clone(),
            model_version: served_version(spec),
            id: request.id,
            ..Default::default()
        };
        for (name, tensor) in outputs.into_iter().zip(results) {
            response
                .outputs
                .push(pb::model_infer_response::InferOutputTensor {
                    name,
                    datatype: datatype(tensor.dtype()).to_string(),
                    shape: tensor.shape.clone(),
                    ..Default::default()
                });
            response.raw_output_contents.push(match tensor.values {
                Values::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Values::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            });
        }
        Ok(Response::new(response))
    }
}

/// Nothing in a request is silently ignored: of the parameters clients send, integrad
/// implements only the binary-data ones (checked where they are used); any other (priority,
/// timeouts, shared memory, classification...) is refused by name.
fn refuse_parameters(
    parameters: &HashMap<String, pb::InferParameter>,
    understood: &[&str],
    field: &'static str,
    whose: &str,
) -> Result<(), Error> {
    let mut names: Vec<&String> = parameters
        .keys()
        .filter(|k| !understood.contains(&k.as_str()))
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    Err(Error::invalid(
        field,
        format!("{whose}: integrad does not implement the parameters {names:?}"),
    ))
}

/// `binary_data_output` (request) and `binary_data` (output), which the kserve client sends:
/// integrad always answers in `raw_output_contents`, so only `true` is honoured.
fn check_binary_output(
    parameters: &HashMap<String, pb::InferParameter>,
    name: &str,
    field: &'static str,
) -> Result<(), Error> {
    match parameters
        .get(name)
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None | Some(ParameterChoice::BoolParam(true)) => Ok(()),
        Some(other) => Err(Error::invalid(
            field,
            format!(
                "{name} is {other:?}; integrad returns outputs in raw_output_contents only (true)"
            ),
        )),
    }
}

/// `binary_data_size` on an input (the kserve client sends it) must be the size of its
/// `raw_input_contents` entry.
fn check_binary_size(input: &InferInputTensor, raw: Option<&[u8]>) -> Result<(), Error> {
    let Some(parameter) = input.parameters.get("binary_data_size") else {
        return Ok(());
    };
    let size = match parameter.parameter_choice {
        Some(ParameterChoice::Int64Param(n)) => u64::try_from(n).ok(),
        Some(ParameterChoice::Uint64Param(n)) => Some(n),
        _ => None,
    };
    match (size, raw) {
        (Some(size), Some(bytes)) if size == bytes.len() as u64 => Ok(()),
        _ => Err(Error::invalid(
            "inputs",
            format!(
                "input {:?}: binary_data_size {:?} does not match its raw_input_contents ({})",
                input.name,
                parameter.parameter_choice,
                raw.map_or("none".to_string(), |b| format!("{} bytes", b.len()))
            ),
        )),
    }
}

fn decode_inputs(
    spec: &ModelSpec,
    request: &pb::ModelInferRequest,
) -> Result<Vec<(String, TensorData)>, Error> {
    refuse_parameters(
        &request.parameters,
        &["binary_data_output"],
        "parameters",
        "the request",
    )?;
    check_binary_output(&request.parameters, "binary_data_output", "parameters")?;
    let raw = &request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(Error::invalid(
            "raw_input_contents",
            format!(
                "has {} entries for {} inputs (one per input, in order)",
                raw.len(),
                request.inputs.len()
            ),
        ));
    }
    let mut decoded = Vec::with_capacity(request.inputs.len());
    for (i, input) in request.inputs.iter().enumerate() {
        let Some(wanted) = spec.input(&input.name).map(|i| &i.tensor) else {
            let names: Vec<&str> = spec.inputs.iter().map(|i| i.name()).collect();
            return Err(Error::invalid(
                "inputs",
                format!(
                    "model {:?} has no input {:?}; its inputs are {names:?}",
                    spec.name, input.name
                ),
            ));
        };
        if decoded.iter().any(|(name, _)| name == &input.name) {
            return Err(Error::invalid(
                "inputs",
                format!("input {:?} is given twice", input.name),
            ));
        }
        refuse_parameters(
            &input.parameters,
            &["binary_data_size"],
            "inputs",
            &format!("input {:?}", input.name),
        )?;
        let raw = raw.get(i).map(|b| b.as_ref());
        check_binary_size(input, raw)?;
        let tensor = decode_input(spec, wanted, input, raw)?;
        if let Some(fed) = spec.input(&input.name) {
            // Ids outside their table: refused here, as on integrad's own API.
            crate::input::check_ids(spec, fed, &tensor, "inputs".into())?;
        }
        decoded.push((input.name.clone(), tensor));
    }
    if let Some(missing) = spec
        .inputs
        .iter()
        .find(|s| !decoded.iter().any(|(name, _)| name == s.name()))
    {
        return Err(Error::invalid(
            "inputs",
            format!(
                "input {:?} of model {:?} is missing",
                missing.name(),
                spec.name
            ),
        ));
    }
    Ok(decoded)
}

fn decode_input(
    spec: &ModelSpec,
    wanted: &TensorSpec,
    input: &InferInputTensor,
    raw: Option<&[u8]>,
) -> Result<TensorData, Error> {
    let name = &input.name;
    if let DType::Other(_) = wanted.dtype {
        return Err(Error::FailedPrecondition {
            field: "inputs".into(),
            reason: format!(
                "input {name:?} is {}; integrad feeds FP32 and INT64 inputs",
                datatype(wanted.dtype)
            ),
        });
    }
    let expected = datatype(wanted.dtype);
    if input.datatype != expected {
        return Err(Error::invalid(
            "inputs",
            format!(
                "input {name:?} has datatype {:?}, the model takes {expected}",
                input.datatype
            ),
        ));
    }
    let shape = &input.shape;
    let fits = shape.len() == wanted.shape.len()
        && shape
            .iter()
            .zip(&wanted.shape)
            .all(|(&got, &want)| got > 0 && (want < 0 || got == want));
    if !fits {
        return Err(Error::invalid(
            "inputs",
            format!(
                "input {name:?} has shape {shape:?}, the model takes {:?} (-1: any size above 0)",
                wanted.shape
            ),
        ));
    }
    if let Some(triton) = spec.triton.as_ref().filter(|t| t.max_batch_size > 0) {
        if shape[0] > triton.max_batch_size {
            return Err(Error::invalid(
                "inputs",
                format!(
                    "input {name:?} has a batch of {}, above the model's max_batch_size {}",
                    shape[0], triton.max_batch_size
                ),
            ));
        }
    }
    let elements = wire::elements(shape)
        .map_err(|e| Error::invalid("inputs", format!("input {name:?}: {e}")))?;
    let contents = input.contents.as_ref();
    let values = match (raw, contents) {
        (Some(_), Some(c)) if *c != pb::InferTensorContents::default() => {
            return Err(Error::invalid(
                "inputs",
                format!("input {name:?} has both contents and raw_input_contents"),
            ))
        }
        (Some(bytes), _) => {
            return wire::decode(wanted.dtype, shape.clone(), bytes).map_err(|e| {
                let field = match e {
                    TensorError::Length { .. } => "raw_input_contents",
                    _ => "inputs",
                };
                Error::invalid(field, format!("input {name:?} {e}"))
            })
        }
        (None, Some(c)) => typed_contents(c, wanted.dtype, elements, name)?,
        (None, None) => {
            return Err(Error::invalid(
                "inputs",
                format!("input {name:?} has no data (neither contents nor raw_input_contents)"),
            ))
        }
    };
    Ok(TensorData {
        shape: shape.clone(),
        values,
    })
}

/// The values of `contents`, which must hold exactly `elements` values in the field of
/// `dtype` and nothing in any other.
fn typed_contents(
    contents: &pb::InferTensorContents,
    dtype: DType,
    elements: usize,
    name: &str,
) -> Result<Values, Error> {
    let (field, count, values) = match dtype {
        DType::F32 => (
            "fp32_contents",
            contents.fp32_contents.len(),
            Values::F32(
                wire::finite(contents.fp32_contents.clone())
                    .map_err(|e| Error::invalid("inputs", format!("input {name:?}: {e}")))?,
            ),
        ),
        _ => (
            "int64_contents",
            contents.int64_contents.len(),
            Values::I64(contents.int64_contents.clone()),
        ),
    };
    let others = [
        ("bool_contents", contents.bool_contents.len()),
        ("int_contents", contents.int_contents.len()),
        ("int64_contents", contents.int64_contents.len()),
        ("uint_contents", contents.uint_contents.len()),
        ("uint64_contents", contents.uint64_contents.len()),
        ("fp32_contents", contents.fp32_contents.len()),
        ("fp64_contents", contents.fp64_contents.len()),
        ("bytes_contents", contents.bytes_contents.len()),
    ];
    if let Some((other, _)) = others.iter().find(|(f, n)| *f != field && *n > 0) {
        return Err(Error::invalid(
            "inputs",
            format!(
                "input {name:?} sets contents.{other}; its datatype {} takes contents.{field}",
                datatype(dtype)
            ),
        ));
    }
    if count != elements {
        return Err(Error::invalid(
            "inputs",
            format!(
                "input {name:?} has {count} values in contents.{field}; its shape needs {elements}"
            ),
        ));
    }
    Ok(values)
}

/// The outputs to return, in order: those requested, or every output of the model.
fn requested_outputs(
    spec: &ModelSpec,
    requested: &[pb::model_infer_request::InferRequestedOutputTensor],
) -> Result<Vec<String>, Error> {
    let names: Vec<String> = if requested.is_empty() {
        spec.outputs.iter().map(|o| o.name.clone()).collect()
    } else {
        let mut names: Vec<String> = Vec::with_capacity(requested.len());
        for output in requested {
            refuse_parameters(
                &output.parameters,
                &["binary_data"],
                "outputs",
                &format!("output {:?}", output.name),
            )?;
            check_binary_output(&output.parameters, "binary_data", "outputs")?;
            if !spec.outputs.iter().any(|o| o.name == output.name) {
                let all: Vec<&str> = spec.outputs.iter().map(|o| o.name.as_str()).collect();
                return Err(Error::invalid(
                    "outputs",
                    format!(
                        "model {:?} has no output {:?}; its outputs are {all:?}",
                        spec.name, output.name
                    ),
                ));
            }
            if names.contains(&output.name) {
                return Err(Error::invalid(
                    "outputs",
                    format!("output {:?} is requested twice", output.name),
                ));
            }
            names.push(output.name.clone());
        }
        names
    };
    for name in &names {
        let output = spec
            .outputs
            .iter()
            .find(|o| &o.name == name)
            .expect("checked above");
        if !matches!(output.dtype, DType::F32 | DType::I64) {
            return Err(Error::FailedPrecondition {
                field: "outputs".into(),
                reason: format!(
                    "output {name:?} is {}; integrad returns FP32 and INT64 outputs (request the others by name)",
                    datatype(output.dtype)
                ),
            });
        }
    }
    Ok(names)
}
