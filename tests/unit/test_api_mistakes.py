"""Mistaken Python API calls (strategies, the strategy registry, ModelSpec, create_model,
load_checkpoint, load_config) raise a ConfigError whose one line names the argument or field,
the bad value and the fix, before any work; valid calls keep working."""
import dataclasses
import inspect
import math
import re
from typing import ClassVar

import pytest

import raydal.scoring.base as base
from raydal.config import load_config
from raydal.errors import ConfigError
from raydal.models import ModelSpec, create_model, load_checkpoint, save_checkpoint
from raydal.scoring import Strategy, create_strategy, list_strategies, register_strategy

SPEC = ModelSpec(name="test_resnet", num_classes=3, in_chans=1, img_size=16)


def raises(match: str):
    """pytest.raises(ConfigError) whose message is one line matching ``match``."""
    return pytest.raises(ConfigError, match=rf"^(?!.*\n){match}")


@pytest.mark.parametrize("name, options, message", [
    ("entropy", {"batch_size": 0}, r"batch_size must be a positive int, got 0; the default is 256"),
    ("entropy", {"batch_size": -3}, r"batch_size must be a positive int, got -3"),
    ("entropy", {"batch_size": "x"}, r"batch_size must be a positive int, got 'x'"),
    ("entropy", {"batch_size": 2.5}, r"batch_size must be a positive int, got 2.5"),
    ("margin", {"batch_size": True}, r"batch_size must be a positive int, got True"),
    ("least_confidence", {"batch_size": None}, r"batch_size must be a positive int, got None"),
    ("coreset", {"max_labeled": 0}, r"max_labeled must be a positive int, got 0"),
    ("coreset", {"max_labeled": "10"}, r"max_labeled must be a positive int, got '10'"),
    ("coreset", {"oversample": 1.0}, r"oversample must be a positive int, got 1.0"),
    ("random", {"seed": "a"}, r"seed must be an int, got 'a'; the default is 0"),
    ("badge", {"seed": 1.5}, r"seed must be an int, got 1.5"),
    ("dynamicAL", {"ip_weight": math.nan}, r"ip_weight must be a float >= 0, got nan "
                                           r"\(not finite\); the default is 2.0"),
    ("dynamicAL", {"ip_weight": math.inf}, r"ip_weight must be a float >= 0, got inf"),
    ("dynamicAL", {"chunk_size": 10.0}, r"chunk_size must be a positive int, got 10.0"),
    ("dynamicAL", {"params": ["all"]}, r"params must be one of \['all', 'head'\], got \['all'\]"),
    ("dynamicAL", {"tf32": 1}, r"tf32 must be a bool, got 1"),
    ("gradnorm", {"chunk_size": -1}, r"chunk_size must be a positive int, got -1"),
    ("dynamicAL_batch", {"diversity": -math.inf}, r"diversity must be a float >= 0, got -inf"),
    ("dynamicAL_batch", {"sketch_dim": 0}, r"sketch_dim must be a positive int, got 0"),
    ("dynamicAL_batch", {"seed": None}, r"seed must be an int, got None"),
    ("dynamicAL_batch", {"ip_weight": "2"}, r"ip_weight must be a float >= 0, got '2'"),
])
def test_strategy_options_are_checked(name, options, message):
    with raises(rf"strategy '{name}': {message}"):
        create_strategy(name, **options)


def test_every_registered_strategy_checks_its_options():
    """Each option of each registered strategy refuses a value of the wrong type (a list);
    gradnorm's ip_weight has its own check (it is 0)."""
    for name in list_strategies():
        for option in inspect.signature(base.STRATEGIES.get(name)).parameters:
            with raises(rf"strategy '{name}': {option} (must be|is 0 for gradnorm)"):
                create_strategy(name, **{option: [1]})


def test_valid_options_still_build_strategies():
    assert create_strategy("entropy", batch_size=7).batch_size == 7
    assert create_strategy("dynamicAL", ip_weight=1, params="head").ip_weight == 1
    assert create_strategy("coreset", max_labeled=5).max_labeled == 5
    assert create_strategy("random", seed=-1).seed == -1
    assert create_strategy("dynamicAL_batch", diversity=0.5, chunk=2).options()["chunk"] == 2


