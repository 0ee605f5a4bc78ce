"""integrad.Client against the real server and the demo models."""

from __future__ import annotations

import re

import numpy as np
import pytest

import integrad
from integrad import _tensors
from integrad.v1 import explainer_pb2

from conftest import PENGUIN, REPO, REVIEW, serve


def test_stubs_are_generated_from_the_repository_proto_into_the_installed_package():
    """The wheel's build made integrad.v1 from proto/: every rpc of the .proto is a method
    of the generated service, and the package is the installed one, not the source tree."""
    proto = (REPO / "proto" / "integrad" / "v1" / "explainer.proto").read_text()
    service = explainer_pb2.DESCRIPTOR.services_by_name["Explainer"]
    assert sorted(m.name for m in service.methods) == sorted(re.findall(r"^\s*rpc (\w+)\(", proto, re.M))
    assert REPO / "clients" / "python" / "src" not in __import__("pathlib").Path(integrad.__file__).parents


def test_tensors_round_trip_with_their_shape_and_dtype():
    floats = np.arange(6, dtype=">f8").reshape(2, 3)  # big-endian doubles: converted
    ids = np.array([[1, -2]], dtype=np.int32)
    assert _tensors.to_tensor(floats).dtype == explainer_pb2.DATA_TYPE_FLOAT32
    np.testing.assert_array_equal(_tensors.to_numpy(_tensors.to_tensor(floats)), floats.astype(np.float32))
    back = _tensors.to_numpy(_tensors.to_tensor(ids))
    assert back.dtype == np.int64 and back.shape == (1, 2) and back.tolist() == [[1, -2]]


def test_models_describe_the_three_demo_models(client):
    models = {m.name: m for m in client.models()}
    assert {name: m.modality for name, m in models.items()} == {
        "efficientnet-lite0": "image", "penguins": "tabular", "sentiment": "text"}
    assert all(m.state == "ready" and m.explainable for m in models.values())
    assert models["penguins"].features == list(PENGUIN)
    assert models["penguins"].labels == ["Adelie", "Chinstrap", "Gentoo"]
    assert models["penguins"].attribution_points == ["numeric", "/embedding/Gather_output_0"]
    assert client.model("sentiment").labels == ["negative", "positive"]
    assert client.default_model() == "efficientnet-lite0"


def test_predict_takes_each_kind_of_input(client, coffee_png):
    assert client.predict(coffee_png).top[0].label == "espresso"
    assert client.predict(text=REVIEW, model="sentiment").top[0].label == "negative"
    penguin = client.predict(features=PENGUIN, model="penguins", top_k=3)
    info = client.model("penguins")
    assert [p.label for p in penguin.top] == ["Adelie", "Chinstrap", "Gentoo"]
    assert penguin.logits.shape == (3,) and penguin.logits.dtype == np.float32
    # The same row as the model's two graph inputs (float measurements, integer ids), as
    # arrays: the same logits exactly.
    arrays = {t.name: np.array([PENGUIN[f] for f in t.features]) for t in info.inputs}
    assert arrays["categorical"].dtype.kind == "i"
    by_tensor = client.predict(model="penguins", inputs=arrays)
    np.testing.assert_array_equal(by_tensor.logits, penguin.logits)


