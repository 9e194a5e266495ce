"""`raydal select`: pool, checkpoint, strategy and budget in, the selection Parquet out; the same
selection as raydal.select() and jobs/select_round.py (one code path: raydal.selection_job)."""
import json
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import raydal
from raydal.cli import main
from raydal.labels import LabelLog
from raydal.models import ModelSpec

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("select-cli")
    images = np.random.default_rng(4).integers(0, 256, (120, 28, 28), dtype=np.uint8)
    pool = raydal.Pool.from_numpy(images, path=tmp / "pool.parquet")
    spec = ModelSpec(name="test_resnet", num_classes=10, in_chans=1, img_size=32)
    ckpt = raydal.save_checkpoint(raydal.create_model(spec, seed=0), spec, tmp / "ckpt")
    labeled = {f"{i:08d}": i % 10 for i in range(10)}
    LabelLog(tmp / "run" / "labels").append(0, labeled, source="test", num_classes=10)
    return tmp, pool, str(ckpt), labeled


def args(tmp, pool, ckpt, out):
    return ["--pool", pool.path, "--checkpoint", ckpt, "--strategy", "dynamicAL",
            "--strategy-options", '{"ip_weight": 1.0}', "--budget", "12",
            "--labels", str(tmp / "run"), "--out", str(out), "--num-actors", "1",
            "--batch-size", "64"]


def test_cli_select_equals_the_job_and_the_library(ray_cluster, inputs, capsys, monkeypatch):
    tmp, pool, ckpt, labeled = inputs
    assert main(["select", *args(tmp, pool, ckpt, tmp / "cli.parquet")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_selected"] == 12 and summary["num_labeled"] == 10
    assert summary["num_scored"] == 110
    monkeypatch.setattr(sys, "argv", ["select_round.py", *args(tmp, pool, ckpt,
                                                               tmp / "job.parquet")])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "jobs" / "select_round.py"), run_name="__main__")
    assert done.value.code == 0
    want = raydal.select(pool, ckpt, "dynamicAL", 12, labeled=labeled,
                         strategy_options={"ip_weight": 1.0}, num_actors=1, batch_size=64)
    cli, job = pq.read_table(tmp / "cli.parquet"), pq.read_table(tmp / "job.parquet")
    assert cli.schema.names == ["id", "score", "rank"]
    assert cli.column("id").to_pylist() == job.column("id").to_pylist() == list(want.ids)
    assert cli.column("rank").to_pylist() == list(range(12))
    assert not set(cli.column("id").to_pylist()) & set(labeled)
    np.testing.assert_allclose(cli.column("score").to_numpy(), np.asarray(want.scores),
                               rtol=1e-9)


@pytest.mark.parametrize("option, value, message", [
    ("--labels", "MISSING", "--labels .*MISSING does not exist"),
    ("--strategy-options", "[1]", "--strategy-options '\\[1\\]': expected a JSON object"),
    ("--strategy-options", "{ip", "--strategy-options '{ip' is not JSON"),
    ("--strategy", "dynamicALL", "unknown strategy 'dynamicALL'.*Did you mean 'dynamicAL'"),
    ("--strategy-options", '{"ip_wieght": 2}', "has no option 'ip_wieght'.*Did you mean"),
    ("--strategy-options", '{"ip_weight": -1}', "strategy 'dynamicAL': ip_weight must be"),
    ("--budget", "0", "--budget must be a positive int, got 0"),
    ("--num-actors", "0", "--num-actors should be greater than or equal to 1, got 0"),
    ("--checkpoint", "MISSING", "--checkpoint .*MISSING is not a raydal checkpoint folder"),
    ("--labels", "EMPTY", "--labels .* no labels/round-NNNN.parquet"),
    ("--pool", "MISSING", "MISSING"),
])
def test_cli_select_user_errors_are_one_line(inputs, capsys, option, value, message):
    tmp, pool, ckpt, _ = inputs
    argv = args(tmp, pool, ckpt, tmp / "never.parquet")
    if value == "EMPTY":
        (tmp / "EMPTY").mkdir(exist_ok=True)
    argv[argv.index(option) + 1] = str(tmp / value) if value in ("MISSING", "EMPTY") else value
    assert main(["select", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not (tmp / "never.parquet").exists()


def test_cli_select_mistakes_start_no_ray(inputs, tmp_path):
    """One line, exit 2, in seconds, and no Ray started (checked in a fresh process)."""
    import os
    import subprocess
    import time
    tmp, pool, ckpt, _ = inputs
    for option, value in (("--strategy", "nope"), ("--budget", "0")):
        argv = args(tmp, pool, ckpt, tmp_path / "never.parquet")
        argv[argv.index(option) + 1] = value
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "raydal.cli", "select", *argv],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "RAY_ADDRESS": ""})
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert "Ray" not in done.stderr and time.monotonic() - t0 < 60
        assert not (tmp_path / "never.parquet").exists()


