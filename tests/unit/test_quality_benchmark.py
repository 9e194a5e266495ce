"""The quality benchmark's regime files load and validate, --quick never writes into the
committed results, and the report computes paired intervals from the runs."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def aq():
    spec = importlib.util.spec_from_file_location("al_quality", BENCH / "al_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["al_quality"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted((BENCH / "regimes").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_regimes_load(aq, path):
    r = aq.Regime.load(path)
    assert r.name == path.stem and r.seeds >= 3 and "random" in r.strategies
    assert "dynamicAL" in r.strategies
    if path.stem.endswith("-confirm"):  # its base's experiment, on seeds the base never ran
        base = aq.Regime.load(path.with_name(path.stem.removesuffix("-confirm") + ".yaml"))
        assert aq.same_regime({**r.to_dict(), "name": base.name}, base.to_dict())
        ran = json.loads((BENCH / "results" / f"al_quality_{base.name}.json").read_text())
        assert not {x["seed"] for x in ran["runs"]} & set(range(r.first_seed,
                                                               r.first_seed + r.seeds))
    else:
        assert "entropy" in r.strategies
    q = aq.quick(r)
    assert q.seeds == 1 and q.pool_size <= 1000 and q.training.max_epochs <= 3


def test_regime_errors_name_the_field(aq):
    with pytest.raises(ValueError, match="unknown field 'pool'"):
        aq.Regime.from_dict({"name": "x", "pool": 5})
    with pytest.raises(ValueError, match="training.epochs"):
        aq.Regime.from_dict({"name": "x", "training": {"epochs": 5}})
    with pytest.raises(ValueError, match="query must be a positive int"):
        aq.Regime.from_dict({"name": "x", "query": 0})
    with pytest.raises(ValueError, match="first_seed must be an int >= 0"):
        aq.Regime.from_dict({"name": "x", "first_seed": -1})


def test_quick_writes_outside_the_committed_results(aq, monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(aq, "run", lambda r, out, *a: seen.update(out=out) or {"seconds": 0.0})
    monkeypatch.setattr(aq, "render", lambda result, out: "")
    aq.main([str(BENCH / "regimes" / "mid-budget.yaml"), "--quick"])
    assert seen["out"].parent == aq.QUICK_DIR and BENCH not in seen["out"].parents


def test_report_pairs_seeds(aq):
    def run(name, seed, accs):
        curve = [{"labels": n, "accuracy": a, "epochs": 5, "train_accuracy": 1.0}
                 for n, a in zip((100, 200), accs)]
        return {"strategy": name, "seed": seed, "curve": curve, "seconds": 1.0,
                "auc": sum(accs) / 2}
    regime = aq.Regime.from_dict({"name": "toy", "initial": 100, "query": 100, "rounds": 1})
    runs = [run("random", s, (50 + s, 60 + s)) for s in range(3)]
    runs += [run("entropy", s, (51 + s, 62 + s + 0.1 * s)) for s in range(3)]
    text = aq.report({"regime": json.loads(json.dumps(regime.to_dict())), "runs": runs})
    row = next(line for line in text.splitlines() if line.startswith("| entropy"))
    # AUC differences 1.5, 1.55, 1.6: mean +1.55, t interval excludes 0
    assert "+1.55 [" in row and "]*" in row
    assert "labels to reach random's final" in text
