//! What a model's graph and files say about tabular inputs: the names of their columns
//! (`features.txt` and the like), the reference rows baseline statistics come from, feature
//! groups, and the tables that int64 ids index (embedding lookups), with each column's valid
//! range so a bad id is refused before any work.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::config::{FeaturesSection, TabularBaseline};
use super::{DType, TensorSpec};
use crate::proto::onnx::{GraphProto, ModelProto, NodeProto, TensorProto};

/// A lookup of int64 ids in a float table: `Gather(table, ids + offsets)` with the table an
/// initializer, the ids a graph input, and the offsets (if any) constants added on the way
/// (per-column offsets into one shared table, as many tabular models do).
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    /// The graph input holding the ids.
    pub input: String,
    /// The Gather's output: the looked-up rows (an embedding).
    pub output: String,
    /// The table's rows, and the shape of one row (an embedding's width).
    pub rows: i64,
    pub row_shape: Vec<i64>,
    /// The valid ids of each column of the input's last axis, inclusive; one entry when every
    /// column shares the range.
    pub ranges: Vec<(i64, i64)>,
}

impl Lookup {
    /// The valid range of the id at flat position `i` of a tensor whose last axis is `columns`.
    pub fn range(&self, i: usize, columns: usize) -> (i64, i64) {
        match self.ranges.as_slice() {
            [one] => *one,
            many => many[(i % columns.max(1)) % many.len()],
        }
    }
}

/// Reference rows: each feature input's values, row by row (`[rows, columns]`), with each
/// column's median and mean, computed once when the rows are read (every instance of a
/// request with a median baseline reads them).
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    rows: usize,
    /// By graph input name, in the inputs' column order: the values, the medians, the means.
    inputs: Vec<ReferenceInput>,
}

#[derive(Debug, Clone, PartialEq)]
struct ReferenceInput {
    name: String,
    values: Vec<f64>,
    medians: Vec<f64>,
    means: Vec<f64>,
}

impl Reference {
    /// `values` by graph input name, each `[rows, columns]` flat.
    pub fn new(rows: usize, values: Vec<(String, Vec<f64>)>) -> Self {
        let inputs = values
            .into_iter()
            .map(|(name, values)| {
                let columns = values.len() / rows.max(1);
                let column =
                    |c: usize| -> Vec<f64> { (0..rows).map(|r| values[r * columns + c]).collect() };
                let medians = (0..columns).map(|c| median(column(c))).collect();
                let means = (0..columns)
                    .map(|c| column(c).iter().sum::<f64>() / rows.max(1) as f64)
                    .collect();
                ReferenceInput {
                    name,
                    values,
                    medians,
                    means,
                }
            })
            .collect();
        Self { rows, inputs }
    }

    /// How many rows there are.
    pub fn rows(&self) -> usize {
        self.rows
    }

    fn input(&self, name: &str) -> Option<&ReferenceInput> {
        self.inputs.iter().find(|i| i.name == name)
    }

    /// The values of `input`, `[rows, columns]` flat.
    pub fn of(&self, input: &str) -> Option<&[f64]> {
        self.input(input).map(|i| i.values.as_slice())
    }

    /// Each column's median (the mean of the two middle values for an even count) or mean.
    pub fn statistic(&self, input: &str, median: bool) -> Option<&[f64]> {
        self.input(input).map(|i| match median {
            true => i.medians.as_slice(),
            false => i.means.as_slice(),
        })
    }
}

/// The median of `values` (the mean of the two middle ones for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 0 => (values[mid - 1] + values[mid]) / 2.0,
        _ => values[mid],
    }
}

/// A model's tabular description.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tabular {
    /// Column names by graph input name.
    pub features: Vec<(String, Vec<String>)>,
    pub groups: Vec<(String, Vec<String>)>,
    pub reference: Option<Reference>,
    pub baseline: Option<TabularBaseline>,
    pub baseline_rows: Option<u32>,
}

