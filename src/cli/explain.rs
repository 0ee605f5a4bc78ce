//! `integrad explain`: Integrated Gradients for an image or tensor, with a progress bar, and
//! the files people look at: attributions.npy, mask.png, overlay.png, saturation.png and
//! explanation.json.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use tokio_stream::StreamExt;

use super::ClientArgs;
use crate::proto::integrad::v1 as pb;

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub options: ExplainOptions,
    /// Where to write the files.
    #[arg(long, default_value = "explanation")]
    pub out: PathBuf,
}

/// How to explain: what `integrad explain` and `integrad explain-batch` share.
#[derive(Debug, Clone, Args)]
pub struct ExplainOptions {
    /// The class to explain: an index or a label [default: the top-1 prediction].
    #[arg(long, conflicts_with = "top_k")]
    pub target: Option<String>,
    /// Explain the top K classes (at most 16), in the same gradient passes; each one's files
    /// go to a folder RANK-CLASS under --out (1-285, 2-281, ...).
    #[arg(long)]
    pub top_k: Option<u32>,
    /// ig (integrated gradients), blur-ig, guided-ig or xrai (image models).
    #[arg(long, default_value = "ig")]
    pub technique: String,
    /// Intervals of the path integral (Guided IG: steps of its path) [default: 50 for ig,
    /// 100 for blur-ig and xrai, 200 for guided-ig].
    #[arg(long)]
    pub steps: Option<u32>,
    /// trapezoid, left, right, midpoint or gauss-legendre [default: trapezoid; right for
    /// blur-ig, as PAIR sums; guided-ig takes none].
    #[arg(long)]
    pub method: Option<crate::ig::Method>,
    /// Blur IG: the sigma its path starts from, in pixels of the model's input [default: 50].
    #[arg(long)]
    pub max_sigma: Option<f32>,
    /// Blur IG: the sigma step of the path's derivative [default: 0.01].
    #[arg(long)]
    pub grad_step: Option<f32>,
    /// Guided IG: the fraction of features moved at each step [default: 0.25].
    #[arg(long)]
    pub guided_fraction: Option<f32>,
    /// Guided IG: how far (in alpha) a feature may get ahead of the straight path
    /// [default: 0.02].
    #[arg(long)]
    pub guided_max_dist: Option<f32>,
    /// XRAI: the fraction of the image mask.png and overlay.png show (the top regions)
    /// [default: 0.3].
    #[arg(long)]
    pub xrai_top_fraction: Option<f32>,
    /// A noise tunnel: the technique over this many noisy copies of the input, combined
    /// (0: none).
    #[arg(long, default_value_t = 0)]
    pub smooth_samples: u32,
    /// The noise tunnel's standard deviation, a fraction of the input's range [default: 0.15].
    #[arg(long)]
    pub smooth_stdev: Option<f32>,
    /// The noise tunnel's combination: smoothgrad (mean), smoothgrad-sq (mean of squares) or
    /// vargrad (variance).
    #[arg(long, default_value = "smoothgrad")]
    pub smooth_kind: String,
    /// probability (the softmax of the logits, or the sigmoid of a binary head's logit), logit,
    /// or value (a regression head's output) [default: probability for classifiers, value for
    /// score heads].
    #[arg(long)]
    pub objective: Option<String>,
    /// zeros, black, white, uniform, blur, median, mean, rows (reference rows of a tabular
    /// model), or a .npy file [default: black for images, the model's configured baseline for
    /// tabular inputs, else zeros].
    #[arg(long)]
    pub baseline: Option<String>,
    /// Seed of the uniform baseline and of the noise tunnel's noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Average over this many uniform baselines (expected gradients).
    #[arg(long, default_value_t = 1)]
    pub samples: u32,
    /// Sigma of the blur baseline, in pixels.
    #[arg(long, default_value_t = 10.0)]
    pub sigma: f32,
    /// Refine (doubling trapezoid steps) until |delta| <= T * |F(x) - F(x')|.
    #[arg(long, default_value_t = 0.0)]
    pub tolerance: f32,
    /// The most steps refinement may reach [default: the server's maximum].
    #[arg(long)]
    pub max_steps: Option<u32>,
    /// Alphas per gradient run [default: chosen by the server].
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// inferno or viridis.
    #[arg(long, default_value = "inferno")]
    pub colormap: String,
    /// Clip the mask at this percentile (0: no clipping).
    #[arg(long, default_value_t = 99.0)]
    pub clip_percentile: f32,
    /// Tensors to attribute to (graph inputs or inner float tensors), comma-separated
    /// [default: the model's attribution points].
    #[arg(long, value_delimiter = ',')]
    pub attribute_to: Vec<String>,
    /// Text models: the token of the baseline at every position but the special ones: pad,
    /// unk or mask [default: pad].
    #[arg(long)]
    pub text_baseline: Option<String>,
    /// Text models: none, l1 or l2 scaling of the token and word attributions.
    #[arg(long, default_value = "none")]
    pub token_normalization: String,
}