def test_cli_select_broken_inputs_are_one_line(ray_cluster, inputs, tmp_path, capsys):
    """Found by the fuzz pass (benchmarks/fuzz.py, select kind): a cut checkpoint failed in the
    scorers, labels that are not Parquet or not ints and pools that are not Parquet escaped as
    tracebacks, an --out that cannot be written failed only after the selection, and a pool
    row without an id was picked as "None"."""
    import shutil
    import pyarrow as pa
    tmp, pool, ckpt, _ = inputs
    cut = tmp_path / "cut"
    shutil.copytree(ckpt, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (tmp_path / "labels.csv").write_text("id,label\n00000000,1\n")
    pq.write_table(pa.table({"id": ["00000000"], "label": ["1"]}), tmp_path / "str.parquet")
    pq.write_table(pa.table({"id": ["00000000", "00000001"], "label": [1, None]}),
                   tmp_path / "null.parquet")
    images = pq.read_table(pool.path).column("image").to_pylist()[:3]
    pq.write_table(pa.table({"id": ["a", None, "b"], "image": images}), tmp_path / "no-id.parquet")
    pq.write_table(pa.table({"id": ["a", "a", "b"], "image": images}), tmp_path / "dup.parquet")
    (tmp_path / "text.parquet").write_text("id,image\n")
    (tmp_path / "file").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    for option, value, message in [
        ("--checkpoint", cut, r"--checkpoint .*cut: model.safetensors is cut short"),
        ("--labels", tmp_path / "labels.csv", r"--labels .*labels.csv is not a Parquet file"),
        ("--labels", tmp_path / "str.parquet", "column 'label' is string with 0 nulls; labels "
                                               "are class indices: write it as integers"),
        ("--labels", tmp_path / "null.parquet", "column 'label' is int64 with 1 nulls"),
        ("--pool", tmp_path / "no-id.parquet", "has 1 rows without an id; give every row"),
        ("--pool", tmp_path / "dup.parquet", "has duplicate id 'a'; ids must be unique"),
        ("--pool", tmp_path / "text.parquet", r"text.parquet is not Parquet \(.*\); give a "),
        ("--out", tmp_path, r"--out .* is a folder; give a file name in it"),
        ("--out", tmp_path / "file" / "o.parquet", r"cannot be made: .*file is a file, not a"),
        ("--num-cpus-per-actor", "nan", "--num-cpus-per-actor should be greater than 0, got nan"),
    ]:
        argv = args(tmp, pool, ckpt, tmp_path / "never.parquet")
        if option in argv:
            argv[argv.index(option) + 1] = str(value)
        else:
            argv += [option, str(value)]
        assert main(["select", *argv]) == 2, option
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
        assert sorted(tmp_path.rglob("*")) == before


def test_cli_select_a_budget_beyond_int64_picks_every_unlabeled_row(ray_cluster, inputs,
                                                                   tmp_path, capsys):
    """Found by the fuzz pass (select kind): with --balance, a budget beyond int64 overflowed
    the per-class quotas (OverflowError); select caps its picks at the pool's rows."""
    tmp, pool, ckpt, labeled = inputs
    argv = args(tmp, pool, ckpt, tmp_path / "all.parquet")
    argv[argv.index("--budget") + 1] = str(10 ** 23)
    argv[argv.index("--strategy") + 1] = "entropy"
    argv[argv.index("--strategy-options") + 1] = "{}"
    assert main(["select", *argv, "--balance", "proportional"]) == 0, capsys.readouterr().err
    picks = pq.read_table(tmp_path / "all.parquet").column("id").to_pylist()
    assert len(picks) == len(set(picks)) == 110 and not set(picks) & set(labeled)