def test_tabular_explanation_is_complete(client):
    e = client.explain(features=PENGUIN, model="penguins")
    assert (e.label, e.target_class, e.method, e.objective) == ("Adelie", 0, "trapezoid", "probability")
    assert list(e.tensor_attributions) == ["numeric", "/embedding/Gather_output_0"]
    assert e.tensor_attributions["/embedding/Gather_output_0"].shape == (2, 3)  # 2 ids x 3 dims
    np.testing.assert_array_equal(e.attributions, e.tensor_attributions["numeric"])
    total = sum(float(a.sum()) for a in e.tensor_attributions.values())
    # Completeness: the attributions add up to F(x) - F(x') but for the quadrature error the
    # server reports as convergence_delta; 1e-5 is float32 rounding over six terms near 1.
    assert abs(total - (e.score_input - e.score_baseline)) <= abs(e.convergence_delta) + 1e-5
    assert e.converged and e.relative_delta < 0.01
    assert [f.name for f in e.features] == list(PENGUIN)
    assert [f.value for f in e.features] == [float(v) for v in PENGUIN.values()]
    # The per-feature attributions are the tensors' (summed over the embedding axis for ids);
    # 1e-6: float32 sums in another order.
    assert sum(f.attribution for f in e.features) == pytest.approx(total, abs=1e-6)
    assert len(e.path) == e.steps + 1 and e.path[0].alpha == 0 and e.path[-1].alpha == 1
    assert e.path[-1].score == pytest.approx(e.score_input)


def test_explain_options_reach_the_server(client):
    e = client.explain(features=PENGUIN, model="penguins", target="gentoo", steps=20,
                       method="gauss-legendre", objective="logit", baseline="zeros")
    assert (e.target_class, e.label, e.steps) == (2, "Gentoo", 20)
    assert (e.method, e.objective) == ("gauss-legendre", "logit")
    assert [f.baseline for f in e.features[:4]] == [0.0] * 4  # the numeric columns at zero
    by_index = client.explain(features=PENGUIN, model="penguins", target=1, attribute_to=["numeric"])
    assert by_index.label == "Chinstrap" and list(by_index.tensor_attributions) == ["numeric"]


def test_text_explanation_has_the_tokens_and_words_of_the_text(client):
    e = client.explain(text=REVIEW, model="sentiment", steps=32)
    assert e.label == "negative"
    words = re.findall(r"\w+|[^\w\s]", REVIEW)  # BERT's pre-tokenizer: words and punctuation
    assert [w.word for w in e.words] == words
    assert all(REVIEW[w.start:w.end] == w.word for w in e.words)
    assert [t.token for t in e.tokens] == ["[CLS]"] + [w.lower() for w in words] + ["[SEP]"]
    assert [t.special for t in e.tokens] == [True] + [False] * len(words) + [True]
    assert e.attributions.shape == (len(e.tokens), 384)  # one row per token at the embeddings
    # A token's attribution is its row's sum; 1e-5: float32 sums over 384 values in another order.
    np.testing.assert_allclose([t.attribution for t in e.tokens], e.attributions.sum(axis=1), atol=1e-5)
    assert e.tokens[0].attribution == 0 and e.tokens[-1].attribution == 0  # [CLS], [SEP] kept in x'
    assert max(e.words, key=lambda w: w.attribution).word == "filthy"


def test_top_k_explains_each_class(client):
    both = client.explain(text=REVIEW, model="sentiment", top_k=2, steps=16)
    assert [e.label for e in both] == ["negative", "positive"]
    # The two classes' softmax probabilities at the input add up to 1 (float32 rounding).
    assert both[0].score_input + both[1].score_input == pytest.approx(1, abs=1e-6)


def test_image_attributions_have_the_model_input_shape(client, coffee_png):
    info = client.model("efficientnet-lite0")
    e = client.explain(coffee_png, steps=8, render={"mask": True, "colormap": "viridis"})
    assert e.attributions.shape == tuple(info.inputs[0].shape[1:]) == (3, 224, 224)
    assert e.attributions.dtype == np.float32 and np.abs(e.attributions).sum() > 0
    assert (e.target_class, e.label) == (967, "espresso")
    assert e.mask_png.startswith(b"\x89PNG") and e.overlay_png is None


def test_explain_stream_yields_progress_then_the_explanation(client):
    events = list(client.explain_stream(text=REVIEW, model="sentiment", steps=16, batch_size=4))
    kinds = [type(e).__name__ for e in events]
    # 17 alphas in batches of 4: five gradient runs, one Progress each, then the result.
    assert kinds == ["Progress"] * 5 + ["Explanation"]
    assert [p.steps_done for p in events[:-1]] == [4, 8, 12, 16, 17]
    assert events[-1].evaluations == 17
    seen = []
    client.explain(text=REVIEW, model="sentiment", steps=16, batch_size=4, on_progress=seen.append)
    assert [p.steps_done for p in seen] == [4, 8, 12, 16, 17]