pub async fn run_explain(args: ExplainArgs) -> anyhow::Result<()> {
    // Before any work: a bad --out fails at once, naming the path, not after the integration.
    output_dir(&args.out)?;
    let mut request = request(&args)?;
    let mut events: std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = anyhow::Result<pb::ExplainEvent>> + Send>,
    > =
        match &args.client.endpoint.server {
            Some(url) => {
                let client = super::connect(url, &args.client.endpoint.connect).await?;
                let mut client = client
                    .max_decoding_message_size(256 << 20)
                    .max_encoding_message_size(64 << 20);
                // Pictures only where there is a picture to draw on (an image input).
                let info = client
                    .get_model(pb::GetModelRequest {
                        model: request.model.clone(),
                    })
                    .await
                    .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                if info.preprocessing.is_none() {
                    request.render = None;
                }
                let stream = client
                    .explain(request)
                    .await
                    .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                Box::pin(stream.map(|item| {
                    item.map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
                }))
            }
            None => {
                let engine = super::local_engine(
                    &args.client.endpoint.models,
                    &args.client.endpoint.runtime,
                    Some(&request.model),
                )
                .await?;
                if engine.model(&request.model)?.spec.image().is_none() {
                    request.render = None;
                }
                let job = engine.plan_explain(request).await?;
                let (tx, rx) = tokio::sync::mpsc::channel(16);
                tokio::spawn(job.run(tx));
                Box::pin(
                    tokio_stream::wrappers::ReceiverStream::new(rx).map(move |item| {
                        let _keep_models_alive = &engine;
                        item.map_err(anyhow::Error::from)
                    }),
                )
            }
        };

    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} gradients {msg}",
        )
        .expect("a valid template"),
    );
    let mut results = Vec::new();
    while let Some(event) = events.next().await {
        match event?.event {
            Some(pb::explain_event::Event::Progress(p)) => {
                bar.set_length(u64::from(p.steps_total));
                bar.set_position(u64::from(p.steps_done));
                if p.steps > 0 && p.relative_delta.is_finite() {
                    bar.set_message(format!(
                        "{} steps, |delta| {:.2} %",
                        p.steps,
                        100.0 * p.relative_delta
                    ));
                }
            }
            Some(pb::explain_event::Event::Result(r)) => results.push(r),
            Some(pb::explain_event::Event::Results(r)) => results.extend(r.explanations),
            None => {}
        }
    }
    bar.finish_and_clear();
    anyhow::ensure!(!results.is_empty(), "the server sent no explanation");
    std::fs::create_dir_all(&args.out)?;
    for (rank, r) in results.iter().enumerate() {
        let dir = if results.len() == 1 {
            args.out.clone()
        } else {
            args.out.join(format!("{}-{}", rank + 1, r.target_class))
        };
        let text = args
            .client
            .input
            .text
            .as_deref()
            .map(|text| crate::text::show::Shown {
                text,
                pair: args.client.input.pair.as_deref().unwrap_or_default(),
                explanation: r,
            });
        write_files(&dir, r, text.as_ref())?;
        println!(
            "class {} {:?}: F(input) {:.4}, F(baseline) {:.4}, sum of attributions {:.4}, delta {:.2e} ({:.2} %), {} steps, {:.0} ms -> {}",
            r.target_class,
            r.label,
            r.score_input,
            r.score_baseline,
            r.attribution_sum,
            r.convergence_delta,
            100.0 * (r.convergence_delta / (r.score_input - r.score_baseline)).abs(),
            r.steps,
            r.elapsed_ms,
            dir.display()
        );
        if let Some(warning) = convergence_warning(r, &args.options) {
            eprintln!("warning: {warning}");
        }
        match &r.predictor {
            Some(check) if check.consistent => println!(
                "  the predictor {} (model {:?}) scores it {:.6}: consistent (relative difference {:.1e})",
                check.url, check.model, check.served_score, check.relative_difference
            ),
            Some(check) => eprintln!("warning: {}", check.warning),
            None => {}
        }
        print_features(r);
        if let Some(text) = &text {
            use std::io::IsTerminal;
            println!("  {}", text.terminal(std::io::stdout().is_terminal()));
            if r.truncated {
                println!("  (the text was truncated to the model's length)");
            }
        }
    }
    Ok(())
}

