"""integrad.lit.IntegradModel inside LIT (lit-nlp): its specs, predict, and LIT's own
model-provided salience interpreter showing integrad's Integrated Gradients."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from lit_nlp.api import dataset as lit_dataset
from lit_nlp.api import dtypes as lit_dtypes
from lit_nlp.api import types as lit_types
from lit_nlp.components import model_salience
from lit_nlp.lib import validation

from integrad.lit import IntegradModel

from conftest import PENGUIN, REVIEW


def lit_salience(model, examples):
    """What LIT's model-provided salience interpreter shows for the examples, after LIT
    checks the examples against the model's input spec and its outputs against the output
    spec."""
    dataset = lit_dataset.Dataset(spec=model.input_spec(), examples=examples)
    validation.validate_dataset(dataset)
    validation.validate_model(model, dataset)
    assert model.is_compatible_with_dataset(dataset)
    interpreter = model_salience.ModelSalience({"integrad": model})
    assert interpreter.is_compatible(model, dataset)
    return interpreter.run(examples, model, dataset)


def test_tabular_model_shows_the_feature_attributions(client, penguin_rows):
    model = IntegradModel(client, "penguins")
    assert list(model.input_spec()) == list(PENGUIN)
    assert model.input_spec()["island"].max_val == 2  # from the id range GetModel reports
    assert model.output_spec()["probas"].vocab == ["Adelie", "Chinstrap", "Gentoo"]
    examples = [PENGUIN, penguin_rows[0]]
    salience = lit_salience(model, examples)
    for example, shown in zip(examples, salience):
        e = client.explain(features=example, model="penguins")
        assert isinstance(shown["feature_salience"], lit_dtypes.FeatureSalience)
        # ExplainBatch against Explain: the same path in gradient runs of other sizes, equal up
        # to float32 rounding.
        assert shown["feature_salience"].salience == pytest.approx(
            {f.name: f.attribution for f in e.features}, rel=1e-4, abs=1e-6)
    probas = model.predict([PENGUIN])[0]["probas"]
    assert probas.argmax() == 0 and probas.sum() == pytest.approx(1, abs=1e-6)


def test_text_model_shows_the_token_attributions(client):
    model = IntegradModel(client, "sentiment", steps=32)
    assert isinstance(model.input_spec()["text"], lit_types.TextSegment)
    assert model.output_spec()["probas"].vocab == ["negative", "positive"]
    (shown,) = lit_salience(model, [{"text": REVIEW}])
    e = client.explain(text=REVIEW, model="sentiment", steps=32)
    salience = shown["token_salience"]
    assert isinstance(salience, lit_dtypes.TokenSalience)
    assert salience.tokens == [t.token for t in e.tokens]
    # As above: float32 rounding between ExplainBatch and Explain.
    np.testing.assert_allclose(salience.salience, [t.attribution for t in e.tokens], rtol=1e-4, atol=1e-6)


def test_image_model_shows_the_rendered_attribution_mask(client, coffee_png):
    model = IntegradModel(client, "efficientnet-lite0", steps=8)
    image = "data:image/png;base64," + base64.b64encode(coffee_png).decode()
    (shown,) = lit_salience(model, [{"image": image}])
    prefix = "data:image/png;base64,"
    assert shown["image_salience"].startswith(prefix)
    mask = base64.b64decode(shown["image_salience"][len(prefix):])
    assert mask.startswith(b"\x89PNG")
    # The server renders deterministically from deterministic attributions: the same mask.
    assert mask == client.explain(coffee_png, steps=8, render={"mask": True}).mask_png
    assert model.predict([{"image": image}])[0]["probas"].argmax() == 967  # espresso
