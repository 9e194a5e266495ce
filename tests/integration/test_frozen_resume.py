"""A linear probe on a pretrained backbone through the whole loop, stopped after round 0 and
resumed: every round's checkpoint keeps the file's backbone bit for bit and trains the head."""
import pytest
import torch
from safetensors.torch import save_file

from raydal.config import ConfigError, parse_config
from raydal.loop import ActiveLoop
from raydal.models import ModelSpec, create_model, load_checkpoint

pytestmark = pytest.mark.integration


def probe_config(fashion_mnist, run_dir, weights, rounds, freeze="backbone"):
    return parse_config({
        "name": "probe", "seed": 2, "run_dir": str(run_dir), "progress": False,
        "data": {"dataset": "fashion-mnist", "prepared_dir": str(fashion_mnist),
                 "pool_subsample": 600, "test_subsample": 200},
        "model": {"name": "test_resnet", "in_chans": 1, "img_size": 32,
                  "pretrained_file": str(weights), "freeze": freeze},
        "strategy": {"name": "dynamicAL"},
        "loop": {"initial": 30, "per_round": 20, "rounds": rounds},
        "selection": {"num_actors": 1, "batch_size": 128},
        "training": {"epochs": 2, "batch_size": 16},
    })


def test_resumed_run_keeps_the_frozen_pretrained_backbone(ray_cluster, fashion_mnist, tmp_path):
    source = create_model(ModelSpec(name="test_resnet", num_classes=1000, in_chans=1), seed=5)
    saved = {k: v.contiguous() for k, v in source.state_dict().items()}
    weights = tmp_path / "backbone.safetensors"
    save_file(saved, str(weights))
    run_dir = tmp_path / "run"
    ActiveLoop.from_config(probe_config(fashion_mnist, run_dir, weights, rounds=0)).run()
    with pytest.raises(ConfigError, match="different model"):
        ActiveLoop.from_config(probe_config(fashion_mnist, run_dir, weights, 1, freeze="none")).run()
    rows = ActiveLoop.from_config(probe_config(fashion_mnist, run_dir, weights, rounds=1)).run()
    assert [r["num_labeled"] for r in rows] == [30, 50]
    heads = []
    for r in (0, 1):
        model, spec = load_checkpoint(run_dir / "checkpoints" / f"round-{r:04d}")
        assert spec.freeze == "backbone" and spec.pretrained_file == str(weights)
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight",
                                                                               "fc.bias"}
        state = model.state_dict()
        changed = [k for k in saved if not k.startswith("fc.") and not torch.equal(state[k],
                                                                                   saved[k])]
        assert changed == []  # weights and BatchNorm statistics of the backbone untouched
        heads.append(state["fc.weight"].clone())
    assert heads[0].shape == (10, saved["fc.weight"].shape[1])
    assert not torch.equal(heads[0], heads[1])  # round 1 trained the head further
