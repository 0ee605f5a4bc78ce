//! Cross-request batching: how a worker merges queued jobs into one ONNX Runtime run and splits
//! the outputs back, as Triton's dynamic batcher does.
//!
//! The worker ([`super::worker`]) decides *which* jobs go together (FIFO, up to
//! [`Batching::max_rows`], waiting at most [`Batching::max_delay`]); this module says whether
//! two jobs *can* go together and does the tensor arithmetic. The rules belong to the worker's
//! kind ([`Merge`]):
//!
//! - [`Merge::Forward`] (Predict, Open Inference Protocol, Explain's F(x)): every input is
//!   concatenated on axis 0 and every output split on axis 0 by each job's batch. Only for
//!   models whose inputs and outputs all have a dynamic first axis.
//! - [`Merge::Paths`] (a model that evaluates several paths and returns weighted sums over
//!   rows, as Explain's IG step model does; the caller names the roles of its tensors in
//!   [`PathRules`]): the jobs' per-path inputs are stacked, their rows concatenated with each
//!   path index offset by the paths before it, and their weights laid out block-diagonally
//!   (`[sum of sums, sum of rows]`, zero outside each job's block), so each job's sums only
//!   ever see its own rows. The sums output is split by each job's sums, every other output by
//!   its rows.
//!
//! Jobs that differ in input names, element types, trailing shapes or requested outputs are
//! never merged: the worker runs them separately, in order.

use std::time::Duration;

use super::{TensorData, Values};
use crate::device::Placement;

/// A job's named inputs.
pub type Inputs = [(String, TensorData)];

/// How a worker merges jobs (fixed when the model loads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Never: every job runs alone (a model with a fixed batch axis).
    Off,
    /// Concatenate inputs and split outputs on axis 0.
    Forward,
    /// Stack paths, concatenate rows, weights block-diagonal (module docs).
    Paths(PathRules),
}

/// The roles of a path model's tensors, by name, for [`Merge::Paths`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    /// Every input a job sends, and no others.
    pub inputs: &'static [&'static str],
    /// Inputs with one entry per path on axis 0: stacked.
    pub per_path: &'static [&'static str],
    /// Int64 `[rows]`: the path each row reads; offset by the paths of the jobs before.
    pub path_index: &'static str,
    /// Inputs with one entry per row on axis 0; the first one's axis 0 counts the rows.
    pub per_row: &'static [&'static str],
    /// `[sums, rows]`: each sum's weight of each row; laid out block-diagonally.
    pub weights: &'static str,
    /// The output with one entry per sum on axis 0; every other output has one per row.
    pub sums: &'static str,
}

/// When workers merge jobs. On a CPU a merged run costs about what its parts cost one after
/// another (ONNX Runtime already keeps the cores busy, and larger batches run slower per row),
/// while it doubles peak memory: docs/BENCHMARKS.md, "Throughput". An accelerator, whose
/// cores one request's batch leaves idle, is where merging pays; `auto` merges there only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BatchingMode {
    /// On for models placed on a CUDA device, off on the CPU.
    Auto,
    On,
    Off,
}

/// The batcher's settings, shared by every worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    pub mode: BatchingMode,
    /// Rows of one merged run at most (a job larger than this still runs, alone).
    pub max_rows: usize,
    /// How long a worker waits for more jobs when other requests are active on it.
    pub max_delay: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            mode: BatchingMode::Auto,
            max_rows: 32,
            max_delay: Duration::from_micros(2000),
        }
    }
}

impl Batching {
    /// Whether jobs merge (`auto` not yet resolved with [`Batching::on`] counts as off).
    pub fn enabled(&self) -> bool {
        self.mode == BatchingMode::On
    }

    /// These settings for a model placed on `placement`, `auto` resolved.
    pub fn on(self, placement: Placement) -> Self {
        let mode = match (self.mode, placement) {
            (BatchingMode::Auto, Placement::Cuda(_)) => BatchingMode::On,
            (BatchingMode::Auto, Placement::Cpu) => BatchingMode::Off,
            (mode, _) => mode,
        };
        Self { mode, ..self }
    }
}

impl Merge {
    /// The rows `inputs` take in a run: the batch of a forward job, the rows (alphas x
    /// targets) of a step job.
    pub fn rows(self, inputs: &Inputs) -> usize {
        let name = match self {
            Merge::Paths(rules) => rules.per_row[0],
            Merge::Off | Merge::Forward => return first_dim(inputs.first()),
        };
        first_dim(inputs.iter().find(|(n, _)| n == name))
    }

