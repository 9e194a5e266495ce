"""benchmarks/train_throughput.py: its data and bare loop run without Ray (the Ray Train half is
the integration test of a training round), and steady state skips the first epoch."""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def tt():
    spec = importlib.util.spec_from_file_location("train_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_throughput"] = module
    spec.loader.exec_module(module)
    return module


def test_steady_state_leaves_out_the_first_epoch(tt):
    assert tt._steady([10.0, 2.0, 2.0], [100, 100, 100]) == 50.0
    assert tt._steady([4.0], [100]) == 25.0
    assert tt._steady([], []) is None


@pytest.mark.parametrize("mixed_precision,channels_last", [("none", False), ("bf16", True)])
def test_bare_loop_on_a_synthetic_pool(tt, tmp_path, mixed_precision, channels_last):
    from raydal.models import ModelSpec
    data = tt.prepare_data(tmp_path, 40, num_classes=4, source=tmp_path / "no-fashion-mnist")
    assert data["data"] == "synthetic" and len(data["labels"]) == 40
    spec = ModelSpec(name="test_resnet", num_classes=4, in_chans=1, img_size=28)
    r = tt.bare_loop(spec, data["pool"], data["labels"], batch_size=16, epochs=2, device="cpu",
                     mixed_precision=mixed_precision, channels_last=channels_last, threads=1)
    assert r["epoch_images"] == [40, 40] and r["steady_img_s"] > 0 and r["startup_s"] > 0

