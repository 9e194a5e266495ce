"""Oracles answer "what is the label of these ids?".

SimulatedOracle reads held-out ground truth (kept apart from the pool), for benchmarks and the
quickstart. Human labeling through files is the ``file`` oracle (see ``raydal import-labels``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow as pa


class SimulatedOracle:
    """Ground truth from a Parquet file of (id, label)."""

    name = "simulated"

    def __init__(self, truth_path: str | Path):
        self.truth_path = str(truth_path)

    def label(self, ids: Sequence[str]) -> dict[str, int]:
        t = pads.dataset(self.truth_path, format="parquet").to_table(
            columns=["id", "label"], filter=pc.field("id").cast(pa.string()).isin(
                pa.array(list(ids), pa.string())))
        found = dict(zip(map(str, t.column("id").to_pylist()), t.column("label").to_pylist()))
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"{len(missing)} ids have no ground truth in {self.truth_path} "
                           f"(e.g. {missing[0]!r})")
        return {i: int(found[i]) for i in ids}
