"""A one-worker training task that is retried resumes from its newest complete checkpoint."""
import torch

from raydal.fs import resolve
from raydal.models import ModelSpec, save_checkpoint
from raydal.train import last_epoch_checkpoint


def test_newest_complete_epoch_checkpoint_is_chosen(tmp_path):
    folder = resolve(tmp_path / "run")
    assert last_epoch_checkpoint(folder) is None  # no folder yet: a first start
    spec = ModelSpec(name="test_resnet", num_classes=10, in_chans=1, img_size=32)
    model = torch.nn.Linear(2, 2)
    for epoch in (2, 10):
        save_checkpoint(model, spec, folder / f"epoch-{epoch:04d}", {"epoch": epoch})
    (tmp_path / "run" / "epoch-0011").mkdir()  # a task killed while writing: no meta.json
    (tmp_path / "run" / "epoch-0011" / "model.safetensors").write_bytes(b"partial")
    assert last_epoch_checkpoint(folder) == folder / "epoch-0010"