/// What to tell the user when `r`'s attributions do not add up to F(x) - F(x') within the
/// tolerance it was judged by (the request's `--tolerance`, or the server's default), and what
/// to change: None when they do.
pub fn convergence_warning(r: &pb::Explanation, options: &ExplainOptions) -> Option<String> {
    if r.converged {
        return None;
    }
    let missed = format!(
        "class {} {:?}: the attributions miss F(input) - F(baseline) by {} (convergence delta {:.3e})",
        r.target_class,
        r.label,
        percent(r.relative_delta),
        r.convergence_delta
    );
    let tolerance = percent(r.convergence_tolerance);
    Some(if options.tolerance > 0.0 {
        format!(
            "{missed}: --tolerance {} ({tolerance}) was not reached; refinement stopped at {} steps. Raise --max-steps, or accept a larger --tolerance.",
            options.tolerance, r.steps
        )
    } else if options.technique != "ig" || options.smooth_samples > 1 {
        format!(
            "{missed}, more than {tolerance}: raise --steps ({} now) to bring the path's sum closer",
            r.steps
        )
    } else if options.method.unwrap_or(crate::ig::Method::Trapezoid) == crate::ig::Method::Trapezoid
    {
        format!(
            "{missed}, more than {tolerance}: {} steps are too few for this input. Pass --tolerance {} to refine until within {tolerance} (up to --max-steps), or raise --steps.",
            r.steps, r.convergence_tolerance
        )
    } else {
        format!(
            "{missed}, more than {tolerance}: {} steps are too few for this input. Raise --steps, or use --method trapezoid with --tolerance {} to refine until within {tolerance}.",
            r.steps, r.convergence_tolerance
        )
    })
}

/// A fraction as a percentage with the digits that matter ("5 %", "48.6 %", "0.12 %").
fn percent(fraction: f32) -> String {
    let p = 100.0 * fraction;
    if !p.is_finite() {
        "an unbounded fraction (F(input) = F(baseline))".to_string()
    } else if p == p.round() {
        format!("{p:.0} %")
    } else if p >= 10.0 {
        format!("{p:.1} %")
    } else {
        format!("{p:.2} %")
    }
}

