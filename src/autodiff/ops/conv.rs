//! Convolutions: Conv (groups/depthwise, strides, pads, dilations, auto_pad) and ConvTranspose.
//!
//! Only the data input gets a gradient here: weights and biases are initializers in the models
//! integrad explains, so a path through them is refused rather than half-supported.

use super::super::builder::{attr_i, attr_ints, Builder};
use super::super::graph::{attr_i as node_i, attr_ints as node_ints, attr_s as node_s, DYNAMIC};
use super::super::registry::Registry;
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
    let x_shape = b.info(x)?.shape.clone();
    let w_shape = b.info(w)?.shape.clone();
    let y_shape = b.info(&node.output[0])?.shape.clone();
    let rank = x_shape.len();
    let group = node_i(node, "group").unwrap_or(1);
    let win = window(node, &x_shape[2..], &w_shape[2..])?;
    let mut out = vec![None, None, None];
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
        } else {
            transpose_to_size(b, &dy, w, &win, &y_shape[2..], &x_shape[2..], group)
        });
    }
    if b.wants(node, 2) {
        out[2] = Some(bias_grad(b, &dy, rank));
    }
    Ok(out)
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
    let mut out = vec![None, None, None];
    if b.wants(node, 0) {
        let mut begin = vec![0; n];
        for i in 0..n {
            // The full (uncropped) output length; what was cropped off is the total padding.
            let full = (hx[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1;
            let total = full - hy[i];
            begin[i] = match (&explicit, auto_pad.as_str()) {
                (Some(p), "NOTSET" | "") if node_ints(node, "output_shape").is_none() => p[i],
                (_, "SAME_UPPER") => total / 2,
                (_, "VALID") => 0,
                _ => total - total / 2,
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