@pytest.mark.parametrize("name", [3, None, ["entropy"]])
def test_a_strategy_name_that_is_not_a_str(name):
    with raises(rf"strategy must be a registered strategy's name \(a str\), one of \['badge', "
                rf".*'random'\]; got {re.escape(repr(name))}, of type {type(name).__name__}$"):
        create_strategy(name)


def test_unknown_option_names_the_options_and_a_close_one():
    with raises(r"strategy 'coreset' has no option 'max_label'; its options are \['oversample', "
                r"'max_labeled'\]. Did you mean 'max_labeled'\?"):
        create_strategy("coreset", max_label=3)


@pytest.fixture
def registry(monkeypatch):
    """A copy of the strategy registry, restored after the test."""
    base.STRATEGIES.names()  # built-in and installed entries loaded before the copy
    monkeypatch.setattr(base.STRATEGIES, "_entries", dict(base.STRATEGIES._entries))


@pytest.mark.usefixtures("registry")
def test_register_strategy_refuses_what_is_not_a_named_strategy_class():
    for bad in (3, int, lambda: None):
        with raises(r"register_strategy takes a subclass of raydal.scoring.Strategy .*, got "):
            register_strategy(bad)

    class Nameless(Strategy):
        pass
    with raises(r"strategy class .*Nameless has no name: set name: ClassVar\[str\]"):
        register_strategy(Nameless)

    @dataclasses.dataclass
    class Taken(Strategy):
        name: ClassVar[str] = "entropy"
    with raises(r"strategy 'entropy' is already registered by"):
        register_strategy(Taken)


@pytest.mark.usefixtures("registry")
def test_a_registered_strategy_with_a_required_option():
    @register_strategy
    @dataclasses.dataclass
    class Thresholded(Strategy):
        name: ClassVar[str] = "test_thresholded"
        threshold: float

    assert register_strategy(Thresholded) is Thresholded  # registering twice is a no-op
    assert create_strategy("test_thresholded", threshold=0.5).threshold == 0.5
    with raises(r"strategy 'test_thresholded': missing a required argument: 'threshold'; its "
                r"options are \['threshold'\]"):
        create_strategy("test_thresholded")
    with raises(r"strategy 'test_thresholded': threshold must be a float, got nan"):
        create_strategy("test_thresholded", threshold=math.nan)


@pytest.mark.parametrize("fields, message", [
    ({"bogus": 1}, r"ModelSpec has no field 'bogus'; its fields are \['name', .*'freeze'\]"),
    ({"nmae": "resnet18"}, r"ModelSpec has no field 'nmae'.* Did you mean 'name'\?"),
    ({"name": 3}, r"model.name must be a timm model name \(a non-empty str\) such as "
                  r"'resnet18', got 3, of type int"),
    ({"num_classes": "10"}, r"model.num_classes must be a positive int, got '10', of type str"),
    ({"num_classes": 0}, r"model.num_classes must be a positive int, got 0"),
    ({"in_chans": 1.0}, r"model.in_chans must be a positive int, got 1.0"),
    ({"img_size": None}, r"model.img_size must be a positive int, got None"),
    ({"mean": 0.5}, r"model.mean must be a tuple of finite numbers, one or one per input "
                    r"channel \(in_chans\), got 0.5"),
    ({"in_chans": 3, "mean": (0.5, 0.5)}, r"model.mean must be .*, got \(0.5, 0.5\)"),
    ({"std": (0.0,)}, r"model.std must be a tuple of finite numbers > 0, .*got \(0.0,\)"),
    ({"std": (math.nan,)}, r"model.std must be .*, got \(nan,\)"),
    ({"kwargs": ["drop_rate"]}, r"model.kwargs must be a dict of timm.create_model keyword"),
    ({"channel_mismatch": "drop"}, r"model.channel_mismatch must be 'convert' or 'skip', got "
                                   r"'drop'"),
    ({"pretrained_file": 3}, r"model.pretrained_file must be a local weight file's path or "
                             r"None, got 3"),
    ({"freeze": "head"}, r"model.freeze must be 'none', 'backbone' or a non-empty tuple of "
                         r"parameter-name prefixes .*, got 'head'"),
    ({"freeze": ()}, r"model.freeze must be .*, got \(\)"),
])
def test_model_spec_fields_are_checked(fields, message):
    with raises(message):
        ModelSpec(**fields)