impl Tabular {
    /// The column names of `input`, if it has them.
    pub fn features_of(&self, input: &str) -> Option<&[String]> {
        self.features
            .iter()
            .find(|(n, _)| n == input)
            .map(|(_, f)| f.as_slice())
    }
}

/// What is wrong with a model's named features or reference rows.
#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    #[error("[features] files names input {input:?}, but the graph's inputs are {inputs:?}")]
    UnknownInput { input: String, inputs: Vec<String> },
    #[error("input {input:?} has named features but is {dtype:?} {shape:?}; named columns need a [batch, n] float32 or int64 input")]
    NotTabular {
        input: String,
        dtype: DType,
        shape: Vec<i64>,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} names {names} features but input {input:?} has {columns} columns", path.display())]
    Count {
        path: PathBuf,
        names: usize,
        input: String,
        columns: i64,
    },
    #[error("feature {name:?} is named twice (inputs {first:?} and {second:?})")]
    Twice {
        name: String,
        first: String,
        second: String,
    },
    #[error("[features] group {group:?} names {member:?}, which is no feature")]
    GroupMember { group: String, member: String },
    #[error("reference {}: {source}", path.display())]
    Csv { path: PathBuf, source: csv::Error },
    #[error("reference {} has no column {name:?} (its header: {header:?})", path.display())]
    NoColumn {
        path: PathBuf,
        name: String,
        header: Vec<String>,
    },
    #[error("reference {} row {row}: column {column:?} is {text:?}, not a finite number", path.display())]
    NotNumber {
        path: PathBuf,
        row: usize,
        column: String,
        text: String,
    },
    #[error("reference {} has no rows", path.display())]
    NoRows { path: PathBuf },
    #[error("[features] baseline needs reference rows: set reference = \"FILE.csv\"")]
    NoReference,
    #[error("[features] baseline_rows must be at least 1")]
    NoBaselineRows,
}

/// The file beside a model that names the columns of its only 2-D input.
pub const FEATURES_FILE: &str = "features.txt";

/// Reads the `[features]` section (or a lone `features.txt`) against the graph's inputs.
pub fn read(
    section: &FeaturesSection,
    base_dir: &Path,
    inputs: &[TensorSpec],
) -> Result<Tabular, FeaturesError> {
    let mut files: Vec<(String, std::path::PathBuf)> = section
        .files
        .iter()
        .map(|(input, file)| (input.clone(), base_dir.join(file)))
        .collect();
    let lone = base_dir.join(FEATURES_FILE);
    if files.is_empty() && lone.is_file() {
        let two_d: Vec<&TensorSpec> = inputs.iter().filter(|i| i.shape.len() == 2).collect();
        if let [only] = two_d.as_slice() {
            files.push((only.name.clone(), lone));
        }
    }
    let mut features = Vec::new();
    for (input, file) in files {
        let spec =
            inputs
                .iter()
                .find(|i| i.name == input)
                .ok_or_else(|| FeaturesError::UnknownInput {
                    input: input.clone(),
                    inputs: inputs.iter().map(|i| i.name.clone()).collect(),
                })?;
        if spec.shape.len() != 2 || !matches!(spec.dtype, DType::F32 | DType::I64) {
            return Err(FeaturesError::NotTabular {
                input,
                dtype: spec.dtype,
                shape: spec.shape.clone(),
            });
        }
        let text = std::fs::read_to_string(&file).map_err(|source| FeaturesError::Read {
            path: file.clone(),
            source,
        })?;
        let names: Vec<String> = text
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        if spec.shape[1] >= 0 && names.len() as i64 != spec.shape[1] {
            return Err(FeaturesError::Count {
                path: file,
                names: names.len(),
                input,
                columns: spec.shape[1],
            });
        }
        features.push((input, names));
    }
    let mut seen = HashMap::new();
    for (input, names) in &features {
        for name in names {
            if let Some(other) = seen.insert(name.clone(), input.clone()) {
                return Err(FeaturesError::Twice {
                    name: name.clone(),
                    first: other,
                    second: input.clone(),
                });
            }
        }
    }
    let mut groups = Vec::new();
    for (group, members) in &section.groups {
        if let Some(unknown) = members.iter().find(|m| !seen.contains_key(*m)) {
            return Err(FeaturesError::GroupMember {
                group: group.clone(),
                member: unknown.clone(),
            });
        }
        groups.push((group.clone(), members.clone()));
    }
    let reference = match &section.reference {
        Some(file) => Some(read_reference(&base_dir.join(file), &features)?),
        None => None,
    };
    let needs_reference = matches!(
        section.baseline,
        Some(TabularBaseline::Median | TabularBaseline::Mean | TabularBaseline::Rows)
    );
    if needs_reference && reference.is_none() {
        return Err(FeaturesError::NoReference);
    }
    if section.baseline_rows == Some(0) {
        return Err(FeaturesError::NoBaselineRows);
    }
    Ok(Tabular {
        features,
        groups,
        reference,
        baseline: section.baseline,
        baseline_rows: section.baseline_rows,
    })
}

