"""integrad.v1 responses as plain Python: dataclasses, numpy arrays, lower-case enum names.

Each wrapper keeps its message as `.proto`, for the rare field it does not surface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from . import _tensors
from ._requests import enum_name, technique_name
from .v1 import explainer_pb2 as pb


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output; unknown dimensions are -1."""
    name: str
    dtype: str
    shape: List[int]
    kind: str  # inputs: tensor, image or features
    features: List[str]  # the column names of a features input
    id_min: List[int]  # ids looked up in a table: each column's valid range
    id_max: List[int]

    @classmethod
    def from_proto(cls, m: pb.TensorInfo) -> TensorInfo:
        return cls(m.name, enum_name(pb.DataType, "DATA_TYPE_", m.dtype), list(m.shape),
                   enum_name(pb.InputKind, "INPUT_KIND_", m.kind), list(m.features),
                   list(m.id_min), list(m.id_max))


@dataclass(frozen=True)
class ModelInfo:
    """What GetModel/ListModels say about a model."""
    name: str
    state: str  # ready or failed
    error: str  # why it failed to load
    inputs: List[TensorInfo]
    outputs: List[TensorInfo]
    output: str  # the output Predict reads and Explain differentiates
    labels: List[str]
    head: str  # softmax, sigmoid or scores
    explainable: bool
    not_explainable_reason: str
    feature_groups: Dict[str, List[str]]
    attribution_points: List[str]  # the tensors Explain attributes to by default
    device: str  # cpu or cuda:N
    proto: pb.ModelInfo = field(repr=False)

    @classmethod
    def from_proto(cls, m: pb.ModelInfo) -> ModelInfo:
        return cls(
            name=m.name,
            state=enum_name(pb.ModelState, "MODEL_STATE_", m.state),
            error=m.error,
            inputs=[TensorInfo.from_proto(t) for t in m.inputs],
            outputs=[TensorInfo.from_proto(t) for t in m.outputs],
            output=m.output,
            labels=list(m.labels),
            head=enum_name(pb.HeadKind, "HEAD_KIND_", m.head),
            explainable=m.explainable,
            not_explainable_reason=m.not_explainable_reason,
            feature_groups={g.name: list(g.features) for g in m.feature_groups},
            attribution_points=[p.tensor for p in m.attribution_points],
            device=m.device,
            proto=m,
        )

    @property
    def modality(self) -> str:
        """text (it has a tokenizer), image (it decodes pictures), tabular (named feature
        columns) or tensor (anything else): what kind of input `Client.explain` takes."""
        if self.proto.HasField("text"):
            return "text"
        if self.proto.HasField("preprocessing"):
            return "image"
        if self.features:
            return "tabular"
        return "tensor"

    @property
    def features(self) -> List[str]:
        """Every named feature column, in input order: the keys of a `features=` row."""
        return [f for t in self.inputs for f in t.features]


@dataclass(frozen=True)
class Prediction:
    """One class of a Predict answer."""
    class_index: int
    label: str
    probability: float
    logit: float


@dataclass(frozen=True)
class PredictResult:
    """Predict's answer: the best classes, and the model's raw output."""
    model: str
    top: List[Prediction]
    logits: np.ndarray  # the output as is, without the batch dimension
    preprocess_ms: float
    inference_ms: float

    @classmethod
    def from_proto(cls, m: pb.PredictResponse) -> PredictResult:
        return cls(m.model, [Prediction(p.class_index, p.label, p.probability, p.logit) for p in m.top],
                   _tensors.to_numpy(m.logits), m.preprocess_ms, m.inference_ms)


@dataclass(frozen=True)
class Progress:
    """How far an Explain (or ExplainBatch) has got."""
    steps_done: int  # gradient evaluations done so far
    steps_total: int  # ... of the current plan
    elapsed_ms: float
    steps: int  # after a complete round: its steps
    relative_delta: float  # ... and its largest |delta| / |F(x) - F(x')|
    instances_done: int  # ExplainBatch only
    instances_total: int

    @classmethod
    def from_proto(cls, m: pb.Progress) -> Progress:
        return cls(m.steps_done, m.steps_total, m.elapsed_ms, m.steps, m.relative_delta,
                   m.instances_done, m.instances_total)


@dataclass(frozen=True)
class PathPoint:
    """One evaluated point of the integration path (for saturation plots)."""
    alpha: float
    score: float
    mean_abs_gradient: float


@dataclass(frozen=True)
class FeatureAttribution:
    """A named feature's value, baseline (NaN at an embedding: no id there) and attribution."""
    name: str
    value: float
    baseline: float
    attribution: float


