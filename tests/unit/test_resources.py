"""The placement check behind the resource pre-check (pure: nodes as dicts)."""
import pytest

from raydal.resources import Demand, fits, selection_demand, training_demand

TWO_CPU = [{"CPU": 2.0}]


@pytest.mark.parametrize("nodes, demand, ok", [
    (TWO_CPU, selection_demand(2, 0.5, 0), True),    # the default: 1 CPU left for reads
    (TWO_CPU, selection_demand(64, 0.5, 0), False),
    (TWO_CPU, selection_demand(2, 1, 0), False),     # no CPU left for Ray Data's read tasks
    (TWO_CPU, selection_demand(1, 1, 0), True),
    (TWO_CPU, selection_demand(1, 0.5, 1), False),   # a GPU actor on a CPU-only cluster
    (TWO_CPU, training_demand(2, 1, False), True),
    (TWO_CPU, training_demand(1, 3, False), False),  # one worker bigger than any node
    ([{"CPU": 2.0}, {"CPU": 2.0}], training_demand(1, 3, False), False),
    ([{"CPU": 4.0}, {"CPU": 8.0, "GPU": 2.0}], selection_demand(2, 4, 1), True),
    ([{"CPU": 4.0}, {"CPU": 8.0, "GPU": 2.0}], selection_demand(3, 2, 1), False),
    # the read CPU must go where no actor needs it: spare on the CPU node, actors on the GPU one
    ([{"CPU": 1.0}, {"CPU": 2.0, "GPU": 2.0}], selection_demand(2, 1, 1), True),
    ([], Demand("x", 1, 0.5), False),
])
def test_fits(nodes, demand, ok):
    assert fits(nodes, demand) is ok