/// The reference rows in `file`: a CSV whose header names every feature (other columns are
/// ignored), one row per line.
fn read_reference(
    file: &Path,
    features: &[(String, Vec<String>)],
) -> Result<Reference, FeaturesError> {
    let at = |source: csv::Error| FeaturesError::Csv {
        path: file.to_path_buf(),
        source,
    };
    let mut reader = csv::Reader::from_path(file).map_err(at)?;
    let header = reader.headers().map_err(at)?.clone();
    let mut columns = Vec::new();
    for (_, names) in features {
        for name in names {
            let index = header
                .iter()
                .position(|h| h.trim() == name)
                .ok_or_else(|| FeaturesError::NoColumn {
                    path: file.to_path_buf(),
                    name: name.clone(),
                    header: header.iter().map(str::to_string).collect(),
                })?;
            columns.push(index);
        }
    }
    let width: usize = features.iter().map(|(_, n)| n.len()).sum();
    let mut flat: Vec<f64> = Vec::new();
    let mut rows = 0;
    for (line, record) in reader.records().enumerate() {
        let record = record.map_err(at)?;
        for &c in &columns {
            let text = record.get(c).unwrap_or("").trim();
            let value: f64 = text
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| FeaturesError::NotNumber {
                    path: file.to_path_buf(),
                    row: line + 2,
                    column: header.get(c).unwrap_or_default().to_string(),
                    text: text.to_string(),
                })?;
            flat.push(value);
        }
        rows += 1;
    }
    if rows == 0 {
        return Err(FeaturesError::NoRows {
            path: file.to_path_buf(),
        });
    }
    // Split the rows into each input's columns.
    let mut values = Vec::new();
    let mut offset = 0;
    for (input, names) in features {
        let n = names.len();
        let mut v = Vec::with_capacity(rows * n);
        for r in 0..rows {
            v.extend_from_slice(&flat[r * width + offset..r * width + offset + n]);
        }
        values.push((input.clone(), v));
        offset += n;
    }
    Ok(Reference::new(rows, values))
}

