"""Python values -> the request messages of integrad.v1 (inputs, targets, baselines, enums).

Every option of ExplainRequest has a keyword here (see `explain_request`); the Client's
methods take the same keywords and pass them on, so each is documented and checked once.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from . import _tensors
from .v1 import explainer_pb2 as pb

# Encoded image bytes (PNG, JPEG, WebP, BMP, GIF), or the path of such a file.
ImageLike = Union[bytes, bytearray, str, "os.PathLike[str]"]
# A value for one graph input in `inputs=`: encoded image bytes, text, a tabular row by
# feature name, an array (a tensor), or an Input message as is.
InputValue = Union[bytes, str, Mapping[str, float], np.ndarray, Sequence[Any], pb.Input]
BaselineLike = Union[str, np.ndarray, pb.Baseline]


def enum_value(enum, prefix: str, value: Union[str, int]) -> int:
    """A proto enum value from its short name, case-insensitive, '-' for '_':
    enum_value(pb.Method, "METHOD_", "gauss-legendre") == pb.METHOD_GAUSS_LEGENDRE."""
    if isinstance(value, int):
        return value
    name = prefix + value.strip().upper().replace("-", "_")
    try:
        return enum.Value(name)
    except ValueError:
        choices = [enum_name(enum, prefix, v) for n, v in enum.items() if not n.endswith("UNSPECIFIED")]
        raise ValueError(f"{value!r} is not one of {', '.join(choices)}") from None


def enum_name(enum, prefix: str, value: int) -> str:
    """The short lower-case name of a proto enum value, '-' for '_' as the CLI spells them
    (gauss-legendre): the inverse of `enum_value`."""
    return enum.Name(value)[len(prefix):].lower().replace("_", "-")


# The techniques by the CLI's names (`integrad explain --technique`); "ig" is
# TECHNIQUE_INTEGRATED_GRADIENTS, whose proto name is long.
TECHNIQUES = {
    "ig": pb.TECHNIQUE_INTEGRATED_GRADIENTS,
    "blur-ig": pb.TECHNIQUE_BLUR_IG,
    "guided-ig": pb.TECHNIQUE_GUIDED_IG,
    "xrai": pb.TECHNIQUE_XRAI,
}


def technique_value(technique: Union[str, int]) -> int:
    """A Technique from its CLI name (ig, blur-ig, guided-ig, xrai; case-insensitive, '_' for
    '-' too), the proto's short name (integrated-gradients) or the enum value."""
    if isinstance(technique, int):
        return technique
    value = TECHNIQUES.get(technique.strip().lower().replace("_", "-"))
    if value is not None:
        return value
    try:
        return enum_value(pb.Technique, "TECHNIQUE_", technique)
    except ValueError:
        raise ValueError(f"technique {technique!r} is not one of {', '.join(TECHNIQUES)}") from None


def technique_name(value: int) -> str:
    """The CLI name of a Technique (unspecified is integrated gradients: "ig")."""
    for name, v in TECHNIQUES.items():
        if v == value:
            return name
    return "ig" if value == pb.TECHNIQUE_UNSPECIFIED else str(value)


def options_message(message_type, value, argument: str, enums: Optional[Mapping[str, Any]] = None):
    """A message of `message_type` from a dict of its fields (enum fields by name, through
    `enums`: field -> (enum, prefix)), or the message as is. Unknown fields are refused."""
    if value is None:
        return None
    if isinstance(value, message_type):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"{argument}= takes a dict of {message_type.DESCRIPTOR.name} fields or the "
                        f"message, not {type(value).__name__}")
    fields = dict(value)
    known = [f.name for f in message_type.DESCRIPTOR.fields]
    unknown = [k for k in fields if k not in known]
    if unknown:
        raise ValueError(f"{argument}= has no field {', '.join(map(repr, unknown))}: "
                         f"its fields are {', '.join(known)}")
    for name, (enum, prefix) in (enums or {}).items():
        if name in fields and fields[name] is not None:
            fields[name] = enum_value(enum, prefix, fields[name])
    return message_type(**fields)


def noise_tunnel_options(noise_tunnel) -> Optional[pb.NoiseTunnel]:
    """A NoiseTunnel from a dict (samples, stdev, kind: smoothgrad, smoothgrad-sq or vargrad,
    seed), or the message as is."""
    return options_message(pb.NoiseTunnel, noise_tunnel, "noise_tunnel",
                           {"kind": (pb.NoiseKind, "NOISE_KIND_")})


