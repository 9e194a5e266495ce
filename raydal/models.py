"""timm model factory and safetensors checkpoints.

A checkpoint is a folder ``model.safetensors`` + ``meta.json`` (the ModelSpec and anything the
caller adds). It is written into a temporary sibling folder and renamed into place, so a folder
with that name is always complete. Loading never unpickles anything.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file

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
    if seed is not None:
        torch.manual_seed(seed)
    return timm.create_model(spec.name, pretrained=False, num_classes=spec.num_classes,
                             in_chans=spec.in_chans, **spec.kwargs)


def save_checkpoint(model: torch.nn.Module, spec: ModelSpec, path: str | Path,
                    meta: dict[str, Any] | None = None) -> Path:
    """Write model weights and meta to folder ``path`` atomically (replacing nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, tmp / "model.safetensors")
        (tmp / "meta.json").write_text(json.dumps({"spec": spec.to_dict(), **(meta or {})},
                                                  indent=2))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "meta.json").read_text())


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[torch.nn.Module, ModelSpec]:
    """Rebuild the model of a checkpoint folder and load its safetensors weights."""
    path = Path(path)
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"{path} is not a raydal checkpoint (no model.safetensors)")
    spec = ModelSpec.from_dict(read_checkpoint_meta(path)["spec"])
    model = create_model(spec)
    model.load_state_dict(load_file(path / "model.safetensors", device=str(device)))
    return model.to(device), spec
