//! `integrad explain-batch`: a data set's rows explained in ExplainBatch calls, the results
//! streamed to a JSON-lines file as they come, with a progress bar. The rows are read as the
//! calls go (a few hundred at a time), so memory stays flat however long the file is; a shard
//! `I/N` takes the rows whose index is I modulo N, so N processes (an indexed Job) share one
//! data set.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio_stream::StreamExt;

use super::explain::{options_request, ExplainOptions};
use super::Endpoint;
use crate::proto::integrad::v1 as pb;

#[derive(Debug, Clone, Args)]
pub struct ExplainBatchArgs {
    #[command(flatten)]
    pub endpoint: Endpoint,
    #[command(flatten)]
    pub options: ExplainOptions,
    /// The rows: JSON lines (one object per line: feature name -> number, or graph input
    /// name -> nested list) or CSV (a header of feature names).
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the results: one JSON object per explanation and line, with the row's
    /// index in `row`.
    #[arg(long)]
    pub out: PathBuf,
    /// Explain only shard I of N: the rows whose 0-based index is I modulo N.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Columns of the input that are not features (e.g. a label), left out of every row.
    #[arg(long, value_name = "COLUMN")]
    pub exclude: Vec<String>,
    /// Rows per ExplainBatch call (at most the server's --max-instances).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub chunk: u32,
}

pub async fn run_explain_batch(args: ExplainBatchArgs) -> anyhow::Result<()> {
    let shard = match &args.shard {
        Some(text) => parse_shard(text)?,
        None => (0, 1),
    };
    let mut options = options_request(&args.options)?;
    options.render = None;
    options.model = args.endpoint.model.clone().unwrap_or_default();
    // The output is checked before any work: a bad path fails now, naming itself.
    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("cannot write the results to {}", args.out.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let total = Rows::open(&args.input, &args.exclude)?
        .enumerate()
        .filter(|(i, _)| i % shard.1 == shard.0)
        .count();

    let backend = Backend::open(&args.endpoint).await?;
    let dtypes = backend.input_types(&options.model).await?;
    let bar = indicatif::ProgressBar::new(total as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} rows {msg}",
        )
        .expect("a valid template"),
    );
    let mut rows = Rows::open(&args.input, &args.exclude)?
        .enumerate()
        .filter(|(i, _)| i % shard.1 == shard.0);
    let (mut done, mut written) = (0u64, 0u64);
    let mut unconverged = Unconverged::default();
    let mut inconsistent = Inconsistent::default();
    loop {
        let mut indices = Vec::new();
        let mut instances = Vec::new();
        for (index, row) in rows.by_ref().take(args.chunk as usize) {
            let row = row.with_context(|| format!("{} row {index}", args.input.display()))?;
            instances.push(
                instance(row, &dtypes)
                    .with_context(|| format!("{} row {index}", args.input.display()))?,
            );
            indices.push(index);
        }
        if instances.is_empty() {
            break;
        }
        let request = pb::ExplainBatchRequest {
            request: Some(options.clone()),
            instances,
            results_per_event: RESULTS_PER_EVENT,
        };
        let mut events = backend.explain_batch(request).await.map_err(|e| {
            // An instance's error names its place in this call; say which row that is.
            anyhow::anyhow!("{}", name_rows(&e.to_string(), &indices))
        })?;
        while let Some(event) = events.next().await {
            let event =
                event.map_err(|e| anyhow::anyhow!("{}", name_rows(&e.to_string(), &indices)))?;
            match event.event {
                Some(pb::explain_event::Event::Progress(p)) => {
                    bar.set_position(done + u64::from(p.instances_done));
                }
                Some(pb::explain_event::Event::Result(r)) => {
                    write_row(&mut out, &r, &indices)
                        .with_context(|| format!("writing {}", args.out.display()))?;
                    unconverged.count(&r, &indices);
                    inconsistent.count(&r, &indices);
                    written += 1;
                }
                Some(pb::explain_event::Event::Results(r)) => {
                    for r in &r.explanations {
                        write_row(&mut out, r, &indices)
                            .with_context(|| format!("writing {}", args.out.display()))?;
                        unconverged.count(r, &indices);
                        inconsistent.count(r, &indices);
                        written += 1;
                    }
                }
                None => {}
            }
        }
        done += indices.len() as u64;
        bar.set_position(done);
        out.flush()
            .with_context(|| format!("writing {}", args.out.display()))?;
    }
    bar.finish_and_clear();
    out.flush()
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{done} rows{} -> {written} explanations in {}",
        if shard.1 > 1 {
            format!(" (shard {}/{})", shard.0, shard.1)
        } else {
            String::new()
        },
        args.out.display()
    );
    if let Some(worst) = &unconverged.worst {
        let warning = super::explain::convergence_warning(worst, &args.options)
            .expect("only explanations that did not converge are kept");
        eprintln!(
            "warning: {} of {written} explanations did not converge (\"converged\": false in {}); the worst, row {}: {warning}",
            unconverged.explanations,
            args.out.display(),
            unconverged.worst_row,
        );
    }
    if let Some((row, warning)) = &inconsistent.first {
        eprintln!(
            "warning: {} of {written} explanations are not consistent with the server's predictor (\"predictor\" in {}); the first, row {row}: {warning}",
            inconsistent.explanations,
            args.out.display(),
        );
    }
    Ok(())
}

