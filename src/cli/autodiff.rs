//! `integrad autodiff`: write the gradient model of an ONNX file (or Explain's step model of it).

use std::path::PathBuf;

use clap::Args;

use crate::autodiff::Objective;
use crate::config::RuntimeArgs;

#[derive(Debug, Clone, Args)]
pub struct AutodiffArgs {
    /// The forward ONNX model.
    pub model: PathBuf,
    /// Where to write the gradient model (and, for an inner --wrt, GRAD.prefix.onnx).
    #[arg(long, short)]
    pub output: PathBuf,
    /// The tensors to differentiate with respect to, comma-separated (one gradient output
    /// each: grad, grad_1, ...) [default: the first float input]; an inner tensor makes it an
    /// input of the gradient model, computed by the prefix model.
    #[arg(long, value_delimiter = ',')]
    pub wrt: Vec<String>,
    /// The output to differentiate [default: the first output].
    #[arg(long)]
    pub of: Option<String>,
    /// logit: the output as is; probability: its softmax over the last axis.
    #[arg(long, default_value = "logit")]
    pub objective: Objective,
    /// Write the IG step model Explain runs for this gradient instead (inputs ig_input,
    /// ig_baseline, ig_path, ig_alpha, ig_one_minus_alpha, ig_weights, cotangent; outputs
    /// ig_sums, ig_abs_sums, ig_grads, then the model's): to reproduce Explain's gradients
    /// bit for bit outside integrad (docs/autodiff.md).
    #[arg(long)]
    pub step: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn run_autodiff(args: AutodiffArgs) -> anyhow::Result<()> {
    // The builder probes the forward graph with ONNX Runtime; load it as the flags say first.
    crate::runtime::environment(&args.runtime.runtime_options())?;
    let report = crate::autodiff::run_autodiff_cli(
        &args.model,
        &args.output,
        &args.wrt,
        args.of.as_deref(),
        args.objective,
        args.step,
    )?;
    println!("{report}");
    Ok(())
}
