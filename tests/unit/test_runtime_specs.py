"""The runtime specs are generated from their config sections (``raydal.specs``): the same
fields, types and defaults, declared once; every value arrives unchanged; specs pickle (they
travel to Ray workers)."""
import pickle
from dataclasses import fields

from raydal.config import ModelConfig, TrainingConfig, parse_config
from raydal.models import ModelSpec
from raydal.train import TrainSettings
from raydal.transforms import InputSpec


def test_config_sections_and_runtime_specs_have_the_same_fields():
    assert set(ModelConfig.model_fields) == {f.name for f in fields(ModelSpec)} - {"num_classes"}
    assert set(TrainingConfig.model_fields) == {f.name for f in fields(TrainSettings)} - {"seed"}


def test_every_value_reaches_the_runtime_specs():
    cfg = parse_config({
        "model": {"name": "test_resnet", "in_chans": 3, "img_size": 40, "mean": [0.1, 0.2, 0.3],
                  "std": [0.4, 0.5, 0.6], "kwargs": {"drop_rate": 0.1},
                  "channel_mismatch": "skip", "freeze": ["conv1"]},
        "training": {"epochs": 3, "batch_size": 8, "lr": 0.01, "weight_decay": 0.1,
                     "num_workers": 2, "cpus_per_worker": 0.5, "use_gpu": True,
                     "checkpoint_every": 1, "max_failures": 3}})
    spec = ModelSpec.of(cfg.model, 7)
    assert spec == ModelSpec("test_resnet", 7, 3, 40, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6),
                             {"drop_rate": 0.1}, "skip", None, ("conv1",))
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert TrainSettings.of(cfg.training, 5) == TrainSettings(3, 8, 0.01, 0.1, 2, 0.5, True, 5, 1, 3)


def test_runtime_defaults_are_the_config_defaults_and_specs_pickle():
    for spec, section, extra in ((ModelSpec(), ModelConfig(), "num_classes"),
                                 (TrainSettings(), TrainingConfig(), "seed")):
        for f in fields(spec):
            if f.name != extra:
                assert getattr(spec, f.name) == getattr(section, f.name), f.name
        assert pickle.loads(pickle.dumps(spec)) == spec
        assert type(spec).__module__ in ("raydal.models", "raydal.train")
    shared = {f.name for f in fields(InputSpec)} - {"max_pixels"}
    assert shared < set(ModelConfig.model_fields)
    spec = ModelSpec(in_chans=3, img_size=40, mean=[0.1, 0.2, 0.3], channel_mismatch="skip")
    assert spec.input_spec == InputSpec(3, 40, (0.1, 0.2, 0.3), channel_mismatch="skip")
    assert pickle.loads(pickle.dumps(spec.input_spec)) == spec.input_spec
