"""model.pretrained_file and model.freeze: timm loads a local weight file the test writes (nothing
is downloaded), the classifier is re-created for num_classes, frozen parameters are marked, kept
fixed by training mode, and left out of dynamicAL's scores (checked against a float64 autograd
loop over the trainable parameters only)."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from raydal.config import ConfigError, parse_config
from raydal.models import (ModelSpec, apply_freeze, create_model, load_checkpoint,
                           save_checkpoint, train_mode)
from raydal.scoring.base import create_strategy

SPEC = ModelSpec(name="test_resnet", num_classes=10, in_chans=1, img_size=32)


@pytest.fixture
def weight_file(tmp_path, monkeypatch):
    """A test_resnet with 5 classes, its state dict saved as safetensors; HF hub offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = create_model(ModelSpec(name="test_resnet", num_classes=5, in_chans=1), seed=7)
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    return path, source.state_dict()


def test_pretrained_file_loads_the_backbone_and_recreates_the_classifier(weight_file):
    path, saved = weight_file
    spec = replace(SPEC, pretrained_file=str(path))
    a, b = create_model(spec, seed=0), create_model(spec, seed=1)
    state = a.state_dict()
    backbone = [k for k in saved if not k.startswith("fc.")]
    assert backbone and all(torch.equal(state[k], saved[k]) for k in backbone)
    assert all(torch.equal(b.state_dict()[k], saved[k]) for k in backbone)
    assert state["fc.weight"].shape[0] == 10 and saved["fc.weight"].shape[0] == 5
    assert not torch.equal(state["fc.weight"], b.state_dict()["fc.weight"])  # fresh, seeded
    same_head = replace(spec, num_classes=5)
    assert torch.equal(create_model(same_head).state_dict()["fc.weight"], saved["fc.weight"])


def test_missing_pretrained_file_is_named(tmp_path):
    spec = replace(SPEC, pretrained_file=str(tmp_path / "nope.safetensors"))
    with pytest.raises(FileNotFoundError, match="model.pretrained_file: .*nope.safetensors"):
        create_model(spec)
    with pytest.raises(ConfigError, match="model.pretrained_file.*nope.safetensors.*not a file"):
        parse_config({"model": {"pretrained_file": str(tmp_path / "nope.safetensors")}})


def test_freeze_backbone_prefixes_and_errors():
    model = create_model(SPEC, seed=0)
    apply_freeze(model, "backbone")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    apply_freeze(model, ("conv1", "layer1"))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("conv1.", "layer1.")) for n in frozen)
    assert "fc.weight" not in frozen and any(n.startswith("layer2.") for n in
                                             {n for n, _ in model.named_parameters()} - frozen)
    apply_freeze(model, "none")
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match=r"model.freeze: prefix 'layer9' matches no parameter"):
        apply_freeze(model, ["layer9"])
    with pytest.raises(ConfigError, match="model.freeze"):
        parse_config({"model": {"freeze": "head"}})
    assert ModelSpec.of(parse_config({"model": {"freeze": ["conv1"]}}).model, 3).freeze == ("conv1",)


def test_train_mode_keeps_frozen_norm_statistics():
    model = apply_freeze(create_model(SPEC, seed=0), "backbone")
    train_mode(model)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and model.fc.training
    before = [m.running_mean.clone() for m in bns]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(8, 1, 32, 32)
    F.cross_entropy(model(x), torch.arange(8) % 10).backward()
    opt.step()
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("fc."))


def naive_scores(model, x, g_L, names, ip_weight=2.0):
    """One autograd call per sample over the named parameters, in float64."""
    params = dict(model.named_parameters())
    out = []
    for i in range(len(x)):
        logits = model(x[i:i + 1])
        loss = F.cross_entropy(logits, logits.argmax(1))
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        out.append(sum((g ** 2).sum() for g in grads)
                   + ip_weight * sum((g * g_L[n].double()).sum() for n, g in zip(names, grads)))
    return torch.stack(out)


@pytest.mark.parametrize("freeze", ["backbone", ("conv1", "layer1")])
def test_dynamical_scores_follow_the_trainable_parameters(freeze, tmp_path):
    """Through a checkpoint (as a scoring actor loads it): frozen parameters are not scored."""
    spec = replace(SPEC, freeze=freeze)
    save_checkpoint(create_model(spec, seed=0), spec, tmp_path / "ckpt")
    model, loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.freeze == freeze
    model = model.double().eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert 0 < len(names) < len(list(model.parameters()))
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 1, 32, 32, generator=gen, dtype=torch.float64)
    lx = torch.randn(8, 1, 32, 32, generator=gen, dtype=torch.float64)
    ly = torch.randint(0, 10, (8,), generator=gen)
    strategy = create_strategy("dynamicAL", ip_weight=2.0)  # the paper's score: g_L counts
    g_L = strategy.prepare(model, [(lx, ly)])
    assert sorted(g_L) == sorted(names)
    got = strategy.score(model, x, None, g_L)
    want = naive_scores(model, x, g_L, names)
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert got.dtype == torch.float64 and err <= 1e-6, f"relative error {err:.2e}"
