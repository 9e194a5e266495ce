"""Typed, validated run configuration (YAML -> objects).

Every error names the field, the bad value and what is expected, and arrives before any work.
This module only checks the shape and range of each field: the names a config gives (the
strategy, the oracle, the pool source, the data set, the timm model) and the options of each
backend are checked by the build step (``raydal.build``) against its registry and the backend's
own options model, still before Ray starts. So importing this module imports neither torch nor
any seam's entries.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raydal.errors import ConfigError
from raydal.fs import Location, Where, check, is_uri, resolve
from raydal.options import explain
from raydal.specs import mixed_precision_name_problem


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _location(v: str | None) -> str | None:
    """A local path (``~`` expanded) or a supported pyarrow filesystem URI (checked without
    opening it)."""
    if v is None:
        return None
    return check(v) if is_uri(v) else os.path.expanduser(v)


class DataConfig(_Section):
    dataset: str | None = Field(
        "fashion-mnist", description="registered importer (fashion-mnist, mnist, or one "
        "installed by entry point) or null to use pool/truth/test paths")
    source: str | None = Field(None, description="folder with the data set's original files")
    prepared_dir: str = Field("data/fashion-mnist", description="where the import is written")
    pool: str | None = Field(None, description="the pool when dataset is null: Parquet (id, "
                             "image|path), or what pool_format reads")
    pool_format: str | None = Field(
        None, description="a registered pool source: parquet, webdataset (a folder of .tar "
        "shards), or one installed by entry point; null: webdataset for a folder of .tar files "
        "without Parquet ones, else parquet")
    pool_options: dict[str, Any] = Field(default_factory=dict, description="the pool "
                                         "source's options (its own options model)")
    truth: str | None = Field(None, description="Parquet (id, label) for the simulated oracle")
    test: str | None = Field(None, description="Parquet (id, image|path, label) for evaluation")
    num_classes: int | None = Field(None, ge=2)
    class_names: list[str] | None = Field(None, description="names accepted in label files")
    pool_subsample: int | None = Field(None, ge=1, description="use a seeded subset of the pool")
    test_subsample: int | None = Field(None, ge=1, description="evaluate on a seeded subset")

    _locations = field_validator("prepared_dir", "pool", "truth", "test")(_location)

    @model_validator(mode="after")
    def _paths_or_dataset(self):
        if self.dataset is None:
            missing = [k for k in ("pool", "test", "num_classes")
                       if getattr(self, k) is None]
            if missing:
                raise ValueError(f"with data.dataset null, set data.{missing[0]} "
                                 f"(missing: {', '.join('data.' + m for m in missing)})")
        return self


class ModelConfig(_Section):
    name: str = Field("resnet18", description="any timm model name")
    in_chans: int = Field(1, ge=1, le=16)
    img_size: int = Field(32, ge=8, le=1024)
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra timm.create_model args")
    channel_mismatch: Literal["convert", "skip"] = Field(
        "convert", description="images whose channel count differs from in_chans: convert "
        "(grayscale <-> RGB) or skip them (counted and listed in the round's record)")
    pretrained_file: str | None = Field(
        None, description="local timm/safetensors weight file (loaded by timm, classifier "
        "re-created for the data set's classes; nothing is downloaded); null: random weights")
    freeze: Literal["none", "backbone"] | list[str] = Field(
        "none", description="none; backbone (train the classifier only: a linear probe); or a "
        "list of parameter-name prefixes to keep fixed. dynamicAL scores trainable ones only")

    @field_validator("pretrained_file")
    @classmethod
    def _weights_exist(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).expanduser().is_file():
            raise ValueError(f"{v!r} is not a file; give a local .safetensors/.pth weight file "
                             "(e.g. saved with safetensors.torch.save_file(model.state_dict(), "
                             "path)) or null for random weights")
        return None if v is None else str(Path(v).expanduser().resolve())

    @field_validator("freeze")
    @classmethod
    def _prefixes(cls, v):
        if isinstance(v, list) and (not v or not all(isinstance(p, str) and p for p in v)):
            raise ValueError(f"got {v!r}; expected 'none', 'backbone' or a non-empty list of "
                             "parameter-name prefixes such as ['conv1', 'layer1']")
        return v


class StrategyConfig(_Section):
    name: str = Field("dynamicAL", description="a registered strategy (raydal.list_strategies())"
                      " or one installed by entry point")
    options: dict[str, Any] = Field(default_factory=dict, description="the strategy's options "
                                    "(the fields of its dataclass)")


class LoopConfig(_Section):
    initial: int = Field(100, ge=1, description="labels bought at random before round 1")
    per_round: int = Field(100, ge=1, description="labels bought each round (the query size b)")
    rounds: int = Field(4, ge=0, description="selection rounds after the initial set")
    warm_start: bool = Field(True, description="start each round from the last weights")
    oracle: str = Field(
        "simulated", description="a registered oracle (raydal.oracle): simulated (ground truth "
        "from data.truth); file (export picks to to_label/ and wait for `raydal import-labels`); "
        "labelstudio (tasks on a Label Studio server, its options in oracle_options); or one "
        "installed by entry point")
    oracle_options: dict[str, Any] = Field(
        default_factory=dict, description="the oracle's options, checked by its own options "
        "model (labelstudio: url, project, api_key_env, timeout_s)")


class SelectionConfig(_Section):
    num_actors: int = Field(2, ge=1, description="scoring actors (staged) or tasks (fused) "
                            "at a time")
    batch_size: int = Field(256, ge=1, description="images per scoring batch")
    num_gpus_per_actor: float = Field(0.0, ge=0, description="GPUs each scorer holds "
                                      "(fractions share one)")
    num_cpus_per_actor: float = Field(0.5, gt=0, description="keep num_actors x this below the "
                                      "cluster's CPUs (Ray Data reads need one)")
    pipeline: Literal["auto", "staged", "fused"] = Field(
        "auto", description="staged: CPU decode tasks feed an actor pool of scorers; fused: "
        "tasks that decode and score; auto: staged when num_gpus_per_actor > 0")
    decode_tasks: int | None = Field(None, ge=1, description="staged: most decode tasks at "
                                     "a time, 1 CPU each (null: as many as CPUs are free)")
    balance: Literal["none", "proportional", "equal"] = Field(
        "none", description="class-balanced query (per-sample strategies): quotas per class "
        "the model predicts, proportional to the pool's predicted classes or equal per class; "
        "round 0's random picks are never balanced")


class TrainingConfig(_Section):
    epochs: int = Field(25, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    checkpoint_every: int = Field(0, ge=0, description="epochs between mid-round checkpoints "
                                  "a restarted worker group resumes from (0: end only)")
    max_failures: int = Field(1, ge=0, description="Ray Train worker-group restarts")
    mixed_precision: str = Field(
        "none", description="none (float32) or bf16 (autocast to bfloat16 in training and test "
        "evaluation; weights stay float32). CPUs run it too, fast only with AVX512-BF16/AMX")
    channels_last: bool = Field(False, description="NHWC weights and inputs in training and "
                                "test evaluation (faster convolutions on tensor-core GPUs)")

    @field_validator("mixed_precision", mode="before")  # before: YAML null gets the choices too
    @classmethod
    def _known_precision(cls, v: Any) -> Any:
        problem = mixed_precision_name_problem(v)
        if problem:
            raise ValueError(problem)
        return v


class RayConfig(_Section):
    address: str | None = Field(None, description="None: RAY_ADDRESS, else the last `ray start`"
                                "; 'local': a new local cluster (raydal.connect)")
    num_cpus: int | None = Field(None, ge=1, description="for a local cluster only")
    log_to_driver: bool = Field(False, description="show Ray workers' logs in the driver")
    resource_wait_s: float = Field(
        0.0, ge=0, description="seconds to wait for an autoscaling cluster to add the nodes "
        "that scoring actors or trainers need (0: refuse at once what the nodes cannot place)")


class TrackingConfig(_Section):
    mlflow: bool | str = Field(
        False, description="true: an MLflow SQLite store RUN_DIR/mlflow.db; or a tracking URI "
        "(http://host:5000, sqlite:///abs/mlflow.db); false: off")
    tensorboard: bool | str = Field(
        False, description="true: event files in RUN_DIR/tensorboard; or a local folder; "
        "false: off")
    experiment: str | None = Field(None, description="MLflow experiment (default: the run's "
                                   "name)")


class RunConfig(_Section):
    name: str = "run"
    seed: int = 0
    run_dir: str = Field("runs/run", description="a local path or a pyarrow filesystem URI")
    progress: bool = True
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    _run_dir = field_validator("run_dir")(_location)

    @model_validator(mode="before")
    @classmethod
    def _labelstudio_section(cls, data: Any) -> Any:
        """The top-level ``labelstudio:`` section of older configs: now the labelstudio oracle's
        ``loop.oracle_options`` (moved there, with a DeprecationWarning)."""
        if not (isinstance(data, dict) and "labelstudio" in data):
            return data
        data = dict(data)
        section = data.pop("labelstudio")
        loop = data.get("loop")
        loop = dict(loop) if isinstance(loop, dict) else {}
        if section is None or loop.get("oracle") != "labelstudio":
            warnings.warn("config: the labelstudio section is ignored (loop.oracle is not "
                          "labelstudio); remove it", DeprecationWarning, stacklevel=2)
            return data
        if loop.get("oracle_options"):
            raise ValueError("labelstudio and loop.oracle_options are both set; keep only "
                             "loop.oracle_options (the labelstudio section is its old name)")
        warnings.warn("config: the labelstudio section is deprecated; move its keys under "
                      "loop.oracle_options", DeprecationWarning, stacklevel=2)
        data["loop"] = {**loop, "oracle_options": section}
        return data

    def with_overrides(self, **kw: Any) -> "RunConfig":
        return parse_config({**self.model_dump(mode="json"), **kw})


def parse_config(data: dict[str, Any] | None) -> RunConfig:
    """Validate a config mapping; ConfigError names every bad field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config: expected a mapping at the top level, got "
                          f"{type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(explain(e, RunConfig)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"key {key!r} appears twice in one section (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_config(path: Where) -> RunConfig:
    """A config file, local or at a URI. An empty file is refused: it is not read as "all
    defaults" (which would start the full default pool on a mistyped path)."""
    if not isinstance(path, (str, os.PathLike, Location)):
        hint = "; to validate a dict, use raydal.parse_config" if isinstance(path, dict) else ""
        raise ConfigError(f"load_config: path must be a YAML file's path or URI (a str or "
                          f"os.PathLike) such as 'configs/quickstart.yaml', got {path!r:.80}, "
                          f"of type {type(path).__name__}{hint}")
    path = resolve(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; give a YAML file such as "
                          "configs/quickstart.yaml")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    if data is None:
        raise ConfigError(f"config file {path} is empty; raydal does not read an empty file as "
                          "all defaults: copy configs/quickstart.yaml and edit it")
    return parse_config(data)