/// A tabular explanation's features, largest |attribution| first, and its groups.
fn print_features(r: &pb::Explanation) {
    let mut features: Vec<&pb::FeatureAttribution> = r.features.iter().collect();
    features.sort_by(|a, b| b.attribution.abs().total_cmp(&a.attribution.abs()));
    let width = features.iter().map(|f| f.name.len()).max().unwrap_or(0);
    for f in features {
        let baseline = if f.baseline.is_nan() {
            "(at the embedding)".to_string()
        } else {
            format!("{}", f.baseline)
        };
        println!(
            "  {:<width$}  {:>+10.4}   value {}  baseline {baseline}",
            f.name, f.attribution, f.value
        );
    }
    for g in &r.feature_groups {
        println!("  group {:<width$}  {:>+10.4}", g.name, g.attribution);
    }
}

fn request(args: &ExplainArgs) -> anyhow::Result<pb::ExplainRequest> {
    let (input, inputs) = args.client.input.read()?;
    Ok(pb::ExplainRequest {
        model: args.client.endpoint.model.clone().unwrap_or_default(),
        input,
        inputs,
        ..options_request(&args.options)?
    })
}

/// The ExplainRequest of `args`, without model or input.
pub fn options_request(args: &ExplainOptions) -> anyhow::Result<pb::ExplainRequest> {
    let target = match (&args.target, args.top_k) {
        (Some(t), _) => Some(match t.parse::<i64>() {
            Ok(index) => pb::target::Kind::ClassIndex(index),
            Err(_) => pb::target::Kind::Label(t.clone()),
        }),
        (None, Some(k)) => Some(pb::target::Kind::TopK(k)),
        (None, None) => None,
    };
    let baseline = match args.baseline.as_deref() {
        None => None,
        Some("zeros") => Some(pb::baseline::Kind::Zeros(true)),
        Some("black") => Some(pb::baseline::Kind::Black(true)),
        Some("white") => Some(pb::baseline::Kind::White(true)),
        Some("uniform") => Some(pb::baseline::Kind::Uniform(pb::UniformBaseline {
            seed: args.seed,
        })),
        Some("blur") => Some(pb::baseline::Kind::Blur(pb::BlurBaseline {
            sigma: args.sigma,
        })),
        Some(statistic @ ("median" | "mean" | "rows")) => {
            Some(pb::baseline::Kind::Reference(pb::ReferenceBaseline {
                statistic: match statistic {
                    "median" => pb::ReferenceStatistic::Median,
                    "mean" => pb::ReferenceStatistic::Mean,
                    _ => pb::ReferenceStatistic::Rows,
                } as i32,
                rows: if args.samples > 1 { args.samples } else { 0 },
                seed: args.seed,
            }))
        }
        Some(path) if path.ends_with(".npy") => {
            match super::read_input(None, Some(Path::new(path)))?.kind {
                Some(pb::input::Kind::Tensor(t)) => Some(pb::baseline::Kind::Tensor(t)),
                _ => unreachable!("read_input gives a tensor for a .npy file"),
            }
        }
        Some(other) => anyhow::bail!(
            "--baseline {other:?}: expected zeros, black, white, uniform, blur, median, mean, rows or a .npy file"
        ),
    };
    let baseline = match (args.text_baseline.as_deref(), baseline) {
        (None, baseline) => baseline,
        (Some(token), None) => Some(pb::baseline::Kind::Text(pb::TextBaseline {
            token: match token {
                "pad" => pb::TextBaselineToken::Pad,
                "unk" => pb::TextBaselineToken::Unk,
                "mask" => pb::TextBaselineToken::Mask,
                other => anyhow::bail!("--text-baseline {other:?}: expected pad, unk or mask"),
            } as i32,
            ids: Vec::new(),
        })),
        (Some(_), Some(_)) => anyhow::bail!("give --baseline or --text-baseline, not both"),
    };
    let token_normalization = match args.token_normalization.as_str() {
        "none" => pb::TokenNormalization::None,
        "l1" => pb::TokenNormalization::L1,
        "l2" => pb::TokenNormalization::L2,
        other => anyhow::bail!("--token-normalization {other:?}: expected none, l1 or l2"),
    };
    let objective = match args.objective.as_deref() {
        None => pb::Objective::Unspecified,
        Some("probability") => pb::Objective::Probability,
        Some("logit") => pb::Objective::Logit,
        Some("value") => pb::Objective::Value,
        Some(other) => anyhow::bail!("--objective {other:?}: expected probability, logit or value"),
    };
    let colormap = match args.colormap.as_str() {
        "inferno" => pb::Colormap::Inferno,
        "viridis" => pb::Colormap::Viridis,
        other => anyhow::bail!("--colormap {other:?}: expected inferno or viridis"),
    };
    let method = args
        .method
        .map_or(pb::Method::Unspecified, pb::Method::from);
    if let Some(m) = args
        .method
        .filter(|&m| args.tolerance > 0.0 && m != crate::ig::Method::Trapezoid)
    {
        anyhow::bail!(
            "--tolerance refines by doubling trapezoid steps (reusing every gradient): use it with --method trapezoid, or raise --steps for --method {m}"
        );
    }
    let technique = match args.technique.as_str() {
        "ig" => pb::Technique::IntegratedGradients,
        "blur-ig" => pb::Technique::BlurIg,
        "guided-ig" => pb::Technique::GuidedIg,
        "xrai" => pb::Technique::Xrai,
        other => anyhow::bail!("--technique {other:?}: expected ig, blur-ig, guided-ig or xrai"),
    };
    let blur_ig =
        (args.max_sigma.is_some() || args.grad_step.is_some()).then_some(pb::BlurIgOptions {
            max_sigma: args.max_sigma,
            grad_step: args.grad_step,
        });
    let guided_ig = (args.guided_fraction.is_some() || args.guided_max_dist.is_some()).then_some(
        pb::GuidedIgOptions {
            fraction: args.guided_fraction,
            max_dist: args.guided_max_dist,
        },
    );
    let xrai = args.xrai_top_fraction.map(|f| pb::XraiOptions {
        top_fraction: Some(f),
        ..Default::default()
    });
    let kind = match args.smooth_kind.as_str() {
        "smoothgrad" => pb::NoiseKind::Smoothgrad,
        "smoothgrad-sq" => pb::NoiseKind::SmoothgradSq,
        "vargrad" => pb::NoiseKind::Vargrad,
        other => {
            anyhow::bail!("--smooth-kind {other:?}: expected smoothgrad, smoothgrad-sq or vargrad")
        }
    };
    if args.smooth_samples <= 1 && (args.smooth_stdev.is_some() || args.smooth_kind != "smoothgrad")
    {
        anyhow::bail!("--smooth-stdev and --smooth-kind are the noise tunnel's: give --smooth-samples N (at least 2) too");
    }
    let noise_tunnel = (args.smooth_samples > 1).then_some(pb::NoiseTunnel {
        samples: args.smooth_samples,
        stdev: args.smooth_stdev,
        kind: kind as i32,
        seed: args.seed,
    });
    let samples = match baseline {
        // The reference rows are the samples.
        Some(pb::baseline::Kind::Reference(_)) => 0,
        _ => args.samples,
    };
    Ok(pb::ExplainRequest {
        target: target.map(|kind| pb::Target { kind: Some(kind) }),
        objective: objective as i32,
        baseline: baseline.map(|kind| pb::Baseline {
            kind: Some(kind),
            samples,
        }),
        method: method as i32,
        steps: args.steps,
        technique: technique as i32,
        blur_ig,
        guided_ig,
        xrai,
        noise_tunnel,
        batch_size: args.batch_size.unwrap_or(0),
        tolerance: args.tolerance,
        max_steps: args.max_steps.unwrap_or(0),
        render: Some(pb::RenderOptions {
            mask: true,
            overlay: true,
            colormap: colormap as i32,
            clip_percentile: Some(args.clip_percentile),
            overlay_alpha: None,
        }),
        attribute_to: args.attribute_to.clone(),
        token_normalization: token_normalization as i32,
        ..Default::default()
    })
}

