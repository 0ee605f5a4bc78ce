//! An Explanation as JSON, keys named as the proto fields: what `explanation.json` holds and
//! what each line of `explain-batch`'s results is.

use serde_json::{json, Map, Value};

use crate::proto::integrad::v1 as pb;

/// `r` as JSON. With `values`, every attributed tensor's values are in it (a tabular row's
/// few); without, only their shapes (a picture's are in `attributions.npy`).
pub fn explanation(r: &pb::Explanation, values: bool) -> Value {
    let method = pb::Method::try_from(r.method)
        .map(|m| m.as_str_name())
        .unwrap_or("METHOD_UNSPECIFIED");
    let objective = pb::Objective::try_from(r.objective)
        .map(|o| o.as_str_name())
        .unwrap_or("OBJECTIVE_UNSPECIFIED");
    let mut tensors = Map::new();
    for name in &r.attributed {
        let Some(t) = r.tensor_attributions.get(name) else {
            continue;
        };
        let mut entry = json!({ "shape": t.shape });
        if values {
            entry["values"] = json!(crate::wire::f32s(&t.data));
        }
        tensors.insert(name.clone(), entry);
    }
    // NaN (an embedding's baseline has no id) is null in JSON.
    let number = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
    json!({
        "instance": r.instance,
        "target_class": r.target_class,
        "label": r.label,
        "score_input": r.score_input,
        "score_baseline": r.score_baseline,
        "attribution_sum": r.attribution_sum,
        "convergence_delta": r.convergence_delta,
        "relative_delta": number(f64::from(r.relative_delta)),
        "converged": r.converged,
        "convergence_tolerance": r.convergence_tolerance,
        "technique": pb::Technique::try_from(r.technique)
            .map(|t| t.as_str_name())
            .unwrap_or("TECHNIQUE_UNSPECIFIED"),
        "noise_samples": r.noise_samples,
        "regions": r.regions.iter().map(|g| json!({
            "rank": g.rank,
            "gain": g.gain,
            "pixels": g.pixels,
            "cumulative_area": g.cumulative_area,
        })).collect::<Vec<_>>(),
        "steps": r.steps,
        "method": method,
        "objective": objective,
        "evaluations": r.evaluations,
        "elapsed_ms": r.elapsed_ms,
        "attributed": r.attributed,
        "tensor_attributions": tensors,
        "features": r.features.iter().map(|f| json!({
            "name": f.name,
            "value": number(f.value),
            "baseline": number(f.baseline),
            "attribution": f.attribution,
        })).collect::<Vec<_>>(),
        "feature_groups": r.feature_groups.iter().map(|g| json!({
            "name": g.name,
            "attribution": g.attribution,
        })).collect::<Vec<_>>(),
        "tokens": r.tokens.iter().map(|t| json!({
            "token": t.token,
            "id": t.id,
            "start": t.start,
            "end": t.end,
            "attribution": t.attribution,
            "special": t.special,
            "pair": t.pair,
        })).collect::<Vec<_>>(),
        "words": r.words.iter().map(|w| json!({
            "word": w.word,
            "start": w.start,
            "end": w.end,
            "attribution": w.attribution,
            "pair": w.pair,
        })).collect::<Vec<_>>(),
        "truncated": r.truncated,
        "token_normalization": pb::TokenNormalization::try_from(r.token_normalization)
            .map(|n| n.as_str_name())
            .unwrap_or("TOKEN_NORMALIZATION_NONE"),
        "path": r.path.iter().map(|p| json!({
            "alpha": p.alpha,
            "score": p.score,
            "mean_abs_gradient": p.mean_abs_gradient,
        })).collect::<Vec<_>>(),
        // null when the server checks against no predictor.
        "predictor": r.predictor.as_ref().map(|c| json!({
            "url": c.url,
            "model": c.model,
            "served_score": number(f64::from(c.served_score)),
            "own_score": c.own_score,
            "relative_difference": number(f64::from(c.relative_difference)),
            "consistent": c.consistent,
            "warning": c.warning,
        })),
    })
}
