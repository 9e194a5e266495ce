"""cluster.yaml passes Ray's own autoscaler validation; configs/imagenet.yaml is a valid raydal config.

``ray up`` runs ``prepare_config`` (merge with the provider's defaults.yaml) and then
``validate_config`` (ray-schema.json plus cross-field checks) before it touches the cloud: the
same two calls run here, offline.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_schema_as_written(cluster):
    import jsonschema
    import ray.autoscaler
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)


def test_cluster_yaml_passes_ray_prepare_and_validate(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config
    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"
    # setup_commands are merged into both node kinds: every node installs raydal
    for kind in ("head_setup_commands", "worker_setup_commands"):
        assert any("pip install" in c and "raydal" in c for c in prepared[kind]), kind


def test_dashboard_stays_on_localhost(cluster):
    start = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start
    assert "0.0.0.0" not in start


def test_gpu_group_scales_from_zero(cluster):
    gpu = cluster["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0
    assert 0 < gpu["max_workers"] <= cluster["max_workers"]
    assert gpu["resources"].get("GPU", 0) >= 1
    assert cluster["available_node_types"]["head"]["resources"].get("GPU", 0) == 0


def test_images_match_the_installed_ray_version(cluster):
    import ray
    docker = cluster["docker"]
    images = [docker["image"], docker["head_image"], docker["worker_image"]]
    for image in images:
        name, tag = image.split(":")
        assert name == "rayproject/ray"
        assert tag.startswith(f"{ray.__version__}-py311"), (image, ray.__version__)
    assert docker["worker_image"].endswith("-gpu")


def test_uploads_exclude_data_and_runs(cluster):
    assert {"data", "runs", ".git"} <= set(cluster["rsync_exclude"])


def test_imagenet_config_loads():
    from raydal import load_config
    cfg = load_config(ROOT / "configs" / "imagenet.yaml")
    assert (cfg.model.name, cfg.model.img_size, cfg.model.in_chans) == ("resnet50", 224, 3)
    assert cfg.data.dataset is None and cfg.data.num_classes == 1000
    assert cfg.selection.num_gpus_per_actor >= 1 and cfg.training.use_gpu
    assert cfg.training.num_workers >= 2
    for p in (cfg.data.pool, cfg.data.truth, cfg.data.test):
        assert os.path.isabs(p), p  # local (shared-mount) placeholder paths, see the config


def test_local_test_cluster_has_the_heads_shape(cluster):
    """raydal.testing.cluster (the multi-node tests' cluster) starts heads as cluster.yaml's:
    no CPU or GPU for work, so actors and trainers must run on worker nodes."""
    from raydal.testing.cluster import LocalCluster
    head = cluster["available_node_types"]["head"]["resources"]
    assert LocalCluster().head_cpus == head["CPU"] == 0
    assert head.get("GPU", 0) == 0


def test_fake_autoscaling_config_keeps_cluster_yaml_node_types(cluster):
    """The laptop autoscaler of tests/integration/test_autoscaling.py: cluster.yaml's worker
    types (GPU kept as a resource, min_workers 0), CPUs capped, valid for Ray's monitor."""
    from ray.autoscaler._private.util import validate_config
    from raydal.testing.cluster import FAKE_HEAD_TYPE, fake_autoscaling_config
    fake = fake_autoscaling_config(ROOT / "cluster.yaml", worker_cpus=2, idle_timeout_minutes=0.25)
    validate_config(fake)
    gpu = cluster["available_node_types"]["gpu_worker"]
    assert fake["available_node_types"]["gpu_worker"] == {
        "resources": {**gpu["resources"], "CPU": 2}, "node_config": {},
        "min_workers": gpu["min_workers"], "max_workers": gpu["max_workers"]}
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert fake["available_node_types"][FAKE_HEAD_TYPE]["resources"] == head["resources"]
    assert fake["idle_timeout_minutes"] == 0.25 and fake["provider"]["type"] == "fake_multinode"