/// The explanations that the server's predictor (`serve --predictor`) scored differently, or
/// could not score, and the first of them: a batch of thousands must not hide them in its
/// output file.
#[derive(Default)]
struct Inconsistent {
    explanations: u64,
    /// Its input row and the check's warning.
    first: Option<(usize, String)>,
}

impl Inconsistent {
    fn count(&mut self, r: &pb::Explanation, indices: &[usize]) {
        let Some(check) = r.predictor.as_ref().filter(|c| !c.consistent) else {
            return;
        };
        self.explanations += 1;
        self.first
            .get_or_insert_with(|| (indices[r.instance as usize], check.warning.clone()));
    }
}

/// The explanations whose attributions do not add up within their tolerance, and the worst.
#[derive(Default)]
struct Unconverged {
    explanations: u64,
    worst: Option<pb::Explanation>,
    worst_row: usize,
}

impl Unconverged {
    fn count(&mut self, r: &pb::Explanation, indices: &[usize]) {
        if r.converged {
            return;
        }
        self.explanations += 1;
        if self
            .worst
            .as_ref()
            .is_none_or(|w| r.relative_delta > w.relative_delta)
        {
            // Without the tensors: only the numbers are reported.
            self.worst = Some(pb::Explanation {
                attributions: None,
                tensor_attributions: Default::default(),
                path: Vec::new(),
                ..r.clone()
            });
            self.worst_row = indices[r.instance as usize];
        }
    }
}

/// Explanations per event asked of the server: those of a gradient run's completed rows
/// arrive together, in a few messages instead of one each.
const RESULTS_PER_EVENT: u32 = 256;

/// One result as a line of the output, with the input row it explains.
fn write_row(out: &mut impl Write, r: &pb::Explanation, indices: &[usize]) -> anyhow::Result<()> {
    let mut json = super::json::explanation(r, true);
    json["row"] = serde_json::json!(indices[r.instance as usize]);
    serde_json::to_writer(&mut *out, &json)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// `I/N` with I < N.
fn parse_shard(text: &str) -> anyhow::Result<(usize, usize)> {
    let parsed = text
        .split_once('/')
        .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
    match parsed {
        Some((i, n)) if n > 0 && i < n => Ok((i, n)),
        _ => anyhow::bail!("--shard {text:?}: expected I/N with 0 <= I < N, e.g. 0/4"),
    }
}

/// `instances[i]` in a message, with the row it stands for.
fn name_rows(message: &str, indices: &[usize]) -> String {
    let mut out = message.to_string();
    for (i, row) in indices.iter().enumerate().rev() {
        out = out.replace(
            &format!("instances[{i}]"),
            &format!("instances[{i}] (row {row})"),
        );
    }
    out
}

/// One row: feature values, tensors by input name, or a text (and its pair) for a text model.
enum Row {
    Features(HashMap<String, f64>),
    Tensors(serde_json::Map<String, serde_json::Value>),
    Text { text: String, pair: String },
}

/// A text row from its fields: `text`, optionally `pair`, nothing else.
fn text_row<'a>(
    mut fields: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) -> anyhow::Result<Row> {
    let (mut text, mut pair) = (None, String::new());
    fields.try_for_each(|(name, value)| {
        match (name, value) {
            ("text", Some(v)) => text = Some(v.to_string()),
            ("pair", Some(v)) => pair = v.to_string(),
            ("text" | "pair", None) => anyhow::bail!("{name:?} must be a string"),
            (other, _) => anyhow::bail!(
                "a text row takes \"text\" and \"pair\" only, not {other:?} (--exclude {other} leaves it out)"
            ),
        }
        Ok(())
    })?;
    let text = text.ok_or_else(|| anyhow::anyhow!("a text row needs \"text\""))?;
    Ok(Row::Text { text, pair })
}

