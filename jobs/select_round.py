"""Entry point for ``ray job submit``: one distributed selection, written as a Parquet file.

    ray job submit --working-dir . -- python jobs/select_round.py \\
        --pool /mnt/imagenet/pool.parquet --checkpoint runs/x/checkpoints/round-0003 \\
        --strategy dynamicAL --budget 10000 --labels runs/x/labels \\
        --out runs/x/selections/manual-0004.parquet

The output has columns id (string), score (float64), rank (int64, 0 = best) and is written
atomically (temp file + rename): it exists complete or not at all. A summary JSON line is printed
last (see ``ray job logs``). Paths are read by every node: use shared storage on a cluster.
The same selection as ``raydal select`` (both run ``raydal.selection_job``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The copy uploaded with --working-dir (or this checkout) wins over an installed raydal.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from raydal.selection_job import add_arguments, run_selection
    parser = argparse.ArgumentParser(description="Select the budget best unlabeled pool rows.")
    summary = run_selection(add_arguments(parser).parse_args(argv))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
