"""A scoring actor killed mid-pool: Ray restarts it, retries the batch, the picks do not change."""
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
class DiesOnce(Strategy):
    """Random scores, but the first actor to score a batch kills its own process (once)."""

    name = "dies_once"
    needs_model = False
    marker: str = ""

    def score(self, model, x, ids, context):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)  # the actor process dies mid-pool, as on a lost spot node
        return hash_uniform(ids, seed=0)


def test_killed_scoring_actor_is_retried_and_the_picks_are_unchanged(ray_cluster, tmp_path,
                                                                       random_images):
    pool = Pool.from_numpy(random_images(400, seed=5), path=tmp_path / "pool.parquet")
    spec = InputSpec(1, 28)
    expected = raydal.select(pool, None, "random", budget=30, num_actors=2, batch_size=50,
                             input_spec=spec, progress=False)
    marker = tmp_path / "died"
    got = raydal.select(pool, None, DiesOnce(marker=str(marker)), budget=30, num_actors=2,
                        batch_size=50, input_spec=spec, progress=False)
    assert marker.exists()  # an actor really died
    assert got.ids == expected.ids and got.num_scored == 400
