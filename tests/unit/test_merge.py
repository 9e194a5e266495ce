"""The exact merge: any partition of the pool, any batch size, gives the global top-k."""
import numpy as np
import pytest

from raydal.merge import RunningTopK, StreamingTopK, top_k


def test_top_k_orders_by_score_then_id():
    ids = np.array(["c", "a", "b", "d", "e"])
    scores = np.array([1.0, 2.0, 2.0, np.nan, 0.5])
    got_ids, got_scores = top_k(ids, scores, 3)
    assert got_ids.tolist() == ["a", "b", "c"]
    assert got_scores.tolist() == [2.0, 2.0, 1.0]


def test_top_k_drops_nan_and_handles_small_inputs():
    ids, scores = top_k(np.array(["x", "y"]), np.array([np.nan, 1.0]), 5)
    assert ids.tolist() == ["y"] and scores.tolist() == [1.0]
    ids, _ = top_k(np.array([], dtype=str), np.array([]), 3)
    assert len(ids) == 0


def _reference(ids, scores, k):
    """Sort everything in one go: the single-process answer."""
    order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))[:k]
    return [ids[i] for i in order]


@pytest.mark.parametrize("seed", range(12))
def test_any_partition_and_batching_gives_the_global_top_k(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    k = int(rng.integers(1, 400))
    ids = np.array([f"id{v:06d}" for v in rng.permutation(10 * n)[:n]])
    # few distinct values: many ties at the cut, the hard case for a merge
    scores = rng.integers(0, int(rng.integers(1, 50)), n).astype(np.float64)
    expected = _reference(ids.tolist(), scores.tolist(), k)

    num_shards = int(rng.integers(1, 9))
    shard_of = rng.integers(0, num_shards, n)
    merger = StreamingTopK(k)
    for shard in rng.permutation(num_shards):  # shards finish in any order
        idx = np.flatnonzero(shard_of == shard)
        batch = int(rng.integers(1, 300))
        for s in range(0, len(idx), batch):
            part = idx[s:s + batch]
            merger.add(*top_k(ids[part], scores[part], k))
    got_ids, got_scores = merger.result()
    assert got_ids.tolist() == expected
    assert np.all(np.diff(got_scores) <= 0)


@pytest.mark.parametrize("seed", range(12))
def test_running_top_k_per_shard_still_gives_the_global_top_k(seed):
    """Each shard passes on only what enters its own running top-k (as the scoring actors do)."""
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(1, 4000))
    k = int(rng.integers(1, 300))
    ids = np.array([f"id{v:06d}" for v in rng.permutation(10 * n)[:n]])
    scores = rng.integers(0, int(rng.integers(1, 80)), n).astype(np.float64)
    scores[rng.random(n) < 0.02] = np.nan  # unscorable rows are never picked
    keep = ~np.isnan(scores)
    expected = _reference(ids[keep].tolist(), scores[keep].tolist(), k)

    num_shards = int(rng.integers(1, 9))
    shard_of = rng.integers(0, num_shards, n)
    merger, passed = StreamingTopK(k), 0
    for shard in rng.permutation(num_shards):
        running = RunningTopK(k)
        idx = np.flatnonzero(shard_of == shard)
        batch = int(rng.integers(1, 300))
        for s in range(0, len(idx), batch):
            part = idx[s:s + batch]
            got = running.admit(ids[part], scores[part])
            passed += len(got[0])
            merger.add(*got)
    assert merger.result()[0].tolist() == expected
    assert passed <= n


def test_running_top_k_passes_on_few_rows_of_a_long_stream():
    """Random order: about k * (1 + ln(n / k)) rows pass, far fewer than k a batch."""
    rng = np.random.default_rng(0)
    n, k, batch = 200_000, 100, 1000
    ids = np.array([f"{i:07d}" for i in range(n)])
    scores = rng.random(n)
    running, passed = RunningTopK(k), 0
    for s in range(0, n, batch):
        passed += len(running.admit(ids[s:s + batch], scores[s:s + batch])[0])
    assert passed < 4 * k * (1 + np.log(n / k))  # ~ 860 expected; k a batch would be 20,000


def test_a_block_delivered_twice_never_picks_an_id_twice():
    """A re-run block (retried task, lineage rebuild) sends its rows again, scores a hair off."""
    rng = np.random.default_rng(7)
    ids = np.array([f"id{i:05d}" for i in range(5000)])
    scores = rng.random(5000)
    expected = _reference(ids.tolist(), scores.tolist(), 300)
    merger = StreamingTopK(300)
    for s in range(0, 5000, 250):
        merger.add(*top_k(ids[s:s + 250], scores[s:s + 250], 300))
        if s % 1000 == 0:  # this block again, its scores off in the last bits
            merger.add(*top_k(ids[s:s + 250], scores[s:s + 250] * (1 - 1e-15), 300))
    got, _ = merger.result()
    assert got.tolist() == expected


def test_streaming_top_k_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be a positive int, got 0"):
        StreamingTopK(0)


def test_running_top_k_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be a positive int, got -1"):
        RunningTopK(-1)