@dataclass(frozen=True)
class TokenAttribution:
    """A token of the text; text[start:end] is its text (of the pair when `pair`)."""
    token: str
    id: int
    start: int
    end: int
    attribution: float
    special: bool
    pair: bool


@dataclass(frozen=True)
class WordAttribution:
    """A pre-tokenized word: the sum of its tokens."""
    word: str
    start: int
    end: int
    attribution: float
    pair: bool


@dataclass(frozen=True)
class PredictorCheck:
    """The served model's score for the same input (a server started with --predictor):
    whether the model explained is the model that answers users."""
    url: str
    model: str
    served_score: float  # NaN when the predictor gave none
    own_score: float  # integrad's F(x)
    relative_difference: float
    consistent: bool
    warning: str  # why not consistent; empty when consistent


@dataclass(frozen=True)
class XraiRegion:
    """One of XRAI's ranked regions: the pixels it adds (none of better-ranked regions'), its
    gain (the attribution it adds per pixel) and the fraction of the image covered with it."""
    rank: int
    gain: float
    pixels: int
    cumulative_area: float


@dataclass(frozen=True)
class Explanation:
    """The attributions of one target for one input, by `technique` (Integrated Gradients
    unless the request chose another).

    `attributions` is in the model's input space, the input's shape (no batch dimension);
    a model attributed at several tensors has each in `tensor_attributions` (in `attributed`
    order; `attributions` is the first). Completeness: attribution_sum, the sum over all of
    them, is score_input - score_baseline up to convergence_delta. XRAI's `attributions` is
    its region map instead (height x width, each pixel its region's gain), `regions` its
    ranking and `pixel_attributions` the IG attributions it ranked.
    """
    attributions: np.ndarray
    tensor_attributions: Dict[str, np.ndarray] = field(repr=False)
    target_class: int
    label: str
    score_input: float  # F(x): the objective for the target
    score_baseline: float  # F(x')
    attribution_sum: float
    convergence_delta: float  # attribution_sum - (score_input - score_baseline)
    relative_delta: float  # |convergence_delta| / |score_input - score_baseline|
    converged: bool  # relative_delta <= convergence_tolerance
    convergence_tolerance: float
    steps: int
    method: str
    objective: str
    evaluations: int
    elapsed_ms: float
    path: List[PathPoint] = field(repr=False)
    features: List[FeatureAttribution]  # tabular inputs, in the model's column order
    feature_groups: Dict[str, float]
    tokens: List[TokenAttribution]  # text models, special tokens included
    words: List[WordAttribution]
    truncated: bool  # the text was cut at the model's max_length
    token_normalization: str
    mask_png: Optional[bytes]  # what `render` asked for (image models)
    overlay_png: Optional[bytes]
    instance: int  # ExplainBatch: the index of the instance explained
    predictor: Optional[PredictorCheck]  # None unless the server checks against a predictor
    technique: str  # ig, blur-ig, guided-ig or xrai
    noise_samples: int  # the noise tunnel's samples; 0: none
    regions: List[XraiRegion]  # XRAI: most attributed first; empty for other techniques
    pixel_attributions: Optional[np.ndarray] = field(repr=False)  # XRAI: input's shape; else None
    proto: pb.Explanation = field(repr=False)

    @classmethod
    def from_proto(cls, m: pb.Explanation) -> Explanation:
        tensors = {name: _tensors.to_numpy(m.tensor_attributions[name]) for name in m.attributed}
        return cls(
            attributions=_tensors.to_numpy(m.attributions),
            tensor_attributions=tensors,
            target_class=m.target_class,
            label=m.label,
            score_input=m.score_input,
            score_baseline=m.score_baseline,
            attribution_sum=m.attribution_sum,
            convergence_delta=m.convergence_delta,
            relative_delta=m.relative_delta,
            converged=m.converged,
            convergence_tolerance=m.convergence_tolerance,
            steps=m.steps,
            method=enum_name(pb.Method, "METHOD_", m.method),
            objective=enum_name(pb.Objective, "OBJECTIVE_", m.objective),
            evaluations=m.evaluations,
            elapsed_ms=m.elapsed_ms,
            path=[PathPoint(p.alpha, p.score, p.mean_abs_gradient) for p in m.path],
            features=[FeatureAttribution(f.name, f.value, f.baseline, f.attribution) for f in m.features],
            feature_groups={g.name: g.attribution for g in m.feature_groups},
            tokens=[TokenAttribution(t.token, t.id, t.start, t.end, t.attribution, t.special, t.pair)
                    for t in m.tokens],
            words=[WordAttribution(w.word, w.start, w.end, w.attribution, w.pair) for w in m.words],
            truncated=m.truncated,
            token_normalization=enum_name(
                pb.TokenNormalization, "TOKEN_NORMALIZATION_", m.token_normalization),
            mask_png=m.mask_png or None,
            overlay_png=m.overlay_png or None,
            instance=m.instance,
            predictor=PredictorCheck(
                m.predictor.url, m.predictor.model, m.predictor.served_score,
                m.predictor.own_score, m.predictor.relative_difference,
                m.predictor.consistent, m.predictor.warning,
            ) if m.HasField("predictor") else None,
            technique=technique_name(m.technique),
            noise_samples=m.noise_samples,
            regions=[XraiRegion(r.rank, r.gain, r.pixels, r.cumulative_area) for r in m.regions],
            pixel_attributions=_tensors.to_numpy(m.pixel_attributions)
            if m.HasField("pixel_attributions") else None,
            proto=m,
        )

    def to_shap(self):
        """This explanation as a `shap.Explanation`, for shap's plots.

        base_values is F(baseline), so base_values + values.sum() is F(input) up to the
        convergence delta, as shap's additivity expects. Tabular: one value per named
        feature, data the row's values; text: one value per token, data the tokens; other
        inputs (images, tensors): the attribution array. (Tokens scaled by a request's
        token_normalization no longer add up to F(input) - F(baseline).)
        """
        try:
            import shap
        except ImportError as e:
            raise ImportError("Explanation.to_shap() needs the shap package: pip install shap") from e
        if self.features:
            names = [f.name for f in self.features]
            return shap.Explanation(
                values=np.array([f.attribution for f in self.features], dtype=np.float64),
                base_values=self.score_baseline,
                data=np.array([f.value for f in self.features], dtype=np.float64),
                feature_names=names,
            )
        if self.tokens:
            names = [t.token for t in self.tokens]
            return shap.Explanation(
                values=np.array([t.attribution for t in self.tokens], dtype=np.float64),
                base_values=self.score_baseline,
                data=np.array(names, dtype=object),
                feature_names=names,
            )
        return shap.Explanation(values=self.attributions, base_values=self.score_baseline)