/// An ExplainBatch instance of a row.
fn instance(row: Row, dtypes: &HashMap<String, pb::DataType>) -> anyhow::Result<pb::Instance> {
    Ok(match row {
        Row::Features(values) => pb::Instance {
            input: Some(pb::Input {
                kind: Some(pb::input::Kind::Features(pb::FeatureRow { values })),
            }),
            ..Default::default()
        },
        Row::Text { text, pair } => pb::Instance {
            input: Some(pb::Input {
                kind: Some(pb::input::Kind::Text(pb::Text { text, pair })),
            }),
            ..Default::default()
        },
        Row::Tensors(map) => {
            let mut inputs = HashMap::new();
            for (name, value) in map {
                let dtype = *dtypes.get(&name).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{name:?} is no input of the model (its inputs: {:?})",
                        dtypes.keys().collect::<Vec<_>>()
                    )
                })?;
                let tensor =
                    nested_tensor(&value, dtype).with_context(|| format!("input {name:?}"))?;
                inputs.insert(
                    name,
                    pb::Input {
                        kind: Some(pb::input::Kind::Tensor(tensor)),
                    },
                );
            }
            pb::Instance {
                inputs,
                ..Default::default()
            }
        }
    })
}

/// A nested JSON list of numbers as a tensor of `dtype` (its shape from the nesting).
fn nested_tensor(value: &serde_json::Value, dtype: pb::DataType) -> anyhow::Result<pb::Tensor> {
    let mut shape = Vec::new();
    let mut level = value;
    while let Some(list) = level.as_array() {
        shape.push(list.len() as i64);
        match list.first() {
            Some(first) => level = first,
            None => break,
        }
    }
    let mut flat = Vec::new();
    flatten(value, &shape, &mut flat)?;
    let data = match dtype {
        pb::DataType::Int64 => flat
            .iter()
            .map(|&v| {
                anyhow::ensure!(v.fract() == 0.0, "{v} is not an integer");
                Ok((v as i64).to_le_bytes())
            })
            .collect::<anyhow::Result<Vec<_>>>()?
            .concat(),
        _ => flat
            .iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect(),
    };
    Ok(pb::Tensor {
        shape,
        dtype: dtype as i32,
        data,
    })
}

fn flatten(value: &serde_json::Value, shape: &[i64], out: &mut Vec<f64>) -> anyhow::Result<()> {
    match (value, shape.split_first()) {
        (serde_json::Value::Array(list), Some((&len, rest))) => {
            anyhow::ensure!(
                list.len() as i64 == len,
                "a ragged list: {} entries where {len} were expected",
                list.len()
            );
            for item in list {
                flatten(item, rest, out)?;
            }
            Ok(())
        }
        (v, None) => {
            out.push(
                v.as_f64()
                    .ok_or_else(|| anyhow::anyhow!("{v} is not a number"))?,
            );
            Ok(())
        }
        (v, Some(_)) => anyhow::bail!("{v} where a list was expected"),
    }
}

/// The rows of a JSON-lines or CSV file, read one at a time.
enum Rows {
    Json(
        std::io::Lines<std::io::BufReader<std::fs::File>>,
        Vec<String>,
    ),
    Csv(
        csv::StringRecordsIntoIter<std::fs::File>,
        csv::StringRecord,
        Vec<String>,
    ),
}

impl Rows {
    fn open(path: &Path, exclude: &[String]) -> anyhow::Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let csv = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        Ok(if csv {
            let mut reader = csv::Reader::from_reader(file);
            let header = reader
                .headers()
                .with_context(|| format!("{}: no CSV header", path.display()))?
                .clone();
            Rows::Csv(reader.into_records(), header, exclude.to_vec())
        } else {
            Rows::Json(std::io::BufReader::new(file).lines(), exclude.to_vec())
        })
    }
}

impl Iterator for Rows {
    type Item = anyhow::Result<Row>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Rows::Json(lines, exclude) => loop {
                let line = match lines.next()? {
                    Ok(line) => line,
                    Err(e) => return Some(Err(e.into())),
                };
                if line.trim().is_empty() {
                    continue;
                }
                return Some(json_row(&line, exclude));
            },
            Rows::Csv(records, header, exclude) => {
                let record = match records.next()? {
                    Ok(record) => record,
                    Err(e) => return Some(Err(e.into())),
                };
                // A "text" column makes a text row.
                if header.iter().any(|h| h.trim() == "text") {
                    let fields = header
                        .iter()
                        .zip(record.iter())
                        .map(|(name, value)| (name.trim(), Some(value)))
                        .filter(|(name, _)| !exclude.iter().any(|e| e == name));
                    return Some(text_row(fields));
                }
                let mut values = HashMap::new();
                for (name, text) in header.iter().zip(record.iter()) {
                    let name = name.trim();
                    if exclude.iter().any(|e| e == name) {
                        continue;
                    }
                    match text.trim().parse::<f64>() {
                        Ok(v) => {
                            values.insert(name.to_string(), v);
                        }
                        Err(_) => {
                            return Some(Err(anyhow::anyhow!(
                                "column {name:?} is {text:?}, not a number (--exclude {name} leaves it out)"
                            )))
                        }
                    }
                }
                Some(Ok(Row::Features(values)))
            }
        }
    }
}

