"""Cache schedules: which model calls refresh (recompute) a cached feature.

Pure numpy. A schedule is a boolean array indexed by the model-call counter k (0 = the
noisiest call, ``algorithms.md`` §0.2): ``[K]`` for one cache point, ``[K, B]`` for B
cached blocks (branches). True means "compute and store", False "reuse the stored value".

- ``uniform``: every ``interval``-th call refreshes (DeepCache, §4).
- ``cachequant_dp``: CacheQuant's dynamic-programming schedule DPS (§5.2).
- ``bac``: BAC's per-block adaptive caching scheduler plus Bubbling Union (§6.2–6.3), with
  an optional cap on the number of distinct per-call patterns (each one is a compiled graph).
- ``distinct_rows``: deduplicate the per-call patterns of a ``[K, B]`` schedule.
"""

from __future__ import annotations

import math

import numpy as np

METRICS = ("cosine", "l1", "mse")


def _check_full_first(num_calls: int, full_first: int) -> int:
    if full_first < 0:
        raise ValueError(f"full_first must be >= 0, got {full_first}")
    return min(full_first, num_calls)


def uniform(num_calls: int, interval: int, full_first: int = 1) -> np.ndarray:
    """Refresh at calls 0, N, 2N, ... and at the first ``full_first`` calls (DeepCache's uniform schedule)."""
    if num_calls < 1:
        raise ValueError(f"num_calls must be >= 1, got {num_calls}")
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    full_first = _check_full_first(num_calls, full_first)
    refresh = np.arange(num_calls) % interval == 0
    refresh[:full_first] = True
    return refresh


# --------------------------------------------------------------------------- CacheQuant DPS


CHUNK = 1 << 20  # feature elements per call processed at once (bounds temporary memory)


def _pairwise_l1(features: np.ndarray) -> np.ndarray:
    """``dist[i, k] = ||X^k - X^i||_1`` over everything but the call axis (float64 sums, computed in
    chunks of the feature axis so large DiT feature sets need no float64 copy)."""
    flat = np.asarray(features).reshape(len(features), -1)
    k = len(flat)
    dist = np.zeros((k, k))
    for s in range(0, flat.shape[1], CHUNK):
        c = flat[:, s:s + CHUNK].astype(np.float64)
        for i in range(k):
            dist[i] += np.abs(c - c[i]).sum(axis=1)
    return dist


def _group_costs(dist: np.ndarray) -> np.ndarray:
    """``cost[i, j] = D(i, j) = sum_{k=i}^{j-1} dist[i, k]`` for j >= i (prefix sums per row)."""
    k = len(dist)
    upper = np.triu(dist)  # only k >= i contributes
    cs = np.zeros((k, k + 1))
    cs[:, 1:] = np.cumsum(upper, axis=1)
    return cs  # D(i, j) = cs[i, j] (the k < i part of each row is zero)


def _length_bounds(n: int, groups: int, lo: int, hi: int) -> tuple[int, int]:
    """Relax ``[lo, hi]`` just enough that ``n`` calls can be cut into ``groups`` groups."""
    if groups * lo > n:
        lo = n // groups
    if groups * hi < n:
        hi = math.ceil(n / groups)
    return max(lo, 1), max(hi, 1)