/// Makes `out` (the folder explain writes its files into) and checks that files can be
/// written there.
fn output_dir(out: &Path) -> anyhow::Result<()> {
    let shown = out.display();
    if out.exists() && !out.is_dir() {
        anyhow::bail!("--out {shown} is a file; explain writes a folder of files: name a folder");
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("--out {shown}: cannot make the folder"))?;
    let probe = out.join(".integrad-write-check");
    std::fs::write(&probe, b"").with_context(|| format!("--out {shown}: cannot write there"))?;
    std::fs::remove_file(&probe).with_context(|| format!("--out {shown}: cannot write there"))?;
    Ok(())
}

/// Writes `bytes` to `path`, naming the file when that fails (a full disk, say).
fn write_file(path: std::path::PathBuf, bytes: impl AsRef<[u8]>) -> anyhow::Result<()> {
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn write_files(
    dir: &Path,
    r: &pb::Explanation,
    text: Option<&crate::text::show::Shown<'_>>,
) -> anyhow::Result<()> {
    let objective = match pb::Objective::try_from(r.objective) {
        Ok(pb::Objective::Logit) => "logit",
        Ok(pb::Objective::Value) => "value",
        _ => "probability",
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    let attributions = r
        .attributions
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("explanation without attributions"))?;
    let values = crate::wire::f32s(&attributions.data);
    let shape: Vec<usize> = attributions.shape.iter().map(|&d| d as usize).collect();
    crate::npy::write_f32(&dir.join("attributions.npy"), &shape, &values)?;
    if !r.mask_png.is_empty() {
        write_file(dir.join("mask.png"), &r.mask_png)?;
    }
    if !r.overlay_png.is_empty() {
        write_file(dir.join("overlay.png"), &r.overlay_png)?;
    }
    let samples: Vec<crate::image::PathSample> = r
        .path
        .iter()
        .map(|p| crate::image::PathSample {
            alpha: p.alpha,
            score: p.score,
            mean_abs_gradient: p.mean_abs_gradient,
        })
        .collect();
    write_file(
        dir.join("saturation.png"),
        crate::image::saturation_png(&samples, objective, &r.label)?,
    )?;
    let mut json = super::json::explanation(r, false);
    json["attributions_shape"] = serde_json::json!(attributions.shape);
    // Every other attributed tensor gets a file of its own.
    for (i, name) in r.attributed.iter().enumerate().skip(1) {
        if let Some(t) = r.tensor_attributions.get(name) {
            let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            let file = format!("attributions-{i}.npy");
            crate::npy::write_f32(&dir.join(&file), &shape, &crate::wire::f32s(&t.data))?;
            json["tensor_attributions"][name]["file"] = serde_json::json!(file);
        }
    }
    if !r.features.is_empty() {
        let bars: Vec<crate::image::FeatureBar> = r
            .features
            .iter()
            .map(|f| crate::image::FeatureBar {
                label: format!("{} = {}", f.name, f.value),
                attribution: f.attribution,
            })
            .collect();
        let title = format!(
            "{objective} of {:?}: F(x) {:.4}, F(x') {:.4}",
            r.label, r.score_input, r.score_baseline
        );
        write_file(
            dir.join("features.png"),
            crate::image::features_png(&bars, &title)?,
        )?;
    }
    if let Some(text) = text {
        write_file(dir.join("tokens.html"), text.html())?;
        let title = format!(
            "{objective} of {:?}: F(x) {:.4}, F(x') {:.4}, sum {:.4} (red: for, blue: against)",
            r.label, r.score_input, r.score_baseline, r.attribution_sum
        );
        write_file(
            dir.join("tokens.png"),
            crate::image::tokens_png(&title, &text.coloured_pieces())?,
        )?;
    }
    write_file(
        dir.join("explanation.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}
