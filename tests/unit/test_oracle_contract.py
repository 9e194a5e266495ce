"""One contract run over every registered oracle (as timm's tests run over every model): an oracle
is tested by being registered. An oracle that is not in EXAMPLES fails here until it gets one."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from raydal.config import parse_config
from raydal.errors import ConfigError
from raydal.fs import resolve
from raydal.oracle import ORACLES, LabelRequest, Oracle, list_oracles, oracle_options
from raydal.pool import Pool

#: name -> (loop.oracle_options of a working config, whether ``ask`` runs without a server)
EXAMPLES = {
    "simulated": ({}, True),
    "file": ({}, True),
    "labelstudio": ({"url": "http://127.0.0.1:9", "project": "p"}, False),  # a live server:
    # tests/integration/test_labelstudio.py
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("oracle-contract")
    x = np.random.default_rng(0).integers(0, 256, (20, 8, 8), dtype=np.uint8)
    pool = Pool.from_numpy(x, path=d / "pool.parquet")
    ids = [i for c in pool.iter_ids() for i in c]
    pq.write_table(pa.table({"id": ids, "label": np.arange(20) % 3}), d / "truth.parquet")
    return d, pool, ids


def _config(d, name):
    return parse_config({
        "run_dir": str(d / "run"),
        "data": {"dataset": None, "pool": str(d / "pool.parquet"), "test": "t.parquet",
                 "truth": str(d / "truth.parquet"), "num_classes": 3},
        "loop": {"oracle": name, "oracle_options": EXAMPLES[name][0]}})


@pytest.mark.parametrize("name", list_oracles())
def test_every_registered_oracle_keeps_the_contract(name, data, tmp_path, monkeypatch):
    assert name in EXAMPLES, f"oracle {name!r} has no example here: add one to EXAMPLES"
    cls = ORACLES.get(name)
    assert issubclass(cls, Oracle) and cls.name == name
    # its options: a pydantic model that refuses an unknown key, or none at all
    assert cls.Options is None or issubclass(cls.Options, BaseModel)
    with pytest.raises(ConfigError, match="loop.oracle_options"):
        oracle_options(cls, {"surely_not_an_option": 1})
    d, pool, ids = data
    config = _config(d, name)
    options = oracle_options(cls, config.loop.oracle_options)
    cls.check_config(config, options)  # a config made for it passes its cross-checks
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "k" * 40)
    oracle = cls.from_config(config, str(d / "truth.parquet"), options)
    if not EXAMPLES[name][1]:
        return
    oracle.check(pool, 3)
    picks = ids[:5]
    run_dir = resolve(tmp_path / "run")
    request = LabelRequest(0, pa.table({"id": picks, "score": [0.0] * 5, "rank": list(range(5))}),
                           pool, None, 3, run_dir)
    def written():
        return {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    answers = [oracle.ask(request)]
    first = written()
    answers.append(oracle.ask(request))  # asked again on every run until it answers
    assert written() == first  # and does not redo (or undo) what it did
    for answer in answers:
        if answer.labels is None:  # "not yet": the user is told what to do
            assert answer.message.strip()
        else:
            assert sorted(answer.labels) == sorted(picks) and answer.source
            assert all(type(y) is int and 0 <= y < 3 for y in answer.labels.values())
    assert answers[0] == answers[1]