@dataclass(frozen=True)
class Curve:
    """One faithfulness metric's curve: x ascending in [0, 1], y the score (see
    docs/evaluate.md), auc its area (NaN when `skipped` says why PAIR's rules skip it).
    SIC and AIC also carry each threshold's raw score and normalised point."""
    metric: str  # deletion, insertion, sic or aic
    x: np.ndarray
    y: np.ndarray
    auc: float
    skipped: str
    thresholds: np.ndarray
    scores: np.ndarray
    information: np.ndarray
    normalized_scores: np.ndarray
    original_score: float
    blurred_score: float

    @classmethod
    def from_proto(cls, m: pb.Curve) -> Curve:
        def floats(values) -> np.ndarray:
            return np.array(values, dtype=np.float32)

        return cls(enum_name(pb.Metric, "METRIC_", m.metric), floats(m.x), floats(m.y), m.auc, m.skipped,
                   floats(m.thresholds), floats(m.scores), floats(m.information),
                   floats(m.normalized_scores), m.original_score, m.blurred_score)


@dataclass(frozen=True)
class Evaluation:
    """Evaluate's answer: one Curve per metric asked (in the request's order), the target
    they follow, and the curves drawn as a PNG when the request asked for the plot."""
    model: str
    target_class: int
    label: str
    objective: str  # deletion and insertion's score
    curves: List[Curve]
    plot_png: Optional[bytes]
    runs: int  # model runs (batches of perturbed images)
    images: int  # images scored
    elapsed_ms: float
    proto: pb.EvaluateResponse = field(repr=False)

    @classmethod
    def from_proto(cls, m: pb.EvaluateResponse) -> Evaluation:
        return cls(m.model, m.target_class, m.label, enum_name(pb.Objective, "OBJECTIVE_", m.objective),
                   [Curve.from_proto(c) for c in m.curves], m.plot_png or None, m.runs, m.images,
                   m.elapsed_ms, m)

    def curve(self, metric: str) -> Curve:
        """The curve of a metric by name (deletion, insertion, sic, aic)."""
        for c in self.curves:
            if c.metric == metric:
                return c
        raise KeyError(f"no {metric!r} curve: this evaluation has {', '.join(c.metric for c in self.curves)}")

    @property
    def auc(self) -> Dict[str, float]:
        """Each metric's area under its curve, by name."""
        return {c.metric: c.auc for c in self.curves}
