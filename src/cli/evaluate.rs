//! `integrad evaluate`: how faithful a saliency map is (deletion, insertion, SIC, AIC) for an
//! image or tensor, with the map from `integrad explain --out DIR` (its attributions.npy or
//! explanation.json) or any .npy; writes evaluation.json and curves.png.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use super::ClientArgs;
use crate::npy::{self, NpyArray};
use crate::proto::integrad::v1 as pb;

#[derive(Debug, Clone, Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The saliency map: a .npy (the input's shape, e.g. attributions.npy, or height x
    /// width), or an explanation.json written by `integrad explain --out` (its
    /// attributions.npy beside it, and its target class unless --target says otherwise).
    #[arg(long)]
    pub saliency: PathBuf,
    /// deletion, insertion, sic, aic, comma-separated [default: all four].
    #[arg(long, value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// The class whose score the curves follow: an index or a label [default: the
    /// explanation's target, else the top-1 prediction].
    #[arg(long)]
    pub target: Option<String>,
    /// Deletion and insertion's score: probability or logit [default: probability].
    #[arg(long)]
    pub objective: Option<String>,
    /// How a map with channels becomes one value per pixel: abs-sum or sum.
    #[arg(long, default_value = "abs-sum")]
    pub reduction: String,
    /// Pixels moved per deletion or insertion step [default: 8 rows of the input, RISE's].
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub pixels_per_step: u32,
    /// What deleted pixels become: black, zeros or blur.
    #[arg(long, default_value = "black")]
    pub deletion_substrate: String,
    /// What insertion starts from: blur, black or zeros.
    #[arg(long, default_value = "blur")]
    pub insertion_substrate: String,
    /// PIC's random mask: a .npy of height x width (non-zero = kept), e.g. PAIR's
    /// generate_random_mask saved by numpy [default: integrad's, from --seed].
    #[arg(long)]
    pub random_mask: Option<PathBuf>,
    /// Seed of PIC's random mask.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// PIC skips an image whose original score is below this (PAIR's default 0.8).
    #[arg(long)]
    pub min_pred_value: Option<f32>,
    /// PIC's saliency thresholds, ascending, comma-separated [default: PAIR's 13].
    #[arg(long, value_delimiter = ',')]
    pub thresholds: Vec<f32>,
    /// Perturbed images per model run [default: chosen by the server].
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub batch_size: u32,
    /// Where to write evaluation.json and curves.png.
    #[arg(long, default_value = "evaluation")]
    pub out: PathBuf,
    /// Print the evaluation as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run_evaluate(args: EvaluateArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot make --out {}", args.out.display()))?;
    let request = request(&args)?;
    let endpoint = &args.client.endpoint;
    let response = match &endpoint.server {
        Some(url) => super::connect(url, &endpoint.connect)
            .await?
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
            .evaluate(request)
            .await
            .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
            .into_inner(),
        None => {
            super::local_engine(&endpoint.models, &endpoint.runtime, None)
                .await?
                .evaluate(request)
                .await?
        }
    };
    let json = evaluation_json(&response);
    let file = args.out.join("evaluation.json");
    std::fs::write(&file, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("cannot write {}", file.display()))?;
    let file = args.out.join("curves.png");
    std::fs::write(&file, &response.plot_png)
        .with_context(|| format!("cannot write {}", file.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print_table(&response, &args.out);
    }
    Ok(())
}