/// The embedding lookups of `model`: for every int64 graph input, the Gathers on float
/// initializers its ids reach through constant additions, subtractions and casts.
pub fn lookups(model: &ModelProto, inputs: &[TensorSpec]) -> Vec<Lookup> {
    let Some(graph) = &model.graph else {
        return Vec::new();
    };
    let constants = Constants::of(graph);
    let mut found = Vec::new();
    for input in inputs.iter().filter(|i| i.dtype == DType::I64) {
        // The tensors that are the ids plus a constant offset (per column), and that offset.
        let columns = input.shape.last().copied().filter(|&d| d > 0).unwrap_or(1) as usize;
        let mut shifted: HashMap<&str, Vec<i64>> = HashMap::from([(input.name.as_str(), vec![0])]);
        for node in &graph.node {
            let (op, ins) = (node.op_type(), &node.input);
            let Some(out) = node.output.first() else {
                continue;
            };
            match op {
                "Cast" | "Identity" => {
                    if let Some(offset) = ins.first().and_then(|i| shifted.get(i.as_str())) {
                        shifted.insert(out, offset.clone());
                    }
                }
                "Add" | "Sub" if ins.len() == 2 => {
                    let (a, b) = (ins[0].as_str(), ins[1].as_str());
                    let offset = match (shifted.get(a), shifted.get(b)) {
                        (Some(base), None) => constants.ints(b).map(|c| (base, c, op == "Sub")),
                        (None, Some(base)) if op == "Add" => {
                            constants.ints(a).map(|c| (base, c, false))
                        }
                        _ => None,
                    };
                    if let Some((base, c, negate)) = offset {
                        let c: Vec<i64> = c.iter().map(|v| if negate { -v } else { *v }).collect();
                        if let Some(sum) = add_offsets(base, &c, columns) {
                            shifted.insert(out, sum);
                        }
                    }
                }
                "Gather" if ins.len() == 2 => {
                    let axis = node
                        .attribute
                        .iter()
                        .find(|a| a.name() == "axis")
                        .map_or(0, |a| a.i());
                    let (Some(offsets), Some(table)) =
                        (shifted.get(ins[1].as_str()), constants.table(&ins[0]))
                    else {
                        continue;
                    };
                    if axis != 0 || table.dims.is_empty() || !is_float(table) {
                        continue;
                    }
                    let rows = table.dims[0];
                    found.push(Lookup {
                        input: input.name.clone(),
                        output: out.clone(),
                        rows,
                        row_shape: table.dims[1..].to_vec(),
                        ranges: blocks(offsets, rows),
                    });
                }
                _ => {}
            }
        }
    }
    found
}

/// Each column's valid ids for `offsets` into a table of `rows`: per-column offsets into one
/// shared table give each column its own block, from its offset up to the next larger one
/// (or the table's end); an id that lands in another column's block is as wrong as one past
/// the table.
fn blocks(offsets: &[i64], rows: i64) -> Vec<(i64, i64)> {
    offsets
        .iter()
        .map(|&o| {
            let end = offsets
                .iter()
                .copied()
                .filter(|&other| other > o)
                .min()
                .unwrap_or(rows)
                .min(rows);
            ((-o).max(0), end - 1 - o)
        })
        .collect()
}

/// Two per-column offsets added (one entry = the same for every column).
fn add_offsets(a: &[i64], b: &[i64], columns: usize) -> Option<Vec<i64>> {
    match (a.len(), b.len()) {
        (1, 1) => Some(vec![a[0].checked_add(b[0])?]),
        (1, n) | (n, 1) if n == columns => {
            let (one, many) = if a.len() == 1 { (a[0], b) } else { (b[0], a) };
            many.iter().map(|v| v.checked_add(one)).collect()
        }
        (n, m) if n == m && n == columns => {
            a.iter().zip(b).map(|(x, y)| x.checked_add(*y)).collect()
        }
        _ => None,
    }
}

fn is_float(t: &TensorProto) -> bool {
    t.data_type() == crate::proto::onnx::tensor_proto::DataType::Float as i32
}

/// The graph's constant tensors: initializers and Constant nodes.
struct Constants<'a> {
    initializers: HashMap<&'a str, &'a TensorProto>,
    nodes: HashMap<&'a str, &'a NodeProto>,
}

impl<'a> Constants<'a> {
    fn of(graph: &'a GraphProto) -> Self {
        Self {
            initializers: graph.initializer.iter().map(|t| (t.name(), t)).collect(),
            nodes: graph
                .node
                .iter()
                .filter(|n| n.op_type() == "Constant")
                .filter_map(|n| n.output.first().map(|o| (o.as_str(), n)))
                .collect(),
        }
    }

