"""Cache schedules (pure numpy): uniform, CacheQuant DPS, BAC (ACS + Bubbling Union), variant cap, drawing."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from dmc.cache import schedules as S
from dmc.cache.draw import schedule_png, schedule_text


def _features(k, shape=(3, 5), seed=0):
    """A drifting random walk, so nearby calls are similar (like a denoising trajectory)."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.standard_normal((k, *shape)) * rng.uniform(0.2, 2.0, size=(k, 1, 1)), axis=0)


# ----------------------------------------------------------------------------- uniform

def test_uniform_interval_one_is_all_full():
    assert S.uniform(7, 1).all()


def test_uniform_pattern_and_full_first():
    r = S.uniform(10, 3)
    assert r.tolist() == [k % 3 == 0 for k in range(10)]
    r2 = S.uniform(10, 4, full_first=2)
    assert r2[:2].all() and r2[4] and r2[8] and r2.sum() == 4
    assert len(S.uniform(1, 5)) == 1 and S.uniform(1, 5)[0]
    with pytest.raises(ValueError):
        S.uniform(5, 0)


# ----------------------------------------------------------------------------- CacheQuant DPS

def _groups(k, interval, full_first):
    forced = max(full_first - 1, 0)  # extra singleton groups, then ceil(rest / N) groups
    return forced + math.ceil((k - forced) / interval)


def _brute_force(features, interval, full_first, lo, hi):
    """Least DPS cost over every partition with G groups, bounds [lo, hi] on groups starting at or
    after full_first-1, and every call < full_first a group start."""
    k = len(features)
    groups = _groups(k, interval, full_first)
    forced = set(range(full_first))
    best = math.inf
    for starts in itertools.combinations(range(1, k), groups - 1):
        s = (0,) + starts
        if not forced <= set(s):
            continue
        ends = s[1:] + (k,)
        ok = all(lo <= e - b <= hi for b, e in zip(s, ends) if b >= full_first - 1)
        if not ok:
            continue
        r = np.zeros(k, dtype=bool)
        r[list(s)] = True
        best = min(best, S.partition_cost(features, r))
    return best


@pytest.mark.parametrize("k,interval,full_first,seed", [
    (9, 3, 1, 0), (10, 2, 1, 1), (11, 4, 1, 2), (12, 3, 2, 3), (10, 5, 1, 4), (12, 4, 3, 5), (8, 2, 2, 6),
])
def test_dps_is_optimal_vs_brute_force(k, interval, full_first, seed):
    f = _features(k, seed=seed)
    r = S.cachequant_dp(f, interval, full_first)
    groups = _groups(k, interval, full_first)
    assert len(r) == k and r.sum() == groups
    assert r[:full_first].all() and r[0]
    lo, hi = math.ceil(interval / 2), 2 * interval
    starts = np.flatnonzero(r).tolist()
    lengths = [e - b for b, e in zip(starts, starts[1:] + [k]) if b >= full_first - 1]
    assert all(lo <= n <= hi for n in lengths), lengths
    assert S.partition_cost(f, r) == pytest.approx(_brute_force(f, interval, full_first, lo, hi), rel=1e-12)


def test_dps_relaxes_bounds_when_infeasible():
    assert S.cachequant_dp(_features(2), 5).tolist() == [True, False]  # one group, shorter than ceil(N/2)
    assert S.cachequant_dp(_features(7), 4).sum() == 2  # lengths 3..8: e.g. 3 + 4
    assert S.cachequant_dp(_features(6, seed=2), 1).all()  # N = 1: every call is its own group
    r = S.cachequant_dp(_features(20, seed=3), 2, full_first=4)  # 3 extra singletons + ceil(17/2) groups
    assert r[:4].all() and r.sum() == 3 + 9
    r = S.cachequant_dp(_features(5, seed=4), 4, full_first=5)  # every call forced
    assert r.all()


def test_dps_prefers_refreshing_where_features_jump():
    f = np.zeros((12, 4))
    f[6:] = 10.0  # one big jump at call 6
    r = S.cachequant_dp(f, 6)
    assert r.tolist() == [k in (0, 6) for k in range(12)]


# ----------------------------------------------------------------------------- BAC

def _block_features(k=12, blocks=6, seed=0):
    rng = np.random.default_rng(seed)
    speed = rng.uniform(0.1, 3.0, size=(1, blocks, 1, 1))
    return np.cumsum(rng.standard_normal((k, blocks, 4, 6)) * speed, axis=0) + 5.0


