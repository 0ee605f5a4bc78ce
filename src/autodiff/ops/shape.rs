//! Data movement: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Split, Slice, Pad
//! (constant), Expand, Gather.

use super::super::builder::{attr_i, attr_ints, attr_s, Builder};
use super::super::graph::{
    self, attr_i as node_i, attr_ints as node_ints, attr_s as node_s, DYNAMIC,
};
use super::super::registry::Registry;
use super::axis;
use crate::proto::onnx::NodeProto;

type Grads = Result<Vec<Option<String>>, String>;

pub fn register(r: &mut Registry) {
    r.rule("Reshape", reshape);
    r.rule("Flatten", reshape);
    r.rule("Squeeze", reshape);
    r.rule("Unsqueeze", reshape);
    r.rule("Transpose", transpose);
    r.rule("Concat", concat);
    r.rule("Split", split);
    r.rule("Slice", slice);
    r.rule("Pad", pad);
    r.rule("Expand", expand);
    r.rule("Gather", gather);
}

/// Y = X with another shape (same elements, same order): dX = dY with X's shape.
fn reshape(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let ys = b.info(&node.output[0])?.shape.clone();
    Ok(vec![Some(b.reshape_like(&dy, &ys, &node.input[0])?)])
}

/// Y = Transpose(X, perm): dX = Transpose(dY, perm^-1).
fn transpose(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let rank = b.info(&node.input[0])?.rank();
    let perm = node_ints(node, "perm")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| (0..rank as i64).rev().collect());
    let mut inv = vec![0i64; rank];
    for (i, p) in perm.iter().enumerate() {
        inv[*p as usize] = i as i64;
    }
    Ok(vec![Some(b.op(
        "Transpose",
        &[&dy],
        vec![attr_ints("perm", &inv)],
    ))])
}

/// Y = Concat(X_1..X_n, axis): dX_i = the i-th block of dY along axis (one Split).
fn concat(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let rank = b.info(&node.output[0])?.rank();
    let ax = axis(node_i(node, "axis").ok_or("Concat without axis")?, rank);
    let mut sizes = Vec::new();
    for x in &node.input {
        let d = b.info(x)?.shape[ax];
        if d == DYNAMIC {
            return Err("concatenation along a dynamic dimension is not supported".into());
        }
        sizes.push(d);
    }
    let split = b.const_i64(&sizes);
    let parts = b.op_n(
        "Split",
        &[&dy, &split],
        sizes.len(),
        vec![attr_i("axis", ax as i64)],
    );
    Ok(parts
        .into_iter()
        .enumerate()
        .map(|(i, p)| b.wants(node, i).then_some(p))
        .collect())
}

