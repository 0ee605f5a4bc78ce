"""The techniques (Blur IG, Guided IG, XRAI, the noise tunnel) and Evaluate, through
integrad.Client against the real server and the image demo model.

Steps are small (8, or 4 under a noise tunnel): these tests check what the client sends and
surfaces, and the properties that hold at any step count, not the techniques' accuracy
(the Rust suite compares them with PAIR's and Captum's).
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

import integrad
from integrad.v1 import explainer_pb2

from conftest import PENGUIN, REPO

DATA = REPO / "tests" / "data"
# The image demo model's input: 3 x 224 x 224.
HEIGHT = WIDTH = 224


@pytest.mark.parametrize("technique, options", [
    ("blur-ig", {"blur_ig": {"max_sigma": 20.0, "grad_step": 0.02}}),
    ("guided-ig", {"guided_ig": {"fraction": 0.5, "max_dist": 0.05}}),
    ("ig", {}),
])
def test_each_technique_says_it_made_the_explanation(client, coffee_png, technique, options):
    e = client.explain(coffee_png, technique=technique, steps=8, **options)
    assert e.technique == technique
    assert (e.target_class, e.label, e.steps) == (967, "espresso", 8)
    assert e.attributions.shape == (3, HEIGHT, WIDTH) and np.abs(e.attributions).sum() > 0
    # Only XRAI has regions and pixel attributions beside its map; no noise tunnel was asked.
    assert (e.regions, e.pixel_attributions, e.noise_samples) == ([], None, 0)
    # The array decoded from the wire sums to the server's own attribution_sum; 1e-4 is
    # float32 summation over 150528 values in another order (the sums are about 0.3 to 2).
    assert float(e.attributions.sum(dtype=np.float64)) == pytest.approx(e.attribution_sum, abs=1e-4)


def test_blur_ig_starts_at_the_blur_its_options_ask_for(client, coffee_png):
    """Blur IG's baseline is the photo blurred by max_sigma: a 2-pixel blur is still an
    espresso, the default 50-pixel one is not (the options reach the server)."""
    slight = client.explain(coffee_png, technique="blur-ig", steps=8, blur_ig={"max_sigma": 2})
    default = client.explain(coffee_png, technique=explainer_pb2.TECHNIQUE_BLUR_IG, steps=8)
    assert slight.technique == default.technique == "blur-ig"
    # Measured: 0.40 and 0.0002 (F(input) is 0.96); the margins are wide on purpose.
    assert slight.score_baseline > 0.2 > 0.01 > default.score_baseline


def test_xrai_ranks_regions_that_tile_the_picture(client, coffee_png):
    e = client.explain(coffee_png, technique="xrai", steps=8, xrai={"min_pixel_diff": 50})
    assert (e.technique, e.label) == ("xrai", "espresso")
    # The map is one value per pixel; the IG attributions it ranked have the input's shape.
    assert e.attributions.shape == (HEIGHT, WIDTH)
    assert e.pixel_attributions.shape == (3, HEIGHT, WIDTH) and np.abs(e.pixel_attributions).sum() > 0
    regions = e.regions
    assert len(regions) > 1 and all(isinstance(r, integrad.XraiRegion) for r in regions)
    assert [r.rank for r in regions] == list(range(1, len(regions) + 1))
    # The default area_threshold (1) ranks the whole picture: the regions' own pixels (none
    # shared) add up to it, and the covered area grows to all of it.
    assert sum(r.pixels for r in regions) == HEIGHT * WIDTH
    areas = np.array([r.cumulative_area for r in regions])
    assert np.all(np.diff(areas) > 0) and 0 < areas[0]
    # float32 fractions of 50176 pixels: 1e-6 is their rounding.
    assert areas[-1] == pytest.approx(1, abs=1e-6)
    np.testing.assert_allclose(areas, np.cumsum([r.pixels for r in regions]) / (HEIGHT * WIDTH), atol=1e-6)
    # Every pixel of the map holds its region's gain: as many pixels hold each gain as its
    # region has (the gains of this photo are all distinct).
    gains = [np.float32(r.gain) for r in regions]
    assert len(set(gains)) == len(gains)
    assert [int((e.attributions == g).sum()) for g in gains] == [r.pixels for r in regions]


def test_noise_tunnel_reproduces_its_seed_bit_for_bit(client, coffee_png):
    tunnel = {"samples": 2, "stdev": 0.1, "kind": "smoothgrad", "seed": 7}
    first = client.explain(coffee_png, steps=4, noise_tunnel=tunnel)
    again = client.explain(coffee_png, steps=4, noise_tunnel=tunnel)
    other = client.explain(coffee_png, steps=4, noise_tunnel={**tunnel, "seed": 8})
    assert (first.noise_samples, first.technique) == (2, "ig")
    np.testing.assert_array_equal(first.attributions, again.attributions)
    assert not np.array_equal(first.attributions, other.attributions)
    plain = client.explain(coffee_png, steps=4)
    assert plain.noise_samples == 0 and not np.array_equal(plain.attributions, first.attributions)


def test_vargrad_is_a_variance(client, coffee_png):
    e = client.explain(coffee_png, technique="guided-ig", steps=4,
                       noise_tunnel={"samples": 2, "kind": "vargrad", "seed": 1})
    assert (e.technique, e.noise_samples) == ("guided-ig", 2)
    assert e.attributions.min() >= 0 and e.attributions.max() > 0


def test_evaluate_an_explanation_follows_its_target(client, coffee_png):
    """An Explanation as the map: its target is the evaluation's, the curves come in the
    order asked, and the plot is a PNG."""
    cup = client.explain(coffee_png, steps=8, target="cup")
    ev = client.evaluate(coffee_png, saliency=cup, metrics=["insertion", "deletion"], plot=True)
    assert isinstance(ev, integrad.Evaluation)
    assert (ev.model, ev.target_class, ev.label, ev.objective) == ("efficientnet-lite0", 968, "cup", "probability")
    assert [c.metric for c in ev.curves] == ["insertion", "deletion"]
    assert ev.plot_png.startswith(b"\x89PNG")
    deletion = ev.curve("deletion")
    # RISE's default step on a 224-wide input: 8 rows, 28 steps, 29 points from 0 to 1.
    assert deletion.x.shape == deletion.y.shape == (29,)
    assert deletion.x[0] == 0 and deletion.x[-1] == 1 and np.all(np.diff(deletion.x) > 0)
    assert np.all((deletion.y >= 0) & (deletion.y <= 1))  # probabilities
    assert all(0 <= auc <= 1 for auc in ev.auc.values()) and deletion.skipped == ""
    assert ev.images > 0 and ev.runs > 0


def test_evaluate_takes_xrai_region_maps_and_computes_the_information_curves(client, coffee_png):
    xrai = client.explain(coffee_png, technique="xrai", steps=8)
    ev = client.evaluate(coffee_png, saliency=xrai, metrics=["sic", "aic"])
    assert [c.metric for c in ev.curves] == ["sic", "aic"] and ev.label == "espresso"
    for curve in ev.curves:
        # The espresso's p = 0.96 is above PAIR's min_pred_value (0.8): not skipped.
        assert curve.skipped == "" and 0 <= curve.auc <= 1
        assert len(curve.thresholds) == 13  # PAIR's notebook's thresholds, the default
        assert curve.original_score > curve.blurred_score
        assert np.all(np.diff(curve.y) >= 0)  # keep_monotonous, the default
    # A plain array is a map too, and unasked for there is no plot.
    ranked = client.evaluate(coffee_png, saliency=xrai.attributions, metrics="sic")
    assert ranked.auc == {"sic": ev.auc["sic"]} and ranked.plot_png is None


def test_ig_deletes_the_cat_faster_than_a_random_map(client):
    """As tests/it/evaluate.rs: IG ranks the pixels whose removal lowers the cat's
    probability first, a random map (the fixture) removes cat and background alike. Measured
    areas: 0.027 (IG, Gauss-Legendre, 16 steps, from black as the Rust suite's Captum map)
    and 0.046 (random); the margin is the random order's slower fall over the first steps,
    not rounding. (From the zeros a tensor input gets by default IG's area is 0.052 here.)"""
    cat = np.load(DATA / "chelsea_input.npy")
    random_map = np.load(DATA / "metrics" / "chelsea_random_saliency.npy")
    ig = client.explain(tensor=cat, steps=16, method="gauss-legendre", baseline="black")
    assert ig.label == "tiger cat"
    ig_auc = client.evaluate(tensor=cat, saliency=ig, metrics="deletion").auc["deletion"]
    random_auc = client.evaluate(tensor=cat, saliency=random_map, metrics="deletion").auc["deletion"]
    assert 0 <= ig_auc < random_auc <= 1


@pytest.mark.parametrize("options, field", [
    # Blur IG's options on an IG request.
    ({"blur_ig": {"max_sigma": 10}}, "blur_ig"),
    ({"technique": "xrai", "guided_ig": {"fraction": 0.5}}, "guided_ig"),
    ({"technique": "guided-ig", "guided_ig": {"fraction": 2}}, "guided_ig"),
    ({"technique": "blur-ig", "blur_ig": {"max_sigma": -1}}, "blur_ig"),
    ({"noise_tunnel": {"samples": 2, "stdev": -1}}, "noise_tunnel.stdev"),
    ({"noise_tunnel": {"samples": 1, "seed": 3}}, "noise_tunnel.samples"),
])
def test_bad_technique_options_are_invalid_argument(client, coffee_png, options, field):
    with pytest.raises(integrad.Error) as raised:
        client.explain(coffee_png, steps=4, **options)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details.startswith(f"{field}:"), raised.value.details


def test_bad_evaluate_requests_are_refused_and_the_server_keeps_serving(client, coffee_png):
    with pytest.raises(integrad.Error) as raised:
        client.evaluate(coffee_png, saliency=np.ones((10, 10)))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details.startswith("saliency:")
    with pytest.raises(integrad.Error) as raised:
        client.explain(features=PENGUIN, model="penguins", technique="xrai")
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION  # no picture to segment
    assert client.predict(coffee_png).top[0].label == "espresso"


def test_bad_technique_arguments_are_refused_before_any_call(client, coffee_png):
    with pytest.raises(ValueError, match="blur-ig, guided-ig, xrai"):
        client.explain(coffee_png, technique="lime")
    with pytest.raises(ValueError, match="max_sigma, grad_step"):
        client.explain(coffee_png, technique="blur-ig", blur_ig={"sigma": 3})
    with pytest.raises(TypeError, match="GuidedIgOptions"):
        client.explain(coffee_png, technique="guided-ig", guided_ig=0.5)
    with pytest.raises(ValueError, match="smoothgrad-sq"):
        client.explain(coffee_png, noise_tunnel={"samples": 2, "kind": "smooth"})
    with pytest.raises(ValueError, match="deletion, insertion, sic, aic"):
        client.evaluate(coffee_png, saliency=np.ones((HEIGHT, WIDTH)), metrics=["auc"])
    with pytest.raises(ValueError, match="black, zeros, blur"):
        client.evaluate(coffee_png, saliency=np.ones((HEIGHT, WIDTH)), deletion={"substrate": "grey"})