/// One JSON line: an object of numbers (features) or of lists (tensors by input name).
fn json_row(line: &str, exclude: &[String]) -> anyhow::Result<Row> {
    let value: serde_json::Value = serde_json::from_str(line).context("not JSON")?;
    let mut object = value
        .as_object()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("expected a JSON object"))?;
    object.retain(|k, _| !exclude.contains(k));
    if object.get("text").is_some_and(|t| t.is_string()) {
        return text_row(object.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    if object.values().all(|v| v.is_number()) {
        super::feature_values(&serde_json::Value::Object(object))
            .map(Row::Features)
            .map_err(|e| anyhow::anyhow!(e))
    } else {
        Ok(Row::Tensors(object))
    }
}

type EventStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = anyhow::Result<pb::ExplainEvent>> + Send>>;

/// A server, or the engine in this process.
enum Backend {
    Remote(super::Client),
    Local(Arc<crate::engine::Engine>),
}

impl Backend {
    async fn open(endpoint: &Endpoint) -> anyhow::Result<Self> {
        Ok(match &endpoint.server {
            Some(url) => {
                let client = super::connect(url, &endpoint.connect).await?;
                Backend::Remote(
                    client
                        .max_decoding_message_size(256 << 20)
                        .max_encoding_message_size(64 << 20),
                )
            }
            None => Backend::Local(
                super::local_engine(
                    &endpoint.models,
                    &endpoint.runtime,
                    Some(endpoint.model.as_deref().unwrap_or_default()),
                )
                .await?,
            ),
        })
    }

    /// The model's inputs and their element types.
    async fn input_types(&self, model: &str) -> anyhow::Result<HashMap<String, pb::DataType>> {
        let info = match self {
            Backend::Remote(client) => client
                .clone()
                .get_model(pb::GetModelRequest {
                    model: model.to_string(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
                .into_inner(),
            Backend::Local(engine) => {
                let model = engine.model(model)?;
                crate::wire::model_info(
                    &model.spec.name,
                    engine
                        .repository()
                        .get(&model.spec.name)
                        .expect("just found"),
                )
            }
        };
        Ok(info
            .inputs
            .iter()
            .map(|i| {
                let dtype = pb::DataType::try_from(i.dtype).unwrap_or(pb::DataType::Unspecified);
                (i.name.clone(), dtype)
            })
            .collect())
    }

    async fn explain_batch(&self, request: pb::ExplainBatchRequest) -> anyhow::Result<EventStream> {
        Ok(match self {
            Backend::Remote(client) => {
                let stream = client
                    .clone()
                    .explain_batch(request)
                    .await
                    .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                Box::pin(stream.map(|item| {
                    item.map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
                }))
            }
            Backend::Local(engine) => {
                let job = engine.plan_explain_batch(request).await?;
                let (tx, rx) = tokio::sync::mpsc::channel(job.events_buffered());
                tokio::spawn(job.run(tx));
                let engine = engine.clone();
                Box::pin(
                    tokio_stream::wrappers::ReceiverStream::new(rx).map(move |item| {
                        let _keep_models_alive = &engine;
                        item.map_err(anyhow::Error::from)
                    }),
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_checked() {
        assert_eq!(parse_shard("2/4").unwrap(), (2, 4));
        for bad in ["4/4", "1", "a/b", "0/0"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nested_lists_become_tensors() {
        let value: serde_json::Value = serde_json::from_str("[[1, 2, 3], [4, 5, 6]]").unwrap();
        let t = nested_tensor(&value, pb::DataType::Int64).unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.data.len(), 6 * 8);
        let ragged: serde_json::Value = serde_json::from_str("[[1, 2], [3]]").unwrap();
        assert!(nested_tensor(&ragged, pb::DataType::Float32).is_err());
        let half: serde_json::Value = serde_json::from_str("[1.5]").unwrap();
        assert!(nested_tensor(&half, pb::DataType::Int64).is_err());
    }

    #[test]
    fn text_rows_take_text_and_pair_only() {
        let row = json_row(
            r#"{"text": "fine", "pair": "really", "label": 1}"#,
            &["label".into()],
        );
        assert!(
            matches!(row, Ok(Row::Text { ref text, ref pair }) if text == "fine" && pair == "really")
        );
        let error = json_row(r#"{"text": "fine", "label": 1}"#, &[])
            .err()
            .unwrap();
        assert!(error.to_string().contains("--exclude label"), "{error}");
    }
}
