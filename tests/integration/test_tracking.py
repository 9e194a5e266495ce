"""Tracking a loop in a real MLflow server on 127.0.0.1 (started and stopped here) and in
TensorBoard event files, read back through the MLflow client and the event records."""
import json
import struct
import sys
from pathlib import Path

import pytest

from raydal.config import parse_config
from raydal.loop import ActiveLoop
from raydal.testing.servers import free_port, local_server

pytestmark = pytest.mark.integration
mlflow = pytest.importorskip("mlflow", reason="pip install -e '.[tracking]'")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` in its own process group; yields its URI; stops exactly that group."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--default-artifact-root", str(root / "artifacts")]
    uri = f"http://127.0.0.1:{port}"
    with local_server(cmd, f"{uri}/health", root / "server.log"):  # minutes on a loaded machine
        yield uri


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every event file in ``folder`` (TFRecord: length, crc, event,
    crc)."""
    from tensorboardX.proto.event_pb2 import Event
    out: dict[str, dict[int, float]] = {}
    for f in sorted(folder.glob("events.out.tfevents.*")):
        data, i = f.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


@pytest.mark.parametrize("store", ["server", "local"])
def test_loop_is_tracked_in_mlflow_and_tensorboard(ray_cluster, fashion_mnist, request, store,
                                                    tmp_path):
    """MLflow: a server, or ``tracking.mlflow: true`` (a SQLite store in the run directory:
    MLflow 3 refuses its folder store unless MLFLOW_ALLOW_FILE_STORE=true)."""
    from mlflow.tracking import MlflowClient
    run_dir = tmp_path / "run"
    server = request.getfixturevalue("mlflow_server") if store == "server" else None
    uri = server or f"sqlite:///{run_dir / 'mlflow.db'}"
    cfg = parse_config({
        "name": "tracked", "seed": 3, "run_dir": str(run_dir), "progress": False,
        "data": {"dataset": "fashion-mnist", "prepared_dir": str(fashion_mnist),
                 "pool_subsample": 400, "test_subsample": 100},
        "model": {"name": "test_resnet", "in_chans": 1, "img_size": 32},
        "strategy": {"name": "entropy"},
        "loop": {"initial": 30, "per_round": 20, "rounds": 1},
        "selection": {"num_actors": 1, "batch_size": 128},
        "training": {"epochs": 2, "batch_size": 16},
        "tracking": {"mlflow": server or True, "tensorboard": True, "experiment": "raydal-test"},
    })
    rows = ActiveLoop.from_config(cfg).run()
    ActiveLoop.from_config(cfg).run()  # resumed when finished: logs nothing twice
    record = json.loads((run_dir / "tracking.json").read_text())
    assert record["logged_rounds"] == [0, 1] and record["mlflow_uri"] == uri

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(record["run_id"])
    exp = client.get_experiment_by_name("raydal-test")
    assert run.info.experiment_id == exp.experiment_id and run.info.run_name == "tracked"
    assert run.data.params["model.name"] == "test_resnet"
    assert run.data.params["strategy.name"] == "entropy"
    assert run.data.params["loop.per_round"] == "20"

    def history(key):
        return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}

    assert history("num_labeled") == {0: 30.0, 1: 50.0}
    assert history("test_accuracy") == pytest.approx({r["round"]: r["test_accuracy"]
                                                      for r in rows})
    assert all(history("seconds/train")[r] > 0 for r in (0, 1))
    picks = [history(f"picks/class_{k}") for k in range(10)]
    assert sum(p[0] for p in picks) == 30 and sum(p[1] for p in picks) == 20
    quantiles = [history(f"score/q{q}")[1] for q in (0, 25, 50, 75, 100)]
    assert quantiles == sorted(quantiles)
    # the training curve comes from the rank-0 worker: steps round * epochs + epoch
    assert sorted(history("train_loss_epoch")) == [1, 2, 3, 4]

    board = tensorboard_scalars(run_dir / "tensorboard")
    assert board["num_labeled"] == {0: 30.0, 1: 50.0}
    assert sorted(board["train_loss_epoch"]) == [1, 2, 3, 4]
    assert board["test_accuracy"] == pytest.approx(history("test_accuracy"))
