"""--cache-method forecast: precomputed extrapolation weights, and the runtime applying them."""

import json

import numpy as np
import pytest

from dmc.cache.forecast import annotate_calls, forecast_weights, lagrange_weights
from dmc.runtimes.pipeline import Pipeline
from dmc.sampling import Recipe
from dmc.sampling.calls import SamplerCall


@pytest.mark.parametrize("order", [1, 2])
def test_weights_reproduce_a_polynomial_of_their_order_exactly(order):
    rng = np.random.default_rng(order)
    coef = rng.standard_normal(order + 1)
    poly = lambda x: np.polyval(coef, x)  # noqa: E731
    written = np.array([1, 0, 0, 1, 0, 1, 1, 0, 0, 0], dtype=bool)
    weights = forecast_weights(written, order)
    assert set(weights) == {k for k in range(len(written)) if not written[k]}
    done = [k for k in range(len(written)) if written[k]]
    for k, w in weights.items():
        nodes = [d for d in reversed(done) if d < k][: order + 1]
        assert len(w) == len(nodes)
        if len(nodes) == order + 1:
            assert sum(wi * poly(n) for wi, n in zip(w, nodes)) == pytest.approx(poly(k), rel=1e-12, abs=1e-12)
    assert lagrange_weights([5.0], 7.0) == [1.0]  # order 0 is plain reuse


def test_order_one_misses_a_parabola():
    w = lagrange_weights([3.0, 0.0], 5.0)  # newest first
    assert w[0] * 9 + w[1] * 0 != 25


def test_runtime_feeds_the_forecast():
    """A fake two-graph network whose cached feature is a parabola of the call index: order-2
    forecasts feed the shallow graph the exact value it would have computed."""
    poly = lambda k: 0.5 * k * k - 2 * k + 3  # noqa: E731
    refresh = np.array([1, 1, 0, 1, 0, 0, 1, 0], dtype=bool)
    calls = [SamplerCall(float(999 - k), 1, 0, 0, 1, a=1.0, b=0.0, c=[0.0],
                         graph="full" if r else "shallow") for k, r in enumerate(refresh)]
    record = annotate_calls(calls, refresh, ["cache.deep"], order=2)
    assert record["forecast_reads"] == 4 and record["reads_at_full_order"] == 3

    class Fake:
        def __init__(self):
            self.k, self.seen = 0, {}

        def output_names(self, graph):
            return ["prediction", "cache.deep"] if graph == "full" else ["prediction"]

        def to_numpy(self, value):
            return value

        def run(self, graph, feeds):
            k, self.k = self.k, self.k + 1
            zero = np.zeros_like(feeds["sample"])
            if graph == "full":
                return [zero, np.full((1, 3), poly(k), np.float32)]
            self.seen[k] = feeds["cache.deep"]
            return [zero]

    fake = Fake()
    Pipeline(Recipe(steps=len(calls)), calls, (1, 2, 2), {"kind": "none"}, fake).sample(1)
    for k in (4, 5, 7):
        np.testing.assert_allclose(fake.seen[k], poly(k), rtol=1e-6)
    assert abs(float(fake.seen[2][0, 0]) - poly(2)) > 0.1  # two writes before call 2: order 1 misses the curve


@pytest.mark.slow
def test_compress_forecast_end_to_end(tmp_path, run_cli):
    out = tmp_path / "f.dmc"
    code, _, err = run_cli("compress", "demo", "--cache", "--cache-schedule", "uniform", "--cache-method", "forecast",
                           "--forecast-order", "2", "--steps", "8", "--out", out)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    calls = manifest["sampler"]["calls"]
    assert any("forecast" in c["extra"] for c in calls)
    assert all(("forecast" in c["extra"]) == (c["graph"] == "shallow") for c in calls)
    code, text, _ = run_cli("inspect", out)
    assert code == 0 and "forecast: cached features extrapolated (order 2" in text