    /// Whether a job with `inputs` can be merged with others at all: its tensors agree on
    /// the sizes the rules split by.
    pub fn mergeable(self, inputs: &Inputs) -> bool {
        let consistent = |t: &TensorData| {
            !t.shape.is_empty()
                && t.shape.iter().all(|&d| d >= 0)
                && t.shape.iter().product::<i64>() as usize == t.len()
        };
        if inputs.is_empty() || !inputs.iter().all(|(_, t)| consistent(t)) {
            return false;
        }
        match self {
            Merge::Off => false,
            Merge::Forward => {
                let batch = inputs[0].1.shape[0];
                inputs.iter().all(|(_, t)| t.shape[0] == batch)
            }
            Merge::Paths(rules) => {
                // All of the rules' inputs (and no others).
                if inputs.len() != rules.inputs.len()
                    || !rules.inputs.iter().all(|n| get(inputs, n).is_some())
                {
                    return false;
                }
                let shape = |n: &str| &get(inputs, n).expect("checked above").shape;
                let paths = shape(rules.per_path[0])[0];
                let rows = shape(rules.per_row[0])[0];
                let weights = shape(rules.weights);
                let path = get(inputs, rules.path_index).expect("checked above");
                let path_ok = match &path.values {
                    Values::I64(p) => p.iter().all(|&i| (0..paths).contains(&i)),
                    Values::F32(_) => false,
                };
                rules
                    .per_path
                    .iter()
                    .all(|n| shape(n).first() == Some(&paths))
                    && path.shape == [rows]
                    && path_ok
                    && rules.per_row.iter().all(|n| shape(n)[0] == rows)
                    && weights.len() == 2
                    && weights[1] == rows
            }
        }
    }

    /// Whether jobs `a` and `b` (inputs, requested outputs) can share a run.
    pub fn compatible(self, a: (&Inputs, &[String]), b: (&Inputs, &[String])) -> bool {
        let ((a, a_out), (b, b_out)) = (a, b);
        if a_out != b_out || a.len() != b.len() || !self.mergeable(a) || !self.mergeable(b) {
            return false;
        }
        a.iter().zip(b).all(|((an, at), (bn, bt))| {
            // The weights' second axis is the rows, which differ from job to job.
            let trailing = !matches!(self, Merge::Paths(rules) if an == rules.weights);
            an == bn
                && at.dtype() == bt.dtype()
                && at.shape.len() == bt.shape.len()
                && (!trailing || at.shape[1..] == bt.shape[1..])
        })
    }

    /// One run's inputs from the jobs' (which must be pairwise [`compatible`](Self::compatible)).
    pub fn merge(self, jobs: &[&Inputs]) -> Vec<(String, TensorData)> {
        let first = jobs[0];
        first
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let parts: Vec<&TensorData> = jobs.iter().map(|j| &j[i].1).collect();
                let tensor = match self {
                    Merge::Paths(rules) if name == rules.path_index => {
                        let mut offset = 0;
                        let offsets: Vec<i64> = jobs
                            .iter()
                            .map(|j| {
                                let before = offset;
                                offset += first_dim(get_pair(j, rules.per_path[0])) as i64;
                                before
                            })
                            .collect();
                        concat_offset(&parts, &offsets)
                    }
                    Merge::Paths(rules) if name == rules.weights => block_diagonal(&parts),
                    _ => concat(&parts),
                };
                (name.clone(), tensor)
            })
            .collect()
    }

    /// Each job's outputs from one merged run's: None when an output's first axis is not the
    /// sum of the jobs' (the model does not batch as its declared shapes said).
    pub fn split(
        self,
        jobs: &[&Inputs],
        outputs: &[String],
        merged: Vec<TensorData>,
    ) -> Option<Vec<Vec<TensorData>>> {
        let rows: Vec<usize> = jobs.iter().map(|j| self.rows(j)).collect();
        let sums: Vec<usize> = match self {
            Merge::Paths(rules) => jobs
                .iter()
                .map(|j| first_dim(get_pair(j, rules.weights)))
                .collect(),
            Merge::Off | Merge::Forward => Vec::new(),
        };
        let mut per_job: Vec<Vec<TensorData>> = vec![Vec::with_capacity(outputs.len()); jobs.len()];
        for (name, tensor) in outputs.iter().zip(merged) {
            let sizes = match self {
                Merge::Paths(rules) if name == rules.sums => &sums,
                _ => &rows,
            };
            for (job, part) in per_job.iter_mut().zip(split_axis0(tensor, sizes)?) {
                job.push(part);
            }
        }
        Some(per_job)
    }
}

