"""Locations, the atomic writer, the lease and pools on a real S3 server (moto, loopback)."""
import pickle
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raydal.config import ConfigError, parse_config
from raydal.fs import FsError, check, resolve
from raydal.labels import LabelError, LabelLog
from raydal.models import (ModelSpec, checkpoint_exists, create_model, load_checkpoint,
                           save_checkpoint)
from raydal.pool import Pool
from raydal.storage import (Lease, RunDirLocked, atomic_write, atomic_write_bytes,
                            atomic_write_json, atomic_write_parquet, read_json, run_dir_lock)
from raydal.transforms import InputSpec, decode_rows, encode_png


def test_locations_join_like_paths_and_resolve_again(s3_bucket, tmp_path):
    run = resolve(s3_bucket) / "runs" / "a b"
    sel = run / "selections" / "round-0001.parquet"
    assert sel.path.endswith("/runs/a b/selections/round-0001.parquet")
    assert sel.name == "round-0001.parquet" and sel.with_suffix(".json").name == "round-0001.json"
    assert sel.parent.parent == run and "endpoint_override=" in str(sel)
    again = resolve(str(sel))  # the text of a location resolves to the same place
    assert again.path == sel.path and again.fs is sel.fs  # one filesystem a process
    local = resolve(tmp_path / "x")
    assert local.is_local and str(local) == str(tmp_path / "x")
    assert resolve(f"file://{tmp_path}/x").path == local.path


def test_unsupported_or_malformed_uris_say_what_to_use():
    with pytest.raises(FsError, match="ftp:// is not a pyarrow filesystem; use a local path"):
        resolve("ftp://host/pool")
    with pytest.raises(FsError, match="percent-encode '#'"):
        check("s3://bucket/a#b")
    assert check("runs/x") == "runs/x"
    with pytest.raises(ConfigError, match="config field 'run_dir': 'ftp://h/r': ftp:// is not"):
        parse_config({"run_dir": "ftp://h/r"})


