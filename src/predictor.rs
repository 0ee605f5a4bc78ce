//! The predictor check: the explained model is the served model.
//!
//! A sidecar that explains another model than the one answering users (an older file, other
//! weights, another preprocessing) explains nothing true, and nothing else would say so. With
//! `integrad serve --predictor URL`, every Explain also sends the model-space input it explains
//! (the graph inputs after preprocessing or tokenization, batch 1) to the model server that
//! answers users, over the Open Inference Protocol (`ModelInfer`), reads the explained output
//! there, scores the target class with the explanation's objective, and compares that with
//! integrad's own F(x). The result is `Explanation.predictor`, a metric and, on a mismatch, a
//! warning in the log; with `--require-consistent`, a failed request instead.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::config::{KServeArgs, PredictorArgs};
use crate::error::Error;
use crate::model::triton::datatype;
use crate::model::{TensorData, Values};
use crate::proto::inference as oip;
use crate::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::proto::integrad::v1 as pb;

/// Below this |own score|, differences are measured against it rather than against the score:
/// near 0 a logit's relative error is rounding noise, and a probability of 0.001 that comes
/// back as 0.0011 is no sign of another model.
pub const SCORE_FLOOR: f32 = 0.01;

/// Calls to the predictor in flight at once, over every request: a large ExplainBatch must not
/// flood the model server that answers users.
const CALLS_IN_FLIGHT: usize = 16;

/// The model server to check against, and how.
pub struct Predictor {
    url: String,
    /// The predictor's name for the model; None: integrad's own name.
    model: Option<String>,
    client: GrpcInferenceServiceClient<Channel>,
    timeout: Duration,
    tolerance: f32,
    require_consistent: bool,
    calls: Arc<Semaphore>,
}

/// Why the predictor gave no score.
#[derive(Debug, Clone)]
pub struct Failure {
    /// It could not be reached, or did not answer in time (rather than answering wrongly).
    pub unreachable: bool,
    pub reason: String,
}

impl Failure {
    /// An answer that came but cannot be compared.
    pub fn unusable(reason: impl Into<String>) -> Self {
        Self {
            unreachable: false,
            reason: reason.into(),
        }
    }
}

/// What the predictor said for one input: the explained output's values (batch 1, flattened).
pub type Served = Result<Vec<f32>, Failure>;

