"""Training sees its rows in one order whatever order Ray Data's decode tasks finish in: a
resumed run trains on the same batches as an uninterrupted one."""
import pytest

pytestmark = pytest.mark.integration


def test_held_rows_are_in_id_order_whatever_the_task_order(ray_cluster):
    import ray.data
    from raydal.train import held_here

    def first_block_last(batch):  # defined here: shipped to the workers by value
        import time
        if int(batch["x"][0]) == 0:  # the block of the first ids finishes after the others
            time.sleep(2.0)
        return batch

    rows = [{"id": f"{i:03d}", "x": i, "label": i % 2} for i in range(40)]
    ds = ray.data.from_items(rows).repartition(4).map_batches(first_block_last,
                                                               batch_size=None)
    held = held_here(ds)
    assert [r["x"] for r in held.take_all()] == list(range(40))
    assert held.schema().names == ["x", "label"]
    assert held.materialize().num_blocks() == 4
