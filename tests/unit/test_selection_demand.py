"""The selection's resource demand and its refusal message, for both pipelines (pure)."""
import pytest

from raydal.resources import _refusal, fits, selection_demand
from raydal.selection import pipeline_for

TWO_CPU = [{"CPU": 2.0}]
GPU_NODE = [{"CPU": 16.0, "GPU": 1.0}]


@pytest.mark.parametrize("pipeline", ["fused", "staged"])
def test_the_scorers_must_leave_a_cpu_for_one_read_or_decode_task(pipeline):
    assert fits(TWO_CPU, selection_demand(2, 0.5, 0, pipeline))
    assert not fits(TWO_CPU, selection_demand(2, 1, 0, pipeline))
    assert fits(GPU_NODE, selection_demand(4, 2, 0.25, pipeline))
    assert not fits(GPU_NODE, selection_demand(2, 1, 1, pipeline))


def test_the_refusal_names_what_the_spare_cpu_is_for():
    staged = str(_refusal(selection_demand(2, 1, 0, "staged"), TWO_CPU, 0))
    fused = str(_refusal(selection_demand(2, 1, 0, "fused"), TWO_CPU, 0))
    assert "+ 1 CPU for a decode task (more run on free CPUs)" in staged
    assert "+ 1 CPU for Ray Data's read tasks" in fused
    assert "selection.num_actors=2 x (num_cpus_per_actor=1" in staged
    assert "it has 1 node: 2 CPU" in staged


def test_auto_is_staged_with_gpus_and_fused_without():
    assert pipeline_for("auto", 0.25) == "staged"
    assert pipeline_for("auto", 0.0) == "fused"
    assert pipeline_for("fused", 1.0) == "fused"
    with pytest.raises(ValueError, match="pipeline must be one of"):
        pipeline_for("both", 0.0)