def test_atomic_writes_and_reads_on_s3(s3_bucket):
    root = resolve(s3_bucket) / "run"
    atomic_write_json(root / "state.json", {"round": 1})
    assert read_json(root / "state.json") == {"round": 1}
    assert read_json(root / "missing.json", "default") == "default"

    def fails(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    with pytest.raises(RuntimeError):
        atomic_write(root / "state.json", fails)
    assert read_json(root / "state.json") == {"round": 1}  # the old object, whole
    table = pa.table({"id": ["a", "b"], "label": [1, 2]})
    atomic_write_parquet(root / "t.parquet", table)
    assert pq.read_table((root / "t.parquet").path, filesystem=root.fs).equals(table)
    assert [f.path.rsplit("/", 1)[1] for f in root.files()] == ["state.json", "t.parquet"]
    restored = pickle.loads(pickle.dumps(root / "state.json"))  # ships its filesystem
    assert restored.read_bytes() == (root / "state.json").read_bytes()


def test_label_log_on_s3(s3_bucket):
    log = LabelLog(resolve(s3_bucket) / "run" / "labels")
    assert log.rounds() == [] and log.labels() == {}
    log.append(0, {"a": 1, "b": 0}, source="simulated", num_classes=3)
    log.append(1, {"c": 2}, source="simulated", num_classes=3)
    assert log.rounds() == [0, 1] and log.labels() == {"a": 1, "b": 0, "c": 2}
    with pytest.raises(LabelError, match="round 1 already exist"):
        log.append(1, {"d": 0}, source="x")
    with pytest.raises(LabelError, match="already labeled"):
        log.append(2, {"a": 1}, source="x")


def test_checkpoint_on_s3_commits_with_its_meta_last(s3_bucket):
    spec = ModelSpec(name="test_resnet", num_classes=3, in_chans=1, img_size=16)
    model = create_model(spec, seed=0)
    ckpt = resolve(s3_bucket) / "run" / "checkpoints" / "round-0000"
    atomic_write_bytes(ckpt / "model.safetensors", b"an upload cut short")  # weights, no meta
    assert not checkpoint_exists(ckpt)
    save_checkpoint(model, spec, str(ckpt), {"num_labeled": 5})
    assert checkpoint_exists(ckpt)
    loaded, got_spec = load_checkpoint(str(ckpt))
    assert got_spec == spec
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_lease_refuses_a_second_driver_while_renewed_and_expires_after_its_holder(s3_bucket):
    run = resolve(s3_bucket) / "run"
    with run_dir_lock(run, lease_ttl=2.0):
        time.sleep(2.5)  # longer than the TTL: the heartbeat keeps the lease fresh
        with pytest.raises(RunDirLocked, match="is in use by .* pid"):
            with run_dir_lock(str(run), lease_ttl=2.0):
                pass
    with run_dir_lock(run, lease_ttl=2.0):  # released on exit: free at once
        pass
    dead = Lease(run / ".lease.json", ttl=1.0, settle=0.0)
    dead.acquire()  # a holder that dies without releasing (no heartbeat)
    with pytest.raises(RunDirLocked, match="lease expires in"):
        Lease(run / ".lease.json", ttl=1.0, settle=0.0).acquire()
    time.sleep(1.1)
    successor = Lease(run / ".lease.json", ttl=1.0, settle=0.0)
    successor.acquire()  # taken over after the TTL
    assert not dead.renew() and dead.lost  # the old holder notices


def test_parquet_pool_on_s3_and_file_uri(s3_bucket, tmp_path, random_images):
    local = Pool.from_numpy(random_images(60), path=tmp_path / "pool.parquet")
    uri = str(resolve(s3_bucket) / "pools" / "p" / "part-0.parquet")
    atomic_write_bytes(uri, (tmp_path / "pool.parquet").read_bytes())
    folder = str(resolve(s3_bucket) / "pools" / "p")
    for pool in (Pool(folder), Pool(uri), Pool(f"file://{tmp_path}/pool.parquet")):
        assert pool.num_rows == 60 and pool.check_ids() == 60 and pool.image_column == "image"
        assert pool.num_bytes == local.num_bytes and len(pool.files) == 1
        assert pool.take(["00000003"]).equals(local.take(["00000003"]))
    sub = Pool(folder).subsample(10, seed=3, path=str(resolve(s3_bucket) / "sub.parquet"))
    same = local.subsample(10, seed=3, path=tmp_path / "sub.parquet")
    assert list(sub.iter_ids()) == list(same.iter_ids())
    with pytest.raises(Exception, match="does not exist"):
        Pool(str(resolve(s3_bucket) / "nothing"))


def test_image_folder_on_s3_holds_uris_that_decode_anywhere(s3_bucket, random_images):
    folder = resolve(s3_bucket) / "images"
    images = random_images(4, size=20)
    for k, im in enumerate(images):
        atomic_write_bytes(folder / f"cls{k % 2}" / f"{k}.png", encode_png(im))
    pool = Pool.from_image_folder(str(folder), path=str(resolve(s3_bucket) / "pool.parquet"))
    table = pool.take(["cls0/0.png", "cls1/1.png"])
    paths = table.column("path").to_pylist()
    assert all(p.startswith("s3://") and "endpoint_override=" in p for p in paths)
    missing = str(folder / "cls0" / "gone.png")
    arr, ok, bad = decode_rows(None, paths + [missing], InputSpec(1, 20))
    assert ok == [0, 1] and [i for i, _ in bad] == [2] and "cannot read" in bad[0][1]
    assert "testing:***@" in bad[0][1] and "testing:testing" not in bad[0][1]  # no secret kept
    np.testing.assert_array_equal(arr[0, 0], images[0])
    stored = Pool.from_image_folder(str(folder), store_bytes=True)
    assert stored.image_column == "image" and stored.num_rows == 4
