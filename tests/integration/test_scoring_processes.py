"""Scoring runs as Ray Data tasks in Ray's pooled worker processes: a later selection (the next
round) scores in processes that already exist, with no new process start-up or imports."""
import os
import sys
from dataclasses import dataclass

import pytest
import ray.cloudpickle

import raydal
from raydal.pool import Pool
from raydal.scoring.base import Strategy
from raydal.scoring.uncertainty import hash_uniform
from raydal.transforms import InputSpec

pytestmark = pytest.mark.integration
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/


@dataclass
class RecordsPid(Strategy):
    """Random scores; appends the scoring process's pid to ``log`` for every batch."""

    name = "records_pid"
    needs_model = False
    log: str = ""

    def score(self, model, x, ids, context):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return hash_uniform(ids, seed=0)


def _pids(path) -> set[int]:
    return {int(line) for line in path.read_text().split()}


def test_a_second_selection_scores_in_the_first_ones_processes(ray_cluster, tmp_path,
                                                               random_images):
    pool = Pool.from_numpy(random_images(600, seed=6), path=tmp_path / "pool.parquet")
    first, second = tmp_path / "first.pids", tmp_path / "second.pids"
    picks = [raydal.select(pool, None, RecordsPid(log=str(log)), budget=20, num_actors=2,
                           batch_size=50, input_spec=InputSpec(1, 28), progress=False).ids
             for log in (first, second)]
    assert picks[0] == picks[1]
    assert _pids(first) and _pids(second) <= _pids(first), (_pids(first), _pids(second))
    assert os.getpid() not in _pids(first)  # scored in Ray's workers, not in the driver