/// Y_1..Y_n = Split(X, axis): dX = Concat(dY_1..dY_n, axis), zeros for outputs that got no
/// gradient. (The split sizes, attribute or input, only matter through the outputs' shapes.)
fn split(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let rank = b.info(&node.input[0])?.rank();
    let ax = axis(node_i(node, "axis").unwrap_or(0), rank);
    let mut parts = Vec::new();
    for (i, dy) in dys.iter().enumerate() {
        parts.push(match dy {
            Some(d) => d.clone(),
            None => b.zeros_like(&node.output[i])?,
        });
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    Ok(vec![Some(b.op(
        "Concat",
        &refs,
        vec![attr_i("axis", ax as i64)],
    ))])
}

/// The adjoint of selecting `idx` (distinct positions) along `ax` of a dimension of size
/// `dim`: dX = Gather(Pad(dY, one zero slice at the end), inv), inv[j] = where j was taken,
/// or the zero slice when it was not.
fn unselect(b: &mut Builder, dy: &str, rank: usize, ax: usize, idx: &[i64], dim: i64) -> String {
    let m = idx.len() as i64;
    let mut inv = vec![m; dim as usize];
    for (k, j) in idx.iter().enumerate() {
        inv[*j as usize] = k as i64;
    }
    let mut pads = vec![0; 2 * rank];
    pads[rank + ax] = 1;
    let pads = b.const_i64(&pads);
    let padded = b.op("Pad", &[dy, &pads], vec![]);
    let inv = b.const_i64(&inv);
    b.op("Gather", &[&padded, &inv], vec![attr_i("axis", ax as i64)])
}

/// Slice's gradient with sizes known at run time (step 1 on every axis): dX = Pad(dY) with
/// pads computed in the graph from Shape(X) and the starts and ends as Slice clamps them
/// (negative counts from the end, then clamped to [0, dim], the end at least the start).
fn slice_dynamic(
    b: &mut Builder,
    node: &NodeProto,
    dy: &str,
    x: &str,
    rank: usize,
) -> Result<String, String> {
    let count = b
        .info(&node.input[1])?
        .shape
        .first()
        .copied()
        .filter(|&n| n != DYNAMIC)
        .ok_or("the starts of a slice with run-time sizes need a known length")?
        as usize;
    let axes: Vec<i64> = match node.input.get(3).filter(|s| !s.is_empty()) {
        Some(_) => b
            .const_input(node, 3)
            .map(|v| v.ints())
            .ok_or("axes is not a constant")?,
        None => (0..count as i64).collect(),
    };
    if node.input.get(4).is_some_and(|s| !s.is_empty()) {
        let steps = b.const_input(node, 4).map(|v| v.ints());
        if steps.is_none_or(|s| s.iter().any(|&k| k != 1)) {
            return Err("a slice with run-time sizes is differentiated for steps of 1 only".into());
        }
    }
    let shape = b.op("Shape", &[x], vec![]);
    let zero = b.const_i64(&[0]);
    let mut begins: Vec<String> = vec![zero.clone(); rank];
    let mut ends_after: Vec<String> = vec![zero.clone(); rank];
    for (k, &a) in axes.iter().enumerate() {
        let ax = axis(a, rank);
        let pick = |b: &mut Builder, t: &str, i: usize| {
            let (from, to) = (b.const_i64(&[i as i64]), b.const_i64(&[i as i64 + 1]));
            b.op("Slice", &[t, &from, &to], vec![])
        };
        let dim = pick(b, &shape, ax);
        let clamp = |b: &mut Builder, v: String, dim: &str| {
            let negative = b.op("Less", &[&v, &zero], vec![]);
            let shifted = b.op("Add", &[&v, dim], vec![]);
            let v = b.op("Where", &[&negative, &shifted, &v], vec![]);
            let v = b.op("Max", &[&v, &zero], vec![]);
            b.op("Min", &[&v, dim], vec![])
        };
        let start = pick(b, &node.input[1], k);
        let start = clamp(b, start, &dim);
        let end = pick(b, &node.input[2], k);
        let end = clamp(b, end, &dim);
        let end = b.op("Max", &[&end, &start], vec![]);
        begins[ax] = start;
        ends_after[ax] = b.op("Sub", &[&dim, &end], vec![]);
    }
    let parts: Vec<&str> = begins
        .iter()
        .chain(&ends_after)
        .map(|s| s.as_str())
        .collect();
    let pads = b.op("Concat", &parts, vec![attr_i("axis", 0)]);
    Ok(b.op("Pad", &[dy, &pads], vec![]))
}

/// `unselect` for an axis whose size is known only at run time: dY (with the axis put back
/// for a scalar index) scattered into zeros shaped like X at the constant indices `idx`
/// (negative ones count from the end, as Gather's), repeated indices adding up.
fn unselect_dynamic(
    b: &mut Builder,
    dy: &str,
    x: &str,
    ax: usize,
    idx: &[i64],
    idx_shape: &[i64],
) -> Result<String, String> {
    let rank = b.info(x)?.shape.len();
    let g = match idx_shape.len() {
        0 => {
            let a = b.const_i64(&[ax as i64]);
            b.op("Unsqueeze", &[dy, &a], vec![])
        }
        1 => dy.to_string(),
        _ => return Err(
            "gathering along a dynamic dimension with indices of rank 2 or more is not supported"
                .into(),
        ),
    };
    let mut shape = vec![1i64; rank];
    shape[ax] = idx.len() as i64;
    let values: Vec<f64> = idx.iter().map(|&i| i as f64).collect();
    let indices = b.const_tensor(graph::INT64, &shape, &values);
    let g_shape = b.op("Shape", &[&g], vec![]);
    let indices = b.op("Expand", &[&indices, &g_shape], vec![]);
    let zeros = b.zeros_like(x)?;
    Ok(b.op(
        "ScatterElements",
        &[&zeros, &indices, &g],
        vec![attr_i("axis", ax as i64), attr_s("reduction", "add")],
    ))
}

/// Y = X[starts:ends:steps] along axes. Step-1 axes: dX = Pad(dY, start before,
/// dim - end after). Other steps: `unselect` with the positions taken. Starts or ends known
/// only at run time (`x[:, :Shape(y)[1]]`), or a dynamic axis cut: `slice_dynamic`.
fn slice(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let x = &node.input[0];
    let xs = b.info(x)?.shape.clone();
    let rank = xs.len();
    let get = |i: usize| b.const_input(node, i).map(|v| v.ints());
    if node.input.len() >= 3 && (get(1).is_none() || get(2).is_none()) {
        return Ok(vec![Some(slice_dynamic(b, node, &dy, x, rank)?)]);
    }
    let (starts, ends) = if node.input.len() >= 3 {
        (
            get(1).ok_or("starts is not a constant")?,
            get(2).ok_or("ends is not a constant")?,
        )
    } else {
        (
            node_ints(node, "starts").ok_or("no starts")?,
            node_ints(node, "ends").ok_or("no ends")?,
        )
    };
    let axes = match node.input.get(3).filter(|s| !s.is_empty()) {
        Some(_) => get(3).ok_or("axes is not a constant")?,
        None => node_ints(node, "axes").unwrap_or_else(|| (0..starts.len() as i64).collect()),
    };
    let steps = match node.input.get(4).filter(|s| !s.is_empty()) {
        Some(_) => get(4).ok_or("steps is not a constant")?,
        None => vec![1; starts.len()],
    };
    let mut pads = vec![0i64; 2 * rank];
    let mut strided = Vec::new();
    for (k, a) in axes.iter().enumerate() {
        let ax = axis(*a, rank);
        let dim = xs[ax];
        let step = steps[k];
        if dim == DYNAMIC {
            let whole =
                step == 1 && (starts[k] == 0 || starts[k] <= -(1 << 31)) && ends[k] >= (1 << 31);
            if whole {
                continue;
            }
            if node.input.len() >= 3 {
                return Ok(vec![Some(slice_dynamic(b, node, &dy, x, rank)?)]);
            }
            return Err("slicing a dynamic dimension needs opset 10's input form".into());
        }
        let norm = |v: i64| if v < 0 { v + dim } else { v };
        if step > 0 {
            let s = norm(starts[k]).clamp(0, dim);
            let e = norm(ends[k]).clamp(0, dim).max(s);
            if step == 1 {
                pads[ax] = s;
                pads[rank + ax] = dim - e;
            } else {
                strided.push((ax, (s..e).step_by(step as usize).collect::<Vec<_>>(), dim));
            }
        } else {
            let s = norm(starts[k]).clamp(-1, dim - 1);
            let e = norm(ends[k]).clamp(-1, dim - 1);
            let mut idx = Vec::new();
            let mut i = s;
            while i > e {
                idx.push(i);
                i += step;
            }
            strided.push((ax, idx, dim));
        }
    }
    let mut g = dy;
    for (ax, idx, dim) in strided.iter().rev() {
        g = unselect(b, &g, rank, *ax, idx, *dim);
    }
    if pads.iter().any(|p| *p != 0) {
        let p = b.const_i64(&pads);
        g = b.op("Pad", &[&g, &p], vec![]);
    }
    Ok(vec![Some(g)])
}

/// Y = Pad(X, pads) in constant mode: dX = dY without the padding (Slice); a negative pad
/// (a crop) is padded back with zeros.
fn pad(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let mode = node_s(node, "mode").unwrap_or_else(|| "constant".into());
    if mode != "constant" {
        return Err(format!(
            "Pad mode {mode:?} is not supported (only constant)"
        ));
    }
    let rank = b.info(&node.input[0])?.rank();
    let raw = match node.input.get(1).filter(|s| !s.is_empty()) {
        Some(_) => b
            .const_input(node, 1)
            .ok_or("the pads input is not a constant")?
            .ints(),
        None => node_ints(node, "pads").ok_or("no pads")?,
    };
    let axes: Vec<usize> = match node.input.get(3).filter(|s| !s.is_empty()) {
        Some(_) => b
            .const_input(node, 3)
            .ok_or("the axes input is not a constant")?
            .ints()
            .iter()
            .map(|a| axis(*a, rank))
            .collect(),
        None => (0..rank).collect(),
    };
    let n = axes.len();
    let (mut starts, mut ends, mut sl_axes) = (Vec::new(), Vec::new(), Vec::new());
    let mut back = vec![0i64; 2 * rank];
    for (k, ax) in axes.iter().enumerate() {
        let (pb, pe) = (raw[k], raw[n + k]);
        if pb > 0 || pe > 0 {
            starts.push(pb.max(0));
            ends.push(if pe > 0 { -pe } else { i64::MAX });
            sl_axes.push(*ax as i64);
        }
        back[*ax] = (-pb).max(0);
        back[rank + ax] = (-pe).max(0);
    }
    let mut g = dy;
    if !sl_axes.is_empty() {
        let (s, e, a) = (
            b.const_i64(&starts),
            b.const_i64(&ends),
            b.const_i64(&sl_axes),
        );
        g = b.op("Slice", &[&g, &s, &e, &a], vec![]);
    }
    if back.iter().any(|p| *p != 0) {
        let p = b.const_i64(&back);
        g = b.op("Pad", &[&g, &p], vec![]);
    }
    Ok(vec![Some(g)])
}

/// Y = Expand(X, shape) (numpy broadcast): dX = unb(dY) to X's shape.
fn expand(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let ys = b.info(&node.output[0])?.shape.clone();
    Ok(vec![Some(b.unbroadcast(&dy, &ys, &node.input[0])?)])
}

/// Y = Gather(X, I, axis), Y[p, i, s] = X[p, I[i], s] (w.r.t. the data X).
/// Constant, distinct I: `unselect`. Along a dynamic axis (a transformer's pooler taking
/// `hidden[:, 0]`), constant I: `unselect_dynamic`. Otherwise, for axis 0 (embedding lookups):
/// dX = OneHot(I)^T @ dY, with I flattened to m rows and dY to [m, rest]; repeated indices
/// add up.
fn gather(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let (x, ind) = (&node.input[0], &node.input[1]);
    let xs = b.info(x)?.shape.clone();
    let rank = xs.len();
    let ax = axis(node_i(node, "axis").unwrap_or(0), rank);
    let dim = xs[ax];
    let is_shape = b.info(ind)?.shape.clone();
    if dim == DYNAMIC {
        let Some(v) = b.const_input(node, 1) else {
            return Err("gathering along a dynamic dimension needs constant indices".into());
        };
        return Ok(vec![Some(unselect_dynamic(
            b,
            &dy,
            x,
            ax,
            &v.ints(),
            &is_shape,
        )?)]);
    }
    if let Some(v) = b.const_input(node, 1) {
        let idx: Vec<i64> = v
            .ints()
            .iter()
            .map(|i| if *i < 0 { i + dim } else { *i })
            .collect();
        let mut seen = std::collections::HashSet::new();
        if is_shape.len() == 1 && idx.iter().all(|i| seen.insert(*i)) {
            return Ok(vec![Some(unselect(b, &dy, rank, ax, &idx, dim))]);
        }
        if is_shape.is_empty() {
            // A scalar index removed the axis: put it back, then unselect.
            let a = b.const_i64(&[ax as i64]);
            let g = b.op("Unsqueeze", &[&dy, &a], vec![]);
            return Ok(vec![Some(unselect(b, &g, rank, ax, &idx, dim))]);
        }
    }
    if ax != 0 {
        return Err(
            "gather with non-constant or repeated indices is only supported on axis 0".into(),
        );
    }
    let dtype = b.info(x)?.dtype;
    let flat = b.const_i64(&[-1]);
    let i = b.op("Reshape", &[ind, &flat], vec![]);
    let depth = b.const_i64(&[dim]);
    // NOTE: ONNX Runtime's OneHot has float32 values (not float64): cast afterwards.
    let values = b.const_tensor(graph::FLOAT, &[2], &[0.0, 1.0]);
    let mut oh = b.op("OneHot", &[&i, &depth, &values], vec![attr_i("axis", -1)]);
    if dtype != graph::FLOAT {
        oh = b.op("Cast", &[&oh], vec![attr_i("to", dtype as i64)]);
    }
    let rest: Vec<i64> = xs[1..].to_vec();
    if rest.contains(&DYNAMIC) {
        return Err("dynamic feature dimensions are not supported".into());
    }
    let g2 = {
        let s = b.const_i64(&[-1, rest.iter().product()]);
        b.op("Reshape", &[&dy, &s], vec![])
    };
    let oht = b.op("Transpose", &[&oh], vec![attr_ints("perm", &[1, 0])]);
    let m = b.op("MatMul", &[&oht, &g2], vec![]);
    let full: Vec<i64> = std::iter::once(dim).chain(rest.iter().copied()).collect();
    let s = b.const_i64(&full);
    Ok(vec![Some(b.op("Reshape", &[&m, &s], vec![]))])
}
