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
    assert r.name == path.stem and len(r.seed_list()) >= 3 and "random" in r.strategies
    assert "dynamicAL" in r.strategies
    if path.stem.endswith("-confirm"):  # its base's experiment, on seeds the base never ran
        base = aq.Regime.load(path.with_name(path.stem.removesuffix("-confirm") + ".yaml"))
        assert aq.same_regime({**r.to_dict(), "name": base.name}, base.to_dict())
        ran = json.loads((BENCH / "results" / f"al_quality_{base.name}.json").read_text())
        assert not {x["seed"] for x in ran["runs"]} & set(range(r.first_seed,
                                                               r.first_seed + r.seeds))
    elif any("@" in s for s in r.strategies):  # a balance screen: each variant with its base
        assert {s.split("@")[0] for s in r.strategies} <= set(r.strategies)
    else:
        assert "entropy" in r.strategies
    q = aq.quick(r)
    assert len(q.seed_list()) == 1 and q.pool_size <= 1000 and q.training.max_epochs <= 3


def test_new_options_default_to_the_first_recipe(aq):
    """Older results files (no optimizer, schedule, augment, min_steps, selection) still match
    their regime files, and the defaults are Adam, constant, no augmentation, no step floor."""
    t = aq.Training()
    assert (t.optimizer, t.schedule, t.augment, t.min_steps) == ("adam", "none", "none", 0)
    ran = json.loads((BENCH / "results" / "al_quality_mid-budget.json").read_text())["regime"]
    assert aq.same_regime(ran, aq.Regime.load(BENCH / "regimes" / "mid-budget.yaml").to_dict())
    r = aq.Regime.from_dict({"name": "x", "seeds": [4, 2, 9]})
    assert r.seed_list() == [4, 2, 9] and aq.quick(r).seed_list() == [4]
    for bad in ({"seeds": [1, 1]}, {"seeds": []}, {"training": {"optimizer": "rmsprop"}},
                {"training": {"augment": "mixup"}}, {"training": {"min_steps": -1}},
                {"selection": "remote"}):
        with pytest.raises(ValueError):
            aq.Regime.from_dict({"name": "x", **bad})


def test_crop_flip_is_a_padded_crop_and_flip(aq):
    import torch
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    gen = torch.Generator().manual_seed(0)
    out = aq.crop_flip(x, gen, fill=-1.0, pad=2)
    gen = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 5, (2,), generator=gen), torch.randint(0, 5, (2,), generator=gen)
    flip = torch.rand(2, generator=gen) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
    for b in range(2):
        want = padded[b, :, dy[b]:dy[b] + 6, dx[b]:dx[b] + 6]
        assert torch.equal(out[b], want.flip(-1) if flip[b] else want)


def test_min_steps_and_sgd_recipe_train(aq):
    import torch
    spec = aq.Regime.from_dict({"name": "x"}).spec()
    x, y = torch.randn(40, 1, 32, 32), torch.arange(40) % 10
    recipe = aq.Training(optimizer="sgd", lr=0.01, weight_decay=5e-4, schedule="cosine",
                         augment="crop_flip", batch_size=16, min_epochs=1, max_epochs=50,
                         min_steps=9, stop_train_accuracy=0.0)
    _, epochs, _, steps = aq.train(x, y, recipe, spec, seed=0)
    assert steps == 9 and epochs == 3  # 3 steps an epoch; stops at the first epoch past 9 steps


def test_npz_subset_decodes_like_the_png_pool(aq, tmp_path):
    import numpy as np
    from raydal.transforms import decode_rows, encode_png
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    spec = aq.Regime.from_dict({"name": "x"}).spec().input_spec
    arr, ok, bad = decode_rows([encode_png(a) for a in images], None, spec)
    assert not bad and np.array_equal(aq.resize_like_decode(images, 32), arr)


def test_committed_npz_subset(aq):
    import numpy as np
    path = BENCH / "gpu_data" / "fmnist_subset.npz"
    assert path.stat().st_size <= 8 * 2**20
    z = np.load(path)
    assert z["train_x"].shape == (aq.NPZ_TRAIN, 28, 28) and z["test_x"].shape == (aq.NPZ_TEST, 28, 28)
    assert z["train_x"].dtype == np.uint8 and len(set(z["train_index"].tolist())) == aq.NPZ_TRAIN


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
    monkeypatch.setattr(aq, "run", lambda r, out, *a, **k: seen.update(out=out)
                        or {"seconds": 0.0})
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
