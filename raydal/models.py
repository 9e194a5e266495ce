"""timm model factory (random or local pretrained weights, frozen parts) and safetensors
checkpoints.

A checkpoint is a folder ``model.safetensors`` + ``meta.json`` (the ModelSpec and anything the
caller adds), local or at a URI (``s3://bucket/run/checkpoints/round-0001``). It is written
whole by ``raydal.storage.atomic_write_folder`` with ``meta.json`` as the commit file: a
checkpoint exists once its meta.json does. Loading never unpickles anything.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, load_file, save_file

from raydal.config import ModelConfig
from raydal.errors import ConfigError, suggest
from raydal.fs import Location, Where, resolve
from raydal.specs import MIXED_PRECISION_NAMES, mixed_precision_name_problem, runtime_spec
from raydal.storage import atomic_write_folder
from raydal.transforms import InputSpec


class _ModelSpecMethods:
    """Which timm model, for which inputs: the ``model`` config section's fields (declared there,
    ``raydal.config.ModelConfig``) plus ``num_classes``. ``kwargs`` go to ``timm.create_model``."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "ModelSpec":
        """ConfigError for a field name ModelSpec does not have (before ``__init__``'s
        TypeError) or more positional values than fields."""
        names = [f.name for f in fields(cls)]
        for key in kwargs:
            if key not in names:
                raise ConfigError(f"ModelSpec has no field {key!r}; its fields are {names}."
                                  + suggest(key, names))
        if len(args) > len(names):
            raise ConfigError(f"ModelSpec takes at most {len(names)} values ({names}), got "
                              f"{len(args)} positional ones")
        return super().__new__(cls)

    def __post_init__(self) -> None:
        """ConfigError ``model.<field> must be ..., got ...`` for the first field whose type or
        value cannot build a model (whether ``name`` is a timm model is ``create_model``'s)."""
        problem = _spec_problem(self)
        if problem:
            name, what = problem
            value = getattr(self, name)
            raise ConfigError(f"model.{name} must be {what}, got {value!r:.200}, of type "
                              f"{type(value).__name__}")

    @property
    def input_spec(self) -> InputSpec:
        """The InputSpec of this model: its shared fields (mean and std as tuples)."""
        shared = {f.name: getattr(self, f.name) for f in fields(InputSpec) if hasattr(self, f.name)}
        return InputSpec(**{**shared, "mean": tuple(self.mean), "std": tuple(self.std)})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if not isinstance(self.freeze, str):
            d["freeze"] = list(self.freeze)
        return d

    @classmethod
    def of(cls, section: ModelConfig, num_classes: int) -> "ModelSpec":
        """The spec of a validated ``model`` config section and the data's class count."""
        return cls.from_dict({**section.model_dump(mode="json"), "num_classes": num_classes})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        if not isinstance(d.get("freeze", "none"), str):
            d["freeze"] = tuple(d["freeze"])
        return cls(**d)  # a checkpoint older than a field gets the field's default


ModelSpec = runtime_spec("ModelSpec", ModelConfig, _ModelSpecMethods, module=__name__,
                         insert=(("name", "num_classes", int, 10),))


def _spec_problem(spec: ModelSpec) -> tuple[str, str] | None:
    """(field, what it must be) for the first field of ``spec`` that does not fit, or None."""
    def positive_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    def per_channel(v: Any, positive: bool) -> bool:
        if not isinstance(v, (tuple, list)) or not v:
            return False
        counted = len(v) == 1 or not positive_int(spec.in_chans) or len(v) >= spec.in_chans
        return counted and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                               and math.isfinite(x) and (x > 0 or not positive) for x in v)

    freeze = spec.freeze
    checks = [
        ("name", isinstance(spec.name, str) and spec.name != "",
         "a timm model name (a non-empty str) such as 'resnet18'"),
        ("num_classes", positive_int(spec.num_classes), "a positive int"),
        ("in_chans", positive_int(spec.in_chans), "a positive int"),
        ("img_size", positive_int(spec.img_size), "a positive int"),
        ("mean", per_channel(spec.mean, False),
         "a tuple of finite numbers, one or one per input channel (in_chans)"),
        ("std", per_channel(spec.std, True),
         "a tuple of finite numbers > 0, one or one per input channel (in_chans)"),
        ("kwargs", isinstance(spec.kwargs, Mapping)
         and all(isinstance(k, str) for k in spec.kwargs),
         "a dict of timm.create_model keyword arguments (str keys)"),
        ("channel_mismatch", spec.channel_mismatch in ("convert", "skip"), "'convert' or 'skip'"),
        ("pretrained_file", spec.pretrained_file is None
         or isinstance(spec.pretrained_file, (str, os.PathLike)),
         "a local weight file's path or None"),
        ("freeze", freeze in ("none", "backbone") if isinstance(freeze, str) else
         isinstance(freeze, (tuple, list)) and len(freeze) > 0
         and all(isinstance(p, str) and p for p in freeze),
         "'none', 'backbone' or a non-empty tuple of parameter-name prefixes such as "
         "('conv1', 'layer1')"),
    ]
    return next(((name, what) for name, ok, what in checks if not ok), None)


