"""One distributed selection outside a loop: pool, checkpoint, strategy and budget in, the
selection Parquet out. The one code path of ``raydal select`` and ``jobs/select_round.py``.

The output has columns id (string), score (float64), rank (int64, 0 = best) and is written
atomically: it exists complete or not at all. Paths are local or URIs and are read by every
node: use shared storage on a cluster.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError

from raydal.config import SelectionConfig


def read_labeled(path: str | None) -> dict[str, int] | list[str]:
    """The labeled set: {id: label} from a run dir, its labels/ folder or a Parquet file (local
    paths or URIs such as s3://bucket/runs/x).

    A Parquet file without a ``label`` column gives ids only (enough for strategies that need
    no labels, e.g. entropy). None gives an empty set.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from raydal.errors import one_line
    from raydal.fs import resolve
    from raydal.labels import LabelError, LabelLog
    from raydal.storage import read_table

    if path is None:
        return {}
    p = resolve(path)
    if p.is_dir():
        folder = p / "labels" if (p / "labels").is_dir() else p
        log = LabelLog(folder)
        if not log.rounds():
            raise LabelError(f"--labels {path}: no labels/round-NNNN.parquet files in {folder}; "
                             "give a run directory, its labels/ folder or a Parquet file with "
                             "columns id[, label]")
        return log.labels()
    if not p.exists():
        raise LabelError(f"--labels {path} does not exist; give a run directory, its labels/ "
                         "folder or a Parquet file with columns id[, label]")
    try:
        schema = pq.read_schema(p.path, filesystem=p.fs)
    except (pa.ArrowException, OSError) as e:
        raise LabelError(f"--labels {path} is not a Parquet file ({one_line(str(e))[:200]}); give "
                         "a run directory, its labels/ folder or a Parquet file with columns "
                         "id[, label]") from None
    names = schema.names
    if "id" not in names:
        raise LabelError(f"--labels {path} has no 'id' column (columns: {names})")
    if "label" not in names:
        return [str(i) for i in read_table(p, columns=["id"]).column("id").to_pylist()]
    t = read_table(p, columns=["id", "label"])
    label = t.column("label")
    if not pa.types.is_integer(label.type) or label.null_count:
        raise LabelError(f"--labels {path}: column 'label' is {label.type} with "
                         f"{label.null_count} nulls; labels are class indices: write it as "
                         "integers, one for every id")
    return {str(i): int(y) for i, y in zip(t.column("id").to_pylist(), label.to_pylist())}


def strategy_options(text: str) -> dict[str, Any]:
    """--strategy-options: a JSON object."""
    from raydal.config import ConfigError
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--strategy-options {text!r} is not JSON ({e}); give an object such "
                          "as '{\"ip_weight\": 2}'") from None
    if not isinstance(options, dict):
        raise ConfigError(f"--strategy-options {text!r}: expected a JSON object such as "
                          "'{\"ip_weight\": 2}'")
    return options


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The selection's command-line arguments (the same for the CLI and the job)."""
    p.add_argument("--pool", required=True, help="Parquet pool (file or folder): id, image|path")
    p.add_argument("--pool-format", help="a registered pool source (parquet, webdataset, ...); "
                   "default: webdataset for a folder of .tar shards, else parquet")
    p.add_argument("--checkpoint", help="raydal checkpoint folder (model.safetensors + meta.json);"
                   " not needed by the random strategy")
    p.add_argument("--strategy", default="dynamicAL", help="registered strategy name")
    p.add_argument("--strategy-options", default="{}",
                   help="JSON object, e.g. '{\"ip_weight\": 2}'")
    p.add_argument("--budget", type=int, required=True, help="number of rows to select")
    p.add_argument("--labels", help="labeled set: run dir, its labels/ folder, or Parquet id[,label]")
    p.add_argument("--out", required=True, help="output Parquet file (id, score, rank)")
    for name, field in SelectionConfig.model_fields.items():  # the config's defaults and help
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
        kind = next(t for t in (int, float, str) if t in (field.annotation, *get_args(
            field.annotation))) if choices is None else str
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=field.default,
                       choices=choices, help=field.description or f"selection.{name}")
    p.add_argument("--progress", action="store_true", help="draw a progress bar")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, which `ray job "
                   "submit` sets; without it a new local cluster)")
    return p


