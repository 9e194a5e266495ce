"""Entry point for ``ray job submit``: run (or resume) a whole active-learning loop.

    ray job submit --working-dir . -- python jobs/run_loop.py configs/imagenet.yaml

Resubmitting the same config continues from the run directory's state.json (a stopped or failed
job loses at most the step it was in). Prints one JSON line a trained round, then the summary.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The copy uploaded with --working-dir (or this checkout) wins over an installed raydal.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run or resume a raydal active-learning loop.")
    p.add_argument("config", help="YAML config (configs/*.yaml), relative to the working dir")
    p.add_argument("--run-dir", help="override the config's run_dir (shared storage on a cluster)")
    p.add_argument("--progress", action="store_true", help="progress bars in the job log")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import raydal
    from raydal.connect import connect

    cfg = raydal.load_config(args.config)
    overrides = {"progress": args.progress}
    if args.run_dir:
        overrides["run_dir"] = args.run_dir
    cfg = cfg.with_overrides(**overrides)
    loop = raydal.ActiveLoop.from_config(cfg)  # every name checked before the cluster is joined
    # The config's cluster, else RAY_ADDRESS (set by `ray job submit`), else a local Ray;
    # a dead address fails within seconds, naming it.
    connect(cfg.ray.address, num_cpus=cfg.ray.num_cpus, log_to_driver=cfg.progress)
    rows = loop.run()
    for row in rows:
        print(json.dumps(row), flush=True)
    print(json.dumps({"run_dir": cfg.run_dir, "rounds": len(rows),
                      "final_test_accuracy": rows[-1]["test_accuracy"] if rows else None}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