def create_model(spec: ModelSpec, seed: int | None = None, pretrained: bool = True
                 ) -> torch.nn.Module:
    """The timm model of ``spec`` with its frozen parameters marked (``requires_grad=False``).

    With ``spec.pretrained_file`` and ``pretrained``, timm loads that local file through its
    ``pretrained_cfg_overlay`` (adapting the input conv to ``in_chans``) and re-creates the
    classifier for ``num_classes`` when the file's has another size; otherwise the weights are
    random. Nothing is ever downloaded. Pass ``pretrained=False`` when weights from a checkpoint
    replace them anyway.
    """
    import timm  # here, not at the top: scoring actors of plain torch modules never need it
    if not isinstance(spec, ModelSpec):
        raise ConfigError(f"create_model takes a raydal.ModelSpec, got {spec!r:.80}, of type "
                          f"{type(spec).__name__}; e.g. create_model(ModelSpec(name='resnet18', "
                          "num_classes=10))")
    if not timm.is_model(spec.name):
        raise ConfigError(f"model.name: unknown timm model {spec.name!r}; see "
                          "timm.list_models()." + suggest(spec.name, timm.list_models()))
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"create_model: seed must be an int or None, got {seed!r:.80}")
    if seed is not None:
        torch.manual_seed(seed)
    use_file = bool(pretrained and spec.pretrained_file)
    if use_file and not Path(spec.pretrained_file).is_file():
        raise FileNotFoundError(f"model.pretrained_file: {spec.pretrained_file} is not a file on "
                                "this machine; give a local timm/safetensors weight file that "
                                "every Ray node can read, or null for random weights")
    extra = {"pretrained_cfg_overlay": _file_overlay(spec)} if use_file else {}
    model = timm.create_model(spec.name, pretrained=use_file, num_classes=spec.num_classes,
                              in_chans=spec.in_chans, **extra, **spec.kwargs)
    return apply_freeze(model, spec.freeze)


def _file_overlay(spec: ModelSpec) -> dict[str, Any]:
    """timm's pretrained_cfg overlay for a local file: the file as the only source, and the
    classifier size the file really has (read from a safetensors header), so that timm keeps the
    file's classifier when it fits ``num_classes`` and re-creates it when not."""
    import timm
    from safetensors import safe_open
    overlay: dict[str, Any] = {"file": str(spec.pretrained_file), "source": None}
    cfg = timm.models.get_pretrained_cfg(spec.name)
    heads = getattr(cfg, "classifier", None)
    heads = (heads,) if isinstance(heads, str) else tuple(heads or ())
    if heads and str(spec.pretrained_file).endswith(".safetensors"):
        with safe_open(str(spec.pretrained_file), "pt") as f:
            key = f"{heads[0]}.weight"
            if key in f.keys():
                overlay["num_classes"] = f.get_slice(key).get_shape()[0]
    return overlay


def frozen_names(model: torch.nn.Module, freeze: str | tuple[str, ...] | list[str]) -> set[str]:
    """Names of the parameters that ``freeze`` keeps fixed.

    freeze: "none"; "backbone" (all but the classifier, ``model.get_classifier()``); or
    parameter-name prefixes ("stem", "layer1.0"), each matching a name or a dotted parent of it.
    """
    names = [n for n, _ in model.named_parameters()]
    if freeze == "none":
        return set()
    if freeze == "backbone":
        head = model.get_classifier() if callable(getattr(model, "get_classifier", None)) else None
        keep = {id(p) for p in head.parameters()} if isinstance(head, torch.nn.Module) else set()
        if not keep:
            raise ValueError(f"model.freeze: 'backbone' needs a classifier with parameters "
                             f"(timm's get_classifier()); {type(model).__name__} has none. "
                             "List the prefixes to freeze instead")
        return {n for n, p in model.named_parameters() if id(p) not in keep}
    if isinstance(freeze, str):
        raise ValueError(f"model.freeze: got {freeze!r}; expected 'none', 'backbone' or a list "
                         "of parameter-name prefixes")
    out = set()
    for prefix in freeze:
        hit = {n for n in names if n == prefix or n.startswith(prefix + ".")}
        if not hit:
            tops = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"model.freeze: prefix {prefix!r} matches no parameter of "
                             f"{type(model).__name__}; its top-level modules are {tops}")
        out |= hit
    return out


def apply_freeze(model: torch.nn.Module, freeze: str | tuple[str, ...] | list[str]
                 ) -> torch.nn.Module:
    """Set ``requires_grad=False`` on the parameters ``freeze`` names; returns the model."""
    frozen = frozen_names(model, freeze)
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    return model


def train_mode(model: torch.nn.Module) -> torch.nn.Module:
    """``model.train()``, except that norm layers whose parameters are all frozen stay in eval
    mode: their running statistics stay fixed, so a frozen backbone computes the same function
    in every epoch (the linear-probe regime)."""
    model.train()
    for m in model.modules():
        own = list(m.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own) and \
                getattr(m, "running_mean", None) is not None:
            m.eval()
    return model


