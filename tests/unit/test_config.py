"""Invalid configs fail before any work, naming the field, the bad value and the fix."""
import pytest

from raydal.build import check_config
from raydal.config import ConfigError, load_config, parse_config

CASES = [
    ({"loop": {"initial": -3}}, ["'loop.initial'", "-3", "greater than or equal to 1"]),
    ({"loop": {"per_round": 0}}, ["'loop.per_round'", "0"]),
    ({"loop": {"intial": 3}}, ["'loop.intial'", "unknown key", "Did you mean 'initial'"]),
    ({"modle": {}}, ["'modle'", "unknown key", "Did you mean 'model'"]),
    ({"model": {"name": "resnt18"}}, ["'model.name'", "unknown timm model 'resnt18'",
                                      "Did you mean"]),
    ({"loop": {"oracle": "simulatd"}}, ["'loop.oracle'", "unknown oracle 'simulatd'",
                                        "Did you mean 'simulated'"]),
    ({"data": {"dataset": None, "pool": "p", "test": "t", "num_classes": 2, "truth": "t",
               "pool_format": "webdatset"}}, ["'data.pool_format'", "unknown pool source "
                                              "'webdatset'", "Did you mean 'webdataset'"]),
    ({"data": {"dataset": None, "pool": "p", "test": "t", "num_classes": 2, "truth": "t",
               "pool_format": "webdataset", "pool_options": {"image_key": ["jpg"]}}},
     ["'data.pool_options.image_key'", "unknown key", "Did you mean 'image_keys'"]),
    ({"data": {"dataset": None, "pool": "p", "test": "t", "num_classes": 2}},
     ["data.truth is missing: the simulated oracle needs ground truth"]),
    ({"model": {"in_chans": 0}}, ["'model.in_chans'", "0"]),
    ({"strategy": {"name": "entropi"}}, ["'strategy'", "unknown strategy 'entropi'",
                                         "Did you mean 'entropy'"]),
    ({"strategy": {"name": "dynamicAL", "options": {"ip_weight": -1}}},
     ["'strategy'", "ip_weight must be a float >= 0, got -1"]),
    ({"strategy": {"name": "random", "options": {"sed": 1}}}, ["has no option 'sed'",
                                                               "Did you mean 'seed'"]),
    ({"training": {"epochs": "many"}}, ["'training.epochs'", "'many'", "integer"]),
    ({"training": {"lr": 0}}, ["'training.lr'", "greater than 0"]),
    ({"training": {"batch_size": 1}}, ["'training.batch_size'"]),
    ({"selection": {"num_actors": 0}}, ["'selection.num_actors'"]),
    ({"selection": {"num_cpus_per_actor": 0}}, ["'selection.num_cpus_per_actor'"]),
    ({"data": {"dataset": "cifar"}}, ["'data.dataset'", "unknown data set 'cifar'"]),
    ({"data": {"dataset": None}}, ["'data'", "set data.pool"]),
    ({"data": {"pool_subsample": -5}}, ["'data.pool_subsample'", "-5"]),
    ({"seed": "abc"}, ["'seed'", "'abc'"]),
    ({"progress": "sometimes"}, ["'progress'"]),
]


@pytest.mark.parametrize("data, fragments", CASES)
def test_bad_config_names_field_value_and_fix(data, fragments):
    """Shapes and ranges fail in parse_config; names and a backend's options in the build
    step's check_config (still before any work)."""
    with pytest.raises(ConfigError) as err:
        check_config(parse_config(data))
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_importing_the_config_imports_no_torch_nor_any_seam():
    """config.py only composes: the names it holds are checked by raydal.build, so reading a
    config (e.g. in a light client) loads neither torch nor a strategy, oracle or pool source."""
    import subprocess
    import sys
    code = ("import sys, raydal.config; raydal.config.parse_config({}); "
            "bad = [m for m in ('torch', 'timm', 'raydal.scoring', 'raydal.oracle', 'raydal.pool',"
            " 'raydal.datasets', 'raydal.labelstudio', 'raydal.train') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_old_labelstudio_section_loads_with_a_deprecation_warning():
    base = {"data": {"dataset": None, "pool": "p", "test": "t", "num_classes": 3},
            "loop": {"oracle": "labelstudio"}}
    with pytest.warns(DeprecationWarning, match="move its keys under loop.oracle_options"):
        cfg = parse_config({**base, "labelstudio": {"url": "http://x/", "project": 1}})
    assert cfg.loop.oracle_options == {"url": "http://x/", "project": 1}
    check_config(cfg)
    with pytest.raises(ConfigError, match="both set"):
        parse_config({**base, "loop": {"oracle": "labelstudio", "oracle_options": {"url": "u"}},
                      "labelstudio": {"url": "http://x/", "project": 1}})


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        parse_config({"loop": {"initial": -1}, "training": {"epochs": 0}})
    assert "'loop.initial'" in str(err.value) and "'training.epochs'" in str(err.value)


def test_top_level_must_be_a_mapping(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(p)
    p.write_text("loop: {initial: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_configs_are_valid():
    cfg = load_config("configs/quickstart.yaml")
    assert cfg.strategy.name == "dynamicAL" and cfg.loop.rounds >= 3
    assert parse_config({}).model.name == "resnet18"  # the library default


def test_config_files_that_cannot_be_meant(tmp_path):
    """A folder, an empty file and a key given twice are refused with one line naming the file;
    ``~`` in a path is the home folder, not a folder named ``~``."""
    import os
    with pytest.raises(ConfigError, match="is a folder; give a YAML file"):
        load_config(tmp_path)
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="is empty; raydal does not read an empty file as all "
                                          "defaults"):
        load_config(tmp_path / "empty.yaml")
    (tmp_path / "twice.yaml").write_text("loop:\n  rounds: 2\nseed: 1\nloop:\n  rounds: 3\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml: key 'loop' appears twice .*lines 1 "
                                          r"and 4\); keep one"):
        load_config(tmp_path / "twice.yaml")
    (tmp_path / "inner.yaml").write_text("loop:\n  rounds: 2\n  rounds: 3\n")
    with pytest.raises(ConfigError, match="key 'rounds' appears twice"):
        load_config(tmp_path / "inner.yaml")
    (tmp_path / "home.yaml").write_text("run_dir: ~/runs/x\n")
    assert load_config(tmp_path / "home.yaml").run_dir == os.path.expanduser("~/runs/x")
