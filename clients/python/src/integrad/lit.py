"""A LIT (Learning Interpretability Tool, the lit-nlp package) model backed by integrad.

    from integrad.lit import IntegradModel
    model = IntegradModel(integrad.Client("127.0.0.1:50051"), "sentiment", steps=64)

Its outputs are the model's class probabilities (MulticlassPreds, with the model's labels)
and integrad's Integrated Gradients of the top class as the salience field LIT's
model-provided salience interpreter (lit_nlp.components.model_salience) shows: a
TokenSalience for text models, a FeatureSalience for tabular ones, an ImageSalience (the
server's rendered attribution mask) for images. The input spec comes from the server's
model info. Plain tensor models have no LIT input type and are refused.
"""

from __future__ import annotations

import base64
from typing import Any, Dict, Iterable, List, Optional

import numpy as np

try:
    from lit_nlp.api import dtypes as lit_dtypes
    from lit_nlp.api import model as lit_model
    from lit_nlp.api import types as lit_types
except ImportError as e:
    raise ImportError("integrad.lit needs the lit-nlp package: pip install lit-nlp") from e

from ._client import Client
from ._types import Explanation

JsonDict = Dict[str, Any]

# Field names of the examples and outputs.
TEXT, PAIR, IMAGE = "text", "pair", "image"
PROBAS, TOKENS = "probas", "tokens"
TOKEN_SALIENCE, FEATURE_SALIENCE, IMAGE_SALIENCE = "token_salience", "feature_salience", "image_salience"

_PNG_DATA_URL = "data:image/png;base64,"


class IntegradModel(lit_model.Model):
    """A model served by integrad, as a LIT model whose salience is integrad's IG."""

    def __init__(self, client: Client, model: Optional[str] = None, **explain_options):
        """client: a connected integrad.Client; model: the model's name (default: the server's
        default model); explain_options: Client.explain's options for every explanation
        (steps, method, baseline, ...)."""
        self._client = client
        self._info = client.model(model)
        self._modality = self._info.modality
        if self._modality == "tensor":
            raise ValueError(
                f"model {self._info.name!r} takes plain tensors, which LIT has no input type for")
        self._options = explain_options
        if self._modality == "image":
            # ImageSalience shows a picture: ask the server to render the attribution mask.
            self._options.setdefault("render", {"mask": True})
        self._labels = self._info.labels or [str(i) for i in range(self._info.outputs[0].shape[-1])]

    @classmethod
    def init_spec(cls) -> None:
        """None: LIT's UI cannot construct a model from a live Client (and, asked to infer
        a spec from __init__, LIT logs a warning saying so)."""
        return None

    def description(self) -> str:
        return f"integrad model {self._info.name!r} ({self._modality})"

    def input_spec(self) -> lit_types.Spec:
        if self._modality == "text":
            return {TEXT: lit_types.TextSegment(), PAIR: lit_types.TextSegment(required=False)}
        if self._modality == "image":
            return {IMAGE: lit_types.ImageBytes()}
        spec = {}
        for tensor in self._info.inputs:
            for column, name in enumerate(tensor.features):
                if tensor.id_max:  # ids looked up in a table: whole numbers in their range
                    i = column if len(tensor.id_max) > 1 else 0
                    spec[name] = lit_types.Scalar(min_val=tensor.id_min[i], max_val=tensor.id_max[i], step=1)
                else:
                    spec[name] = lit_types.Scalar()
        return spec

    def output_spec(self) -> lit_types.Spec:
        spec = {PROBAS: lit_types.MulticlassPreds(vocab=self._labels)}
        if self._modality == "text":
            spec[TOKENS] = lit_types.Tokens(parent=TEXT)
            spec[TOKEN_SALIENCE] = lit_types.TokenSalience(autorun=True, signed=True)
        elif self._modality == "image":
            # The server's mask is the sum over channels of |IG|: unsigned.
            spec[IMAGE_SALIENCE] = lit_types.ImageSalience(autorun=True, signed=False)
        else:
            spec[FEATURE_SALIENCE] = lit_types.FeatureSalience(autorun=True, signed=True)
        return spec

    def predict(self, inputs: Iterable[JsonDict], **unused_kw) -> List[JsonDict]:
        """Probabilities by Predict, salience by one ExplainBatch over all the examples."""
        instances = [self._instance(ex) for ex in inputs]
        explanations = sorted(
            self._client.explain_batch(instances, model=self._info.name, **self._options),
            key=lambda e: e.instance,
        )
        return [self._output(instance, explanation)
                for instance, explanation in zip(instances, explanations)]

    def _instance(self, example: JsonDict) -> JsonDict:
        """A LIT example as Client.explain_batch's instance (and Client.predict's keywords)."""
        if self._modality == "text":
            return {"text": example[TEXT], "pair": example.get(PAIR) or None}
        if self._modality == "image":
            image = example[IMAGE]
            return {"image": base64.b64decode(image[image.find(";base64,") + len(";base64,"):])}
        return {"features": {name: float(example[name]) for name in self._info.features}}

    def _output(self, instance: JsonDict, explanation: Explanation) -> JsonDict:
        prediction = self._client.predict(model=self._info.name, top_k=len(self._labels), **instance)
        probas = np.zeros(len(self._labels), dtype=np.float32)
        for p in prediction.top:
            probas[p.class_index] = p.probability
        output: JsonDict = {PROBAS: probas}
        if self._modality == "text":
            tokens = [t.token for t in explanation.tokens]
            output[TOKENS] = tokens
            output[TOKEN_SALIENCE] = lit_dtypes.TokenSalience(
                tokens=tokens, salience=np.array([t.attribution for t in explanation.tokens]))
        elif self._modality == "image":
            output[IMAGE_SALIENCE] = _PNG_DATA_URL + base64.b64encode(explanation.mask_png).decode("ascii")
        else:
            output[FEATURE_SALIENCE] = lit_dtypes.FeatureSalience(
                salience={f.name: f.attribution for f in explanation.features})
        return output
