//! Tensors whose values live outside the ONNX file ("external data", as `torch.onnx.export`
//! and `onnx.save_model(..., save_as_external_data=True)` write models past a few hundred MB,
//! or as a model keeps weights shipped elsewhere).
//!
//! A tensor with `data_location = EXTERNAL` names a file by its `location` (relative to the
//! ONNX file's folder) and a byte range (`offset`, `length`). ONNX Runtime reads them itself
//! when it opens the model from its file; integrad's gradient models are built from the
//! decoded graph and opened from memory, where no folder is known, so [`inline`] reads the
//! values into the tensors first. Both [`check`] (at load) and [`inline`] take only a
//! relative location with no `..` (a model must not read files outside its own folder), a
//! range inside the file, and, where the tensor's type has a fixed size, exactly its bytes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use crate::proto::onnx::{tensor_proto, GraphProto, ModelProto, TensorProto};

/// Why a model's external data can't be used; the text names the tensor and the file.
#[derive(Debug, thiserror::Error)]
pub enum ExternalDataError {
    #[error("tensor {tensor:?} keeps its values in {location:?}, which is not a relative path inside the model's folder (no '..', not absolute)")]
    Location { tensor: String, location: String },
    #[error("tensor {tensor:?} is marked external but names no location")]
    NoLocation { tensor: String },
    #[error("tensor {tensor:?}: external data key {key:?} is {value:?}, not a byte count")]
    Number {
        tensor: String,
        key: String,
        value: String,
    },
    #[error("tensor {tensor:?} keeps its values in {}, which cannot be read: {source}", path.display())]
    Open {
        tensor: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tensor {tensor:?} keeps its values at bytes {offset}..{end} of {}, which has {size} bytes", path.display())]
    Range {
        tensor: String,
        path: PathBuf,
        offset: u64,
        end: u64,
        size: u64,
    },
    #[error("tensor {tensor:?} has {expected} bytes of values by its type and shape, but its external data has {length}")]
    Length {
        tensor: String,
        expected: u64,
        length: u64,
    },
}

/// The external tensors of `model` checked against the files in `dir` (the folder of its
/// ONNX file), without reading their values; how many there are.
pub fn check(model: &ModelProto, dir: &Path) -> Result<usize, ExternalDataError> {
    let mut files = Files::new(dir);
    let mut count = 0;
    if let Some(graph) = &model.graph {
        visit(graph, &mut |tensor| {
            if let Some(place) = Place::of(tensor, &mut files)? {
                files.range(tensor, &place)?;
                count += 1;
            }
            Ok(())
        })?;
    }
    Ok(count)
}

/// Reads the values of every external tensor of `model` from the files in `dir` into its
/// `raw_data`, so that the encoded model stands alone.
pub fn inline(model: &mut ModelProto, dir: &Path) -> Result<(), ExternalDataError> {
    let mut files = Files::new(dir);
    if let Some(graph) = &mut model.graph {
        visit_mut(graph, &mut |tensor| {
            let Some(place) = Place::of(tensor, &mut files)? else {
                return Ok(());
            };
            let (offset, length) = files.range(tensor, &place)?;
            let mut bytes = vec![0u8; length as usize];
            let file = files.open(tensor, &place.path)?;
            file.seek(SeekFrom::Start(offset))
                .and_then(|_| file.read_exact(&mut bytes))
                .map_err(|source| ExternalDataError::Open {
                    tensor: tensor.name().to_string(),
                    path: place.path.clone(),
                    source,
                })?;
            tensor.raw_data = Some(bytes);
            tensor.external_data.clear();
            tensor.data_location = Some(tensor_proto::DataLocation::Default as i32);
            Ok(())
        })?;
    }
    Ok(())
}

/// Where an external tensor's values are: the file, and the range its keys give.
struct Place {
    path: PathBuf,
    offset: u64,
    length: Option<u64>,
}

impl Place {
    /// None for a tensor whose values are in the model.
    fn of(tensor: &TensorProto, files: &mut Files) -> Result<Option<Place>, ExternalDataError> {
        if tensor.data_location != Some(tensor_proto::DataLocation::External as i32) {
            return Ok(None);
        }
        let name = || tensor.name().to_string();
        let key = |wanted: &str| {
            tensor
                .external_data
                .iter()
                .find(|e| e.key() == wanted)
                .map(|e| e.value().to_string())
        };
        let number = |wanted: &str| -> Result<Option<u64>, ExternalDataError> {
            key(wanted)
                .map(|value| {
                    value.trim().parse().map_err(|_| ExternalDataError::Number {
                        tensor: name(),
                        key: wanted.to_string(),
                        value,
                    })
                })
                .transpose()
        };
        let location =
            key("location").ok_or_else(|| ExternalDataError::NoLocation { tensor: name() })?;
        let relative = Path::new(&location);
        let inside = !location.is_empty()
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !inside {
            return Err(ExternalDataError::Location {
                tensor: name(),
                location,
            });
        }
        Ok(Some(Place {
            path: files.dir.join(relative),
            offset: number("offset")?.unwrap_or(0),
            length: number("length")?,
        }))
    }
}

/// The files external tensors name, each opened once.
struct Files {
    dir: PathBuf,
    open: HashMap<PathBuf, (File, u64)>,
}

impl Files {
    fn new(dir: &Path) -> Files {
        Files {
            dir: dir.to_path_buf(),
            open: HashMap::new(),
        }
    }