#: ``training.mixed_precision`` values: the dtype autocast runs matmuls and convolutions in
#: (weights, optimiser state and the loss stay float32). No fp16: it would need loss scaling.
MIXED_PRECISION: dict[str, torch.dtype | None] = dict(zip(MIXED_PRECISION_NAMES,
                                                           (None, torch.bfloat16)))


def mixed_precision_problem(mixed_precision: str, device: str | torch.device | None = None
                            ) -> str | None:
    """Why ``training.mixed_precision`` cannot be ``mixed_precision`` (on ``device``), or None.

    Without ``device`` only the name is checked (config time); with one, also that the device
    runs bfloat16: a CUDA GPU without it (before Ampere) is refused; a CPU autocasts through
    oneDNN, slowly where it lacks AVX512-BF16/AMX.
    """
    problem = mixed_precision_name_problem(mixed_precision)
    if problem:
        return problem
    device = torch.device(device) if device is not None else None
    if (mixed_precision == "bf16" and device is not None and device.type == "cuda"
            and not torch.cuda.is_bf16_supported()):
        return (f"bf16, but {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                "set training.mixed_precision: none")
    return None


def check_mixed_precision(mixed_precision: str, device: str | torch.device | None = None) -> None:
    """ConfigError ``training.mixed_precision: <the problem and its fix>``, if there is one."""
    problem = mixed_precision_problem(mixed_precision, device)
    if problem:
        raise ConfigError(f"training.mixed_precision: {problem}")


def autocast(device: str | torch.device, mixed_precision: str):
    """The autocast context of ``mixed_precision`` on ``device`` (a no-op for "none")."""
    check_mixed_precision(mixed_precision)
    dtype = MIXED_PRECISION[mixed_precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def memory_format(channels_last: bool) -> torch.memory_format:
    """``torch.channels_last`` (NHWC: faster convolutions on tensor cores) or contiguous NCHW."""
    return torch.channels_last if channels_last else torch.contiguous_format


def with_memory_format(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """``model`` with its 4-d weights in the layout of ``channels_last`` (in place); saved
    checkpoints stay NCHW (``save_checkpoint`` makes every tensor contiguous)."""
    return model.to(memory_format=memory_format(channels_last)) if channels_last else model


def save_checkpoint(model: torch.nn.Module, spec: ModelSpec, path: Where,
                    meta: dict[str, Any] | None = None) -> Location:
    """Write model weights and meta to folder ``path`` atomically (replacing an older one)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}

    def fill(tmp: Path) -> None:
        save_file(state, tmp / "model.safetensors")
        (tmp / "meta.json").write_text(json.dumps({"spec": spec.to_dict(), **(meta or {})},
                                                  indent=2))
    return atomic_write_folder(path, fill, commit="meta.json")


def checkpoint_exists(path: Where) -> bool:
    """A checkpoint folder is complete once its meta.json (written last) exists."""
    return (resolve(path) / "meta.json").exists()


def read_checkpoint_meta(path: Where) -> dict[str, Any]:
    return json.loads((resolve(path) / "meta.json").read_bytes())


def load_weights(path: Where, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The safetensors state dict of a checkpoint folder, local or at a URI."""
    loc = resolve(path) / "model.safetensors"
    if not loc.exists():
        raise FileNotFoundError(f"{loc.parent} is not a raydal checkpoint (no model.safetensors)")
    if loc.is_local:
        return load_file(loc.path, device=str(device))
    return {k: v.to(device) for k, v in load(loc.read_bytes()).items()}


def load_checkpoint(path: Where, device: str | torch.device = "cpu"
                    ) -> tuple[torch.nn.Module, ModelSpec]:
    """Rebuild the model of a checkpoint folder and load its safetensors weights; ConfigError
    when ``path`` is not a path or holds no raydal checkpoint."""
    if not isinstance(path, (str, os.PathLike, Location)):
        raise ConfigError(f"load_checkpoint: path must be a checkpoint folder (a str, os.PathLike "
                          f"or URI), got {path!r:.80}, of type {type(path).__name__}")
    loc = resolve(path)
    missing = [n for n in ("meta.json", "model.safetensors") if not (loc / n).exists()]
    if missing:
        why = ("does not exist" if not loc.exists() else "is a file, not a folder"
               if not loc.is_dir() else f"is not a raydal checkpoint (no {' or '.join(missing)})")
        raise ConfigError(f"checkpoint {path} {why}; give a folder written by "
                          "raydal.save_checkpoint (model.safetensors + meta.json), such as "
                          "RUN_DIR/checkpoints/round-0003")
    weights = load_weights(path, device)
    spec = ModelSpec.from_dict(read_checkpoint_meta(path)["spec"])
    model = create_model(spec, pretrained=False)
    model.load_state_dict(weights)
    return model.to(device), spec
