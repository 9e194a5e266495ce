"""The runtime specs are built from their config sections, not copied field by field: a field
added to one side without the other fails here, and every value arrives unchanged."""
from dataclasses import fields

from raydal.config import ModelConfig, TrainingConfig, parse_config
from raydal.models import ModelSpec
from raydal.train import TrainSettings


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
    spec = cfg.model.spec(7)
    assert spec == ModelSpec("test_resnet", 7, 3, 40, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6),
                             {"drop_rate": 0.1}, "skip", None, ("conv1",))
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert cfg.training.settings(seed=5) == TrainSettings(3, 8, 0.01, 0.1, 2, 0.5, True, 5, 1, 3)
