"""Experiment tracking in MLflow and TensorBoard: the config as params, one step per round, and
the training curve from the rank-0 Ray Train worker.

Per round r (step r): ``num_labeled``, ``test_accuracy``, ``train_loss``, ``seconds/<phase>``
(select, label, train), ``score/q<p>`` (quantiles of the round's selected scores: actors pass
on only the rows that can enter the top-k, so the pool's full score distribution never reaches
the driver) and ``picks/class_<k>`` (how many picks the oracle put in class k). The per-epoch
``train_loss`` is logged by rank 0 at step ``round * epochs + epoch``.

One MLflow run per run directory: its id is kept in ``tracking.json`` there, so a resumed run
logs into the same MLflow run and never logs a round twice. Secrets in URIs are redacted from
every logged value.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def check_reachable(mlflow_uri: str | None) -> None:
    """TrackingError within seconds unless the MLflow server at an http(s) ``mlflow_uri``
    answers its ``/health`` endpoint (other URIs, e.g. sqlite:///, are local files: nothing to
    reach). Also bounds the MLflow client's own waits for this process (its defaults retry 7
    times over minutes), unless the environment sets them."""
    from raydal.errors import TrackingError
    from raydal.fs import redact
    from raydal.services import REACH_TIMEOUT_S, unreachable
    if not mlflow_uri or not mlflow_uri.lower().startswith(("http://", "https://")):
        return
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    why = unreachable(mlflow_uri)
    if why is not None:
        raise TrackingError(
            f"tracking.mlflow {redact(mlflow_uri)}: no MLflow server answered its /health within "
            f"{REACH_TIMEOUT_S:g} s ({why}); start the server (mlflow server --host ...), fix the "
            "URI, or set tracking.mlflow: false (or true: a local SQLite store in the run "
            "directory)")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"model": {"name": "x"}} -> {"model.name": "x"}: params as MLflow takes them (secrets in
    URIs redacted, values cut to MLflow's 500 characters)."""
    from raydal.fs import redact
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = redact(json.dumps(v) if not isinstance(v, str) else v)[:500]
    return out


def round_metrics(row: Mapping[str, Any], scores: np.ndarray | None,
                  picked_labels: Iterable[int], num_classes: int) -> dict[str, float]:
    """One round's tracked values. row: a ``ActiveLoop.metrics()`` row; scores: (k,) the
    round's selected scores (None or non-finite for a random round); picked_labels: the labels
    the oracle gave the round's picks."""
    out = {"num_labeled": float(row["num_labeled"]), "test_accuracy": row["test_accuracy"],
           "train_loss": row.get("train_loss")}
    out.update({f"seconds/{k}": v for k, v in row.get("seconds", {}).items()})
    if scores is not None and len(scores) and np.isfinite(scores).all():
        out.update({f"score/q{round(q * 100):d}": float(v)
                    for q, v in zip(QUANTILES, np.quantile(scores, QUANTILES))})
    counts = np.bincount(np.asarray(list(picked_labels), dtype=np.int64), minlength=num_classes)
    out.update({f"picks/class_{k}": float(c) for k, c in enumerate(counts)})
    return {k: float(v) for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class Target:
    """Where a run is tracked; plain data that travels to Ray Train workers.

    mlflow_uri: an MLflow tracking URI (``sqlite:////abs/mlflow.db`` or ``http://host:port``) or None;
    run_id: the MLflow run; tensorboard_dir: a local folder for event files or None.
    """

    mlflow_uri: str | None = None
    run_id: str | None = None
    tensorboard_dir: str | None = None


class Tracker:
    """Logs to every configured backend; ``log`` and ``close`` are no-ops with none."""

    def __init__(self, target: Target):
        self.target = target
        self._client = self._writer = None
        if target.mlflow_uri:
            from mlflow.tracking import MlflowClient
            self._client = MlflowClient(tracking_uri=target.mlflow_uri)
        if target.tensorboard_dir:
            from tensorboardX import SummaryWriter
            # One event file per writer: the default name (seconds + host) collides when two
            # writers open the folder within a second (a round's worker and a resumed driver),
            # and the later one truncates the earlier's file.
            self._writer = SummaryWriter(target.tensorboard_dir, flush_secs=5,
                                         filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self._client is not None:
            from mlflow.entities import Metric
            now = int(time.time() * 1000)
            self._client.log_batch(self.target.run_id, metrics=[
                Metric(k, float(v), now, step) for k, v in metrics.items()])
        if self._writer is not None:
            for k, v in metrics.items():
                self._writer.add_scalar(k, float(v), step)

    def log_params(self, params: Mapping[str, str]) -> None:
        if self._client is not None:
            from mlflow.entities import Param
            items = list(params.items())
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
                self._client.log_batch(self.target.run_id, params=[
                    Param(k, v) for k, v in items[i:i + 100]])
        if self._writer is not None:
            self._writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in params.items()))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class EpochCurves:
    """The rank-0 worker's training curve: ``train_loss`` at step ``step0 + epoch``."""

    def __init__(self, target: Target, step0: int):
        self.tracker, self.step0 = Tracker(target), step0

    def log_epoch(self, epoch: int, loss: float) -> None:
        self.tracker.log({"train_loss_epoch": loss}, step=self.step0 + epoch)
        if self.tracker._writer is not None:
            self.tracker._writer.flush()

    def close(self) -> None:
        self.tracker.close()


def worker_curves(tracking: Mapping[str, Any] | None) -> EpochCurves | None:
    """EpochCurves from ``train_round``'s plain-dict ``tracking`` entry, or None when off."""
    if not tracking:
        return None
    t = dict(tracking)
    step0 = t.pop("step0")
    return EpochCurves(Target(**t), step0)


class RunTracking:
    """The driver's side for one run directory: opens (or reopens) the MLflow run, logs the
    config once, and logs each trained round once, however often the run is resumed.

    record: the Location of the run's ``tracking.json``.
    """

    def __init__(self, mlflow_uri: str | None, tensorboard_dir: str | None, experiment: str,
                 run_name: str, params: Mapping[str, str], record: Any):
        from raydal.storage import read_json
        self.record = record
        state = read_json(record, {})
        fresh = not state or state.get("mlflow_uri") != mlflow_uri
        run_id = None if fresh else state.get("run_id")
        if mlflow_uri and fresh:
            from mlflow.tracking import MlflowClient
            client = MlflowClient(tracking_uri=mlflow_uri)
            exp = client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
            run_id = client.create_run(exp_id, run_name=run_name).info.run_id
        self.target = Target(mlflow_uri, run_id, tensorboard_dir)
        self.logged: set[int] = set() if fresh else set(state.get("logged_rounds", []))
        self.tracker = Tracker(self.target)
        if fresh:
            self.tracker.log_params(params)
            self._save()

    def _save(self) -> None:
        from raydal.storage import atomic_write_json
        atomic_write_json(self.record, {"mlflow_uri": self.target.mlflow_uri,
                                        "run_id": self.target.run_id,
                                        "logged_rounds": sorted(self.logged)})

    def log_round(self, r: int, metrics: Mapping[str, float]) -> None:
        """Log round r at step r unless this run directory already did."""
        if r in self.logged:
            return
        self.tracker.log(metrics, step=r)
        self.logged.add(r)
        self._save()

    def close(self) -> None:
        self.tracker.close()
