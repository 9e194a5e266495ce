"""A pool source, an oracle with its own options model and a strategy added from OUTSIDE raydal,
by entry point, run through `raydal run` (the CLI in a subprocess, a local Ray of its own).

The package is real: a folder on PYTHONPATH holding the module and a ``*.dist-info`` with
``METADATA`` and ``entry_points.txt``, found by importlib.metadata as pip would install it.
"""
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

#: The third party's module: nothing in it is registered by a decorator; the entry points are
#: the only way raydal learns of these classes.
PACKAGE = '''
"""raydal-extras: a tar-shard pool source, a table oracle and a brightness strategy."""
import dataclasses
import tarfile
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict

from raydal.errors import ConfigError
from raydal.oracle import Answer, Oracle
from raydal.pool import PoolSource
from raydal.scoring import Strategy


def _rows(batch):
    import pandas as pd
    return pd.DataFrame({"id": batch["__key__"].astype(str), "image": batch["png"]})


class TarShards(PoolSource):
    """PNG samples of the *.tar files of a folder: the three members a source implements."""

    def __init__(self, path):
        super().__init__(path)
        self.shards = sorted(str(p) for p in Path(path).glob("*.tar"))

    def _samples(self):
        for shard in self.shards:
            with tarfile.open(shard) as tar:
                for m in tar:
                    key, _, ext = m.name.partition(".")
                    if ext == "png":
                        yield key, tar.extractfile(m).read()

    def to_dataset(self, columns=None, **read_args):
        import ray.data
        return ray.data.read_webdataset(self.shards, decoder=None, suffixes=["png"]
                                        ).map_batches(_rows, batch_format="pandas")

    def take(self, ids):
        wanted = set(map(str, ids))
        rows = [(k, b) for k, b in self._samples() if k in wanted]
        return pa.table({"id": pa.array([k for k, _ in rows], pa.string()),
                         "image": pa.array([b for _, b in rows], pa.binary())})

    def iter_ids(self, batch_size=65536):
        yield [k for k, _ in self._samples()]


class TableOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    table: str
    column: str = "label"


class TableOracle(Oracle):
    """Labels from a Parquet table named in its own options."""

    Options = TableOptions

    def __init__(self, options):
        self.options = options

    @classmethod
    def check_config(cls, config, options):
        if config.data.truth:
            raise ConfigError("oracle 'table' reads loop.oracle_options.table; drop data.truth")

    @classmethod
    def from_config(cls, config, truth, options=None):
        return cls(options)

    def ask(self, request):
        t = pq.read_table(self.options.table)
        labels = dict(zip(t.column("id").to_pylist(), t.column(self.options.column).to_pylist()))
        return Answer({i: int(labels[i]) for i in request.picks}, source="table")


@dataclasses.dataclass
class Brightest(Strategy):
    """The brightest images first (a strategy that needs no model)."""

    name: ClassVar[str] = "brightest"
    needs_model: ClassVar[bool] = False
    gain: float = 1.0

    def score(self, model, x, ids, context):
        return self.gain * x.double().flatten(1).mean(1)
'''

ENTRY_POINTS = """\
[raydal.pools]
tarshards = raydal_extras:TarShards

[raydal.oracles]
table = raydal_extras:TableOracle

[raydal.strategies]
brightest = raydal_extras:Brightest
"""


def _png(im: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, format="PNG")
    return buf.getvalue()


def _shards(folder: Path, images: np.ndarray, per_shard: int) -> list[str]:
    """WebDataset shards NNNN.tar of <key>.png (+ <key>.cls); returns the keys."""
    folder.mkdir(parents=True)
    keys = [f"img{k:04d}" for k in range(len(images))]
    for s in range(0, len(images), per_shard):
        with tarfile.open(folder / f"{s // per_shard:04d}.tar", "w") as tar:
            for k in range(s, min(s + per_shard, len(images))):
                for suffix, data in (("png", _png(images[k])), ("cls", str(k % 3).encode())):
                    info = tarfile.TarInfo(f"{keys[k]}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return keys


@pytest.mark.timeout(300)
def test_a_pool_an_oracle_and_a_strategy_from_an_installed_package_run_through_raydal_run(
        tmp_path):
    site = tmp_path / "site"
    (site / "raydal_extras").mkdir(parents=True)
    (site / "raydal_extras" / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    info = site / "raydal_extras-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: raydal-extras\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (40, 16, 16), dtype=np.uint8)
    images = (images * rng.uniform(0.2, 1.0, (40, 1, 1))).astype(np.uint8)  # spread brightness
    keys = _shards(tmp_path / "shards", images, per_shard=16)
    pq.write_table(pa.table({"id": keys, "label": np.arange(40) % 3}), tmp_path / "labels.parquet")
    test = pa.table({"id": [f"t{k}" for k in range(12)],
                     "image": pa.array([_png(im) for im in images[:12]], pa.binary()),
                     "label": np.arange(12) % 3})
    pq.write_table(test, tmp_path / "test.parquet")
    run_dir = tmp_path / "run"
    config = {
        "name": "extras", "run_dir": str(run_dir), "progress": False,
        "data": {"dataset": None, "pool": str(tmp_path / "shards"), "pool_format": "tarshards",
                 "test": str(tmp_path / "test.parquet"), "num_classes": 3},
        "model": {"name": "test_resnet", "in_chans": 1, "img_size": 16},
        "strategy": {"name": "brightest", "options": {"gain": 2.0}},
        "loop": {"initial": 6, "per_round": 5, "rounds": 1, "oracle": "table",
                 "oracle_options": {"table": str(tmp_path / "labels.parquet")}},
        "selection": {"num_actors": 1, "batch_size": 16},
        "training": {"epochs": 1, "batch_size": 4},
        "ray": {"address": "local", "num_cpus": 2}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)

    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "raydal.cli", "run", str(tmp_path / "run.yaml")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"raydal run with the extras: {time.monotonic() - t0:.1f} s")

    sel = json.loads((run_dir / "selections" / "round-0001.json").read_text())
    assert sel["strategy"] == "brightest" and sel["budget"] == 5
    labels = pq.read_table(run_dir / "labels").to_pydict()
    first = {i for i, r in zip(labels["id"], labels["round"]) if r == 0}
    picked = pq.read_table(run_dir / "selections" / "round-0001.parquet").column("id").to_pylist()
    brightness = {k: float(im.mean()) for k, im in zip(keys, images)}
    want = sorted((k for k in keys if k not in first), key=lambda k: -brightness[k])[:5]
    assert picked == want  # the strategy's own score, over the pool source's ids (tar keys)
    assert set(labels["source"]) == {"table"}
    assert {i: y for i, y in zip(labels["id"], labels["label"])} == {
        k: keys.index(k) % 3 for k in labels["id"]}  # the oracle's table, not a truth file
    assert len(json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])) > 0

    # a typo in a name an entry point provides: one line, exit 2, before Ray starts
    bad = {**config, "run_dir": str(tmp_path / "bad"),
           "loop": {**config["loop"], "oracle_options": {"tabel": "x"}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    done = subprocess.run([sys.executable, "-m", "raydal.cli", "run", str(tmp_path / "bad.yaml")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid config") and (
        "config field 'loop.oracle_options.tabel': unknown key; expected one of ['table', "
        "'column']. Did you mean 'table'?") in lines[0], done.stderr
    assert not (tmp_path / "bad").exists()
