"""timm model factory and safetensors checkpoints.

A checkpoint is a folder ``model.safetensors`` + ``meta.json`` (the ModelSpec and anything the
caller adds), local or at a URI (``s3://bucket/run/checkpoints/round-0001``). It is written
whole by ``raydal.storage.atomic_write_folder`` with ``meta.json`` as the commit file: a
checkpoint exists once its meta.json does. Loading never unpickles anything.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, load_file, save_file

from raydal.fs import Location, Where, resolve
from raydal.storage import atomic_write_folder
from raydal.transforms import InputSpec


@dataclass(frozen=True)
class ModelSpec:
    """Which timm model, for which inputs. ``kwargs`` go to ``timm.create_model``."""

    name: str = "resnet18"
    num_classes: int = 10
    in_chans: int = 1
    img_size: int = 32
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    kwargs: dict[str, Any] = field(default_factory=dict)
    channel_mismatch: str = "convert"

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.in_chans, self.img_size, tuple(self.mean), tuple(self.std),
                         channel_mismatch=self.channel_mismatch)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


def create_model(spec: ModelSpec, seed: int | None = None) -> torch.nn.Module:
    """A randomly initialised timm model (never downloads weights)."""
    import timm  # here, not at the top: scoring actors of plain torch modules never need it
    if seed is not None:
        torch.manual_seed(seed)
    return timm.create_model(spec.name, pretrained=False, num_classes=spec.num_classes,
                             in_chans=spec.in_chans, **spec.kwargs)


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
    """Rebuild the model of a checkpoint folder and load its safetensors weights."""
    weights = load_weights(path, device)
    spec = ModelSpec.from_dict(read_checkpoint_meta(path)["spec"])
    model = create_model(spec)
    model.load_state_dict(weights)
    return model.to(device), spec