def _connect(address: str | None, log_to_driver: bool) -> None:
    """Join ``address`` (or RAY_ADDRESS), else start a local cluster (never a leftover one of
    this machine); a dead address fails within seconds (raydal.connect); no-op when connected."""
    import os

    from raydal.connect import LOCAL, connect
    connect(address if address or os.environ.get("RAY_ADDRESS") else LOCAL,
            log_to_driver=log_to_driver)


def check_arguments(args: argparse.Namespace, labeled: dict[str, int] | list[str]):
    """The strategy the arguments ask for; ConfigError naming the flag and the fix for any
    argument that cannot work (checked before a cluster starts)."""
    from raydal.config import ConfigError
    from raydal.pool import output_problem
    from raydal.scoring.base import create_strategy
    from raydal.selection import check_checkpoint

    if args.budget < 1:
        raise ConfigError(f"--budget must be a positive int, got {args.budget}")
    try:  # the selection settings: the config section's own checks
        SelectionConfig(**{name: getattr(args, name) for name in SelectionConfig.model_fields})
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"--{str(err['loc'][0]).replace('_', '-')} "
                          f"{err['msg'].removeprefix('Input ')}, got {err['input']}") from None
    problem = output_problem(args.out)
    if problem:
        raise ConfigError(f"--out {args.out} {problem}")
    strategy = create_strategy(args.strategy, **strategy_options(args.strategy_options))
    balance = getattr(args, "balance", "none")
    if balance != "none":
        from raydal.scoring.diversity import SetStrategy
        if isinstance(strategy, SetStrategy):
            raise ConfigError(f"--balance {balance} needs per-sample scores, but --strategy "
                              f"{args.strategy} is set-based; drop --balance or use a "
                              "per-sample strategy (dynamicAL, entropy, margin, ...)")
        if not args.checkpoint:
            raise ConfigError(f"--balance {balance} predicts each candidate's class with the "
                              "model: give --checkpoint")
    if strategy.needs_model and not args.checkpoint:
        raise ConfigError(f"--strategy {args.strategy} scores with a model: give --checkpoint "
                          "(a raydal checkpoint folder, e.g. RUN_DIR/checkpoints/round-0003)")
    if args.checkpoint:
        check_checkpoint(args.checkpoint, "--checkpoint")
    if strategy.needs_labeled and not (isinstance(labeled, dict) and labeled):
        raise ConfigError(f"--strategy {args.strategy} with these options needs the labels of "
                          "the labeled set: give --labels (a run directory, its labels/ folder "
                          "or a Parquet file with columns id, label)")
    return strategy


def run_selection(args: argparse.Namespace) -> dict[str, Any]:
    """Select and write ``args.out`` on the connected Ray cluster; returns the summary."""
    from raydal.selection import select
    from raydal.storage import atomic_write_parquet

    labeled = read_labeled(args.labels)  # wrong arguments fail before any cluster starts
    strategy = check_arguments(args, labeled)
    from raydal.pool import open_pool
    pool = open_pool(args.pool, getattr(args, "pool_format", None), field="--pool-format")
    _connect(args.address, log_to_driver=args.progress)
    sel = select(pool, args.checkpoint, strategy, args.budget,
                 labeled=labeled,
                 num_actors=args.num_actors, batch_size=args.batch_size,
                 num_gpus_per_actor=args.num_gpus_per_actor,
                 num_cpus_per_actor=args.num_cpus_per_actor, progress=args.progress,
                 pipeline=args.pipeline, decode_tasks=args.decode_tasks, balance=args.balance)
    out = atomic_write_parquet(args.out, sel.to_table())
    return {"out": str(out), "strategy": args.strategy, "num_selected": len(sel.ids),
            "num_scored": sel.num_scored, "num_labeled": len(labeled),
            "skipped": len(sel.skipped), "seconds": round(sel.seconds, 3)}
