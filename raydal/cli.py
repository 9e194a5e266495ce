"""The ``raydal`` command: run, status, report, import-labels, select, data."""
from __future__ import annotations

import argparse
import json
import sys


def _open_run(run_dir: str):
    """The ActiveLoop of an existing run directory (its own config.yaml; local or a URI)."""
    from raydal.config import load_config
    from raydal.fs import resolve
    from raydal.loop import ActiveLoop

    from raydal.errors import RunDirError

    path = resolve(run_dir)
    if not (path / "config.yaml").exists():
        raise RunDirError(f"{path} is not a raydal run directory (no config.yaml); give the "
                          "run_dir of a config that `raydal run` has started")
    return ActiveLoop(load_config(path / "config.yaml"), path)


def _cmd_run(args: argparse.Namespace) -> int:
    import os
    from raydal.config import load_config
    from raydal.connect import SUPERVISED_ENV, cluster_address, supervise
    from raydal.loop import ActiveLoop
    from raydal.report import format_table

    cfg = load_config(args.config)
    target, _ = cluster_address(cfg.ray.address)
    if target is not None and not os.environ.get(SUPERVISED_ENV):  # a driver joined to a head
        return supervise([sys.executable, "-m", "raydal.cli", *args.argv], target)
    if args.run_dir:
        cfg = cfg.with_overrides(run_dir=args.run_dir)
    if args.no_progress:
        cfg = cfg.with_overrides(progress=False)
    rows = ActiveLoop.from_config(cfg).run()  # names checked, objects built, then the run
    print(f"\n{cfg.name}: {cfg.strategy.name} on {cfg.model.name}, run directory {cfg.run_dir}")
    print(format_table(rows))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from raydal.report import format_table
    from raydal.storage import read_json

    from raydal.errors import RunDirError

    loop = _open_run(args.run_dir)
    try:
        print(json.dumps(read_json(loop.run_dir / "state.json", {})))
    except RunDirError as e:  # only a progress note: the loop resumes from the files themselves
        print(f"state: {e}")
    print(f"labels: {len(loop.labels.labels())} in rounds {loop.labels.rounds()}")
    print(format_table(loop.metrics()))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from raydal.fs import resolve
    from raydal.report import format_auc_table, round_summary, write_learning_curve

    runs = {}
    for d in args.run_dirs:
        loop = _open_run(d)
        runs[f"{loop.run_dir.name} ({loop.config.strategy.name})"] = loop.metrics()
    out = resolve(args.out or resolve(args.run_dirs[0]) / "report" / "comparison.png")
    write_learning_curve(runs, out)
    print(format_auc_table(runs))
    if len(args.run_dirs) == 1:
        print()
        print(round_summary(args.run_dirs[0]))
    print(f"\nlearning curves: {out}")
    return 0


def _cmd_import_labels(args: argparse.Namespace) -> int:
    loop = _open_run(args.run_dir)
    r, n = loop.import_labels(args.file)
    print(f"imported {n} labels for round {r}; continue with `raydal run CONFIG`")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from raydal.datasets import CLI_FIELDS, prepare_dataset
    meta = prepare_dataset(args.name, args.out, args.source, fields=CLI_FIELDS)
    print(json.dumps(meta))
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from raydal.selection_job import run_selection
    print(json.dumps(run_selection(args)), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from raydal import __version__
    from raydal.selection_job import add_arguments as add_selection_arguments

    p = argparse.ArgumentParser(prog="raydal", description="Ray-distributed active learning")
    p.add_argument("--version", action="version", version=f"raydal {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run or resume an active-learning loop")
    r.add_argument("config", help="YAML config (see configs/)")
    r.add_argument("--run-dir", help="override the config's run_dir")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.set_defaults(fn=_cmd_run)
    s = sub.add_parser("status", help="show a run's state and per-round metrics")
    s.add_argument("run_dir")
    s.set_defaults(fn=_cmd_status)
    rep = sub.add_parser("report", help="learning curves and AUC table of runs side by side")
    rep.add_argument("run_dirs", nargs="+")
    rep.add_argument("--out", help="PNG path (default RUN_DIR/report/comparison.png)")
    rep.set_defaults(fn=_cmd_report)
    imp = sub.add_parser("import-labels", help="add people's labels (CSV or Label Studio JSON)")
    imp.add_argument("run_dir")
    imp.add_argument("file")
    imp.set_defaults(fn=_cmd_import_labels)
    sel = sub.add_parser("select", help="one selection from a pool and a checkpoint, written "
                         "as Parquet (id, score, rank); the code path of jobs/select_round.py")
    add_selection_arguments(sel).set_defaults(fn=_cmd_select)
    d = sub.add_parser("data", help="import a data set into the pool format")
    d.add_argument("name", help="a registered data set: fashion-mnist, mnist, or one installed "
                   "by entry point")
    d.add_argument("--out", default="data/fashion-mnist")
    d.add_argument("--source", help="folder of the original files (default: Debian's path)")
    d.set_defaults(fn=_cmd_data)
    return p


def entry() -> None:
    """The ``raydal`` command (console script and ``python -m raydal.cli``)."""
    from raydal import stop
    argv = sys.argv[1:]
    command = argv[0] if argv and not argv[0].startswith("-") else ""
    stop.install(command)
    stop.end(main(argv), command)


def user_error(e: BaseException) -> BaseException | None:
    """The user error behind ``e`` (a RaydalError, also one raised in a Ray task), or None."""
    from raydal.errors import RaydalError

    cause = getattr(e, "cause", None)  # ray.exceptions.RayTaskError wraps a remote error
    if isinstance(cause, RaydalError):
        return cause
    if isinstance(e, (RaydalError, FileNotFoundError, PermissionError, IsADirectoryError)):
        return e
    return None


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 2 a user error (one line on stderr), 130 interrupted (Ctrl-C),
    143 terminated (SIGTERM). Anything else is a bug in raydal and keeps its traceback."""
    import logging
    import os
    import signal
    from raydal.errors import one_line

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from raydal.stop import Terminated, raise_terminated, say_stopped, stopped_by
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        try:
            rc = args.fn(args)
            if rc < 0:  # a supervised driver died of signal -rc: so does this process, so
                if -rc not in (signal.SIGKILL, signal.SIGSTOP):  # callers see what they would
                    signal.signal(-rc, signal.SIG_DFL)  # without the supervisor
                os.kill(os.getpid(), -rc)
            return rc
        except SystemExit as e:  # Ray's own SIGTERM handler, while ray.init runs
            if e.code != signal.SIGTERM:
                raise
            raise Terminated() from None
    except KeyboardInterrupt as e:
        signum = stopped_by(e)
        say_stopped(args.command, signum)
        return 128 + signum
    except Exception as e:
        err = user_error(e)
        if err is None:
            raise
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    entry()
