//! Where ONNX Runtime sessions run: the CPU, or an NVIDIA GPU through ONNX Runtime's CUDA
//! execution provider.
//!
//! A device is asked for (`--device`, or `device` in a model's `integrad.toml`) as a
//! [`Device`] and resolved once against the loaded ONNX Runtime into a [`Placement`]. Asking
//! for CUDA where it cannot run is an error naming the cause, never a quiet CPU fallback:
//! ONNX Runtime itself would log a warning and run on the CPU, so the provider is registered
//! with `error_on_failure` and proved first on a one-node probe model. Only `auto` falls back,
//! with a WARN log that says why.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;

use ort::environment::Environment;
use ort::ep::ExecutionProvider;
use ort::session::builder::SessionBuilder;
use ort::session::Session;
use prost::Message;

use crate::proto::onnx;

/// The CUDA provider's libraries, which ONNX Runtime loads from its own directory.
pub const CUDA_PROVIDER_LIBRARIES: [&str; 2] = [
    "libonnxruntime_providers_shared.so",
    "libonnxruntime_providers_cuda.so",
];

/// A device as asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// CUDA device 0 when it works, else the CPU (with a warning).
    Auto,
    /// CUDA device N; an error when it cannot run.
    Cuda(u32),
}

/// A device resolved against the loaded ONNX Runtime: where sessions really run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    #[default]
    Cpu,
    Cuda(u32),
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("unknown device {s:?}: expected cpu, auto, cuda or cuda:N (N the GPU index, e.g. cuda:1)")
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(Device::Auto),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(index) => index.parse().map(Device::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Auto => f.write_str("auto"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Cpu => f.write_str("cpu"),
            Placement::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl From<Placement> for Device {
    fn from(placement: Placement) -> Self {
        match placement {
            Placement::Cpu => Device::Cpu,
            Placement::Cuda(n) => Device::Cuda(n),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DeviceError {
    #[error("device {device}: the ONNX Runtime library {library} has no CUDA execution provider (it is a CPU-only build); point --ort-lib / ORT_DYLIB_PATH at libonnxruntime.so.1.31.1 from the onnxruntime-gpu 1.31.1 wheel, or fetch it with --ort-flavour gpu")]
    NoCudaProvider { device: Device, library: String },
    #[error("device {device}: {missing} is not beside {library}; ONNX Runtime loads the CUDA provider from its own directory (both libonnxruntime_providers_cuda.so and libonnxruntime_providers_shared.so come in the onnxruntime-gpu 1.31.1 wheel)")]
    MissingProviderLibrary {
        device: Device,
        library: String,
        missing: String,
    },
    #[error("device {device}: ONNX Runtime's CUDA execution provider could not start: {reason} (it needs an NVIDIA GPU with its driver, and CUDA 13 + cuDNN 9 libraries on LD_LIBRARY_PATH; see docs/devices.md)")]
    CudaFailed { device: Device, reason: String },
}

impl DeviceError {
    /// The same failure, reported for the device as this caller asked for it (`auto`,
    /// `cuda`...), since probe results are shared.
    fn asked_as(mut self, asked: Device) -> Self {
        match &mut self {
            DeviceError::NoCudaProvider { device, .. }
            | DeviceError::MissingProviderLibrary { device, .. }
            | DeviceError::CudaFailed { device, .. } => *device = asked,
        }
        self
    }
}

/// Probe results per CUDA device, so each device is proved once per process.
static PROBED: Mutex<Option<HashMap<u32, Result<(), DeviceError>>>> = Mutex::new(None);

/// Resolves `requested` against the ONNX Runtime in `env` (loaded from `library`). `auto`
/// never fails: it falls back to the CPU with a WARN log naming the reason.
pub fn resolve(
    requested: Device,
    env: &Environment,
    library: Option<&Path>,
) -> Result<Placement, DeviceError> {
    match requested {
        Device::Cpu => Ok(Placement::Cpu),
        Device::Cuda(n) => probe(n, requested, env, library).map(|()| Placement::Cuda(n)),
        Device::Auto => match probe(0, requested, env, library) {
            Ok(()) => Ok(Placement::Cuda(0)),
            Err(reason) => {
                tracing::warn!(%reason, "--device auto: CUDA is unavailable, running on the CPU");
                Ok(Placement::Cpu)
            }
        },
    }
}

fn probe(
    index: u32,
    requested: Device,
    env: &Environment,
    library: Option<&Path>,
) -> Result<(), DeviceError> {
    let mut probed = PROBED.lock().unwrap_or_else(|e| e.into_inner());
    let probed = probed.get_or_insert_with(HashMap::new);
    if let Some(result) = probed.get(&index) {
        return result.clone().map_err(|e| e.asked_as(requested));
    }
    let result = probe_uncached(index, requested, env, library);
    match &result {
        Ok(()) => tracing::info!(device = %Placement::Cuda(index), "CUDA execution provider ready"),
        Err(e) => tracing::debug!(error = %e, "CUDA probe failed"),
    }
    probed.insert(index, result.clone());
    result
}

fn probe_uncached(
    index: u32,
    device: Device,
    env: &Environment,
    library: Option<&Path>,
) -> Result<(), DeviceError> {
    let library_name = library
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(unknown path)".into());
    let compiled_in = ort::ep::CUDA::is_available().map_err(|e| DeviceError::CudaFailed {
        device,
        reason: e.to_string(),
    })?;
    if !compiled_in {
        return Err(DeviceError::NoCudaProvider {
            device,
            library: library_name,
        });
    }
    if let Some(dir) = library.and_then(Path::parent) {
        for name in CUDA_PROVIDER_LIBRARIES {
            if !dir.join(name).is_file() {
                return Err(DeviceError::MissingProviderLibrary {
                    device,
                    library: library_name,
                    missing: name.to_string(),
                });
            }
        }
    }
    // NOTE: registration alone proves little: ONNX Runtime creates the provider (loads the
    // CUDA libraries, selects the device) when a session is committed, so a one-node model is
    // committed and run on the device.
    let failed = |e: ort::Error| DeviceError::CudaFailed {
        device,
        reason: e.to_string().trim().to_string(),
    };
    let mut builder = Session::builder(env).map_err(failed)?;
    register(&mut builder, Placement::Cuda(index)).map_err(failed)?;
    let mut session = builder.commit_from_memory(&probe_model()).map_err(failed)?;
    let x = ort::value::Tensor::from_array(([2usize], vec![-1.0f32, 2.0])).map_err(failed)?;
    let outputs = session.run(ort::inputs!["x" => x]).map_err(failed)?;
    let (_, y) = outputs["y"].try_extract_tensor::<f32>().map_err(failed)?;
    if y != [0.0, 2.0] {
        return Err(DeviceError::CudaFailed {
            device,
            reason: format!("the probe model computed Relu([-1, 2]) = {y:?}"),
        });
    }
    Ok(())
}

/// Puts `placement`'s execution provider on a session builder; for CUDA, failing to register
/// is an error rather than ONNX Runtime's silent CPU fallback.
pub fn register(builder: &mut SessionBuilder, placement: Placement) -> ort::Result<()> {
    match placement {
        Placement::Cpu => Ok(()),
        Placement::Cuda(index) => {
            // NOTE: TF32 off: it rounds convolution and matmul inputs to 10-bit mantissas on
            // Ampere and later, which would make GPU attributions differ from CPU ones by far
            // more than float32 reduction order does. Explanations are worth exact float32.
            let cuda = ort::ep::CUDA::default()
                .with_device_id(index as i32)
                .with_tf32(false);
            cuda.register(builder)
        }
    }
}

/// y = Relu(x), x: float[2]: a node every CUDA build runs on the GPU.
fn probe_model() -> Vec<u8> {
    let tensor = |name: &str| onnx::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(onnx::TypeProto {
            value: Some(onnx::type_proto::Value::TensorType(
                onnx::type_proto::Tensor {
                    elem_type: Some(onnx::tensor_proto::DataType::Float as i32),
                    shape: Some(onnx::TensorShapeProto {
                        dim: vec![onnx::tensor_shape_proto::Dimension {
                            value: Some(onnx::tensor_shape_proto::dimension::Value::DimValue(2)),
                            ..Default::default()
                        }],
                    }),
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    let graph = onnx::GraphProto {
        name: Some("integrad-device-probe".into()),
        node: vec![onnx::NodeProto {
            op_type: Some("Relu".into()),
            name: Some("relu".into()),
            input: vec!["x".into()],
            output: vec!["y".into()],
            ..Default::default()
        }],
        input: vec![tensor("x")],
        output: vec![tensor("y")],
        ..Default::default()
    };
    onnx::ModelProto {
        ir_version: Some(8),
        opset_import: vec![onnx::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        for (text, device) in [
            ("cpu", Device::Cpu),
            ("auto", Device::Auto),
            ("cuda", Device::Cuda(0)),
            ("CUDA:3", Device::Cuda(3)),
        ] {
            assert_eq!(text.parse::<Device>(), Ok(device), "{text}");
        }
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        for bad in ["tpu", "cuda:x", "cuda:", "cuda:-1", ""] {
            let err = bad.parse::<Device>().unwrap_err();
            assert!(err.contains("cuda:N"), "{bad}: {err}");
        }
    }
}