impl Predictor {
    /// The predictor `args` (or KServe's `--predictor_host`) name, if any. Connects lazily:
    /// a predictor that starts after integrad, or restarts, is reached when it is up.
    pub fn from_args(args: &PredictorArgs, kserve: &KServeArgs) -> Result<Option<Self>, String> {
        let Some(url) = args.url(kserve) else {
            if args.require_consistent {
                return Err(
                    "--require-consistent needs a predictor: --predictor URL (or KServe's --predictor_host)"
                        .into(),
                );
            }
            return Ok(None);
        };
        if args.predictor.is_some() && kserve.predictor_host.is_some() {
            tracing::info!(predictor = %url, "--predictor given: --predictor_host is not used");
        }
        let timeout = Duration::from_secs_f64(args.predictor_timeout);
        let mut endpoint = match url.split_once("://") {
            Some(("http" | "https", _)) => Endpoint::from_shared(url.clone())
                .map_err(|e| format!("--predictor {url}: {e}"))?,
            _ => {
                return Err(format!(
                    "--predictor {url}: not a gRPC URL; write http://HOST:PORT, https://HOST:PORT or HOST:PORT"
                ))
            }
        }
        .connect_timeout(timeout);
        match (url.starts_with("https://"), &args.predictor_tls_ca) {
            (true, Some(ca)) => {
                let pem = std::fs::read(ca)
                    .map_err(|e| format!("--predictor-tls-ca {}: {e}", ca.display()))?;
                let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
                endpoint = endpoint
                    .tls_config(tls)
                    .map_err(|e| format!("TLS for --predictor {url}: {e}"))?;
            }
            (true, None) => {
                return Err(format!(
                "--predictor {url} is https: give the CA to trust with --predictor-tls-ca FILE.pem"
            ))
            }
            (false, Some(_)) => {
                return Err(format!(
                    "--predictor-tls-ca needs an https:// --predictor, not {url}"
                ))
            }
            (false, None) => {}
        }
        Ok(Some(Self {
            client: GrpcInferenceServiceClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
            url,
            model: args.predictor_model.clone(),
            timeout,
            tolerance: args.consistency_tolerance,
            require_consistent: args.require_consistent,
            calls: Arc::new(Semaphore::new(CALLS_IN_FLIGHT)),
        }))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The predictor's name for integrad's model `own`.
    pub fn model_name<'a>(&'a self, own: &'a str) -> &'a str {
        self.model.as_deref().unwrap_or(own)
    }

    /// Asks the predictor for `output` of model `own` at `inputs` (every graph input, without
    /// the batch axis, which is added). The request is built now, so the future owns what it
    /// needs and can be spawned; it waits for a call slot, then at most the timeout.
    pub fn infer(
        self: &Arc<Self>,
        own: &str,
        inputs: &[(String, TensorData)],
        output: &str,
    ) -> impl std::future::Future<Output = Served> + Send + 'static {
        let request = infer_request(self.model_name(own), inputs, output);
        let (predictor, output) = (self.clone(), output.to_string());
        async move {
            let _slot = predictor.calls.acquire().await;
            let mut client = predictor.client.clone();
            let timeout = predictor.timeout;
            let answer = tokio::time::timeout(timeout, client.model_infer(request)).await;
            match answer {
                Err(_) => Err(Failure {
                    unreachable: true,
                    reason: format!("no answer within {} s", timeout.as_secs_f64()),
                }),
                Ok(Err(status)) => Err(Failure {
                    unreachable: matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    ),
                    reason: format!("ModelInfer failed: {}", status_text(&status)),
                }),
                Ok(Ok(response)) => output_values(response.into_inner(), &output),
            }
        }
    }

    /// Compares the predictor's score of `class` (or why it has none) with integrad's own, for
    /// an explanation of model `own_model`: logs a mismatch or a failure, counts the check,
    /// and returns it; with --require-consistent, an inconsistent check is the request's error.
    pub fn judge(
        &self,
        own_model: &str,
        class: usize,
        served: Result<f32, &Failure>,
        own: f32,
    ) -> Result<pb::PredictorCheck, Error> {
        let (url, model) = (self.url.as_str(), self.model_name(own_model));
        let mut check = pb::PredictorCheck {
            url: url.to_string(),
            model: model.to_string(),
            served_score: f32::NAN,
            own_score: own,
            relative_difference: f32::NAN,
            consistent: false,
            warning: String::new(),
        };
        let result = match served {
            Ok(served) => {
                let difference = relative_difference(served, own);
                check.served_score = served;
                check.relative_difference = difference;
                // NaN (a broken output) is never consistent.
                check.consistent = difference <= self.tolerance;
                if check.consistent {
                    "consistent"
                } else {
                    tracing::warn!(
                        model = own_model,
                        predictor = url,
                        predictor_model = model,
                        class,
                        served_score = served,
                        own_score = own,
                        relative_difference = difference,
                        "the predictor scores the explained input differently: the explained model is not the served model"
                    );
                    check.warning = format!(
                        "the predictor {url} (model {model:?}) scores class {class} {served} where integrad's model scores {own}: relative difference {difference:.3e}, above the tolerance {:e}; the explained model is not the served model",
                        self.tolerance
                    );
                    "mismatch"
                }
            }
            Err(failure) => {
                tracing::warn!(
                    model = own_model,
                    predictor = url,
                    predictor_model = model,
                    reason = %failure.reason,
                    "cannot check the explanation against the predictor"
                );
                check.warning = format!(
                    "cannot check against the predictor {url} (model {model:?}): {}",
                    failure.reason
                );
                "error"
            }
        };
        crate::telemetry::record_predictor_check(own_model, result);
        if self.require_consistent && !check.consistent {
            let reason = format!("--require-consistent: {}", check.warning);
            return Err(match served {
                Err(failure) if failure.unreachable => Error::Unavailable(reason),
                _ => Error::FailedPrecondition {
                    field: "predictor".into(),
                    reason,
                },
            });
        }
        Ok(check)
    }
}

/// |served - own| / max(|own|, [`SCORE_FLOOR`]).
pub fn relative_difference(served: f32, own: f32) -> f32 {
    let (served, own) = (f64::from(served), f64::from(own));
    ((served - own).abs() / own.abs().max(f64::from(SCORE_FLOOR))) as f32
}