    fn tensor(&self, name: &str) -> Option<&'a TensorProto> {
        if let Some(t) = self.initializers.get(name) {
            return Some(t);
        }
        self.nodes
            .get(name)?
            .attribute
            .iter()
            .find(|a| a.name() == "value")
            .and_then(|a| a.t.as_ref())
    }

    fn table(&self, name: &str) -> Option<&'a TensorProto> {
        self.initializers.get(name).copied()
    }

    /// An integer constant's values, flattened; only for a scalar or a vector over the last
    /// axis (shape [], [k], [1, k], ...).
    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        let t = self.tensor(name)?;
        if t.dims.iter().rev().skip(1).any(|&d| d != 1) {
            return None;
        }
        use crate::proto::onnx::tensor_proto::DataType as D;
        let dtype = t.data_type();
        let raw = t.raw_data();
        if dtype == D::Int64 as i32 {
            if !t.int64_data.is_empty() {
                return Some(t.int64_data.clone());
            }
            return Some(
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            );
        }
        if dtype == D::Int32 as i32 {
            if !t.int32_data.is_empty() {
                return Some(t.int32_data.iter().map(|&v| i64::from(v)).collect());
            }
            return Some(
                raw.chunks_exact(4)
                    .map(|c| i64::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))))
                    .collect(),
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_mean_per_column() {
        let reference = Reference::new(
            4,
            vec![(
                "x".into(),
                vec![1.0, 10.0, 3.0, 20.0, 2.0, 40.0, 100.0, 30.0],
            )],
        );
        // Column 0: 1, 3, 2, 100 -> median (2 + 3) / 2; column 1: 10, 20, 40, 30 -> 25.
        assert_eq!(reference.statistic("x", true), Some(&[2.5, 25.0][..]));
        assert_eq!(reference.statistic("x", false), Some(&[26.5, 25.0][..]));
    }

    #[test]
    fn reference_rows_name_what_is_wrong_by_row_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let features = vec![("x".to_string(), vec!["a".to_string(), "b".to_string()])];
        let write = |text: &str| {
            let path = dir.path().join("reference.csv");
            std::fs::write(&path, text).unwrap();
            path
        };
        let good = read_reference(&write("b,label,a\n2,x,1\n4,y,3\n"), &features).unwrap();
        // Columns in the features' order, whatever the file's; other columns ignored.
        assert_eq!(good.of("x").unwrap(), [1.0, 2.0, 3.0, 4.0]);
        let missing = read_reference(&write("a,c\n1,2\n"), &features).unwrap_err();
        assert!(missing.to_string().contains("no column \"b\""), "{missing}");
        let text = read_reference(&write("a,b\n1,2\n1,two\n"), &features).unwrap_err();
        assert!(
            text.to_string().contains("row 3: column \"b\" is \"two\""),
            "{text}"
        );
        let empty = read_reference(&write("a,b\n"), &features).unwrap_err();
        assert!(empty.to_string().contains("no rows"), "{empty}");
    }

    #[test]
    fn columns_get_their_own_blocks_of_a_shared_table() {
        // Island ids 0..=2 at offset 0, sex 0..=1 at offset 3, in a table of 5 rows.
        assert_eq!(blocks(&[0, 3], 5), vec![(0, 2), (0, 1)]);
        assert_eq!(blocks(&[0], 10), vec![(0, 9)]);
        // A negative offset (ids counted from 1): ids 1..=4.
        assert_eq!(blocks(&[-1], 4), vec![(1, 4)]);
    }

    #[test]
    fn offsets_add_per_column() {
        assert_eq!(add_offsets(&[0], &[0, 3], 2), Some(vec![0, 3]));
        assert_eq!(add_offsets(&[1, 2], &[0, 3], 2), Some(vec![1, 5]));
        assert_eq!(add_offsets(&[1, 2, 3], &[0, 3], 2), None);
    }
}