def cachequant_dp(features: np.ndarray, interval: int, full_first: int = 1) -> np.ndarray:
    """CacheQuant's DPS (Fisher's optimal ordered partition, ``algorithms.md`` §5.2).

    ``features[k]`` is the cache-point feature of the uncached model at call k (any trailing
    shape, e.g. ``[samples, C, H, W]``). The K calls are cut into G = ceil(K/N) runs of
    consecutive calls; each run reuses the feature of its first call, costing
    D(i, j) = sum_{k=i}^{j-1} ||X^k - X^i||_1. The total cost is minimised with run lengths in
    [ceil(N/2), 2N] (relaxed when no partition fits, e.g. for small K). The first ``full_first``
    calls are forced refreshes: calls 0..full_first-2 are extra singleton runs (exempt from the
    bounds) and the remaining K' = K - full_first + 1 calls, starting at call full_first-1, are
    cut into ceil(K'/N) runs, as ``uniform`` adds its forced calls on top of every N-th one.
    Returns the refresh mask ``[K]`` (the run starts).
    """
    features = np.asarray(features)
    num_calls = len(features)
    if num_calls < 1:
        raise ValueError("features must hold at least one call")
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    full_first = _check_full_first(num_calls, full_first)
    forced = max(full_first - 1, 0)  # singleton runs before the first constrained run
    rest_calls = num_calls - forced
    rest_groups = math.ceil(rest_calls / interval)
    lo, hi = _length_bounds(rest_calls, rest_groups, math.ceil(interval / 2), 2 * interval)

    cost = _group_costs(_pairwise_l1(features))
    inf = np.inf
    # best[g, n]: least cost of cutting calls [forced, forced + n) into g runs
    best = np.full((rest_groups + 1, rest_calls + 1), inf)
    arg = np.zeros((rest_groups + 1, rest_calls + 1), dtype=np.int64)  # length of the last run
    best[0, 0] = 0.0
    ends = np.arange(rest_calls + 1)
    for g in range(1, rest_groups + 1):
        for length in range(lo, hi + 1):
            n = ends[length:]  # run [n - length, n) in rest coordinates
            start = n - length
            cand = best[g - 1, start] + cost[forced + start, forced + n]
            better = cand < best[g, n]
            best[g, n[better]] = cand[better]
            arg[g, n[better]] = length
    if not np.isfinite(best[rest_groups, rest_calls]):  # cannot happen after _length_bounds
        raise RuntimeError("no feasible partition")
    refresh = np.zeros(num_calls, dtype=bool)
    refresh[:forced] = True
    n = rest_calls
    for g in range(rest_groups, 0, -1):
        n -= arg[g, n]
        refresh[forced + n] = True
    return refresh


def partition_cost(features: np.ndarray, refresh: np.ndarray) -> float:
    """Total DPS cost of a refresh mask: each call pays its L1 distance to the last refresh."""
    dist = _pairwise_l1(features)
    last, total = 0, 0.0
    for k, r in enumerate(np.asarray(refresh, dtype=bool)):
        if r:
            last = k
        total += dist[last, k]
    return float(total)


# --------------------------------------------------------------------------- BAC


def _block(block_features: np.ndarray, b: int) -> np.ndarray:
    """Block b of ``[K, B, ...]`` as float64 ``[K, S, F]``: the first trailing axis is the sample axis
    when there are at least two trailing axes, else the whole block output is one sample. One
    block at a time, so the whole feature set is never copied to float64."""
    x = np.asarray(block_features[:, b])
    k = len(x)
    if x.ndim == 1:
        return x.reshape(k, 1, 1).astype(np.float64)
    if x.ndim == 2:
        return x.reshape(k, 1, -1).astype(np.float64)
    return x.reshape(k, x.shape[1], -1).astype(np.float64)


def similarity_matrix(x: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """``S[a, t]`` between one block's outputs at calls a and t, averaged over samples.

    ``x``: ``[K, S, F]``. Cosine is a similarity (larger is better); ``l1`` (sum of |diff|) and
    ``mse`` are distances (smaller is better).
    """
    if metric == "cosine":
        unit = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        return np.einsum("asf,tsf->ats", unit, unit).mean(axis=-1)
    if metric == "l1":
        return np.stack([np.abs(x - x[a]).sum(axis=-1).mean(axis=-1) for a in range(len(x))])
    if metric == "mse":
        return np.stack([((x - x[a]) ** 2).mean(axis=-1).mean(axis=-1) for a in range(len(x))])
    raise ValueError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)})")