/// A ModelInfer request for `output` at `inputs`, each with a batch axis of 1, its values in
/// `raw_input_contents` (what Triton and integrad's own service read fastest).
fn infer_request(
    model: &str,
    inputs: &[(String, TensorData)],
    output: &str,
) -> oip::ModelInferRequest {
    let mut request = oip::ModelInferRequest {
        model_name: model.to_string(),
        outputs: vec![oip::model_infer_request::InferRequestedOutputTensor {
            name: output.to_string(),
            ..Default::default()
        }],
        ..Default::default()
    };
    for (name, tensor) in inputs {
        let mut shape = tensor.shape.clone();
        shape.insert(0, 1);
        request
            .inputs
            .push(oip::model_infer_request::InferInputTensor {
                name: name.clone(),
                datatype: datatype(tensor.dtype()).to_string(),
                shape,
                ..Default::default()
            });
        request.raw_input_contents.push(match &tensor.values {
            Values::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Values::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        });
    }
    request
}

/// The values of `output` in a ModelInfer answer, raw or typed, FP32 or FP64.
fn output_values(response: oip::ModelInferResponse, output: &str) -> Served {
    let Some(i) = response.outputs.iter().position(|o| o.name == output) else {
        let names: Vec<&str> = response.outputs.iter().map(|o| o.name.as_str()).collect();
        return Err(Failure::unusable(format!(
            "its answer has no output {output:?} (it has {names:?})"
        )));
    };
    let tensor = &response.outputs[i];
    let raw = response.raw_output_contents.get(i);
    let contents = tensor.contents.as_ref();
    let bad_length = |width: usize| {
        Failure::unusable(format!(
            "output {output:?}'s raw contents are not a whole number of {width}-byte values"
        ))
    };
    match (tensor.datatype.as_str(), raw, contents) {
        ("FP32", Some(bytes), _) if bytes.len() % 4 == 0 => Ok(crate::wire::f32s(bytes)),
        ("FP32", Some(_), _) => Err(bad_length(4)),
        ("FP64", Some(bytes), _) if bytes.len() % 8 == 0 => Ok(bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect()),
        ("FP64", Some(_), _) => Err(bad_length(8)),
        ("FP32", None, Some(c)) => Ok(c.fp32_contents.clone()),
        ("FP64", None, Some(c)) => Ok(c.fp64_contents.iter().map(|&v| v as f32).collect()),
        (other, _, _) => Err(Failure::unusable(format!(
            "output {output:?} came as {other} without values the check reads (FP32 or FP64)"
        ))),
    }
}

/// A status's code and message, and its transport error's chain when the client made it (a
/// refused connection says "Connection refused" only there).
fn status_text(status: &tonic::Status) -> String {
    use std::error::Error as _;
    let transport = status.source().map(crate::cli::connect::error_chain);
    let (code, message) = (status.code(), status.message());
    match transport {
        // The chain usually repeats the message ("tcp connect error: ...").
        Some(chain) if chain.contains(message) => format!("{code:?}: {chain}"),
        Some(chain) if !message.contains(&chain) => format!("{code:?}: {message}: {chain}"),
        _ => format!("{code:?}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_difference_is_relative_above_the_floor_and_absolute_below() {
        assert_eq!(relative_difference(2.0, 2.0), 0.0);
        assert!((relative_difference(2.002, 2.0) - 1e-3).abs() < 1e-6);
        // Below the floor, the difference is divided by the floor: 1e-5 / 0.01.
        assert!((relative_difference(0.0, 1e-5) - 1e-3).abs() < 1e-6);
        assert!(relative_difference(f32::NAN, 1.0).is_nan());
    }

    #[test]
    fn output_values_read_raw_and_typed_contents() {
        let output = |datatype: &str, contents| oip::model_infer_response::InferOutputTensor {
            name: "logits".into(),
            datatype: datatype.into(),
            shape: vec![1, 2],
            contents,
            ..Default::default()
        };
        let raw = oip::ModelInferResponse {
            outputs: vec![output("FP32", None)],
            raw_output_contents: vec![[1.5f32, -2.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect()],
            ..Default::default()
        };
        assert_eq!(output_values(raw, "logits").unwrap(), vec![1.5, -2.0]);
        let typed = oip::ModelInferResponse {
            outputs: vec![output(
                "FP64",
                Some(oip::InferTensorContents {
                    fp64_contents: vec![0.25, 4.0],
                    ..Default::default()
                }),
            )],
            ..Default::default()
        };
        assert_eq!(output_values(typed, "logits").unwrap(), vec![0.25, 4.0]);
        let missing = output_values(oip::ModelInferResponse::default(), "logits").unwrap_err();
        assert!(
            missing.reason.contains("no output \"logits\""),
            "{missing:?}"
        );
    }
}