def test_explain_batch_matches_single_explains(client, penguin_rows):
    rows = penguin_rows[:5]
    batch = list(client.explain_batch([{"features": r} for r in rows], model="penguins", results_per_event=2))
    assert sorted(e.instance for e in batch) == list(range(len(rows)))
    for e in batch:
        single = client.explain(features=rows[e.instance], model="penguins")
        assert e.label == single.label
        # The same path through the same model, run in a batch of another size: equal up to
        # float32 rounding.
        np.testing.assert_allclose([f.attribution for f in e.features],
                                   [f.attribution for f in single.features], rtol=1e-4, atol=1e-6)


def test_explain_batch_takes_texts_and_per_instance_targets(client):
    batch = sorted(client.explain_batch(["a wonderful stay", {"text": REVIEW, "target": "positive"}],
                                        model="sentiment", steps=8), key=lambda e: e.instance)
    assert [e.label for e in batch] == ["positive", "positive"]
    assert [t.token for t in batch[0].tokens] == ["[CLS]", "a", "wonderful", "stay", "[SEP]"]


def test_baselines_by_name_and_by_helper(client):
    median = client.explain(features=PENGUIN, model="penguins")  # the model's default baseline
    rows = client.explain(features=PENGUIN, model="penguins",
                          baseline=integrad.reference_baseline("rows", rows=16, seed=3))
    assert rows.score_baseline != median.score_baseline
    # Expected gradients: IG averaged over 16 reference rows still adds up to F(x) minus the
    # rows' mean F, within the reported delta (1e-5: float32 rounding, as above).
    total = sum(f.attribution for f in rows.features)
    assert abs(total - (rows.score_input - rows.score_baseline)) <= abs(rows.convergence_delta) + 1e-5
    pad = client.explain(text="great room", model="sentiment", steps=8)
    unk = client.explain(text="great room", model="sentiment", steps=8, baseline="unk")
    same_as_pad = client.explain(text="great room", model="sentiment", steps=8,
                                 baseline=integrad.text_baseline(ids=[101, 0, 0, 102]))  # [PAD] is id 0
    assert unk.score_baseline != pad.score_baseline
    assert same_as_pad.score_baseline == pad.score_baseline


def test_bad_arguments_are_refused_before_any_call(client):
    with pytest.raises(ValueError, match="gauss-legendre"):
        client.explain(features=PENGUIN, model="penguins", method="simpson")
    with pytest.raises(ValueError, match="one input"):
        client.predict(text=REVIEW, features=PENGUIN)
    with pytest.raises(ValueError, match="unknown baseline"):
        client.explain(text=REVIEW, baseline="grey")


def test_explanation_carries_the_predictor_check(client, address, models_dir, tmp_path):
    """A second server that checks each Explain against the first (same models) reports the
    served score; the first, without --predictor, reports none."""
    assert client.explain(model="penguins", features=PENGUIN, steps=16).predictor is None
    with serve(["--models", str(models_dir), "--predictor", f"http://{address}"], tmp_path) as checked:
        with integrad.Client(checked, timeout=300) as other:
            e = other.explain(model="penguins", features=PENGUIN, steps=16)
    check = e.predictor
    assert isinstance(check, integrad.PredictorCheck)
    assert check.consistent and check.warning == "", check
    assert check.url == f"http://{address}" and check.model == "penguins"
    # Both servers run the same ONNX file on the same inputs with the same threads: the
    # scores agree far inside the server's default 1e-3 tolerance.
    assert check.served_score == pytest.approx(e.score_input, rel=1e-6)
    assert check.own_score == e.score_input