fn request(args: &EvaluateArgs) -> anyhow::Result<pb::EvaluateRequest> {
    let (input, inputs) = args.client.input.read()?;
    let (saliency, explained_target) = read_saliency(&args.saliency)?;
    let target = match (&args.target, explained_target) {
        (Some(t), _) => Some(match t.parse::<i64>() {
            Ok(index) => pb::target::Kind::ClassIndex(index),
            Err(_) => pb::target::Kind::Label(t.clone()),
        }),
        (None, Some(class)) => Some(pb::target::Kind::ClassIndex(class)),
        (None, None) => None,
    };
    let metrics = args
        .metrics
        .iter()
        .map(|m| match m.trim().to_lowercase().as_str() {
            "deletion" => Ok(pb::Metric::Deletion as i32),
            "insertion" => Ok(pb::Metric::Insertion as i32),
            "sic" => Ok(pb::Metric::Sic as i32),
            "aic" => Ok(pb::Metric::Aic as i32),
            other => anyhow::bail!("--metrics: {other:?} is not deletion, insertion, sic or aic"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let objective = match args.objective.as_deref() {
        None => pb::Objective::Unspecified,
        Some("probability") => pb::Objective::Probability,
        Some("logit") => pb::Objective::Logit,
        Some(other) => anyhow::bail!("--objective: {other:?} is not probability or logit"),
    };
    let reduction = match args.reduction.as_str() {
        "abs-sum" => pb::SaliencyReduction::AbsSum,
        "sum" => pb::SaliencyReduction::Sum,
        other => anyhow::bail!("--reduction: {other:?} is not abs-sum or sum"),
    };
    let substrate = |flag: &str, value: &str| -> anyhow::Result<i32> {
        Ok(match value {
            "black" => pb::Substrate::Black,
            "zeros" => pb::Substrate::Zeros,
            "blur" => pb::Substrate::Blur,
            other => anyhow::bail!("--{flag}: {other:?} is not black, zeros or blur"),
        } as i32)
    };
    let random_mask = match &args.random_mask {
        Some(path) => Some(f32_tensor(path, "--random-mask")?),
        None => None,
    };
    Ok(pb::EvaluateRequest {
        model: args.client.endpoint.model.clone().unwrap_or_default(),
        input,
        inputs,
        saliency: Some(saliency),
        reduction: reduction as i32,
        target: target.map(|kind| pb::Target { kind: Some(kind) }),
        objective: objective as i32,
        metrics,
        deletion: Some(pb::CausalOptions {
            pixels_per_step: args.pixels_per_step,
            substrate: substrate("deletion-substrate", &args.deletion_substrate)?,
            ..Default::default()
        }),
        insertion: Some(pb::CausalOptions {
            pixels_per_step: args.pixels_per_step,
            substrate: substrate("insertion-substrate", &args.insertion_substrate)?,
            ..Default::default()
        }),
        pic: Some(pb::PicOptions {
            thresholds: args.thresholds.clone(),
            seed: args.seed,
            random_mask,
            min_pred_value: args.min_pred_value,
            ..Default::default()
        }),
        batch_size: args.batch_size,
        plot: true,
    })
}

/// The map in `path` (a .npy, or an explanation.json with its attributions.npy beside it)
/// and, for an explanation, its target class.
fn read_saliency(path: &Path) -> anyhow::Result<(pb::Tensor, Option<i64>)> {
    if path.extension().is_some_and(|e| e == "json") {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--saliency {}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("--saliency {}: not JSON", path.display()))?;
        let target = json["target_class"].as_i64();
        let npy = path.with_file_name("attributions.npy");
        anyhow::ensure!(
            npy.exists(),
            "--saliency {}: an explanation's attributions are in attributions.npy beside it, and {} is missing",
            path.display(),
            npy.display()
        );
        return Ok((f32_tensor(&npy, "--saliency")?, target));
    }
    Ok((f32_tensor(path, "--saliency")?, None))
}

fn f32_tensor(path: &Path, flag: &str) -> anyhow::Result<pb::Tensor> {
    let (shape, data) = match npy::read(path).with_context(|| flag.to_string())? {
        NpyArray::F32 { shape, data } => (shape, data),
        NpyArray::I64 { shape, data } => (shape, data.iter().map(|&v| v as f32).collect()),
    };
    Ok(pb::Tensor {
        shape: shape.iter().map(|&d| d as i64).collect(),
        dtype: pb::DataType::Float32 as i32,
        data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    })
}

fn metric_name(metric: i32) -> &'static str {
    match pb::Metric::try_from(metric) {
        Ok(pb::Metric::Deletion) => "deletion",
        Ok(pb::Metric::Insertion) => "insertion",
        Ok(pb::Metric::Sic) => "sic",
        Ok(pb::Metric::Aic) => "aic",
        _ => "unspecified",
    }
}

/// The response as JSON: each curve's area, points and (PIC) thresholds.
fn evaluation_json(r: &pb::EvaluateResponse) -> serde_json::Value {
    let number = |v: f64| {
        if v.is_finite() {
            serde_json::json!(v)
        } else {
            serde_json::Value::Null
        }
    };
    let curves: Vec<serde_json::Value> = r
        .curves
        .iter()
        .map(|c| {
            let mut curve = serde_json::json!({
                "metric": metric_name(c.metric),
                "auc": number(c.auc),
                "x": c.x,
                "y": c.y,
            });
            if !c.skipped.is_empty() {
                curve["skipped"] = serde_json::json!(c.skipped);
            }
            if !c.thresholds.is_empty() {
                curve["thresholds"] = serde_json::json!(c.thresholds);
                curve["scores"] = serde_json::json!(c.scores);
                curve["information"] = serde_json::json!(c.information);
                curve["normalized_scores"] = serde_json::json!(c.normalized_scores);
                curve["original_score"] = serde_json::json!(c.original_score);
                curve["blurred_score"] = serde_json::json!(c.blurred_score);
            }
            curve
        })
        .collect();
    let objective = pb::Objective::try_from(r.objective)
        .map(|o| o.as_str_name())
        .unwrap_or("OBJECTIVE_UNSPECIFIED");
    serde_json::json!({
        "model": r.model,
        "target_class": r.target_class,
        "label": r.label,
        "objective": objective,
        "runs": r.runs,
        "images": r.images,
        "elapsed_ms": r.elapsed_ms,
        "curves": curves,
    })
}

fn print_table(r: &pb::EvaluateResponse, out: &Path) {
    println!(
        "model {}, target {:?} (class {}): {} images in {} runs, {:.0} ms",
        r.model, r.label, r.target_class, r.images, r.runs, r.elapsed_ms
    );
    for c in &r.curves {
        let (name, better) = match pb::Metric::try_from(c.metric) {
            Ok(pb::Metric::Deletion) => ("deletion", "lower is better"),
            _ => (metric_name(c.metric), "higher is better"),
        };
        if c.skipped.is_empty() {
            println!("  {name:<10} AUC {:.4}  ({better})", c.auc);
        } else {
            println!("  {name:<10} skipped: {}", c.skipped);
        }
    }
    println!(
        "wrote {} and {}",
        out.join("evaluation.json").display(),
        out.join("curves.png").display()
    );
}