def acs(similarity: np.ndarray, budget: int, full_first: int = 1, maximize: bool = True) -> np.ndarray:
    """BAC's adaptive caching scheduler for one block (``algorithms.md`` §6.2).

    Chooses ``budget`` segments tiling calls [0, K-1], the first starting at 0, that maximise
    (or minimise, for distances) sum over segments [a, b] of sum_{t=a}^{b} S[a, t]. Segment
    starts are the refresh calls. The first ``full_first`` calls are forced starts (counted in
    the budget, which grows to ``full_first`` if smaller). Returns the mask ``[K]``.
    """
    s = np.asarray(similarity, dtype=np.float64)
    num_calls = len(s)
    full_first = _check_full_first(num_calls, full_first)
    budget = int(min(max(budget, full_first, 1), num_calls))
    sign = 1.0 if maximize else -1.0
    # seg[a, b] = sign * sum_{t=a}^{b} S[a, t] for b >= a; -inf elsewhere (maximised below)
    seg = sign * np.cumsum(np.triu(s), axis=1)
    seg[np.tril_indices(num_calls, -1)] = -np.inf
    for a in range(max(full_first - 1, 0)):  # a forced start before the last forced one: singleton
        seg[a, a + 1:] = -np.inf
    # dp[m, i]: best score of m segments tiling [0, i]; prev[m, i]: start of the last one
    dp = np.full((budget + 1, num_calls), -np.inf)
    prev = np.zeros((budget + 1, num_calls), dtype=np.int64)
    dp[1] = seg[0]
    for m in range(2, budget + 1):
        # last segment [j + 1, i]: dp[m-1, j] + seg[j + 1, i] for j < i
        cand = dp[m - 1, :-1, None] + seg[1:, :]  # [j, i]
        j = np.argmax(cand, axis=0)
        dp[m] = cand[j, np.arange(num_calls)]
        prev[m] = j + 1
    if not np.isfinite(dp[budget, num_calls - 1]):
        raise RuntimeError("no feasible segmentation")
    refresh = np.zeros(num_calls, dtype=bool)
    i = num_calls - 1
    for m in range(budget, 1, -1):
        start = prev[m, i]
        refresh[start] = True
        i = start - 1
    refresh[0] = True
    return refresh


def caching_error(block_features: np.ndarray) -> np.ndarray:
    """BAC's per-block caching error l_j = mean over (t, u) of ||X_j^t - X_j^u||_1, averaged over samples."""
    block_features = np.asarray(block_features)
    errs = []
    for b in range(block_features.shape[1]):
        xb = _block(block_features, b)
        errs.append(np.mean([np.abs(xb - xb[t]).sum(axis=-1).mean(axis=-1).mean() for t in range(len(xb))]))
    return np.asarray(errs)


def bubbling_blocks(block_features: np.ndarray, n_bubbling: int) -> list[int]:
    """BAC's upstream set U (§6.3 stage 1): the ``n_bubbling`` blocks with the largest caching error."""
    err = caching_error(np.asarray(block_features))
    return [int(i) for i in np.argsort(-err, kind="stable")[:n_bubbling]]


def bubbling_union(refresh: np.ndarray, upstream: list[int], ffn_blocks: list[int]) -> np.ndarray:
    """BAC's Bubbling Union (§6.3): each upstream block also refreshes whenever an FFN block at
    the same or a deeper position (block index >= its own) refreshes."""
    out = np.array(refresh, dtype=bool, copy=True)
    for u in upstream:
        deeper = [v for v in ffn_blocks if v >= u and v != u]
        if deeper:
            out[:, u] |= refresh[:, deeper].any(axis=1)
    return out


def distinct_rows(refresh: np.ndarray) -> tuple[list[tuple], np.ndarray]:
    """Distinct per-call patterns in order of first use, and each call's pattern index."""
    r = np.asarray(refresh, dtype=bool)
    if r.ndim == 1:
        r = r[:, None]
    patterns: list[tuple] = []
    where: dict[tuple, int] = {}
    index = np.zeros(len(r), dtype=np.int64)
    for k, row in enumerate(r):
        key = tuple(bool(v) for v in row)
        if key not in where:
            where[key] = len(patterns)
            patterns.append(key)
        index[k] = where[key]
    return patterns, index


