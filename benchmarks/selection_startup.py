"""Selection start-up round after round in one driver, as the loop runs it.

Four dynamicAL selections (budget 100, 2 scorers x 0.5 CPU, batch 256) of a 10,000-image
Fashion-MNIST pool with timm's test_resnet, one Ray session; prints one JSON line a round:
``seconds`` (the whole selection) and ``startup_seconds`` (until the first scored block reached
the driver). To compare with older code, run it with that code first on PYTHONPATH (Ray's
workers import raydal from there too), e.g. from ``git archive <commit> raydal | tar -x -C DIR``:
``PYTHONPATH=DIR python benchmarks/selection_startup.py``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyarrow.parquet as pq


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="/tmp/raydal-bench/fashion-mnist")
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    import ray
    import timm

    import raydal
    from raydal.datasets import prepare_dataset
    from raydal.transforms import InputSpec

    prepare_dataset("fashion-mnist", args.data_dir)
    full = pq.read_table(Path(args.data_dir) / "pool.parquet")
    pool = Path(args.data_dir) / "pool-10k.parquet"
    if not pool.exists():
        pq.write_table(full.slice(0, 10000), pool)
    ids = full.column("id").to_pylist()[:100]
    labels = {i: k % 10 for k, i in enumerate(ids)}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    model = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    for r in range(args.rounds):
        t0 = time.time()
        sel = raydal.select(str(pool), model, "dynamicAL", 100, labels, num_actors=2,
                            batch_size=256, num_cpus_per_actor=0.5, input_spec=InputSpec(1, 32),
                            progress=False)
        print(json.dumps({"code": raydal.__file__, "round": r, "started": round(t0),
                          "seconds": round(sel.seconds, 2),
                          "startup_seconds": round(sel.startup_seconds, 2)}), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
