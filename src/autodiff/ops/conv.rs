//! Convolutions: Conv (groups/depthwise, strides, pads, dilations, auto_pad) and ConvTranspose.
//!
//! Only the data input gets a gradient here: weights and biases are initializers in the models
//! integrad explains, so a path through them is refused rather than half-supported.

use super::super::builder::{attr_i, attr_ints, Builder};
use super::super::graph;
use super::super::graph::{attr_i as node_i, attr_ints as node_ints, attr_s as node_s, DYNAMIC};
use super::super::registry::Registry;
use super::activation::clip_mask;
use crate::proto::onnx::NodeProto;

type Grads = Result<Vec<Option<String>>, String>;

pub fn register(r: &mut Registry) {
    r.rule("Conv", conv);
    r.rule("ConvTranspose", conv_transpose);
}

/// A sliding window over the spatial axes, pads resolved (auto_pad included).
#[derive(Debug, Clone)]
pub(crate) struct Window {
    pub kernel: Vec<i64>,
    pub strides: Vec<i64>,
    pub dilations: Vec<i64>,
    pub begin: Vec<i64>,
    pub end: Vec<i64>,
}

/// Resolves the window of `node` over spatial sizes `input` (static) with `kernel`.
pub(crate) fn window(node: &NodeProto, input: &[i64], kernel: &[i64]) -> Result<Window, String> {
    let n = kernel.len();
    if input.contains(&DYNAMIC) {
        return Err("dynamic spatial dimensions are not supported".into());
    }
    let strides = node_ints(node, "strides")
        .filter(|v| !v.is_empty())
        .unwrap_or(vec![1; n]);
    let dilations = node_ints(node, "dilations")
        .filter(|v| !v.is_empty())
        .unwrap_or(vec![1; n]);
    let auto_pad = node_s(node, "auto_pad").unwrap_or_else(|| "NOTSET".into());
    let (begin, end) = match auto_pad.as_str() {
        "NOTSET" | "" => {
            let pads = node_ints(node, "pads")
                .filter(|v| !v.is_empty())
                .unwrap_or(vec![0; 2 * n]);
            (pads[..n].to_vec(), pads[n..].to_vec())
        }
        "VALID" => (vec![0; n], vec![0; n]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut begin = vec![0; n];
            let mut end = vec![0; n];
            for i in 0..n {
                let out = (input[i] + strides[i] - 1) / strides[i];
                let total =
                    ((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - input[i]).max(0);
                if auto_pad == "SAME_UPPER" {
                    begin[i] = total / 2;
                } else {
                    begin[i] = total - total / 2;
                }
                end[i] = total - begin[i];
            }
            (begin, end)
        }
        other => return Err(format!("unknown auto_pad {other:?}")),
    };
    Ok(Window {
        kernel: kernel.to_vec(),
        strides,
        dilations,
        begin,
        end,
    })
}

/// Bias gradient: dB = sum of dY over every axis but the channel axis 1.
fn bias_grad(b: &mut Builder, dy: &str, rank: usize) -> String {
    let axes: Vec<i64> = std::iter::once(0).chain(2..rank as i64).collect();
    let axes = b.const_i64(&axes);
    b.op("ReduceSum", &[dy, &axes], vec![attr_i("keepdims", 0)])
}

/// Crops `t` along spatial axes where `crop_begin`/`crop_end` are positive.
fn crop(b: &mut Builder, t: &str, crop_begin: &[i64], crop_end: &[i64]) -> String {
    if crop_begin.iter().chain(crop_end).all(|c| *c <= 0) {
        return t.to_string();
    }
    let n = crop_begin.len();
    let starts: Vec<i64> = crop_begin.iter().map(|c| (*c).max(0)).collect();
    let ends: Vec<i64> = crop_end
        .iter()
        .map(|c| if *c > 0 { -c } else { i64::MAX })
        .collect();
    let axes: Vec<i64> = (2..2 + n as i64).collect();
    let (s, e, a) = (b.const_i64(&starts), b.const_i64(&ends), b.const_i64(&axes));
    b.op("Slice", &[t, &s, &e, &a], vec![])
}

/// The conv weight [Cout, Cin/G, k...] as the weight of its adjoint stride-1 conv:
/// [Cin, Cout/G, k...], input and output channels swapped within each group, kernel flipped
/// along every spatial axis. Built with graph ops on the weight so that ONNX Runtime folds it
/// into an initializer when the weight is one.
fn flipped_weight(b: &mut Builder, w: &str, w_shape: &[i64], group: i64) -> String {
    let n = w_shape.len() - 2;
    let (cout, cin_g) = (w_shape[0], w_shape[1]);
    let k = &w_shape[2..];
    let mut t = w.to_string();
    if cout / group > 1 && cin_g > 1 {
        let split: Vec<i64> = [group, cout / group, cin_g]
            .into_iter()
            .chain(k.iter().copied())
            .collect();
        let s = b.const_i64(&split);
        t = b.op("Reshape", &[&t, &s], vec![]);
        let perm: Vec<i64> = [0, 2, 1].into_iter().chain(3..3 + n as i64).collect();
        t = b.op("Transpose", &[&t], vec![attr_ints("perm", &perm)]);
        let merged: Vec<i64> = [group * cin_g, cout / group]
            .into_iter()
            .chain(k.iter().copied())
            .collect();
        let s = b.const_i64(&merged);
        t = b.op("Reshape", &[&t, &s], vec![]);
    } else {
        // One of the swapped axes has size 1 within each group: a reshape is enough
        // (depthwise: [C, 1, k] stays [C, 1, k]; dense with Cin = 1: [Cout, 1] -> [1, Cout]).
        let merged: Vec<i64> = [group * cin_g, cout / group]
            .into_iter()
            .chain(k.iter().copied())
            .collect();
        if merged != w_shape {
            let s = b.const_i64(&merged);
            t = b.op("Reshape", &[&t, &s], vec![]);
        }
    }
    let starts = b.const_i64(&vec![-1; n]);
    let ends = b.const_i64(&vec![i64::MIN; n]);
    let axes = b.const_i64(&(2..2 + n as i64).collect::<Vec<_>>());
    let steps = b.const_i64(&vec![-1; n]);
    b.op("Slice", &[&t, &starts, &ends, &axes, &steps], vec![])
}

/// Channels per block of ONNX Runtime's blocked (NCHWc) CPU layout on AVX-512 machines.
pub(crate) const NCHWC_BLOCK: i64 = 16;

/// Y = Conv(X, W) + B, Y[o] = sum_k X[o s + k d - p_begin] W[k] (per group).
/// dX[i] = sum_{o, k: o s + k d - p_begin = i} dY[o] W[k]: the adjoint (ConvTranspose).
/// Stride 1: that is a forward Conv of dY with the flipped, channel-swapped kernel and pads
/// begin' = d (k - 1) - p_begin, end' = d (k - 1) - p_end (each from the *same* side); a
/// negative pad crops dY instead. Other strides: ConvTranspose with the same window, its
/// end pad (or output_padding) chosen so that dX has exactly X's size.
/// dB = sum of dY over batch and spatial axes.
fn conv(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let (x, w) = (&node.input[0], &node.input[1]);
    if b.wants(node, 1) {
        return Err("gradient with respect to the weights is not supported".into());
    }
    let mut x_shape = b.info(x)?.shape.clone();
    let w_shape = b.info(w)?.shape.clone();
    let y_shape = b.info(&node.output[0])?.shape.clone();
    let rank = x_shape.len();
    let group = node_i(node, "group").unwrap_or(1);
    let mut win = window(node, &x_shape[2..], &w_shape[2..])?;
    let mut out = vec![None, None, None];
    // NOTE: Conv(Pad(X0)) is differentiated as one conv with the Pad's pads added: dX0 comes
    // straight out (the Pad's gradient would only crop what the conv's adjoint produced, two
    // full-size Slices per strided EfficientNet block). The pad value does not matter to dX0.
    let mut folded = None;
    if b.wants(node, 0) {
        if let Some((inner, pads)) = foldable_pad(b, x, rank) {
            let n = rank - 2;
            for i in 0..n {
                win.begin[i] += pads[2 + i];
                win.end[i] += pads[rank + 2 + i];
            }
            x_shape = b.info(&inner)?.shape.clone();
            folded = Some(inner);
        }
    }
    if b.wants(node, 0) {
        out[0] = Some(if win.strides.iter().all(|s| *s == 1) {
            let n = win.kernel.len();
            let reach: Vec<i64> = (0..n)
                .map(|i| win.dilations[i] * (win.kernel[i] - 1))
                .collect();
            let pb: Vec<i64> = (0..n).map(|i| reach[i] - win.begin[i]).collect();
            let pe: Vec<i64> = (0..n).map(|i| reach[i] - win.end[i]).collect();
            let neg_b: Vec<i64> = pb.iter().map(|p| -p).collect();
            let neg_e: Vec<i64> = pe.iter().map(|p| -p).collect();
            let src = crop(b, &dy, &neg_b, &neg_e);
            let wf = flipped_weight(b, w, &w_shape, group);
            let pads: Vec<i64> = pb.iter().chain(&pe).map(|p| (*p).max(0)).collect();
            b.op(
                "Conv",
                &[&src, &wf],
                vec![
                    attr_ints("pads", &pads),
                    attr_ints("dilations", &win.dilations),
                    attr_i("group", group),
                ],
            )
        } else if group == 1 && (1..NCHWC_BLOCK).contains(&x_shape[1]) {
            // NOTE: a dense strided conv on few channels (an RGB stem): ONNX Runtime pads a
            // conv's output channels to its 16-wide blocks, so each of the s*s phase convs of
            // the polyphase form would compute 16 channels for 3, and their interleave costs
            // on top; one ConvTranspose is faster (the demo's stem, batch 8, one thread:
            // 8.9 ms with its layout reorder against 13.7 ms).
            transpose_to_size(b, &dy, w, &win, &y_shape[2..], &x_shape[2..], group)
        } else if let Some(parts) =
            polyphase_parts(b, &dy, w, &w_shape, &win, &x_shape, &y_shape, group)
        {
            let src = folded.as_deref().unwrap_or(x).to_string();
            let alone = b.uses(x) == 1 && !b.wants(node, 2);
            let fused = if alone {
                masked_adjoint(b, &parts, &src, &x_shape, &win)
            } else {
                None
            };
            if let Some((target, dx)) = fused {
                // The Clip and the 1x1 Conv before it are differentiated here, per phase.
                b.add_grad(&target, dx);
                return Ok(out);
            }
            interleave_phases(b, &parts, &win, &x_shape)
        } else {
            transpose_to_size(b, &dy, w, &win, &y_shape[2..], &x_shape[2..], group)
        });
    }
    if b.wants(node, 2) {
        out[2] = Some(bias_grad(b, &dy, rank));
    }
    if let Some(inner) = folded {
        if let Some(dx) = out[0].take() {
            b.add_grad(&inner, dx);
        }
    }
    Ok(out)
}

/// When `x` is made by a constant-mode Pad of spatial axes only (non-negative constant pads,
/// no axes input) from an active tensor: that tensor and the pads.
fn foldable_pad(b: &Builder, x: &str, rank: usize) -> Option<(String, Vec<i64>)> {
    let pad = b.producer(x)?;
    if pad.op_type() != "Pad" || !(pad.domain().is_empty() || pad.domain() == "ai.onnx") {
        return None;
    }
    if node_s(pad, "mode").is_some_and(|m| m != "constant") {
        return None;
    }
    if pad.input.get(3).is_some_and(|a| !a.is_empty()) {
        return None;
    }
    let pads = match pad.input.get(1).filter(|s| !s.is_empty()) {
        Some(_) => b.const_input(pad, 1)?.ints(),
        None => node_ints(pad, "pads")?,
    };
    let inner = pad.input.first()?.clone();
    let ok = pads.len() == 2 * rank
        && pads.iter().all(|p| *p >= 0)
        && [0, 1, rank, rank + 1].iter().all(|i| pads[*i] == 0)
        && b.is_active(&inner);
    ok.then_some((inner, pads))
}

/// dX of a strided 2-D conv (dilation 1) without ConvTranspose, which is slow in ONNX Runtime
/// (depthwise above all). Per axis, with j = i + p_begin the padded input position, phase
/// r = j mod s and q = j div s, the taps that reach j are t = r + s m, from o = q - m:
///   dX_r[q] = sum_m dY[q - m] W[r + s m],
/// a stride-1 correlation of dY with the flipped sub-kernel W[r::s] (k_r taps), pads begin
/// k_r - 1 - q_lo (q_lo the first q of the phase) and end chosen so that every phase yields
/// ceil(H / s) rows. The s*s phase results are interleaved with Unsqueeze + Concat + Reshape,
/// in the order the phases occur from i = 0, then cropped to X's size.
/// `None` where this does not apply (dilation, not 2-D, a phase with no tap).
#[allow(clippy::too_many_arguments)]
fn polyphase_parts(
    b: &mut Builder,
    dy: &str,
    w: &str,
    w_shape: &[i64],
    win: &Window,
    x_shape: &[i64],
    y_shape: &[i64],
    group: i64,
) -> Option<Vec<Vec<String>>> {
    if win.kernel.len() != 2 || win.dilations.iter().any(|d| *d != 1) {
        return None;
    }
    let (s, k) = (&win.strides, &win.kernel);
    if (0..2).any(|a| s[a] > k[a]) {
        return None;
    }
    let hw = [x_shape[2], x_shape[3]];
    let ho = [y_shape[2], y_shape[3]];
    let rows: Vec<i64> = (0..2).map(|a| (hw[a] + s[a] - 1) / s[a]).collect();
    // phases[a][p] = (r, k_r, q_lo) for the p-th phase from i = 0 along axis a.
    let phases: Vec<Vec<(i64, i64, i64)>> = (0..2)
        .map(|a| {
            (0..s[a])
                .map(|p| {
                    let j = win.begin[a] + p;
                    let r = j.rem_euclid(s[a]);
                    let kr = (k[a] - r + s[a] - 1) / s[a];
                    (r, kr, j.div_euclid(s[a]))
                })
                .collect()
        })
        .collect();
    let mut row_parts = Vec::new();
    for ph in &phases[0] {
        let mut parts = Vec::new();
        for pw in &phases[1] {
            let sub_shape = [w_shape[0], w_shape[1], ph.1, pw.1];
            let (st, en, ax, stp) = (
                b.const_i64(&[ph.0, pw.0]),
                b.const_i64(&[k[0], k[1]]),
                b.const_i64(&[2, 3]),
                b.const_i64(&[s[0], s[1]]),
            );
            let sub = b.op("Slice", &[w, &st, &en, &ax, &stp], vec![]);
            let wf = flipped_weight(b, &sub, &sub_shape, group);
            let mut pads = [0i64; 4];
            let mut crop_b = [0i64; 2];
            let mut crop_e = [0i64; 2];
            for (a, (kr, q_lo)) in [(ph.1, ph.2), (pw.1, pw.2)].into_iter().enumerate() {
                let pb = kr - 1 - q_lo;
                let pe = rows[a] - ho[a] - pb + kr - 1;
                pads[a] = pb.max(0);
                pads[2 + a] = pe.max(0);
                crop_b[a] = -pb;
                crop_e[a] = -pe;
            }
            let src = crop(b, dy, &crop_b, &crop_e);
            let conv = b.op(
                "Conv",
                &[&src, &wf],
                vec![attr_ints("pads", &pads), attr_i("group", group)],
            );
            parts.push(conv);
        }
        row_parts.push(parts);
    }
    Some(row_parts)
}

/// Interleaves the phases of `polyphase_parts` (`parts[p][q]`: the input positions
/// `[p::s0, q::s1]`, each `ceil(H / s)` rows) into a tensor of `x_shape` (cropped).
fn interleave_phases(
    b: &mut Builder,
    parts: &[Vec<String>],
    win: &Window,
    x_shape: &[i64],
) -> String {
    let s = &win.strides;
    let c = x_shape[1];
    let hw = [x_shape[2], x_shape[3]];
    let rows: Vec<i64> = (0..2).map(|a| (hw[a] + s[a] - 1) / s[a]).collect();
    let row_parts: Vec<String> = parts
        .iter()
        .map(|row| interleave(b, row, 4, &[0, c, rows[0], rows[1] * s[1]]))
        .collect();
    let full = interleave(b, &row_parts, 3, &[0, c, rows[0] * s[0], rows[1] * s[1]]);
    let (extra_h, extra_w) = (rows[0] * s[0] - hw[0], rows[1] * s[1] - hw[1]);
    crop(b, &full, &[0, 0], &[extra_h, extra_w])
}

/// When the strided conv's input `a` (whose adjoint the phases `parts` are) is
/// `Clip(Conv1x1(x), lo, hi)` used only here (e.g. ReLU6 after an expansion conv), finishes
/// the chain per phase before interleaving, where the tensor has the 1x1 conv's input
/// channels (usually several times fewer): phase (p, q) of dA is multiplied by the Clip's
/// mask `[lo < a] * [a < hi]` on `a[p::s0, q::s1]` (that phase taken from `a` or recomputed
/// from the same phase of x, see `take_phase`; its mask made as in the Clip rule by
/// `clip_mask`), then goes through
/// the 1x1 conv's adjoint (a 1x1 Conv with the channel-swapped weight). Returns `x` and dX.
/// Needs X's spatial size divisible by the strides (no crop).
fn masked_adjoint(
    b: &mut Builder,
    parts: &[Vec<String>],
    a: &str,
    a_shape: &[i64],
    win: &Window,
) -> Option<(String, String)> {
    let s = win.strides.clone();
    if (0..2).any(|i| a_shape[2 + i] % s[i] != 0) || a_shape[1] < 1 {
        return None;
    }
    // `a` only feeds this conv (directly or through the folded Pad).
    if b.uses(a) != 1 {
        return None;
    }
    let clip = b.producer(a)?;
    if clip.op_type() != "Clip" || !clip.domain().is_empty() || clip.output.len() != 1 {
        return None;
    }
    let lo = b.const_input(clip, 1)?.floats();
    let hi = b.const_input(clip, 2)?.floats();
    let (&[lo], &[hi]) = (lo.as_slice(), hi.as_slice()) else {
        return None;
    };
    let z = clip.input.first()?.clone();
    if b.uses(&z) != 1 {
        return None;
    }
    let e = b.producer(&z)?;
    if e.op_type() != "Conv" || !e.domain().is_empty() || b.wants(e, 1) || b.wants(e, 2) {
        return None;
    }
    let x = e.input.first()?.clone();
    let ew = e.input.get(1)?.clone();
    let x_info = b.info(&x).ok()?;
    let ew_shape = b.info(&ew).ok()?.shape.clone();
    if x_info.dtype != graph::FLOAT || b.info(a).ok()?.dtype != graph::FLOAT {
        return None;
    }
    let c_in = x_info.shape.get(1).copied()?;
    let ewin = window(e, x_info.shape.get(2..)?, ew_shape.get(2..)?).ok()?;
    let one_by_one = ewin.kernel.iter().all(|k| *k == 1)
        && ewin.strides.iter().all(|v| *v == 1)
        && ewin.begin.iter().chain(&ewin.end).all(|p| *p == 0)
        && x_info.shape.get(2..) == a_shape.get(2..);
    if !one_by_one || c_in == DYNAMIC {
        return None;
    }
    let egroup = node_i(e, "group").unwrap_or(1);
    let c = a_shape[1];
    let rows = [a_shape[2] / s[0], a_shape[3] / s[1]];
    let ewf = flipped_weight(b, &ew, &ew_shape, egroup);
    let mut out_rows = Vec::new();
    for (p, row) in parts.iter().enumerate() {
        let mut out = Vec::new();
        for (q, part) in row.iter().enumerate() {
            // NOTE: a[p::s0, q::s1] either taken from `a` or, where the 1x1 conv has few
            // input channels, recomputed as Clip(Conv1x1(x[p::s0, q::s1])): same arithmetic
            // per element, so the same values bit for bit, and reading x (several times fewer
            // channels than `a`) is cheaper than reading `a` when the conv costs few
            // multiply-adds per element (block 1 of the demo: 4 ms less per batch of 8 on
            // one thread).
            let phase = if c_in <= RECOMPUTE_MAX_CHANNELS {
                let xp = take_phase(b, &x, c_in, (p, q), &s);
                let mut inputs = vec![xp.as_str(), ew.as_str()];
                inputs.extend(e.input.get(2).filter(|n| !n.is_empty()).map(String::as_str));
                let z = b.op("Conv", &inputs, vec![attr_i("group", egroup)]);
                let (l, h) = (b.scalar(graph::FLOAT, lo), b.scalar(graph::FLOAT, hi));
                b.op("Clip", &[&z, &l, &h], vec![])
            } else {
                take_phase(b, a, c, (p, q), &s)
            };
            let shape = [a_shape[0], c, rows[0], rows[1]];
            let m = clip_mask(b, &phase, &shape, a, lo, hi).ok()?;
            let masked = b.op("Mul", &[part, &m], vec![]);
            out.push(b.op("Conv", &[&masked, &ewf], vec![attr_i("group", egroup)]));
        }
        out_rows.push(interleave(b, &out, 4, &[0, c_in, rows[0], rows[1] * s[1]]));
    }
    let dx = interleave(b, &out_rows, 3, &[0, c_in, a_shape[2], a_shape[3]]);
    Some((x, dx))
}

/// Input channels up to which `masked_adjoint` recomputes a phase of the 1x1 conv's output
/// from the same phase of its input instead of taking it from the output.
const RECOMPUTE_MAX_CHANNELS: i64 = 32;

/// `t[:, :, p::s0, q::s1]` of a tensor with `c` channels: a depthwise Conv with one unit tap
/// at (p, q) and strides s (it stays in ONNX Runtime's blocked layout, where a strided Slice
/// would not).
fn take_phase(b: &mut Builder, t: &str, c: i64, (p, q): (usize, usize), s: &[i64]) -> String {
    let (kh, kw) = (p as i64 + 1, q as i64 + 1);
    let mut taps = vec![0.0; (c * kh * kw) as usize];
    for ch in 0..c {
        taps[((ch + 1) * kh * kw - 1) as usize] = 1.0;
    }
    let tap = b.const_tensor(graph::FLOAT, &[c, 1, kh, kw], &taps);
    b.op(
        "Conv",
        &[t, &tap],
        vec![attr_i("group", c), attr_ints("strides", s)],
    )
}

/// Interleaves equally shaped `parts` along the axis before `new_axis` (Unsqueeze each at
/// `new_axis`, Concat there, Reshape to `shape`, 0 keeping the batch dimension's symbol).
fn interleave(b: &mut Builder, parts: &[String], new_axis: i64, shape: &[i64]) -> String {
    if parts.len() == 1 {
        return parts[0].clone();
    }
    let ax = b.const_i64(&[new_axis]);
    let un: Vec<String> = parts
        .iter()
        .map(|p| b.op("Unsqueeze", &[p, &ax], vec![]))
        .collect();
    let refs: Vec<&str> = un.iter().map(String::as_str).collect();
    let cat = b.op("Concat", &refs, vec![attr_i("axis", new_axis)]);
    let shape = b.const_i64(shape);
    b.op("Reshape", &[&cat, &shape], vec![])
}

/// ConvTranspose(dY, W) with window `win` whose output has exactly spatial size `want`
/// (dY has spatial size `have`): the adjoint of the strided Conv with that window.
pub(crate) fn transpose_to_size(
    b: &mut Builder,
    dy: &str,
    w: &str,
    win: &Window,
    have: &[i64],
    want: &[i64],
    group: i64,
) -> String {
    let n = win.kernel.len();
    let mut end = vec![0; n];
    let mut output_padding = vec![0; n];
    for i in 0..n {
        let full = (have[i] - 1) * win.strides[i] + win.dilations[i] * (win.kernel[i] - 1) + 1;
        let e = full - win.begin[i] - want[i];
        if e >= 0 {
            end[i] = e;
        } else {
            output_padding[i] = -e;
        }
    }
    let pads: Vec<i64> = win.begin.iter().chain(&end).copied().collect();
    let mut attrs = vec![
        attr_ints("strides", &win.strides),
        attr_ints("dilations", &win.dilations),
        attr_ints("pads", &pads),
        attr_i("group", group),
    ];
    if output_padding.iter().any(|p| *p != 0) {
        attrs.push(attr_ints("output_padding", &output_padding));
    }
    b.op("ConvTranspose", &[dy, w], attrs)
}

/// Y = ConvTranspose(X, W) + B is the adjoint of Conv with the same weight and window, so
/// dX = Conv(dY, W, same strides/dilations/group), pads begin = p_begin and the end pad
/// chosen so that dX has X's size (negative: dY cropped). dB = sum of dY but channels.
fn conv_transpose(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let (x, w) = (&node.input[0], &node.input[1]);
    if b.wants(node, 1) {
        return Err("gradient with respect to the weights is not supported".into());
    }
    let x_shape = b.info(x)?.shape.clone();
    let w_shape = b.info(w)?.shape.clone();
    let y_shape = b.info(&node.output[0])?.shape.clone();
    let rank = x_shape.len();
    let n = rank - 2;
    let group = node_i(node, "group").unwrap_or(1);
    let (hx, hy) = (&x_shape[2..], &y_shape[2..]);
    if hy.contains(&DYNAMIC) || hx.contains(&DYNAMIC) {
        return Err("dynamic spatial dimensions are not supported".into());
    }
    let kernel = &w_shape[2..];
    let strides = node_ints(node, "strides")
        .filter(|v| !v.is_empty())
        .unwrap_or(vec![1; n]);
    let dilations = node_ints(node, "dilations")
        .filter(|v| !v.is_empty())
        .unwrap_or(vec![1; n]);
    let auto_pad = node_s(node, "auto_pad").unwrap_or_default();
    let explicit = node_ints(node, "pads").filter(|v| !v.is_empty());
    let output_padding = node_ints(node, "output_padding")
        .filter(|v| !v.is_empty())
        .unwrap_or(vec![0; n]);
    let has_output_shape = node_ints(node, "output_shape").is_some_and(|v| !v.is_empty());
    let mut out = vec![None, None, None];
    if b.wants(node, 0) {
        let mut begin = vec![0; n];
        for i in 0..n {
            // The full output length; what is missing from it is the total padding.
            let full =
                (hx[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 + output_padding[i];
            let total = full - hy[i];
            begin[i] = match auto_pad.as_str() {
                "SAME_UPPER" => total / 2,
                "SAME_LOWER" => total - total / 2,
                "VALID" => 0,
                _ if has_output_shape => total - total / 2,
                _ => explicit.as_ref().map_or(0, |p| p[i]),
            };
        }
        let mut pads_b = Vec::new();
        let mut pads_e = Vec::new();
        let mut crop_e = Vec::new();
        for i in 0..n {
            let e =
                (hx[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 - hy[i] - begin[i];
            pads_b.push(begin[i]);
            pads_e.push(e.max(0));
            crop_e.push(-e);
        }
        let src = crop(b, &dy, &vec![0; n], &crop_e);
        let pads: Vec<i64> = pads_b.into_iter().chain(pads_e).collect();
        out[0] = Some(b.op(
            "Conv",
            &[&src, w],
            vec![
                attr_ints("strides", &strides),
                attr_ints("dilations", &dilations),
                attr_ints("pads", &pads),
                attr_i("group", group),
            ],
        ));
    }
    if b.wants(node, 2) {
        out[2] = Some(bias_grad(b, &dy, rank));
    }
    Ok(out)
}