def cap_variants(refresh: np.ndarray, max_variants: int) -> np.ndarray:
    """Merge patterns until at most ``max_variants`` distinct rows remain, only ever adding refreshes.

    Greedy: take the rarest pattern p (ties: the one used last) and move its calls to the
    cheapest pattern that refreshes a superset of p, counting cost as refreshes added over all
    calls: an existing superset q costs count(p)·|q∖p|; the union p∪q of p with any other
    pattern q costs count(p)·|q∖p| + count(q)·|p∖q| (q's calls are upgraded too).
    """
    if max_variants < 1:
        raise ValueError(f"max_variants must be >= 1, got {max_variants}")
    r = np.array(refresh, dtype=bool, copy=True)
    while True:
        patterns, index = distinct_rows(r)
        if len(patterns) <= max_variants:
            return r
        pats = np.array(patterns, dtype=bool)
        counts = np.bincount(index, minlength=len(patterns))
        order = sorted(range(len(patterns)), key=lambda i: (counts[i], -i))
        p = order[0]
        best = None  # (cost, kind, q, new_pattern)
        for q in range(len(patterns)):
            if q == p:
                continue
            add_p = int((pats[q] & ~pats[p]).sum())
            if not (pats[p] & ~pats[q]).any():  # q is a superset of p
                cand = (counts[p] * add_p, 0, q, pats[q])
            else:
                union = pats[p] | pats[q]
                cand = (counts[p] * add_p + counts[q] * int((pats[p] & ~pats[q]).sum()), 1, q, union)
            if best is None or cand[:2] < best[:2]:
                best = cand
        _, kind, q, new = best
        r[index == p] = new
        if kind == 1:
            r[index == q] = new


def bac(block_features: np.ndarray, budget: int, ffn_blocks: list[int], n_bubbling: int,
        full_first: int = 1, metric: str = "cosine", max_variants: int | None = None) -> np.ndarray:
    """BAC: per-block adaptive caching schedules plus Bubbling Union (``algorithms.md`` §6).

    ``block_features[k, b]``: the output of block (branch) b at call k of the uncached model;
    trailing axes ``[samples, ...]`` (or one unbatched vector). Block index order must be depth
    order; ``ffn_blocks`` lists the indices that are FFN/MLP branches.

    1. ACS: per block, ``budget`` refresh calls from the similarity DP (``acs``).
    2. Bubbling Union: the ``n_bubbling`` blocks with the largest caching error l_j also refresh
       whenever any FFN block at the same or a deeper index refreshes.
    3. ``max_variants``: at most that many distinct per-call patterns (compiled graphs), by
       merging patterns upward (``cap_variants``; never fewer refreshes than asked).

    The first ``full_first`` rows are all True. Returns ``[K, B]`` bool.
    """
    block_features = np.asarray(block_features)
    if block_features.ndim < 2:
        raise ValueError("block_features must be [K, B, ...]")
    num_calls, num_blocks = block_features.shape[:2]
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)})")
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    bad = [v for v in ffn_blocks if not 0 <= v < num_blocks]
    if bad:
        raise ValueError(f"ffn_blocks {bad} out of range for {num_blocks} blocks")
    refresh = np.stack([
        acs(similarity_matrix(_block(block_features, b), metric), budget, full_first,
            maximize=(metric == "cosine"))
        for b in range(num_blocks)
    ], axis=1)
    if n_bubbling > 0:
        refresh = bubbling_union(refresh, bubbling_blocks(block_features, n_bubbling), list(ffn_blocks))
    if max_variants is not None:
        refresh = cap_variants(refresh, max_variants)
    refresh[:_check_full_first(num_calls, full_first)] = True
    return refresh


__all__ = ["uniform", "cachequant_dp", "bac", "acs", "bubbling_blocks", "bubbling_union", "cap_variants", "caching_error",
           "similarity_matrix", "distinct_rows", "partition_cost"]
