"""training.mixed_precision and training.channels_last: validated by name, carried to the
runtime settings, and used by the model input (any device, either layout)."""
from __future__ import annotations

import pytest
import torch

from raydal.config import parse_config
from raydal.errors import ConfigError
from raydal.models import autocast, check_mixed_precision, mixed_precision_problem
from raydal.train import TrainSettings, model_input
from raydal.transforms import InputSpec


def test_defaults_are_float32_and_nchw():
    t = parse_config({}).training
    assert (t.mixed_precision, t.channels_last) == ("none", False)
    s = TrainSettings()
    assert (s.mixed_precision, s.channels_last) == ("none", False)


def test_values_reach_the_runtime_settings():
    cfg = parse_config({"training": {"mixed_precision": "bf16", "channels_last": True}})
    s = TrainSettings.of(cfg.training, 3)
    assert (s.mixed_precision, s.channels_last, s.seed) == ("bf16", True, 3)


@pytest.mark.parametrize("bad", ["fp16", "bfloat16", "BF16", None])
def test_unknown_precision_is_refused_naming_field_and_choices(bad):
    with pytest.raises(ConfigError) as e:
        parse_config({"training": {"mixed_precision": bad}})
    msg = str(e.value)
    assert "training.mixed_precision" in msg and "'none'" in msg and "'bf16'" in msg, msg
    with pytest.raises(ConfigError, match=r"training\.mixed_precision: got .*expected one of"):
        TrainSettings(mixed_precision=bad)


def test_config_message_names_the_field_once():
    with pytest.raises(ConfigError) as e:
        parse_config({"training": {"mixed_precision": "fp16"}})
    assert str(e.value).count("training.mixed_precision") == 1, str(e.value)


def test_channels_last_must_be_a_bool():
    with pytest.raises(ConfigError, match=r"training\.channels_last"):
        parse_config({"training": {"channels_last": "sometimes"}})


def test_bf16_is_accepted_on_cpu():
    # CPUs autocast to bfloat16 (oneDNN); slow only where the CPU lacks AVX512-BF16/AMX
    assert mixed_precision_problem("bf16", "cpu") is None
    check_mixed_precision("bf16", torch.device("cpu"))
    with autocast("cpu", "bf16"):
        out = torch.nn.Linear(4, 2)(torch.ones(3, 4))
    assert out.dtype == torch.bfloat16
    with autocast("cpu", "none"):
        assert torch.nn.Linear(4, 2)(torch.ones(3, 4)).dtype == torch.float32


def test_model_input_stays_on_the_images_device():
    # "meta" stands in for a GPU: any CPU tensor mixed in (mean, std) would raise here
    spec = InputSpec(3, 8, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8, device="meta")
    x = model_input(images, spec, "meta")
    assert x.device.type == "meta" and x.dtype == torch.float32 and x.shape == (2, 3, 8, 8)


def test_model_input_layout_and_values():
    spec = InputSpec(3, 8, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    nchw = model_input(images, spec, "cpu")
    nhwc = model_input(images.numpy(), spec, "cpu", channels_last=True)
    assert nchw.is_contiguous() and not nhwc.is_contiguous()
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(nchw, nhwc)
    expected = (images.float() / 255 - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) \
        / torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    torch.testing.assert_close(nchw, expected)
