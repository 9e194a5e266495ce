"""A seeded sample of the fuzz pass (benchmarks/fuzz.py runs 240+ cases): configs, label files,
pools, `raydal select` argument lists and Python API calls each end in a clear error or correct
behaviour, never a traceback, a hang or a partial write."""
import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
FUZZ = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz.py"


def test_seeded_fuzz_sample(ray_cluster, tmp_path):
    spec = importlib.util.spec_from_file_location("raydal_fuzz", FUZZ)
    fuzz = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # for its dataclass
    spec.loader.exec_module(fuzz)
    outcomes = fuzz.run_cases(fuzz.sample_kinds(30, seed=7), 7, tmp_path, limit_s=120)
    s = fuzz.summary(outcomes)
    assert s["cases"] == 30 and s["per_kind"] == {k: 6 for k in fuzz.KINDS}
    assert s["failures"] == [], s["failures"]
    for kind in ("select", "api"):  # both outcomes are exercised by the new kinds too
        assert {o.result for o in outcomes if o.kind == kind} == {"ok", "error"}, kind