    fn entry(
        &mut self,
        tensor: &TensorProto,
        path: &Path,
    ) -> Result<&mut (File, u64), ExternalDataError> {
        if !self.open.contains_key(path) {
            let opened = File::open(path)
                .and_then(|f| Ok((f.metadata()?.len(), f)))
                .map_err(|source| ExternalDataError::Open {
                    tensor: tensor.name().to_string(),
                    path: path.to_path_buf(),
                    source,
                })?;
            self.open.insert(path.to_path_buf(), (opened.1, opened.0));
        }
        Ok(self.open.get_mut(path).expect("just opened"))
    }

    fn open(&mut self, tensor: &TensorProto, path: &Path) -> Result<&mut File, ExternalDataError> {
        Ok(&mut self.entry(tensor, path)?.0)
    }

    /// The tensor's `(offset, length)` in its file, checked against the file's size and the
    /// tensor's own size.
    fn range(
        &mut self,
        tensor: &TensorProto,
        place: &Place,
    ) -> Result<(u64, u64), ExternalDataError> {
        let size = self.entry(tensor, &place.path)?.1;
        let length = place
            .length
            .unwrap_or_else(|| size.saturating_sub(place.offset));
        let end = place.offset.saturating_add(length);
        if end > size {
            return Err(ExternalDataError::Range {
                tensor: tensor.name().to_string(),
                path: place.path.clone(),
                offset: place.offset,
                end,
                size,
            });
        }
        if let Some(expected) = byte_size(tensor) {
            if expected != length {
                return Err(ExternalDataError::Length {
                    tensor: tensor.name().to_string(),
                    expected,
                    length,
                });
            }
        }
        Ok((place.offset, length))
    }
}

/// The bytes of a tensor's values by its type and shape (None for strings and types of no
/// fixed size).
fn byte_size(tensor: &TensorProto) -> Option<u64> {
    use tensor_proto::DataType as T;
    let element: u64 = match T::try_from(tensor.data_type()).ok()? {
        T::Float | T::Int32 | T::Uint32 => 4,
        T::Double | T::Int64 | T::Uint64 | T::Complex64 => 8,
        T::Float16 | T::Bfloat16 | T::Int16 | T::Uint16 => 2,
        T::Int8 | T::Uint8 | T::Bool => 1,
        T::Complex128 => 16,
        _ => return None,
    };
    tensor
        .dims
        .iter()
        .try_fold(element, |n, &d| n.checked_mul(u64::try_from(d).ok()?))
}

/// Every tensor of `graph`: initializers, sparse initializers' parts, and tensor-valued
/// attributes, subgraphs included.
fn visit(
    graph: &GraphProto,
    f: &mut dyn FnMut(&TensorProto) -> Result<(), ExternalDataError>,
) -> Result<(), ExternalDataError> {
    for tensor in &graph.initializer {
        f(tensor)?;
    }
    for sparse in &graph.sparse_initializer {
        for tensor in sparse.values.iter().chain(&sparse.indices) {
            f(tensor)?;
        }
    }
    for attribute in graph.node.iter().flat_map(|n| &n.attribute) {
        for tensor in attribute.t.iter().chain(&attribute.tensors) {
            f(tensor)?;
        }
        for sub in attribute.g.iter().chain(&attribute.graphs) {
            visit(sub, f)?;
        }
    }
    Ok(())
}

/// [`visit`], mutably.
fn visit_mut(
    graph: &mut GraphProto,
    f: &mut dyn FnMut(&mut TensorProto) -> Result<(), ExternalDataError>,
) -> Result<(), ExternalDataError> {
    for tensor in &mut graph.initializer {
        f(tensor)?;
    }
    for sparse in &mut graph.sparse_initializer {
        for tensor in sparse.values.iter_mut().chain(&mut sparse.indices) {
            f(tensor)?;
        }
    }
    for attribute in graph.node.iter_mut().flat_map(|n| &mut n.attribute) {
        for tensor in attribute.t.iter_mut().chain(&mut attribute.tensors) {
            f(tensor)?;
        }
        for sub in attribute.g.iter_mut().chain(&mut attribute.graphs) {
            visit_mut(sub, f)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::onnx::StringStringEntryProto;

    fn entry(key: &str, value: &str) -> StringStringEntryProto {
        StringStringEntryProto {
            key: Some(key.into()),
            value: Some(value.into()),
        }
    }

    /// A model with one float tensor [2, 3] whose values are external with these keys.
    fn model(keys: &[(&str, &str)]) -> ModelProto {
        let tensor = TensorProto {
            name: Some("w".into()),
            dims: vec![2, 3],
            data_type: Some(tensor_proto::DataType::Float as i32),
            data_location: Some(tensor_proto::DataLocation::External as i32),
            external_data: keys.iter().map(|(k, v)| entry(k, v)).collect(),
            ..Default::default()
        };
        ModelProto {
            graph: Some(GraphProto {
                initializer: vec![tensor],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn values(model: &ModelProto) -> Vec<f32> {
        let raw = model.graph.as_ref().unwrap().initializer[0]
            .raw_data
            .clone()
            .unwrap();
        raw.chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn should_read_the_values_at_the_offset_into_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        // 8 bytes of something else, then the 6 floats, then more: the range must be exact.
        let mut bytes = vec![0xAAu8; 8];
        for v in [1f32, 2.0, 3.0, 4.0, 5.0, 6.5] {
            bytes.extend(v.to_le_bytes());
        }
        bytes.extend([0xBB; 5]);
        std::fs::create_dir(dir.path().join("weights")).unwrap();
        std::fs::write(dir.path().join("weights/w.bin"), &bytes).unwrap();
        let mut m = model(&[
            ("location", "weights/w.bin"),
            ("offset", "8"),
            ("length", "24"),
        ]);
        assert_eq!(check(&m, dir.path()).unwrap(), 1);
        inline(&mut m, dir.path()).unwrap();
        assert_eq!(values(&m), [1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        let tensor = &m.graph.as_ref().unwrap().initializer[0];
        assert!(tensor.external_data.is_empty());
        assert_eq!(tensor.data_location, Some(0));
    }

    #[test]
    fn should_refuse_locations_outside_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        for location in ["../w.bin", "/etc/passwd", "a/../../w.bin", ""] {
            let m = model(&[("location", location)]);
            let error = check(&m, dir.path()).unwrap_err();
            assert!(
                matches!(error, ExternalDataError::Location { .. }),
                "{location}: {error}"
            );
        }
    }

    #[test]
    fn should_refuse_a_range_past_the_file_or_of_the_wrong_size() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), [0u8; 24]).unwrap();
        let past = model(&[("location", "w.bin"), ("offset", "4"), ("length", "24")]);
        let error = check(&past, dir.path()).unwrap_err();
        assert!(
            matches!(
                error,
                ExternalDataError::Range {
                    end: 28,
                    size: 24,
                    ..
                }
            ),
            "{error}"
        );
        let short = model(&[("location", "w.bin"), ("length", "20")]);
        let error = check(&short, dir.path()).unwrap_err();
        assert!(
            matches!(
                error,
                ExternalDataError::Length {
                    expected: 24,
                    length: 20,
                    ..
                }
            ),
            "{error}"
        );
        let missing = model(&[("location", "nothing.bin")]);
        let error = check(&missing, dir.path()).unwrap_err();
        assert!(error.to_string().contains("nothing.bin"), "{error}");
        let word = model(&[("location", "w.bin"), ("offset", "four")]);
        assert!(matches!(
            check(&word, dir.path()).unwrap_err(),
            ExternalDataError::Number { .. }
        ));
    }
}
