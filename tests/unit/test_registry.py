"""raydal.registry.Registry, the one name table of every seam: duplicates refused, unknown names
answered with the close ones, third-party entries found by entry point (a real dist-info on
sys.path, read by importlib.metadata), a broken one reported when its name is asked for."""
import sys
import textwrap

import pytest

from raydal.errors import ConfigError
from raydal.registry import Registry


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A distribution 'demo-plugins' on sys.path declaring two entries of group 'raydal.demos':
    one that loads and one whose module raises on import."""
    (tmp_path / "demo_plugins.py").write_text(textwrap.dedent("""
        LOADS = []
        LOADS.append(1)

        def square(x):
            return x * x
    """))
    (tmp_path / "demo_broken.py").write_text("raise RuntimeError('cannot import me')\n")
    info = tmp_path / "demo_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-plugins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[raydal.demos]\nsquare = demo_plugins:square\n"
                                           "broken = demo_broken:thing\n"
                                           "double = demo_plugins:square\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for m in ("demo_plugins", "demo_broken"):
        sys.modules.pop(m, None)


def test_duplicates_are_refused_and_the_same_object_is_a_no_op():
    reg = Registry("demo")
    assert reg.entry_point_group == "raydal.demos"
    f = reg.register("a")(len)
    assert f is len and reg.register("a", len) is len
    with pytest.raises(ConfigError, match=r"demo 'a' is already registered by builtins.len; "
                                          r"choose another name for builtins.abs"):
        reg.register("a", abs)
    with pytest.raises(ConfigError, match="non-empty str name"):
        reg.register("", abs)


def test_unknown_names_list_the_known_ones_and_the_closest():
    reg = Registry("demo", entry_point_group="raydal.nothing-here")
    reg.register("margin", 1)
    reg.register("entropy", 2)
    with pytest.raises(ConfigError, match=r"^config field 'x.y': unknown demo 'entropi'; expected "
                                          r"one of \['entropy', 'margin'\]. Did you mean "
                                          r"'entropy'\?$"):
        reg.get("entropi", "config field 'x.y'")
    with pytest.raises(ConfigError, match="a demo is named by a str"):
        reg.get(3)
    assert "margin" in reg and "nope" not in reg and list(reg) == ["entropy", "margin"]


def test_entry_points_load_when_first_needed_and_a_broken_one_says_why(installed):
    reg = Registry("demo")
    reg.register("square", abs)  # a name registered in-process wins over an installed one
    assert "demo_plugins" not in sys.modules  # nothing loaded yet
    assert reg.get("square") is abs
    assert "demo_plugins" not in sys.modules  # a known name needs no entry point
    assert reg.get("double")(3) == 9  # an unknown one loads the group once
    assert sys.modules["demo_plugins"].LOADS == [1]
    assert reg.names() == ["double", "square"]  # the broken one is not listed
    with pytest.raises(ConfigError, match=r"demo 'broken' is installed \(entry point group "
                                          r"raydal.demos\) but does not load: demo_broken:thing "
                                          r"\(RuntimeError: cannot import me\)"):
        reg.get("broken")


def test_every_seam_is_a_registry_with_its_entry_point_group():
    from raydal.datasets import DATASETS
    from raydal.oracle import ORACLES
    from raydal.pool import POOLS
    from raydal.scoring.base import STRATEGIES
    assert [r.entry_point_group for r in (STRATEGIES, ORACLES, POOLS, DATASETS)] == [
        "raydal.strategies", "raydal.oracles", "raydal.pools", "raydal.datasets"]
    assert {"parquet", "webdataset"} <= set(POOLS.names())
    assert {"simulated", "file", "labelstudio"} <= set(ORACLES.names())