def test_acs_segments_equal_budget_and_optimal():
    x = _block_features(9, 1, seed=1)[:, 0]
    sim = S.similarity_matrix(x, "cosine")
    for budget in (1, 2, 3, 5, 9):
        r = S.acs(sim, budget)
        assert r[0] and r.sum() == budget
        # brute force: every choice of budget-1 further starts
        def score(starts):
            s = list(starts) + [9]
            return sum(sim[a, a:b].sum() for a, b in zip(s, s[1:]))
        best = max(score((0,) + c) for c in itertools.combinations(range(1, 9), budget - 1))
        assert score(np.flatnonzero(r)) == pytest.approx(best)


def test_bac_budget_per_block_without_union():
    f = _block_features()
    for metric in ("cosine", "l1", "mse"):
        r = S.bac(f, budget=4, ffn_blocks=[1, 3, 5], n_bubbling=0, metric=metric)
        assert r.shape == (12, 6) and r.dtype == bool
        assert (r.sum(axis=0) == 4).all()
        assert r[0].all()


def test_bac_full_first_rows_all_true():
    r = S.bac(_block_features(), budget=4, ffn_blocks=[1, 3, 5], n_bubbling=2, full_first=2)
    assert r[:2].all()
    assert (r.sum(axis=0) >= 4).all()


def test_bubbling_union_property():
    f = _block_features(seed=3)
    ffn = [1, 3, 5]
    base = S.bac(f, budget=4, ffn_blocks=ffn, n_bubbling=0)
    r = S.bac(f, budget=4, ffn_blocks=ffn, n_bubbling=3)
    err = S.caching_error(f)
    upstream = np.argsort(-err, kind="stable")[:3]
    assert (r >= base).all()  # union only adds refreshes
    for u in upstream:
        for v in ffn:
            if v > u:  # an upstream block refreshes whenever a deeper FFN block refreshes
                assert not (r[:, v] & ~r[:, u]).any()
    others = [b for b in range(6) if b not in upstream]
    assert (r[:, others] == base[:, others]).all()


def test_caching_error_ranks_fast_moving_blocks_first():
    f = _block_features(seed=4)
    f[:, 2] *= 50.0
    assert int(np.argmax(S.caching_error(f))) == 2


def test_max_variants_caps_rows_and_only_adds_refreshes():
    f = _block_features(k=16, blocks=8, seed=5)
    ffn = [1, 3, 5, 7]
    free = S.bac(f, budget=5, ffn_blocks=ffn, n_bubbling=2)
    patterns, _ = S.distinct_rows(free)
    assert len(patterns) > 3
    for cap in (1, 2, 3, len(patterns)):
        capped = S.bac(f, budget=5, ffn_blocks=ffn, n_bubbling=2, max_variants=cap)
        assert len(S.distinct_rows(capped)[0]) <= cap
        assert (capped >= free).all()  # never refresh less than asked
        assert capped[0].all()
    assert S.bac(f, budget=5, ffn_blocks=ffn, n_bubbling=2, max_variants=1).all()


def test_cap_variants_without_superset_uses_union():
    r = np.array([[1, 0], [0, 1], [0, 1], [1, 0], [1, 0]], dtype=bool)
    capped = S.cap_variants(r, 1)
    assert capped.all()
    r = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=bool)
    capped = S.cap_variants(r, 2)
    assert len(S.distinct_rows(capped)[0]) == 2 and (capped >= r).all()


def test_distinct_rows():
    r = np.array([[1, 1], [0, 1], [1, 1], [0, 1], [0, 0]], dtype=bool)
    patterns, index = S.distinct_rows(r)
    assert patterns == [(True, True), (False, True), (False, False)]
    assert index.tolist() == [0, 1, 0, 1, 2]
    patterns, index = S.distinct_rows(np.array([True, False, True]))
    assert patterns == [(True,), (False,)] and index.tolist() == [0, 1, 0]


def test_schedule_lengths_match_calls_and_start_full():
    k = 20
    for r in (S.uniform(k, 3, 2), S.cachequant_dp(_features(k), 3, 2),
              S.bac(_block_features(k), 5, [1, 3, 5], 2, full_first=2, max_variants=4)):
        assert len(r) == k and np.all(r[:2])


# ----------------------------------------------------------------------------- drawing

def test_schedule_text_and_png(tmp_path):
    r = S.bac(_block_features(12, 4), 3, [1, 3], 1)
    text = schedule_text(r, ["b0.attn", "b0.mlp", "b1.attn", "b1.mlp"])
    lines = text.splitlines()
    assert lines[0].startswith("call") and lines[1].rstrip().endswith("012345678901"[-12:])
    rows = [ln for ln in lines if ln.startswith("b")]
    assert len(rows) == 4 and all(ln.count("█") + ln.count("·") == 12 for ln in rows)
    assert rows[0].split()[1][0] == "█"
    assert "call" in schedule_text(S.uniform(5, 2)).splitlines()[0]
    path = schedule_png(r, tmp_path / "s.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
