//! The work behind `integrad autodiff MODEL.onnx --output GRAD.onnx`: read, differentiate,
//! write, report. The clap subcommand lives in `src/cli`; this is a plain function.
//!
//! With `--step` the file written is instead the IG step model Explain runs for the same
//! gradient (`crate::explain::step`): the same bytes ONNX Runtime gets from the server, so
//! that a script outside integrad can compute exactly the gradients Explain computes.

use std::path::Path;

use anyhow::Context;
use prost::Message;

use super::{build_gradient, GradOptions, Objective, COTANGENT, GRAD};
use crate::proto::onnx::ModelProto;

/// Writes the gradient model of `model` to `output`, or with `step` the IG step model that
/// wraps it (module docs), and, for an inner `wrt`, the prefix model next to it as
/// `<output stem>.prefix.onnx`; returns a human-readable report.
pub fn run_autodiff_cli(
    model: &Path,
    output: &Path,
    wrt: &[String],
    of: Option<&str>,
    objective: Objective,
    step: bool,
) -> anyhow::Result<String> {
    let bytes = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let mut proto = ModelProto::decode(bytes.as_slice())
        .with_context(|| format!("{} is not an ONNX model", model.display()))?;
    // The gradient model is written as one file: external values are read into it.
    let folder = model.parent().unwrap_or(Path::new("."));
    crate::model::external::inline(&mut proto, folder)?;
    let started = std::time::Instant::now();
    let grad = build_gradient(
        &proto,
        &GradOptions {
            wrt: wrt.to_vec(),
            of: of.map(str::to_string),
            objective,
        },
    )
    .with_context(|| format!("differentiating {}", model.display()))?;
    let wrapped = match step {
        true => Some(
            crate::explain::step::build_step_model(&grad.model, &grad.wrt)
                .with_context(|| format!("wrapping the gradient of {}", model.display()))?
                .0,
        ),
        false => None,
    };
    let elapsed = started.elapsed();
    std::fs::write(
        output,
        wrapped.as_ref().unwrap_or(&grad.model).encode_to_vec(),
    )
    .with_context(|| format!("writing {}", output.display()))?;
    let mut report = format!(
        "wrote {}: {what}{GRAD} = d sum({COTANGENT} * {objective:?}({of})) / d {wrt}{more}, built in {:.0} ms\n",
        output.display(),
        elapsed.as_secs_f64() * 1e3,
        what = match step {
            true => "the IG step model of ",
            false => "",
        },
        of = grad.of,
        wrt = grad.wrt[0],
        more = if grad.wrt.len() > 1 {
            format!(" (grad_1, ... w.r.t. {})", grad.wrt[1..].join(", "))
        } else {
            String::new()
        },
    );
    if let Some(prefix) = &grad.prefix {
        let path = output.with_extension("prefix.onnx");
        std::fs::write(&path, prefix.encode_to_vec())
            .with_context(|| format!("writing {}", path.display()))?;
        report.push_str(&format!(
            "wrote {}: computes {} from the model's inputs\n",
            path.display(),
            prefix
                .graph
                .iter()
                .flat_map(|g| g.output.iter().map(|o| o.name()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    report.push_str(&format!(
        "differentiated op types: {}\nbackward op types: {}\n",
        grad.differentiated_ops
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        grad.emitted_ops
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
    ));
    Ok(report)
}
