"""Explanation.to_shap(): shap.Explanation objects shap's own plots draw."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display: draw into memory

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import shap  # noqa: E402

from conftest import PENGUIN, REVIEW  # noqa: E402


@pytest.fixture(scope="module")
def penguin(client):
    return client.explain(features=PENGUIN, model="penguins")


def test_tabular_to_shap_is_the_features(penguin):
    s = penguin.to_shap()
    assert isinstance(s, shap.Explanation)
    assert s.feature_names == list(PENGUIN)
    np.testing.assert_array_equal(s.values, [f.attribution for f in penguin.features])
    np.testing.assert_array_equal(s.data, [float(v) for v in PENGUIN.values()])
    assert s.base_values == penguin.score_baseline
    # shap's additivity: base + sum(values) = F(x), up to the reported quadrature error
    # (1e-5: float32 rounding of six attributions near 1).
    assert abs(s.base_values + s.values.sum() - penguin.score_input) <= abs(penguin.convergence_delta) + 1e-5


@pytest.mark.parametrize("plot", ["bar", "waterfall"])
def test_shap_plots_draw_the_features(penguin, plot, tmp_path):
    getattr(shap.plots, plot)(penguin.to_shap(), show=False)
    figure = plt.gcf()
    labels = " ".join(t.get_text() for ax in figure.axes for t in ax.get_yticklabels())
    assert all(name in labels for name in PENGUIN), labels
    figure.savefig(tmp_path / f"{plot}.png")
    plt.close(figure)
    assert (tmp_path / f"{plot}.png").stat().st_size > 10_000  # a real picture, not an empty canvas


def test_text_to_shap_is_the_tokens(client):
    e = client.explain(text=REVIEW, model="sentiment", steps=16)
    s = e.to_shap()
    assert list(s.data) == [t.token for t in e.tokens]
    np.testing.assert_array_equal(s.values, [t.attribution for t in e.tokens])
    assert s.base_values == e.score_baseline


def test_image_to_shap_is_the_attribution_array(client, coffee_png):
    e = client.explain(coffee_png, steps=4)
    s = e.to_shap()
    assert s.values.shape == (3, 224, 224)
    np.testing.assert_array_equal(s.values, e.attributions)
    assert s.base_values == e.score_baseline
