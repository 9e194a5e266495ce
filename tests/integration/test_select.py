"""Distributed selection on a real local Ray cluster equals single-process selection."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

import raydal
from raydal.errors import SelectionError
from raydal.merge import top_k
from raydal.models import ModelSpec, create_model, save_checkpoint
from raydal.pool import Pool
from raydal.scoring import create_strategy
from raydal.selection import (DecodeJob, ModelSource, Scorer, ScoringJob, decode_block,
                              iter_labeled_batches)
from raydal.transforms import InputSpec, decode_rows, to_model_input

pytestmark = pytest.mark.integration
SPEC = ModelSpec(name="test_resnet", num_classes=10, in_chans=1, img_size=32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, random_images):
    root = tmp_path_factory.mktemp("select")
    images = random_images(300, seed=1)
    pool = Pool.from_numpy(images, path=root / "pool.parquet")
    model = create_model(SPEC, seed=0).eval()
    ckpt = save_checkpoint(model, SPEC, root / "ckpt")
    labels = {f"{i:08d}": i % 10 for i in range(0, 300, 15)}  # 20 labeled rows
    return pool, model, ckpt, labels


def reference_scores(pool, model, strategy_name, labels, options=None):
    """Score every unlabeled row in one call in this process: ids (N,) str, scores (N,)
    float64 and the model inputs x (N, C, S, S)."""
    table = pq.read_table(pool.path)
    keep = [i for i, v in enumerate(table.column("id").to_pylist()) if v not in labels]
    ids = np.asarray(table.column("id").to_pylist(), dtype=str)[keep]
    arr, ok, bad = decode_rows([table.column("image")[i].as_py() for i in keep], None,
                               SPEC.input_spec)
    assert not bad
    strategy = create_strategy(strategy_name, **(options or {}))
    context = None
    if strategy.needs_labeled:
        context = strategy.prepare(model, iter_labeled_batches(pool, labels, SPEC.input_spec,
                                                                64, "cpu"))
    x = to_model_input(arr, SPEC.input_spec)
    return ids, strategy.score(model, x, ids.tolist(), context).double().numpy(), x


def single_process(pool, model, strategy_name, budget, labels, options=None):
    """Score every unlabeled row in one call in this process and sort: the reference."""
    ids, scores, _ = reference_scores(pool, model, strategy_name, labels, options)
    return top_k(ids, scores, budget)


@pytest.mark.parametrize("strategy, options", [
    ("dynamicAL", {}), ("dynamicAL", {"ip_weight": 2.0}), ("entropy", {}), ("random", {})],
    ids=["dynamicAL", "dynamicAL-paper", "entropy", "random"])
def test_any_actor_count_and_batch_size_gives_the_single_process_picks(
        ray_cluster, setup, strategy, options):
    pool, model, ckpt, labels = setup
    ref_ids, ref_scores = single_process(pool, model, strategy, 25, labels, options)
    layouts = [("fused", 1, 1000, None), ("fused", 2, 64, None), ("fused", 2, 7, None),
               ("staged", 1, 1000, 1), ("staged", 2, 7, None)]
    for pipeline, num_actors, batch_size, decode_tasks in layouts:
        sel = raydal.select(pool, ckpt, strategy, budget=25, labeled=labels,
                            num_actors=num_actors, batch_size=batch_size, progress=False,
                            strategy_options=options, pipeline=pipeline,
                            decode_tasks=decode_tasks)
        assert sel.pipeline == pipeline
        assert sel.ids == ref_ids.tolist(), (pipeline, num_actors, batch_size)
        np.testing.assert_allclose(sel.scores, ref_scores, rtol=1e-5)
        assert sel.num_scored == 300 - len(labels)
        assert not set(sel.ids) & set(labels)


@pytest.mark.parametrize("pipeline", ["fused", "staged"])
def test_select_accepts_an_in_memory_module_and_skips_corrupt_images(ray_cluster, setup,
                                                                     tmp_path, pipeline):
    pool, model, _, labels = setup
    table = pq.read_table(pool.path)
    images = table.column("image").to_pylist()
    images[3], images[4] = b"", b"\x89PNG truncated"
    bad_pool = tmp_path / "bad.parquet"
    pq.write_table(table.set_column(1, "image", pa.array(images, pa.binary())), bad_pool,
                   row_group_size=50)
    sel = raydal.select(bad_pool, model, "entropy", budget=10, num_actors=2, batch_size=32,
                        input_spec=SPEC.input_spec, progress=False, pipeline=pipeline)
    assert len(sel.ids) == 10 and sel.num_scored == 298
    assert sorted(i for i, _ in sel.skipped) == ["00000003", "00000004"]
    assert "00000003" not in sel.ids


def test_select_explains_missing_inputs(ray_cluster, setup):
    pool, model, ckpt, labels = setup
    with pytest.raises(ValueError, match="needs the labels of the labeled set"):
        raydal.select(pool, ckpt, "dynamicAL", budget=5, labeled=list(labels), progress=False,
                      strategy_options={"ip_weight": 2.0})
    with pytest.raises(ValueError, match="budget must be a positive int, got 0"):
        raydal.select(pool, ckpt, "entropy", budget=0, progress=False)
    with pytest.raises(ValueError, match="pipeline must be one of 'auto', 'staged', 'fused', "
                                         "got 'gpu'"):
        raydal.select(pool, ckpt, "entropy", budget=5, progress=False, pipeline="gpu")
    with pytest.raises(ValueError, match="decode_tasks must be a positive int or None, got 0"):
        raydal.select(pool, ckpt, "entropy", budget=5, progress=False, decode_tasks=0)


def test_select_infers_the_input_spec_of_an_array_pool(ray_cluster, setup, tmp_path,
                                                       random_images):
    pool, model, _, _ = setup  # Pool.from_numpy of (300, 28, 28) uint8
    got = raydal.select(pool, model, "entropy", budget=10, num_actors=1, batch_size=64,
                        progress=False)
    want = raydal.select(pool, model, "entropy", budget=10, num_actors=1, batch_size=64,
                         input_spec=InputSpec(1, 28), progress=False)
    assert got.ids == want.ids and np.array_equal(got.scores, want.scores)
    assert got.num_scored == 300

    # not known: a Parquet pool that does not record its images' shape, non-square arrays
    plain = tmp_path / "plain.parquet"
    pq.write_table(pq.read_table(pool.path).replace_schema_metadata(None), plain)
    with pytest.raises(ValueError, match=r"input_spec is required .* does not record its "
                                         r"images' shape .*pass input_spec=InputSpec"):
        raydal.select(plain, model, "entropy", budget=5, progress=False)
    wide = Pool.from_numpy(random_images(4, size=8)[:, :, :6], path=tmp_path / "wide.parquet")
    with pytest.raises(ValueError, match="its images are 8x6 with 1 channels"):
        raydal.select(wide, model, "entropy", budget=2, progress=False)


@pytest.mark.parametrize("strategy, pipeline", [("dynamicAL", "fused"), ("entropy", "fused"),
                                                ("entropy", "staged")])
def test_a_pool_folder_with_an_empty_file_gives_the_single_process_picks(
        ray_cluster, setup, tmp_path, strategy, pipeline):
    """A folder of Parquet parts, one of them with no rows (a shard a writer left empty): the
    picks are those of the one-file pool. (Whether Ray Data hands the scorers an empty block
    for that part is its choice; the next test covers the empty block itself.)"""
    pool, model, ckpt, labels = setup
    table = pq.read_table(pool.path)
    folder = tmp_path / "parts"
    folder.mkdir()
    for name, part in [("a", table.slice(0, 140)), ("b", table.slice(0, 0)),
                       ("c", table.slice(140))]:
        pq.write_table(part, folder / f"part-{name}.parquet")
    want = raydal.select(pool, ckpt, strategy, budget=12, labeled=labels, num_actors=1,
                         batch_size=64, progress=False)
    got = raydal.select(Pool(folder), ckpt, strategy, budget=12, labeled=labels, num_actors=2,
                        batch_size=64, progress=False, pipeline=pipeline)
    assert got.ids == want.ids and got.num_scored == want.num_scored == 300 - len(labels)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)


@pytest.mark.parametrize("pipeline", ["fused", "staged"])
def test_a_pool_with_no_rows_is_a_clear_error(ray_cluster, setup, tmp_path, pipeline):
    """A Parquet pool with no rows (a traceback found by benchmarks/fuzz.py): one SelectionError
    that says so, whatever the strategy and pipeline."""
    pool, model, ckpt, labels = setup
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(pool.path).slice(0, 0), empty)
    for strategy in ("random", "entropy"):
        with pytest.raises(SelectionError, match="has no unlabeled image left"):
            raydal.select(Pool(empty), ckpt, strategy, budget=5, num_actors=2, batch_size=64,
                          input_spec=SPEC.input_spec, progress=False, pipeline=pipeline)


@pytest.mark.parametrize("strategy", ["entropy", "badge"])
def test_an_empty_block_gives_the_columns_of_a_scored_one_with_no_rows(ray_cluster, setup,
                                                                        strategy):
    pool, _, ckpt, labels = setup
    job = ScoringJob("empty-block", ModelSource(checkpoint=str(ckpt)), pool,
                     create_strategy(strategy), [ray.put(None)],
                     [ray.put(frozenset(labels))], k=5, batch_size=64)
    scorer = Scorer(job)
    rows = pq.read_table(pool.path).slice(0, 40).to_pydict()
    full = scorer.score_block({c: np.asarray(v, dtype=object) for c, v in rows.items()})
    empty = scorer.score_block({c: np.asarray([], dtype=object) for c in rows})
    assert list(empty) == list(full) and len(full["id"]) > 0
    assert all(len(v) == 0 and v.dtype == full[c].dtype for c, v in empty.items())

    # the staged pipeline: a decode task's empty block, then the scorer's
    decode_job = DecodeJob("empty-block", pool, SPEC.input_spec, [ray.put(frozenset(labels))])
    decoded = decode_block({c: np.asarray(v, dtype=object) for c, v in rows.items()}, decode_job)
    nothing = decode_block({c: np.asarray([], dtype=object) for c in rows}, decode_job)
    assert nothing["image"].shape == (0, *decoded["image"].shape[1:])
    assert list(nothing) == list(decoded) and all(len(v) == 0 for v in nothing.values())
    staged, staged_empty = scorer.score_decoded(decoded), scorer.score_decoded(nothing)
    assert list(staged_empty) == list(staged) == list(full)
    assert all(len(v) == 0 and v.dtype == staged[c].dtype for c, v in staged_empty.items())
    # the labeled rows are dropped by the decode task; the rest score as in the fused task
    unlabeled = [i for i in rows["id"] if i not in labels]
    assert decoded["id"].tolist() == unlabeled
    assert staged["id"].tolist() == [i for i in full["id"] if i in set(unlabeled)]


def test_decode_tasks_keep_unreadable_rows_with_their_reason(ray_cluster, setup):
    pool, _, _, _ = setup
    rows = pq.read_table(pool.path).slice(0, 6).to_pydict()
    rows["image"][2] = b"not an image"
    job = DecodeJob("bad-rows", pool, SPEC.input_spec, [ray.put(frozenset(["00000000"]))])
    out = decode_block({c: np.asarray(v, dtype=object) for c, v in rows.items()}, job)
    assert out["id"].tolist() == [f"{i:08d}" for i in range(1, 6)]
    assert out["status"][1].startswith("cannot decode image") and out["image"][1].max() == 0
    assert all(s == "" for k, s in enumerate(out["status"]) if k != 1)
    want, _, _ = decode_rows([rows["image"][1]], None, SPEC.input_spec)
    assert np.array_equal(out["image"][0], want[0])


def test_select_starts_ray_itself_in_a_fresh_process(ray_cluster, setup):
    """No ray.init() in the caller: select joins the cluster RAY_ADDRESS names."""
    import os
    import subprocess
    import sys
    pool, _, ckpt, _ = setup
    code = ("import raydal; s = raydal.select(%r, %r, 'entropy', budget=3, progress=False, "
            "num_actors=1); print(len(s.ids), s.num_scored)" % (pool.path, str(ckpt)))
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["3", "300"]