def test_model_spec_positional_values_and_valid_specs():
    with raises(r"ModelSpec takes at most 10 values \(\['name', .*\]\), got 11 positional ones"):
        ModelSpec(*range(11))
    spec = ModelSpec("test_resnet", 3, 3, 16, [0.1], (0.2, 0.3, 0.4, 0.5), {}, "skip", None,
                     ["conv1"])
    assert spec.mean == [0.1] and spec.freeze == ["conv1"]  # kept as given
    assert ModelSpec.from_dict(SPEC.to_dict()) == SPEC
    assert dataclasses.replace(SPEC, num_classes=4).num_classes == 4


def test_create_model_refuses_other_specs_names_and_seeds():
    with raises(r"create_model takes a raydal.ModelSpec, got 'test_resnet', of type str; e.g. "
                r"create_model\(ModelSpec\(name='resnet18', num_classes=10\)\)"):
        create_model("test_resnet")
    with raises(r"model.name: unknown timm model 'resnet_18'; see timm.list_models\(\). Did you "
                r"mean 'resnet18'\?"):
        create_model(ModelSpec(name="resnet_18"))
    with raises(r"create_model: seed must be an int or None, got '0'"):
        create_model(SPEC, seed="0")
    assert create_model(SPEC, seed=0).num_classes == 3


def test_load_checkpoint_refuses_what_is_not_a_checkpoint(tmp_path):
    root = re.escape(str(tmp_path))
    fix = (r"; give a folder written by raydal.save_checkpoint \(model.safetensors \+ "
           r"meta.json\), such as RUN_DIR/checkpoints/round-0003$")
    for bad in (3, None, b"ckpt"):
        with raises(rf"load_checkpoint: path must be a checkpoint folder \(a str, os.PathLike or "
                    rf"URI\), got {re.escape(repr(bad))}, of type {type(bad).__name__}$"):
            load_checkpoint(bad)
    with raises(rf"checkpoint {root}/nope does not exist{fix}"):
        load_checkpoint(tmp_path / "nope")
    with raises(rf"checkpoint {root} is not a raydal checkpoint \(no meta.json or "
                rf"model.safetensors\){fix}"):
        load_checkpoint(tmp_path)
    save_checkpoint(create_model(SPEC, seed=0), SPEC, tmp_path / "ckpt")
    with raises(rf"checkpoint {root}/ckpt/meta.json is a file, not a folder{fix}"):
        load_checkpoint(tmp_path / "ckpt" / "meta.json")
    (tmp_path / "ckpt" / "model.safetensors").rename(tmp_path / "weights")
    with raises(rf"checkpoint {root}/ckpt is not a raydal checkpoint \(no "
                rf"model.safetensors\){fix}"):
        load_checkpoint(str(tmp_path / "ckpt"))
    (tmp_path / "weights").rename(tmp_path / "ckpt" / "model.safetensors")
    model, spec = load_checkpoint(tmp_path / "ckpt")
    assert spec == SPEC and model.num_classes == 3


@pytest.mark.parametrize("path, hint", [(None, ""), (3, ""),
                                        ({"run_dir": "x"}, "; to validate a dict, use "
                                                           "raydal.parse_config")])
def test_load_config_refuses_what_is_not_a_path(path, hint):
    with raises(rf"load_config: path must be a YAML file's path or URI \(a str or os.PathLike\) "
                rf"such as 'configs/quickstart.yaml', got .*, of type {type(path).__name__}"
                rf"{hint}$"):
        load_config(path)
    assert load_config("configs/quickstart.yaml").strategy.name
