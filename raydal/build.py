"""The composition root: the one place that turns a ``RunConfig`` into the objects a run uses.

``build(config)`` gives ``RunParts``: the pool (any registered pool source), the test set, the
oracle (with its own options model), the strategies of round 0 and of later rounds, the model
spec and the training settings. ``ActiveLoop`` runs on those objects and never reads a name from
the config itself, so a pool source, oracle or strategy registered by a user (a decorator, or an
installed package's entry point: ``raydal.registry``) runs through ``raydal run`` and the Python
API without an edit to raydal; the Python API may also pass its own objects:

    loop = raydal.ActiveLoop.from_config(cfg, pool=MyPool(...), oracle=MyOracle(...))

``check_config(config)`` validates every name and every backend's options against the
registries, reading no file: ``build`` runs it first, so a mistake is one ConfigError line before
Ray starts and before any label is bought (``config.py`` checks only each field's shape).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raydal.config import RunConfig
from raydal.errors import ConfigError, suggest
from raydal.fs import Location, resolve

if TYPE_CHECKING:
    from raydal.models import ModelSpec
    from raydal.oracle import Oracle
    from raydal.pool import Pool, PoolSource
    from raydal.scoring.base import Strategy
    from raydal.train import TrainSettings


@dataclass
class RunData:
    """The data of a run: the pool, the test set (a Parquet ``Pool`` with a label column), the
    ground truth (a Parquet path, or None), the class count and names."""

    pool: "PoolSource"
    truth: str | None
    test: "Pool"
    num_classes: int
    classes: list[str] | None = None


@dataclass
class RunParts:
    """What a run is made of (``build``). ``training.seed`` is the run's seed: round r trains
    with seed + r."""

    config: RunConfig
    data: RunData
    oracle: "Oracle"
    initial_strategy: "Strategy"  # round 0: no model yet
    strategy: "Strategy"
    model: "ModelSpec"
    training: "TrainSettings"

    def round_strategy(self, r: int) -> "Strategy":
        """A fresh copy of the strategy of round ``r`` (no state carried between rounds)."""
        return copy.deepcopy(self.initial_strategy if r == 0 else self.strategy)

    def round_training(self, r: int) -> "TrainSettings":
        """The training settings of round ``r``: the run's seed + r."""
        return _with(self.training, seed=self.training.seed + r)


def _with(settings: Any, **changes: Any) -> Any:
    if dataclasses.is_dataclass(settings):
        return dataclasses.replace(settings, **changes)
    return settings.model_copy(update=changes)  # a pydantic model


# ---- names and options, no I/O ----------------------------------------------------------------
def check_config(config: RunConfig, *, pool: bool = True, oracle: bool = True,
                 strategy: bool = True) -> None:
    """ConfigError (one line naming the field) for a name no registry has or options its backend
    refuses: the strategy and its options, the oracle, its options and its cross-checks with the
    rest of the config, the pool source and its options, the data set, the timm model. Reads no
    file and asks no server. ``pool``/``oracle``/``strategy`` False skip what a caller supplies
    as an object."""
    from raydal.options import validate_options
    d = config.data
    if strategy:
        _strategy(config.strategy.name, config.strategy.options)
    if oracle:
        from raydal.oracle import ORACLES, oracle_options
        cls = ORACLES.get(config.loop.oracle, "config field 'loop.oracle'")
        cls.check_config(config, oracle_options(cls, config.loop.oracle_options))
    if d.dataset is not None:
        from raydal.datasets import DATASETS
        DATASETS.get(d.dataset, "config field 'data.dataset'")
    elif pool and d.pool_format is not None:
        from raydal.pool import POOLS
        cls = POOLS.get(d.pool_format, "config field 'data.pool_format'")
        validate_options(cls.Options, d.pool_options, "data.pool_options",
                         f"pool source {d.pool_format!r}")
    if d.dataset is not None and (d.pool_format is not None or d.pool_options):
        raise ConfigError("config field 'data.pool_format': a registered data set "
                          f"({d.dataset!r}) is Parquet; pool_format and pool_options apply to "
                          "data.pool with data.dataset null")
    _timm_model(config.model.name)


