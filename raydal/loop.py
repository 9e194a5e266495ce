"""ActiveLoop: the round state machine, resumable from what is on disk.

Round 0 buys ``loop.initial`` random labels. Round r >= 1: train on all labels so far ->
evaluate -> select ``loop.per_round`` ids -> label them. Every step's output is a file written
atomically, and a step whose output exists is never redone, so running again on the same run
directory continues where the last run stopped, with no label lost or bought twice:

  selections/round-r.parquet   written before labeling; reused, never re-selected
  labels/round-r.parquet       written once (LabelLog refuses a second write)
  checkpoints/round-r/         complete or absent (its meta.json is written last)
  metrics.jsonl                rebuilt from the checkpoints' and selections' records

The run directory, the pool and the data files are local paths or pyarrow filesystem URIs
(``s3://bucket/runs/x``); see ``raydal.fs``.

The loop runs on built objects (``raydal.build.RunParts``: the pool, the oracle, the strategies,
the model and training specs): ``ActiveLoop.from_config(cfg)`` builds them from a config,
checking every name before any work; ``ActiveLoop(parts)`` takes them as they are.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import warnings

import torch
import yaml

from raydal import hooks
from raydal.build import RunData, RunParts, build, build_data, open_tracking
from raydal.config import RunConfig, parse_config
from raydal.connect import connect
from raydal.errors import ConfigError, RunDirError, RunDirLocked
from raydal.fs import Location, Where, resolve
from raydal.labels import LabelLog, numbered_rounds
from raydal.models import ModelSpec, checkpoint_exists, read_checkpoint_meta
from raydal.oracle import (LabelRequest, Oracle, parse_label_file, read_picks,
                           validate_against_picks)
from raydal.pool import PoolSource
from raydal.resources import ensure_schedulable, selection_demand, training_demand
from raydal.run_dir import claim, remove_derived_data, remove_made, remove_train_attempts
from raydal.shared_paths import check_shared
from raydal.storage import (atomic_write_bytes, atomic_write_json, atomic_write_parquet,
                            read_json, read_table, run_dir_lock)

#: Config sections that must not change when a run is resumed (they define what was bought).
_FIXED_ON_RESUME = ("seed", "data", "model", "strategy")
_FIXED_LOOP = ("initial", "per_round")


class ActiveLoop:
    """``ActiveLoop.from_config(config).run()`` runs (or resumes) the loop in ``config.run_dir``.

    parts: the built objects (``raydal.build.build``); a ``RunConfig`` is built when first
    needed (``raydal status`` reads a run without building it).
    """

    def __init__(self, parts: RunParts | RunConfig, run_dir: Where | None = None):
        self._parts = parts if isinstance(parts, RunParts) else None
        self.config = parts.config if isinstance(parts, RunParts) else parts
        self.run_dir = resolve(run_dir or self.config.run_dir)  # absolute: workers run elsewhere
        self.labels = LabelLog(self.run_dir / "labels")
        self.tracking = None  # raydal.tracking.RunTracking while run() runs, when configured

    @classmethod
    def from_config(cls, config: RunConfig, run_dir: Where | None = None, *,
                    pool: PoolSource | None = None, oracle: Oracle | None = None,
                    strategy=None) -> "ActiveLoop":
        """The loop of ``config``, its objects built now (``raydal.build.build``: a name no
        registry has is a ConfigError here, before any work); ``pool``, ``oracle`` and
        ``strategy`` replace the configured ones."""
        return cls(build(config, pool=pool, oracle=oracle, strategy=strategy), run_dir)

    @property
    def parts(self) -> RunParts:
        if self._parts is None:
            self._parts = build(self.config)
        return self._parts

    # ---- paths -------------------------------------------------------------------------------
    def selection_path(self, r: int) -> Location:
        return self.run_dir / "selections" / f"round-{r:04d}.parquet"

    def checkpoint_path(self, r: int) -> Location:
        return self.run_dir / "checkpoints" / f"round-{r:04d}"

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Run every remaining step; return the per-round metrics."""
        parts = self.parts  # every name checked, the data set imported, the pool opened
        with self._nothing_left_if_first_run_fails(), run_dir_lock(self.run_dir):
            self._check_resume_config()
            self._check_labels_intact()
            oracle = parts.oracle
            self._check_services_reachable(oracle)
            # the user's inputs, before Ray starts (pyarrow and torch on the driver only)
            data = self._prepare_data()
            from raydal.train import check_test_labels  # a label column scan
            check_test_labels(data.test, data.num_classes)
            self._check_model()
            self._check_pool_lasts(data.pool)
            cfg = self.config
            oracle.check(data.pool, data.num_classes)  # e.g. a truth file that lacks pool ids
            connect(self.config.ray.address, num_cpus=self.config.ray.num_cpus,
                    log_to_driver=self.config.ray.log_to_driver)
            self._check_shared()  # the cluster's view of the paths and its resources
            self._check_resources()
            self.tracking = open_tracking(cfg, self.run_dir)
            try:
                if not self._select_and_label(0, data, None, oracle):
                    return self.metrics()  # round 0 awaits labels
                for r in range(cfg.loop.rounds + 1):
                    self._train(r, data)
                    self._write_metrics()
                    self._track(r, data)
                    if r < cfg.loop.rounds and not self._select_and_label(
                            r + 1, data, self.checkpoint_path(r), oracle):
                        return self.metrics()  # round r + 1 awaits labels
            finally:
                if self.tracking is not None:
                    self.tracking.close()
            self._set_state(cfg.loop.rounds, "done")
            rows = self.metrics()
            from raydal.report import write_learning_curve
            write_learning_curve({cfg.name: rows}, self.run_dir / "report" / "learning_curve.png")
            return rows

    def _check_model(self) -> None:
        """Build the model once here, before any label is bought: a timm keyword it refuses, a
        pretrained file of another format or architecture, a freeze prefix that matches nothing
        or one that freezes everything stop the run with one line (ConfigError), not the first
        training task after round 0's labels. One forward pass of two blank images in training
        mode catches the keywords timm only uses there (drop_rate)."""
        from raydal.errors import RaydalError, one_line
        from raydal.models import create_model
        m = self.config.model
        spec = self.parts.model
        try:
            model = create_model(spec, seed=self.config.seed)
            model.train()(torch.zeros(2, spec.in_chans, spec.img_size, spec.img_size))
        except RaydalError:
            raise
        except Exception as e:  # timm, torch, safetensors: many types for one mistake
            raise ConfigError(
                f"model {m.name!r} cannot be built as configured ({type(e).__name__}: "
                f"{one_line(str(e))[:300]}); fix model.kwargs, model.pretrained_file or "
                "model.freeze") from None
        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError(f"model.freeze {m.freeze!r} freezes every parameter of "
                              f"{m.name!r}: nothing would train; freeze fewer ('backbone' keeps "
                              "the classifier trainable)")

    def _check_pool_lasts(self, pool: PoolSource) -> None:
        """ConfigError when the loop would buy more labels than the pool has images."""
        loop = self.config.loop
        wanted = loop.initial + loop.rounds * loop.per_round
        if wanted > pool.num_rows:
            lasts = (pool.num_rows - loop.initial) // loop.per_round
            raise ConfigError(
                f"loop.initial + loop.rounds x loop.per_round = {loop.initial} + {loop.rounds} x "
                f"{loop.per_round} = {wanted} labels, but pool {pool.path} has {pool.num_rows} "
                f"images; set loop.rounds to at most {max(lasts, 0)}, or use a larger pool")

    def _check_services_reachable(self, oracle: Oracle) -> None:
        """An MLflow server or an oracle's service that is down or silent fails the start in
        seconds, before Ray starts (``raydal.services``)."""
        mlflow = self.config.tracking.mlflow
        if isinstance(mlflow, str):
            from raydal.tracking import check_reachable
            check_reachable(mlflow)
        oracle.check_reachable()

    def _track(self, r: int, data: RunData) -> None:
        """Log trained round r (once per run directory)."""
        if self.tracking is None:
            return
        from raydal.tracking import round_metrics
        sel = self.selection_path(r)
        scores = read_table(sel, columns=["score"]).column("score").to_numpy() \
            if sel.exists() else None
        t = self.labels.table()
        picked = [y for y, rr in zip(t.column("label").to_pylist(), t.column("round").to_pylist())
                  if rr == r]
        self.tracking.log_round(r, round_metrics(self.metrics()[r], scores, picked,
                                                 data.num_classes))

    def _bought_anything(self) -> bool:
        """Whether a selection or a label was ever committed (round 0's selection is first)."""
        return self.selection_path(0).exists() or bool(self.labels.rounds())

    @contextlib.contextmanager
    def _nothing_left_if_first_run_fails(self):
        """Refuse a folder that is not raydal's (``raydal.run_dir.claim``); if this run made the
        folder and fails before buying anything, remove what it wrote."""
        fresh = claim(self.run_dir)
        try:
            yield
        except RunDirLocked:
            raise  # another driver's directory now
        except BaseException:
            if fresh and not self._bought_anything():
                remove_made(self.run_dir)
            raise

    def _check_resources(self) -> None:
        """ResourceError in seconds if actors or trainers can never be placed (raydal.resources)."""
        s, t = self.config.selection, self.config.training
        ensure_schedulable(
            [selection_demand(s.num_actors, s.num_cpus_per_actor, s.num_gpus_per_actor),
             training_demand(t.num_workers, t.cpus_per_worker, t.use_gpu)],
            self.config.ray.resource_wait_s)

    def _check_labels_intact(self) -> None:
        """Refuse a run directory whose label file of an earlier round is gone: the rounds after
        it were built on those labels, and buying them again would pay twice."""
        have = set(self.labels.rounds())
        selected = numbered_rounds(self.run_dir / "selections")
        later = max([r - 1 for r in selected] + list(have), default=-1)
        lost = [r for r in range(later + 1) if r not in have]
        lost += [r for r in selected if r > later and r not in have
                 and checkpoint_exists(self.checkpoint_path(r))]
        fix = ("raydal never buys a label twice: restore the file(s) from a backup and run "
               "again, or start a new run_dir")
        if lost:
            raise RunDirError(
                f"{self.run_dir / 'labels'} lost the labels of round(s) {lost} (round-NNNN.parquet"
                " deleted or moved) although later steps were built on them; " + fix)
        try:
            state = read_json(self.run_dir / "state.json")
        except RunDirError:
            return  # a damaged progress note; rewritten below
        recorded = state.get("num_labeled") if isinstance(state, dict) else None
        count = len(self.labels.labels())
        if isinstance(recorded, int) and recorded > count:
            raise RunDirError(
                f"{self.run_dir / 'labels'} holds {count} labels, but {recorded} were bought "
                f"(state.json): a label file was deleted or moved; {fix} (to label the last "
                "round again on purpose, delete state.json as well)")

    def _check_resume_config(self) -> None:
        path = self.run_dir / "config.yaml"
        new = self.config.model_dump(mode="json")
        if not self._bought_anything():  # nothing bought yet: any config may (re)start here
            remove_derived_data(self.run_dir)  # derived from the old data; made again
        elif path.exists():
            old = _as_now(yaml.safe_load(path.read_text()) or {})
            changed = [k for k in _FIXED_ON_RESUME if old.get(k) != new.get(k)]
            changed += [f"loop.{k}" for k in _FIXED_LOOP
                        if (old.get("loop") or {}).get(k) != new["loop"].get(k)]
            if changed:
                raise ConfigError(
                    f"run directory {self.run_dir} was started with a different "
                    f"{', '.join(changed)}; resume with the same values (see its config.yaml), "
                    "choose a new run_dir, or delete this one to start over (its labels are "
                    "lost)")
        atomic_write_bytes(path, yaml.safe_dump(new, sort_keys=False).encode())

    def _check_shared(self) -> None:
        """On a cluster of many nodes, refuse before any work a local path that the nodes
        running actors and trainers cannot read (see raydal.shared_paths)."""
        d = self.config.data
        subsampled = bool(d.pool_subsample), bool(d.test_subsample)  # copies go to run_dir
        outputs = {"run_dir": self.run_dir}
        inputs = {}
        if d.dataset is not None and not all(subsampled):
            outputs["data.prepared_dir"] = d.prepared_dir
        elif d.dataset is None:
            inputs = {"data.pool": None if subsampled[0] else d.pool,
                      "data.test": None if subsampled[1] else d.test}
        check_shared(inputs, outputs)

    def _prepare_data(self) -> RunData:
        """The built data, with the seeded subsamples of the pool and test set (written once
        under RUN_DIR/data/) and the pool's ids checked once."""
        d, seed, data = self.config.data, self.config.seed, self.parts.data
        self._check_pool_once(data.pool)
        pool, test = data.pool, data.test
        if d.pool_subsample:
            pool = pool.subsample(d.pool_subsample, seed, self.run_dir / "data" / "pool.parquet")
        if d.test_subsample:
            test = test.subsample(d.test_subsample, seed + 1,
                                  self.run_dir / "data" / "test.parquet")
        return dataclasses.replace(data, pool=pool, test=test)

    def _check_pool_once(self, pool: PoolSource) -> None:
        """Null or duplicate ids make labels ambiguous: refuse such a pool (checked once for a
        pool whose ``fingerprint`` is known, else on every run)."""
        key = pool.fingerprint()
        if key is None:
            pool.check_ids()
            return
        key = {"pool": pool.path, "files": key}
        record = self.run_dir / "data" / "pool_check.json"
        if read_json(record) != key:
            pool.check_ids()
            atomic_write_json(record, key)

    def model_spec(self, num_classes: int | None = None) -> ModelSpec:
        """The run's model spec (``num_classes``: another class count than the data's)."""
        if num_classes is None:
            return self.parts.model
        return ModelSpec.of(self.config.model, num_classes)

    def _set_state(self, r: int, phase: str) -> None:
        atomic_write_json(self.run_dir / "state.json", {
            "round": r, "phase": phase, "num_labeled": len(self.labels.labels()),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def _select_and_label(self, r: int, data: RunData, model: Location | None,
                          oracle: Oracle) -> bool:
        """Select round r's picks (once) and ask ``oracle`` for their labels; False while the
        round awaits labels (nothing written but the state)."""
        from raydal.selection import select
        if self.labels.has_round(r):
            return True
        cfg = self.config
        sel_path = self.selection_path(r)
        if not sel_path.exists():
            self._set_state(r, "select")
            labeled = self.labels.labels()
            strategy = self.parts.round_strategy(r)
            budget = cfg.loop.initial if r == 0 else cfg.loop.per_round
            s = cfg.selection
            sel = select(data.pool, model, strategy, budget, labeled,
                         num_actors=s.num_actors, batch_size=s.batch_size,
                         num_gpus_per_actor=s.num_gpus_per_actor,
                         num_cpus_per_actor=s.num_cpus_per_actor,
                         pipeline=s.pipeline, decode_tasks=s.decode_tasks,
                         balance=s.balance if r else "none",  # round 0: random, no model
                         input_spec=self.parts.model.input_spec,
                         progress=cfg.progress, resource_wait_s=cfg.ray.resource_wait_s)
            hooks.point(f"select-{r}")  # scored, nothing written yet
            atomic_write_json(sel_path.with_suffix(".json"), {
                "round": r, "strategy": strategy.name, "budget": budget,
                "num_selected": len(sel.ids), "num_scored": sel.num_scored,
                "seconds": sel.seconds, "startup_seconds": sel.startup_seconds,
                "nodes": sel.nodes, "skipped": [list(x) for x in sel.skipped]})
            atomic_write_parquet(sel_path, sel.to_table())  # the commit point of a selection
            hooks.point(f"selected-{r}")
        self._set_state(r, "label")
        t0 = time.perf_counter()
        request = LabelRequest(r, read_table(sel_path), data.pool, data.classes,
                               data.num_classes, self.run_dir)
        answer = oracle.ask(request)
        if answer.labels is None:
            self._set_state(r, "awaiting_labels")
            print(answer.message, flush=True)
            return False
        validate_against_picks(answer.labels, request.picks, r)
        hooks.point(f"label-{r}")  # answers bought, not yet written
        self.labels.append(r, answer.labels, source=answer.source,
                           num_classes=data.num_classes)
        meta = read_json(sel_path.with_suffix(".json"), {})
        meta["label_seconds"] = time.perf_counter() - t0
        atomic_write_json(sel_path.with_suffix(".json"), meta)
        return True

    def _train(self, r: int, data: RunData) -> None:
        from raydal.train import train_round
        ckpt = self.checkpoint_path(r)
        if checkpoint_exists(ckpt):
            return
        self._set_state(r, "train")
        cfg = self.config
        labels = self.labels.labels()
        warm = self.checkpoint_path(r - 1) if cfg.loop.warm_start and r > 0 else None
        remove_train_attempts(self.run_dir / "ray_train")  # a killed run's leftovers
        self._check_resources()
        settings = self.parts.round_training(r)
        m = train_round(self.parts.model, data.pool, labels, data.test,
                        settings, ckpt, warm, self.run_dir / "ray_train", progress=cfg.progress,
                        hook_name=f"train-{r}",
                        tracking=self.tracking.target if self.tracking else None,
                        step0=r * cfg.training.epochs)
        self._set_state(r, "trained")
        over = ("" if m.get("test_count") == m.get("test_rows")
                else f" over {m['test_count']} of {m['test_rows']} test images (others unreadable)")
        print(f"round {r}: {len(labels)} labels, test accuracy {m['test_accuracy']:.4f}{over} "
              f"(train {m['seconds']:.1f}s, {m['startup_seconds']:.1f}s of it start-up)", flush=True)

    def import_labels(self, path: Where) -> tuple[int, int]:
        """Validate a label file against the pending round's picks and append it atomically.

        Returns (round, number of labels). Raises LabelError naming the problem.
        """
        from raydal.labels import LabelError
        with run_dir_lock(self.run_dir):
            pending = [r for r in range(self.config.loop.rounds + 1)
                       if self.selection_path(r).exists() and not self.labels.has_round(r)]
            if not pending:
                raise LabelError(f"no round of {self.run_dir} is waiting for labels")
            r = pending[0]
            data = self._parts.data if self._parts else build_data(self.config)
            labels = parse_label_file(path, data.classes, data.num_classes)
            validate_against_picks(labels, read_picks(self.selection_path(r)), r)
            self.labels.append(r, labels, source=f"file:{resolve(path).name}",
                               num_classes=data.num_classes)
            self._set_state(r, "labeled")
            return r, len(labels)

    # ---- records -----------------------------------------------------------------------------
    def metrics(self) -> list[dict]:
        """One row a trained round: round, num_labeled, test_accuracy, seconds per phase."""
        rows = []
        r = 0
        while checkpoint_exists(self.checkpoint_path(r)):
            meta = read_checkpoint_meta(self.checkpoint_path(r))
            sel = read_json(self.selection_path(r).with_suffix(".json"), {})
            m = meta.get("metrics", {})
            rows.append({
                "round": r, "num_labeled": meta.get("num_labeled"),
                "strategy": sel.get("strategy"),
                "test_accuracy": m.get("test_accuracy"), "train_loss": m.get("train_loss"),
                # the images test_accuracy is over, of the test set's rows (unreadable ones left)
                "test_count": m.get("test_count"), "test_rows": m.get("test_rows"),
                "seconds": {"select": round(sel.get("seconds", 0.0), 3),
                            "label": round(sel.get("label_seconds", 0.0), 3),
                            "train": round(meta.get("train_seconds", 0.0), 3)},
                # fixed cost within those: until the first scored batch / optimiser step
                "startup_seconds": {"select": round(sel.get("startup_seconds", 0.0), 3),
                                    "train": round(m.get("startup_seconds", 0.0), 3)},
                "skipped_images": len(sel.get("skipped", []))})
            r += 1
        return rows

    def _write_metrics(self) -> None:
        rows = self.metrics()
        atomic_write_bytes(self.run_dir / "metrics.jsonl",
                           "".join(json.dumps(row) + "\n" for row in rows).encode())


def _as_now(old: dict) -> dict:
    """A run directory's recorded config with the fields added since filled with their
    defaults (as this version writes it), so that a resume compares like with like; as it is
    when it no longer validates."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return parse_config(old).model_dump(mode="json")
    except ConfigError:
        return old
