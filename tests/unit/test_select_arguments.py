"""raydal.select's arguments: a wrong type or value, a broken checkpoint, labels that are not
class indices and an input_spec the model cannot take are refused with a ConfigError naming the
argument (found by the fuzz pass's api and select kinds: before, TypeErrors, AttributeErrors and
errors inside the scorers' Ray tasks escaped). These checks run before Ray starts."""
import json
import shutil

import numpy as np
import pytest

import raydal
from raydal.errors import ConfigError
from raydal.models import ModelSpec
from raydal.selection import check_checkpoint, check_fits, labeled_dict, model_source
from raydal.transforms import InputSpec

SPEC = ModelSpec(name="test_resnet", num_classes=3, in_chans=1, img_size=16)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model = raydal.create_model(SPEC, seed=0).eval()
    folder = tmp_path_factory.mktemp("ckpt") / "c"
    raydal.save_checkpoint(model, SPEC, folder)
    return model, folder


@pytest.mark.parametrize("argument, value, message", [
    ("budget", "5", r"budget must be a positive int, got '5' \(a str\)"),
    ("budget", 2.5, "budget must be a positive int, got 2.5"),
    ("budget", True, r"budget must be a positive int, got True \(a bool\)"),
    ("num_actors", None, r"num_actors must be a positive int, got None \(a NoneType\)"),
    ("batch_size", 0, "batch_size must be a positive int, got 0"),
    ("decode_tasks", "2", r"decode_tasks must be a positive int or None, got '2'"),
    ("num_cpus_per_actor", -1, "num_cpus_per_actor must be a number >= 0, got -1"),
    ("num_gpus_per_actor", "0", r"num_gpus_per_actor must be a number >= 0, got '0' \(a str\)"),
    ("resource_wait_s", float("nan"), "resource_wait_s must be a number >= 0, got nan"),
    ("strategy", 3, r"strategy must be a registered strategy's name .*got 3"),
    ("strategy_options", [1], r"strategy_options must be a dict .*got \[1\] \(a list\)"),
    ("input_spec", (1, 16), r"input_spec must be a raydal.InputSpec\(in_chans, img_size\)"),
    ("input_spec", InputSpec(2, 16), "in_chans must be 1 or 3 and img_size a positive int"),
    ("input_spec", InputSpec(1, 0), "in_chans must be 1 or 3 and img_size a positive int"),
    ("labeled", "abc", r"labeled must be \{id: label, ...\}, a list of ids or None, got 'abc'"),
    ("labeled", 3, "labeled must be .*got 3"),
    ("labeled", {"a": "1"}, r"labeled: id 'a' has label '1' \(a str\); labels are class "
                            r"indices \(ints\)"),
    ("labeled", {"a": None}, "labeled: id 'a' has label None"),
    ("labeled", {"a": 1.5}, "labeled: id 'a' has label 1.5"),
])
def test_wrong_arguments_are_named_before_ray_starts(argument, value, message, tmp_path,
                                                    monkeypatch):
    def ray_work(*args, **kwargs):
        raise AssertionError("select went on to Ray work")
    monkeypatch.setattr("raydal.selection.ray.is_initialized", ray_work)
    kwargs = {"budget": 5, argument: value}
    with pytest.raises(ConfigError, match=message):
        raydal.select(tmp_path / "never-read.parquet", None, kwargs.pop("strategy", "random"),
                      **kwargs, progress=False)


def test_labeled_ids_are_strings():
    assert labeled_dict({1: 0, "b": 2}) == {"1": 0, "b": 2}  # int ids match the pool's str ids
    assert labeled_dict(["a", 3]) == {"a": -1, "3": -1}
    assert labeled_dict({"a", "b"}) == {"a": -1, "b": -1} and labeled_dict(None) == {}


def test_a_broken_checkpoint_is_named_with_the_fix(ckpt, tmp_path):
    _, good = ckpt
    assert check_checkpoint(good) == SPEC

    def broken(name, damage):
        folder = tmp_path / name
        shutil.copytree(good, folder)
        damage(folder)
        return folder
    cases = {
        "missing": (tmp_path / "nope", r"is not a raydal checkpoint folder \(no meta.json\)"),
        "meta": (broken("meta", lambda f: (f / "meta.json").write_text("{not json")),
                 r"its meta.json holds no model spec \(JSONDecodeError"),
        "spec": (broken("spec", lambda f: (f / "meta.json").write_text(json.dumps({}))),
                 r"its meta.json holds no model spec \(KeyError"),
        "garbage": (broken("garbage", lambda f: (f / "model.safetensors").write_bytes(
            b"\0" * 64)), r"model.safetensors is not a safetensors file \(64 bytes, no header\)"),
        "cut": (broken("cut", lambda f: (f / "model.safetensors").write_bytes(
            (f / "model.safetensors").read_bytes()[:100_000])), r"model.safetensors is cut short "
                r"\(100000 bytes; its header says \d+\)"),
        "gone": (broken("gone", lambda f: (f / "model.safetensors").unlink()),
                 "model.safetensors is missing"),
    }
    for name, (path, message) in cases.items():
        with pytest.raises(ConfigError, match=rf"^model {path}.*{message}.*; give a folder "
                                              "written by raydal.save_checkpoint"):
            check_checkpoint(path)
    with pytest.raises(ConfigError, match="^--checkpoint "):
        check_checkpoint(tmp_path / "nope", "--checkpoint")


def test_a_model_that_is_not_a_checkpoint_a_module_or_none(ckpt, tmp_path):
    model, good = ckpt
    pool = raydal.Pool.from_numpy(np.zeros((2, 16, 16), np.uint8), path=tmp_path / "p.parquet")
    with pytest.raises(ConfigError, match=r"model must be a raydal checkpoint folder .*, a "
                                          r"torch.nn.Module or None, got dict \{'a': 1\}"):
        model_source({"a": 1}, None, pool)
    with pytest.raises(ConfigError, match=r"input_spec has in_chans=3, but checkpoint .* is a "
                                          "model of in_chans=1"):
        model_source(str(good), InputSpec(3, 16), pool)
    assert model_source(str(good), None, pool).checkpoint == str(good)


def test_an_input_spec_the_module_cannot_take(ckpt):
    model, _ = ckpt
    model.train()
    model.layer1.eval()  # a mode of its own (frozen norm layers), kept
    with pytest.raises(ConfigError, match=r"input_spec=.*in_chans=3.* does not fit the model: "
                                          r"a blank 3 x 16 x 16 image fails in its forward pass"):
        check_fits(model, InputSpec(3, 16))
    check_fits(model, InputSpec(1, 16))
    assert model.training and not model.layer1.training and model.layer2.training
