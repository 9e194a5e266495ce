"""Mistaken Python API calls (strategies and the strategy registry) raise a ConfigError whose
one line names the argument or option, the bad value and the fix, before any work; valid calls
keep working."""
import dataclasses
import inspect
import math
import re
from typing import ClassVar

import pytest

import raydal.scoring.base as base
from raydal.errors import ConfigError
from raydal.scoring import Strategy, create_strategy, list_strategies, register_strategy


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
        for option in inspect.signature(base._REGISTRY[name]).parameters:
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
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))


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
