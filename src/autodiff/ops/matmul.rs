//! Matrix products: Gemm and (batched, broadcast) MatMul.

use super::super::builder::{attr_f, attr_i, attr_ints, Builder};
use super::super::graph::{attr_f as node_f, attr_i as node_i, DYNAMIC};
use super::super::registry::Registry;
use crate::proto::onnx::NodeProto;

type Grads = Result<Vec<Option<String>>, String>;

pub fn register(r: &mut Registry) {
    r.rule("Gemm", gemm);
    r.rule("MatMul", matmul);
}

/// Y = alpha A' B' + beta C, with A' = transA ? A^T : A and B' = transB ? B^T : B.
/// dA' = alpha dY B'^T, so
///   transA = 0: dA = alpha dY B'^T   = Gemm(dY, B, transB = !transB)
///   transA = 1: dA = alpha B' dY^T   = Gemm(B, dY, transA = transB, transB = 1)
/// dB' = alpha A'^T dY, so
///   transB = 0: dB = alpha A'^T dY   = Gemm(A, dY, transA = !transA)
///   transB = 1: dB = alpha dY^T A'   = Gemm(dY, A, transA = 1, transB = transA)
/// dC = unb(beta dY) to C's shape.
fn gemm(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy = b.only_first(dys)?.to_string();
    let alpha = node_f(node, "alpha").unwrap_or(1.0);
    let beta = node_f(node, "beta").unwrap_or(1.0);
    let ta = node_i(node, "transA").unwrap_or(0);
    let tb = node_i(node, "transB").unwrap_or(0);
    let (a, bm) = (&node.input[0], &node.input[1]);
    let mut out = vec![None, None, None];
    let gemm = |b: &mut Builder, x: &str, y: &str, tx: i64, ty: i64| {
        b.op(
            "Gemm",
            &[x, y],
            vec![
                attr_f("alpha", alpha),
                attr_i("transA", tx),
                attr_i("transB", ty),
            ],
        )
    };
    if b.wants(node, 0) {
        out[0] = Some(if ta == 0 {
            gemm(b, &dy, bm, 0, 1 - tb)
        } else {
            gemm(b, bm, &dy, tb, 1)
        });
    }
    if b.wants(node, 1) {
        out[1] = Some(if tb == 0 {
            gemm(b, a, &dy, 1 - ta, 0)
        } else {
            gemm(b, &dy, a, 1, ta)
        });
    }
    if b.wants(node, 2) {
        let ys = b.info(&node.output[0])?.shape.clone();
        let g = if beta == 1.0 {
            dy.clone()
        } else {
            let k = b.scalar_like(&node.output[0], beta as f64)?;
            b.op("Mul", &[&dy, &k], vec![])
        };
        out[2] = Some(b.unbroadcast(&g, &ys, &node.input[2])?);
    }
    Ok(out)
}

fn broadcast(a: &[i64], c: &[i64]) -> Vec<i64> {
    let r = a.len().max(c.len());
    (0..r)
        .map(|i| {
            let x = if i + a.len() >= r {
                a[i + a.len() - r]
            } else {
                1
            };
            let y = if i + c.len() >= r {
                c[i + c.len() - r]
            } else {
                1
            };
            match (x, y) {
                (1, y) => y,
                (x, 1) => x,
                (DYNAMIC, y) | (y, DYNAMIC) => y,
                (x, _) => x,
            }
        })
        .collect()
}

fn swap_last_two(b: &mut Builder, t: &str, rank: usize) -> String {
    let mut perm: Vec<i64> = (0..rank as i64).collect();
    perm.swap(rank - 2, rank - 1);
    b.op("Transpose", &[t], vec![attr_ints("perm", &perm)])
}

/// Y = A @ B over the last two axes, the leading (batch) axes broadcast; a 1-D A is a row
/// [1, K] and a 1-D B a column [K, 1] whose unit axis the product drops.
/// dA = unb(dY @ B^T), dB = unb(A^T @ dY), each summed back to its operand's shape.
fn matmul(b: &mut Builder, node: &NodeProto, dys: &[Option<String>]) -> Grads {
    let dy0 = b.only_first(dys)?.to_string();
    let (a0, b0) = (node.input[0].clone(), node.input[1].clone());
    let mut a_shape = b.info(&a0)?.shape.clone();
    let mut b_shape = b.info(&b0)?.shape.clone();
    let (mut a, mut bm, mut dy) = (a0.clone(), b0.clone(), dy0);
    let a_vec = a_shape.len() == 1;
    let b_vec = b_shape.len() == 1;
    if a_vec {
        let ax = b.const_i64(&[0]);
        a = b.op("Unsqueeze", &[&a, &ax], vec![]);
        a_shape.insert(0, 1);
        let ax = b.const_i64(&[-2]);
        dy = b.op("Unsqueeze", &[&dy, &ax], vec![]);
    }
    if b_vec {
        let ax = b.const_i64(&[1]);
        bm = b.op("Unsqueeze", &[&bm, &ax], vec![]);
        b_shape.push(1);
        let ax = b.const_i64(&[-1]);
        dy = b.op("Unsqueeze", &[&dy, &ax], vec![]);
    }
    let (ra, rb) = (a_shape.len(), b_shape.len());
    let batch = broadcast(&a_shape[..ra - 2], &b_shape[..rb - 2]);
    let (m, k, n) = (a_shape[ra - 2], a_shape[ra - 1], b_shape[rb - 1]);
    let mut out = vec![None, None];
    if b.wants(node, 0) {
        let bt = swap_last_two(b, &bm, rb);
        let g = b.op("MatMul", &[&dy, &bt], vec![]);
        let g_shape: Vec<i64> = batch.iter().copied().chain([m, k]).collect();
        let mut g = b.unbroadcast_to(&g, &g_shape, &a_shape)?;
        if a_vec {
            let ax = b.const_i64(&[0]);
            g = b.op("Squeeze", &[&g, &ax], vec![]);
        }
        out[0] = Some(g);
    }
    if b.wants(node, 1) {
        let at = swap_last_two(b, &a, ra);
        let g = b.op("MatMul", &[&at, &dy], vec![]);
        let g_shape: Vec<i64> = batch.iter().copied().chain([k, n]).collect();
        let mut g = b.unbroadcast_to(&g, &g_shape, &b_shape)?;
        if b_vec {
            let ax = b.const_i64(&[-1]);
            g = b.op("Squeeze", &[&g, &ax], vec![]);
        }
        out[1] = Some(g);
    }
    Ok(out)
}