/// The input called `name`.
pub(super) fn get<'a>(inputs: &'a Inputs, name: &str) -> Option<&'a TensorData> {
    get_pair(inputs, name).map(|(_, t)| t)
}

fn get_pair<'a>(inputs: &'a Inputs, name: &str) -> Option<&'a (String, TensorData)> {
    inputs.iter().find(|(n, _)| n == name)
}

fn first_dim(input: Option<&(String, TensorData)>) -> usize {
    input
        .and_then(|(_, t)| t.shape.first())
        .map_or(0, |&d| d.max(0) as usize)
}

/// `parts` stacked on axis 0 (same dtype and trailing shape).
fn concat(parts: &[&TensorData]) -> TensorData {
    let mut shape = parts[0].shape.clone();
    shape[0] = parts.iter().map(|p| p.shape[0]).sum();
    let values = match &parts[0].values {
        Values::F32(_) => Values::F32(
            parts
                .iter()
                .flat_map(|p| p.as_f32().expect("compatible dtypes"))
                .copied()
                .collect(),
        ),
        Values::I64(_) => Values::I64(
            parts
                .iter()
                .flat_map(|p| match &p.values {
                    Values::I64(v) => v.iter().copied(),
                    Values::F32(_) => unreachable!("compatible dtypes"),
                })
                .collect(),
        ),
    };
    TensorData { shape, values }
}

/// int64 `parts` concatenated, `offsets[i]` added to part i's values.
fn concat_offset(parts: &[&TensorData], offsets: &[i64]) -> TensorData {
    let values = parts
        .iter()
        .zip(offsets)
        .flat_map(|(p, &offset)| match &p.values {
            Values::I64(v) => v.iter().map(move |i| i + offset),
            Values::F32(_) => unreachable!("mergeable checked ig_path is int64"),
        })
        .collect::<Vec<i64>>();
    TensorData {
        shape: vec![values.len() as i64],
        values: Values::I64(values),
    }
}

/// `[s_i, r_i]` matrices as one `[sum s_i, sum r_i]` with each on the diagonal, zero elsewhere.
fn block_diagonal(parts: &[&TensorData]) -> TensorData {
    let rows: usize = parts.iter().map(|p| p.shape[0] as usize).sum();
    let cols: usize = parts.iter().map(|p| p.shape[1] as usize).sum();
    let mut out = vec![0f32; rows * cols];
    let (mut top, mut left) = (0, 0);
    for p in parts {
        let (r, c) = (p.shape[0] as usize, p.shape[1] as usize);
        let values = p.as_f32().expect("ig_weights is float32");
        for (i, row) in values.chunks_exact(c.max(1)).enumerate().take(r) {
            let at = (top + i) * cols + left;
            out[at..at + c].copy_from_slice(row);
        }
        top += r;
        left += c;
    }
    TensorData::f32(vec![rows as i64, cols as i64], out)
}

/// `tensor` cut on axis 0 into pieces of `sizes`; None unless they add up to its first axis.
fn split_axis0(tensor: TensorData, sizes: &[usize]) -> Option<Vec<TensorData>> {
    let total = *tensor.shape.first()?;
    if total < 0 || sizes.iter().sum::<usize>() != total as usize {
        return None;
    }
    let per_row = if total == 0 {
        0
    } else {
        tensor.len() / total as usize
    };
    let shape_of = |n: usize| {
        let mut shape = tensor.shape.clone();
        shape[0] = n as i64;
        shape
    };
    let mut start = 0;
    let pieces = sizes
        .iter()
        .map(|&n| {
            let range = start * per_row..(start + n) * per_row;
            start += n;
            let values = match &tensor.values {
                Values::F32(v) => Values::F32(v[range].to_vec()),
                Values::I64(v) => Values::I64(v[range].to_vec()),
            };
            TensorData {
                shape: shape_of(n),
                values,
            }
        })
        .collect();
    Some(pieces)
}

#[cfg(test)]
mod tests;
