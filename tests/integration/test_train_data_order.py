"""Training sees its rows in one order whatever order Ray Data's decode tasks finish in: a
resumed run trains on the same batches as an uninterrupted one."""
import pytest

pytestmark = pytest.mark.integration


def test_held_rows_are_in_id_order_whatever_the_task_order(ray_cluster, tmp_path):
    import ray.data
    from raydal.train import held_here

    def first_block_last(batch):  # defined here: shipped to the workers by value
        import time
        first = int(batch["x"][0])
        others = lambda: sum(f.name.isdigit() for f in done.iterdir())  # noqa: E731
        if first != 0:
            (done / f"{first}").touch()
            return batch
        deadline = time.monotonic() + 60  # the block of the first ids waits for the others
        while others() < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        if not (done / "first-finished-after").exists():  # the first execution's count
            (done / "first-finished-after").write_text(str(others()))
        return batch

    done = tmp_path / "done"  # the tasks run on this machine: a folder is their event
    done.mkdir()
    rows = [{"id": f"{i:03d}", "x": i, "label": i % 2} for i in range(40)]
    ds = ray.data.from_items(rows).repartition(4).map_batches(first_block_last,
                                                               batch_size=None)
    held = held_here(ds)
    assert [r["x"] for r in held.take_all()] == list(range(40))
    assert held.schema().names == ["x", "label"]
    assert held.materialize().num_blocks() == 4
    assert (done / "first-finished-after").read_text() == "3"  # the order was really reversed