def _strategy(name: str, options: dict[str, Any]) -> "Strategy":
    from raydal.scoring.base import create_strategy
    try:
        return create_strategy(name, **options)
    except ConfigError as e:
        raise ConfigError(f"config field 'strategy': {e}") from None


def _timm_model(name: str) -> None:
    import timm
    if not timm.is_model(name):
        raise ConfigError(f"config field 'model.name': unknown timm model {name!r}; see "
                          "timm.list_models()." + suggest(name, timm.list_models()))


# ---- the objects ------------------------------------------------------------------------------
def build_data(config: RunConfig, pool: "PoolSource | None" = None) -> RunData:
    """The run's data: a registered data set is imported once into ``data.prepared_dir`` (its
    meta gives the classes); else ``data.pool`` is opened by its pool source and ``data.test``
    as Parquet. ``pool`` replaces the configured one."""
    from raydal.pool import Pool, open_pool
    d = config.data
    if d.dataset is not None:
        from raydal.datasets import prepare_dataset
        meta = prepare_dataset(d.dataset, d.prepared_dir, d.source)
        root = resolve(d.prepared_dir)
        return RunData(pool or Pool(root / "pool.parquet"), str(root / "truth.parquet"),
                       Pool(root / "test.parquet"), meta["num_classes"], meta.get("classes"))
    pool = pool or open_pool(str(resolve(d.pool)), d.pool_format, d.pool_options)  # absolute
    return RunData(pool, str(resolve(d.truth)) if d.truth else None, Pool(resolve(d.test)),
                   d.num_classes, d.class_names)


def build(config: RunConfig, *, pool: "PoolSource | None" = None,
          oracle: "Oracle | None" = None, strategy: "Strategy | None" = None) -> RunParts:
    """``RunParts`` of ``config``; ``pool``, ``oracle`` and ``strategy`` replace the configured
    ones (the Python API's own objects). Names and options are checked first
    (``check_config``); then the data set is imported (once) and the pool opened."""
    check_config(config, pool=pool is None, oracle=oracle is None, strategy=strategy is None)
    data = build_data(config, pool)
    if oracle is None:
        from raydal.oracle import create_oracle
        oracle = create_oracle(config, data.truth)
    from raydal.models import ModelSpec
    from raydal.scoring.base import create_strategy
    from raydal.train import TrainSettings
    return RunParts(
        config=config, data=data, oracle=oracle,
        initial_strategy=create_strategy("random", seed=config.seed),
        strategy=strategy or _strategy(config.strategy.name, config.strategy.options),
        model=ModelSpec.of(config.model, data.num_classes),
        training=TrainSettings.of(config.training, config.seed))


def open_tracking(config: RunConfig, run_dir: Location):
    """The run's MLflow/TensorBoard tracking (``raydal.tracking.RunTracking``), or None when
    off. ``true`` puts them in the run directory, which must then be local."""
    t = config.tracking
    if not (t.mlflow or t.tensorboard):
        return None
    from raydal.tracking import RunTracking, flatten
    if True in (t.mlflow, t.tensorboard) and not run_dir.is_local:
        raise ConfigError(f"tracking: the run directory {run_dir} is not local; set "
                          "tracking.mlflow to a tracking URI (http://host:5000) and "
                          "tracking.tensorboard to a local folder instead of true")
    # MLflow 3 refuses its folder store (maintenance mode) unless told to: SQLite instead
    mlflow = f"sqlite:///{run_dir.local_path / 'mlflow.db'}" if t.mlflow is True else t.mlflow
    board = str(run_dir.local_path / "tensorboard") if t.tensorboard is True else t.tensorboard
    return RunTracking(mlflow or None, board or None, t.experiment or config.name, config.name,
                       flatten(config.model_dump(mode="json")), run_dir / "tracking.json")