def make_input(
    image: Optional[ImageLike] = None,
    text: Optional[str] = None,
    pair: Optional[str] = None,
    features: Optional[Mapping[str, float]] = None,
    tensor=None,
) -> Optional[pb.Input]:
    """The one Input the arguments describe, or None when they describe none."""
    given = {
        name: value
        for name, value in (("image", image), ("text", text), ("features", features), ("tensor", tensor))
        if value is not None
    }
    if pair is not None and text is None:
        raise ValueError("pair= needs text=")
    if len(given) > 1:
        raise ValueError(f"give one input, not {' and '.join(given)}")
    if not given:
        return None
    (kind, value), = given.items()
    if kind == "image":
        return pb.Input(image=_image_bytes(value))
    if kind == "text":
        return pb.Input(text=pb.Text(text=value, pair=pair or ""))
    if kind == "features":
        return pb.Input(features=pb.FeatureRow(values={k: float(v) for k, v in value.items()}))
    return pb.Input(tensor=_tensors.to_tensor(value))


def _image_bytes(image: ImageLike) -> bytes:
    """Encoded image bytes, read from a file when given a path."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    with open(image, "rb") as f:
        return f.read()


def input_value(value: InputValue) -> pb.Input:
    """One entry of `inputs=`, its kind told by its Python type."""
    if isinstance(value, pb.Input):
        return value
    if isinstance(value, (bytes, bytearray)):
        return make_input(image=value)
    if isinstance(value, str):
        return make_input(text=value)
    if isinstance(value, Mapping):
        return make_input(features=value)
    return make_input(tensor=value)


def input_map(inputs: Optional[Mapping[str, InputValue]]) -> dict:
    return {name: input_value(v) for name, v in (inputs or {}).items()}


def make_target(target: Union[int, str, None] = None, top_k: Optional[int] = None) -> Optional[pb.Target]:
    """A class index (int) or label (str); or the top_k best classes."""
    if target is not None and top_k is not None:
        raise ValueError("give target= or top_k=, not both")
    if top_k is not None:
        return pb.Target(top_k=top_k)
    if target is None:
        return None
    if isinstance(target, str):
        return pb.Target(label=target)
    return pb.Target(class_index=int(target))


# Baselines that a word says all about.
_NAMED_BASELINES = {
    "zeros": lambda: pb.Baseline(zeros=True),
    "black": lambda: pb.Baseline(black=True),
    "white": lambda: pb.Baseline(white=True),
    "median": lambda: reference_baseline("median"),
    "mean": lambda: reference_baseline("mean"),
    "rows": lambda: reference_baseline("rows"),
    "uniform": lambda: uniform_baseline(),
    "pad": lambda: text_baseline("pad"),
    "unk": lambda: text_baseline("unk"),
    "mask": lambda: text_baseline("mask"),
}


def make_baseline(baseline: BaselineLike) -> pb.Baseline:
    """A Baseline from a name (zeros, black, white, median, mean, rows, uniform, pad, unk,
    mask), an array (a tensor in the model's input space), or a Baseline as is (the
    *_baseline functions make the ones with parameters)."""
    if isinstance(baseline, pb.Baseline):
        return baseline
    if isinstance(baseline, str):
        make = _NAMED_BASELINES.get(baseline.strip().lower())
        if make is None:
            names = ", ".join(_NAMED_BASELINES)
            raise ValueError(f"unknown baseline {baseline!r}: one of {names}, an array, or a Baseline")
        return make()
    return pb.Baseline(tensor=_tensors.to_tensor(baseline))


def uniform_baseline(seed: int = 0, samples: int = 1) -> pb.Baseline:
    """Uniform noise (deterministic in seed); samples > 1 averages IG over that many noise
    baselines (seeds seed, seed+1, ...)."""
    return pb.Baseline(uniform=pb.UniformBaseline(seed=seed), samples=samples)


def blur_baseline(sigma: float) -> pb.Baseline:
    """The input image blurred by a Gaussian of sigma pixels."""
    return pb.Baseline(blur=pb.BlurBaseline(sigma=sigma))


def reference_baseline(statistic: str = "median", rows: int = 0, seed: int = 0) -> pb.Baseline:
    """From the model's reference rows: their median or mean, or ("rows") IG averaged over
    `rows` of them drawn with `seed` (expected gradients; 0 = every row)."""
    return pb.Baseline(reference=pb.ReferenceBaseline(
        statistic=enum_value(pb.ReferenceStatistic, "REFERENCE_STATISTIC_", statistic), rows=rows, seed=seed))


def text_baseline(token: str = "pad", ids: Optional[Sequence[int]] = None) -> pb.Baseline:
    """A text's baseline: every non-special token replaced by pad, unk or mask; or explicit
    ids, one per token of the text (special tokens included)."""
    if ids is not None:
        return pb.Baseline(text=pb.TextBaseline(ids=list(ids)))
    token_value = enum_value(pb.TextBaselineToken, "TEXT_BASELINE_TOKEN_", token)
    return pb.Baseline(text=pb.TextBaseline(token=token_value))


def render_options(render: Union[bool, Mapping[str, Any], None]) -> Optional[pb.RenderOptions]:
    """True: the mask and the overlay PNGs; or a dict of RenderOptions fields (colormap by name)."""
    if render is None or render is False:
        return None
    if render is True:
        return pb.RenderOptions(mask=True, overlay=True)
    fields = dict(render)
    if "colormap" in fields:
        fields["colormap"] = enum_value(pb.Colormap, "COLORMAP_", fields["colormap"])
    return pb.RenderOptions(**fields)


def explain_request(
    *,
    model: Optional[str] = None,
    image: Optional[ImageLike] = None,
    text: Optional[str] = None,
    pair: Optional[str] = None,
    features: Optional[Mapping[str, float]] = None,
    tensor=None,
    inputs: Optional[Mapping[str, InputValue]] = None,
    target: Union[int, str, None] = None,
    top_k: Optional[int] = None,
    steps: Optional[int] = None,
    method: Union[str, int, None] = None,
    objective: Union[str, int, None] = None,
    baseline: Optional[BaselineLike] = None,
    baselines: Optional[Mapping[str, BaselineLike]] = None,
    tolerance: Optional[float] = None,
    max_steps: Optional[int] = None,
    batch_size: Optional[int] = None,
    attribute_to: Optional[Sequence[str]] = None,
    token_normalization: Union[str, int, None] = None,
    render: Union[bool, Mapping[str, Any], None] = None,
    technique: Union[str, int, None] = None,
    blur_ig: Union[Mapping[str, Any], pb.BlurIgOptions, None] = None,
    guided_ig: Union[Mapping[str, Any], pb.GuidedIgOptions, None] = None,
    xrai: Union[Mapping[str, Any], pb.XraiOptions, None] = None,
    noise_tunnel: Union[Mapping[str, Any], pb.NoiseTunnel, None] = None,
) -> pb.ExplainRequest:
    """An ExplainRequest. Every argument left None leaves the server's default.

    model: the model's name (default: the server's default model).
    image / text (+ pair) / features / tensor: the input of a one-input model, or a
        FeatureRow of every named feature; inputs: graph input name -> value (bytes: an
        encoded image, str: a text, dict: features, array: a tensor), for several inputs.
    target: class index (int) or label (str); default the top-1 prediction. top_k: explain
        the k best classes instead (one Explanation each).
    steps: intervals of the path integral (server default 50); method: trapezoid, left,
        right, midpoint or gauss-legendre; objective: probability, logit or value.
    baseline: see `make_baseline`; baselines: per attributed tensor, by name.
    tolerance: refine until |delta| <= tolerance * |F(x) - F(x')| or max_steps.
    batch_size: alphas per gradient run. attribute_to: graph inputs or inner float tensors
        (layer attribution) instead of the model's default attribution points.
    token_normalization: none, l1 or l2 (text models' tokens and words).
    render: True for the mask and overlay PNGs (images), or a dict of RenderOptions fields.
    technique: ig (the default), blur-ig, guided-ig or xrai (image models), or a Technique.
    blur_ig / guided_ig / xrai: that technique's options, a dict of the fields of
        BlurIgOptions (max_sigma, grad_step), GuidedIgOptions (fraction, max_dist) or
        XraiOptions (min_pixel_diff, area_threshold, top_fraction), or the message. The
        server refuses one given for another technique (INVALID_ARGUMENT).
    noise_tunnel: a dict of samples, stdev, kind (smoothgrad, smoothgrad-sq or vargrad) and
        seed, or a NoiseTunnel: the technique averaged over noisy copies of the input.
    """
    return pb.ExplainRequest(
        model=model or "",
        input=make_input(image, text, pair, features, tensor),
        inputs=input_map(inputs),
        target=make_target(target, top_k),
        steps=steps,
        method=None if method is None else enum_value(pb.Method, "METHOD_", method),
        objective=None if objective is None else enum_value(pb.Objective, "OBJECTIVE_", objective),
        baseline=None if baseline is None else make_baseline(baseline),
        baselines={name: make_baseline(b) for name, b in (baselines or {}).items()},
        tolerance=tolerance,
        max_steps=max_steps,
        batch_size=batch_size,
        attribute_to=attribute_to,
        token_normalization=None if token_normalization is None
        else enum_value(pb.TokenNormalization, "TOKEN_NORMALIZATION_", token_normalization),
        render=render_options(render),
        technique=None if technique is None else technique_value(technique),
        blur_ig=options_message(pb.BlurIgOptions, blur_ig, "blur_ig"),
        guided_ig=options_message(pb.GuidedIgOptions, guided_ig, "guided_ig"),
        xrai=options_message(pb.XraiOptions, xrai, "xrai"),
        noise_tunnel=noise_tunnel_options(noise_tunnel),
    )


def _saliency_tensor(saliency) -> pb.Tensor:
    """The map of an EvaluateRequest: an Explanation's attributions, an array, or a Tensor."""
    from ._types import Explanation  # _types imports this module

    if isinstance(saliency, Explanation):
        saliency = saliency.attributions
    if isinstance(saliency, pb.Tensor):
        return saliency
    array = np.asarray(saliency)
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"saliency= takes numbers, not an array of {array.dtype}")
    # The API's maps are float32 (an integer ranking is a map too).
    return _tensors.to_tensor(array.astype(np.float32, copy=False))


def _metric_values(metrics: Union[str, int, Sequence[Union[str, int]], None]) -> list:
    if metrics is None:
        return []
    if isinstance(metrics, (str, int)):
        metrics = [metrics]
    return [enum_value(pb.Metric, "METRIC_", m) for m in metrics]


def _causal_options(options, argument: str) -> Optional[pb.CausalOptions]:
    return options_message(pb.CausalOptions, options, argument, {"substrate": (pb.Substrate, "SUBSTRATE_")})


def _pic_options(options) -> Optional[pb.PicOptions]:
    if isinstance(options, Mapping) and options.get("random_mask") is not None:
        mask = options["random_mask"]
        if not isinstance(mask, pb.Tensor):
            mask = _tensors.to_tensor(np.asarray(mask, dtype=np.float32))
        options = {**options, "random_mask": mask}
    return options_message(pb.PicOptions, options, "pic")


def evaluate_request(
    *,
    saliency,
    model: Optional[str] = None,
    image: Optional[ImageLike] = None,
    tensor=None,
    inputs: Optional[Mapping[str, InputValue]] = None,
    target: Union[int, str, None] = None,
    objective: Union[str, int, None] = None,
    metrics: Union[str, int, Sequence[Union[str, int]], None] = None,
    reduction: Union[str, int, None] = None,
    deletion: Union[Mapping[str, Any], pb.CausalOptions, None] = None,
    insertion: Union[Mapping[str, Any], pb.CausalOptions, None] = None,
    pic: Union[Mapping[str, Any], pb.PicOptions, None] = None,
    batch_size: Optional[int] = None,
    plot: bool = False,
) -> pb.EvaluateRequest:
    """An EvaluateRequest: how faithful `saliency` is to the model on this input.

    saliency: an Explanation (its attributions; its target_class is the default target), an
        array of the input's shape or height x width (XRAI's region map is one), or a Tensor.
    image / tensor / inputs: the input the map explains, as for `explain_request`.
    target: class index or label (default: the Explanation's class, else the top-1).
    objective: probability or logit (deletion and insertion's score).
    metrics: deletion, insertion, sic, aic, or a list of them (default: all four).
    reduction: abs-sum (default) or sum: how a map with channels becomes one value a pixel.
    deletion / insertion: dicts of CausalOptions fields (pixels_per_step, substrate: black,
        zeros or blur, blur_size, blur_sigma); pic: of PicOptions fields (thresholds,
        random_mask_fraction, seed, random_mask as an array, min_pred_value,
        keep_monotonous, num_data_points). batch_size: images per model run. plot: return
        the curves drawn as a PNG.
    """
    from ._types import Explanation

    if target is None and isinstance(saliency, Explanation):
        target = saliency.target_class
    return pb.EvaluateRequest(
        model=model or "",
        input=make_input(image=image, tensor=tensor),
        inputs=input_map(inputs),
        saliency=_saliency_tensor(saliency),
        reduction=None if reduction is None
        else enum_value(pb.SaliencyReduction, "SALIENCY_REDUCTION_", reduction),
        target=make_target(target),
        objective=None if objective is None else enum_value(pb.Objective, "OBJECTIVE_", objective),
        metrics=_metric_values(metrics),
        deletion=_causal_options(deletion, "deletion"),
        insertion=_causal_options(insertion, "insertion"),
        pic=_pic_options(pic),
        batch_size=batch_size or 0,
        plot=plot,
    )


def instance(spec: Union[str, bytes, Mapping[str, Any]]) -> pb.Instance:
    """One instance of ExplainBatch: a text (str), an encoded image (bytes), or a dict of
    explain's input keywords (image, text, pair, features, tensor, inputs) and a target."""
    if isinstance(spec, str):
        spec = {"text": spec}
    elif isinstance(spec, (bytes, bytearray)):
        spec = {"image": spec}
    spec = dict(spec)
    inputs = spec.pop("inputs", None)
    target = spec.pop("target", None)
    return pb.Instance(input=make_input(**spec), inputs=input_map(inputs), target=make_target(target))
