"""raydal deletes only what it made: a user's folder is refused as run_dir, and a user's files
planted in every folder raydal writes to survive every path that deletes (a failed first run, a
config change before any label, a killed training attempt's leftovers)."""
import hashlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from raydal.cli import main
from raydal.config import parse_config
from raydal.errors import PoolError, RunDirError
from raydal.fs import resolve
from raydal.loop import ActiveLoop
from raydal.run_dir import MADE_IN, MARKER, claim, remove_made

pytestmark = pytest.mark.integration
#: every folder raydal writes in a run directory, and the run directory itself
FOLDERS = ["", *MADE_IN]


@pytest.fixture(scope="module")
def data(tmp_path_factory, labeled_pool_files):
    d = tmp_path_factory.mktemp("ownership")
    labeled_pool_files(d, 40, 2, 10)
    return d


def config(data, run_dir, pool="pool.parquet", **loop):
    return parse_config({
        "run_dir": str(run_dir), "progress": False,
        "data": {"dataset": None, "pool": str(data / pool), "test": str(data / "test.parquet"),
                 "truth": str(data / "truth.parquet"), "num_classes": 2},
        "model": {"name": "test_resnet", "in_chans": 1, "img_size": 32},
        "loop": {"initial": 6, "per_round": 4, "rounds": 0, "oracle": "simulated", **loop},
        "selection": {"num_actors": 1},
        "training": {"epochs": 1, "batch_size": 4}})


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def plant(run_dir: Path) -> dict[str, str]:
    """A user's file in the run directory and in each folder raydal writes to, named as
    raydal's own files are not."""
    for folder in FOLDERS:
        (run_dir / folder).mkdir(parents=True, exist_ok=True)
        (run_dir / folder / "users-notes.txt").write_text(f"mine, in {folder or 'run_dir'}\n")
    return {k: v for k, v in snapshot(run_dir).items() if k.endswith("users-notes.txt")}


def test_a_users_folder_is_refused_before_anything_is_written(ray_cluster, data, tmp_path,
                                                               capsys):
    victim = tmp_path / "victim"
    (victim / "data").mkdir(parents=True)
    (victim / "data" / "important.txt").write_text("do not delete")
    (victim / "notes.md").write_text("mine")
    before = snapshot(victim)
    with pytest.raises(RunDirError, match="not a raydal run directory.*choose a new or empty"):
        ActiveLoop.from_config(config(data, victim)).run()
    assert snapshot(victim) == before and sorted(p.name for p in victim.iterdir()) == [
        "data", "notes.md"]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config(data, tmp_path / "unused").model_dump(mode="json")))
    assert main(["run", str(cfg), "--run-dir", str(victim)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a raydal run directory" in err[0]
    assert snapshot(victim) == before


def test_user_files_in_every_folder_survive_a_whole_run(ray_cluster, data, tmp_path):
    run_dir = tmp_path / "run"
    # a first run that fails before buying anything removes what it wrote, and only that
    with pytest.raises(PoolError, match="does not exist"):
        ActiveLoop.from_config(config(data, run_dir, pool="missing.parquet")).run()
    assert not run_dir.exists()
    assert ActiveLoop.from_config(config(data, run_dir, oracle="file")).run() == []  # round 0 exported
    mine = plant(run_dir)
    (run_dir / "ray_train" / "round-0000-123").mkdir()  # a killed attempt's leftovers: raydal's
    picks = pq.read_table(run_dir / "selections" / "round-0000.parquet").column("id").to_pylist()
    truth = dict(zip(*pq.read_table(data / "truth.parquet").to_pydict().values()))
    (tmp_path / "answers.csv").write_text(
        "id,label\n" + "".join(f"{i},{truth[i]}\n" for i in picks))
    assert main(["import-labels", str(run_dir), str(tmp_path / "answers.csv")]) == 0
    rows = ActiveLoop.from_config(config(data, run_dir, oracle="file")).run()
    assert [r["round"] for r in rows] == [0]
    after = snapshot(run_dir)
    assert {k: after.get(k) for k in mine} == mine
    assert not (run_dir / "ray_train" / "round-0000-123").exists()


def test_a_config_change_before_any_label_keeps_user_files(ray_cluster, data, tmp_path):
    run_dir = tmp_path / "run"
    claim(resolve(run_dir))
    mine = plant(run_dir)
    (run_dir / "data" / "pool_check.json").write_text("{}")  # raydal's record of an old pool
    assert ActiveLoop.from_config(config(data, run_dir, oracle="file")).run() == []
    assert {k: snapshot(run_dir).get(k) for k in mine} == mine
    assert (run_dir / "data" / "pool_check.json").read_text() != "{}"  # made again


def test_remove_made_deletes_raydals_names_only(tmp_path):
    run_dir = resolve(tmp_path / "run")
    assert claim(run_dir) is True and (tmp_path / "run" / MARKER).exists()
    for folder, name in [("", "state.json"), ("data", "pool.parquet"),
                         ("selections", "round-0000.json"), ("report", "learning_curve.png")]:
        (tmp_path / "run" / folder).mkdir(exist_ok=True)
        (tmp_path / "run" / folder / name).write_text("raydal's")
    remove_made(run_dir)
    assert not (tmp_path / "run").exists()  # only raydal's files: all gone
    claim(run_dir)
    mine = plant(tmp_path / "run")
    (tmp_path / "run" / "data" / "pool.parquet").write_text("raydal's")
    remove_made(run_dir)
    assert snapshot(tmp_path / "run").keys() == {*mine, MARKER}  # still raydal's, with the user's


def test_a_file_or_a_legacy_run_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        claim(resolve(tmp_path / "f"))
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.yaml").write_text("name: old\n")
    (legacy / "state.json").write_text('{"round": 1, "phase": "done", "num_labeled": 10}')
    assert claim(resolve(legacy)) is False and (legacy / MARKER).exists()
    lookalike = tmp_path / "lookalike"
    lookalike.mkdir()
    (lookalike / "config.yaml").write_text("name: mine\n")
    (lookalike / "state.json").write_text('{"mine": true}')
    with pytest.raises(RunDirError, match="not a raydal run directory"):
        claim(resolve(lookalike))
