"""The file oracle: export picks, people label them, import, the loop continues."""
import csv
import json

import pyarrow.parquet as pq
import pytest

from raydal.cli import main
from raydal.config import parse_config
from raydal.labels import LabelLog
from raydal.loop import ActiveLoop

pytestmark = pytest.mark.integration


def test_export_import_continue(ray_cluster, fashion_mnist, tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = parse_config({
        "seed": 2, "run_dir": str(run_dir), "progress": False,
        "data": {"dataset": "fashion-mnist", "prepared_dir": str(fashion_mnist),
                 "pool_subsample": 600, "test_subsample": 200},
        "model": {"name": "test_resnet", "in_chans": 1, "img_size": 32},
        "loop": {"initial": 20, "per_round": 10, "rounds": 0, "oracle": "file"},
        "training": {"epochs": 2, "batch_size": 16}})
    assert ActiveLoop.from_config(cfg).run() == []  # stops: nothing is labeled yet
    exported = run_dir / "to_label" / "round-0000.csv"
    assert json.loads((run_dir / "state.json").read_text())["phase"] == "awaiting_labels"
    rows = list(csv.DictReader(exported.open()))
    assert len(rows) == 20 and all(r["label"] == "" for r in rows)
    assert all((run_dir / "to_label").joinpath(r["image"]).exists() for r in rows)
    tasks = json.loads((run_dir / "to_label" / "round-0000.labelstudio.json").read_text())
    assert [t["data"]["id"] for t in tasks] == [r["id"] for r in rows]

    truth = pq.read_table(fashion_mnist / "truth.parquet").to_pydict()
    truth = dict(zip(truth["id"], truth["label"]))
    classes = tasks[0]["data"]["choices"]
    answers = [["id", "label"]] + [[r["id"], classes[truth[r["id"]]]] for r in rows]  # names

    def write(path, table):
        with path.open("w", newline="") as f:
            csv.writer(f).writerows(table)
        return path

    # a person's mistake first: one pick left out -> clear error, nothing written
    bad = write(tmp_path / "bad.csv", answers[:-1])
    assert main(["import-labels", str(run_dir), str(bad)]) == 2
    assert "1 of the 20 picks of round 0 have no label" in capsys.readouterr().err
    assert LabelLog(run_dir / "labels").rounds() == []

    good = write(tmp_path / "labels.csv", answers)
    assert main(["import-labels", str(run_dir), str(good)]) == 0
    assert LabelLog(run_dir / "labels").labels() == {r["id"]: truth[r["id"]] for r in rows}
    assert main(["import-labels", str(run_dir), str(good)]) == 2  # no round waits any more

    result = ActiveLoop.from_config(cfg).run()
    assert [r["num_labeled"] for r in result] == [20]
