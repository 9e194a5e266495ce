"""Oracles answer "what is the label of these ids?": a protocol, a registry and two oracles.

The loop asks the configured oracle (``loop.oracle``) for a round's picks once per run; the
oracle answers with every label (the loop appends them in one atomic write) or "not yet" (the
loop records the round as awaiting labels, prints the oracle's message and stops; the next
``raydal run`` asks again). Register another with ``@register_oracle("name")`` or, from an
installed package, by an entry point of group ``raydal.oracles``. An oracle with settings
declares them as a pydantic model, ``Options``: the user writes them under
``loop.oracle_options`` and the build step (``raydal.build``) validates them before any work.

- ``simulated``: held-out ground truth (kept apart from the pool): benchmarks, quickstart.
- ``file``: real labeling through files. Each round's picks are exported for people
  (``to_label/round-NNNN.csv`` + a Label Studio tasks JSON + the images), and their answers come
  back through ``raydal import-labels RUN_DIR FILE`` (CSV or a Label Studio JSON export),
  validated against the round's picks before one atomic append to the label log.
- ``labelstudio``: a live Label Studio server (``raydal.labelstudio``).
"""
from __future__ import annotations

import abc
import csv
import io
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from raydal.fs import Location, Where, resolve
from raydal.labels import LabelError, csv_label_rows
from raydal.errors import ConfigError
from raydal.pool import PoolSource as Pool
from raydal.options import validate_options
from raydal.registry import Registry
from raydal.storage import atomic_write_bytes, atomic_write_json, read_table

if TYPE_CHECKING:
    from pydantic import BaseModel

    from raydal.config import RunConfig


@dataclass(frozen=True)
class LabelRequest:
    """One round's picks, as the loop asks an oracle for their labels.

    selection: the round's selection table (id, score, rank), picks in rank order.
    """

    round: int
    selection: pa.Table
    pool: Pool
    classes: list[str] | None
    num_classes: int
    run_dir: Location

    @property
    def picks(self) -> list[str]:
        return [str(i) for i in self.selection.column("id").to_pylist()]


@dataclass(frozen=True)
class Answer:
    """An oracle's reply: ``labels`` (id -> class index) for every pick, or None ("not yet",
    with ``message`` telling the user what to do)."""

    labels: dict[str, int] | None
    source: str = ""
    message: str = ""


class Oracle(abc.ABC):
    """Answers a round's picks. Subclasses register with ``@register_oracle(name)``.

    ``Options``: the oracle's settings (a pydantic model, ``loop.oracle_options`` in a config),
    or None when it has none. ``check_config`` holds its cross-checks with the rest of the
    config; both run in the build step, before Ray starts and before any label is bought."""

    name: ClassVar[str]
    Options: ClassVar[type["BaseModel"] | None] = None

    @classmethod
    def check_config(cls, config: "RunConfig", options: "BaseModel | None") -> None:
        """Raise ConfigError when the rest of ``config`` cannot work with this oracle
        (default: nothing to check). Reads no file and asks no server."""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: "RunConfig", truth: str | None,
                    options: "BaseModel | None" = None) -> "Oracle":
        """The oracle a run's config asks for (``truth``: the data's ground-truth Parquet;
        ``options``: its validated ``Options``, or None when it has none)."""

    def check(self, pool: Pool, num_classes: int) -> None:
        """Raise a RaydalError before any label is bought when this oracle cannot answer for
        ``pool`` (default: nothing to check)."""

    def check_reachable(self) -> None:
        """Raise a RaydalError within seconds when a service it needs does not answer (checked
        before Ray starts; default: nothing to check)."""

    @abc.abstractmethod
    def ask(self, request: LabelRequest) -> Answer:
        """Every pick's label, or ``Answer(None, message=...)`` while some are missing.

        Called again on every run until it answers, so it must not redo work it has done
        (e.g. create tasks twice)."""


#: The oracles: built-in ones, ``@register_oracle`` ones and entry points of group
#: ``raydal.oracles``.
ORACLES: Registry[type[Oracle]] = Registry("oracle", "raydal.oracles",
                                           builtin=("raydal.labelstudio",), base=Oracle)


def register_oracle(name: str) -> Callable[[type[Oracle]], type[Oracle]]:
    """Class decorator: make the oracle available as ``loop.oracle: name``; ConfigError (a
    ValueError) for a name another oracle has."""
    return ORACLES.register(name)


def list_oracles() -> list[str]:
    return ORACLES.names()


def oracle_options(cls: type[Oracle], raw: dict[str, Any] | None,
                   field: str = "loop.oracle_options") -> "BaseModel | None":
    """``raw`` validated by ``cls.Options`` (None for an oracle without options, which refuses
    any); ConfigError naming each bad key under ``field``."""
    return validate_options(cls.Options, raw, field, f"oracle {cls.name!r}")


def create_oracle(config: "RunConfig", truth: str | None) -> Oracle:
    """The oracle named by ``config.loop.oracle`` with its options; ConfigError (with the
    close names) for an unknown one."""
    cls = ORACLES.get(config.loop.oracle, "loop.oracle")
    return cls.from_config(config, truth, oracle_options(cls, config.loop.oracle_options))


@register_oracle("simulated")
class SimulatedOracle(Oracle):
    """Ground truth from a Parquet file of (id, label), local or at a URI."""

    def __init__(self, truth_path: Where):
        self.truth_path = str(truth_path)
        self.location = resolve(truth_path)

    @classmethod
    def check_config(cls, config: "RunConfig", options: None) -> None:
        if config.data.dataset is None and not config.data.truth:
            raise ConfigError("data.truth is missing: the simulated oracle needs ground truth "
                              "(id, label) Parquet; set data.truth or use loop.oracle: file")

    @classmethod
    def from_config(cls, config: "RunConfig", truth: str | None,
                    options: None = None) -> "SimulatedOracle":
        if truth is None:
            cls.check_config(config, options)
        return cls(truth)

    def ask(self, request: LabelRequest) -> Answer:
        return Answer(self.label(request.picks), source="simulated")

    def check(self, pool: Pool, num_classes: int) -> None:
        """Raise ConfigError (naming ``data.truth``) unless the truth file answers for every id
        of ``pool`` with a class of the model: one scan of two columns, before any label is
        bought (a missing id would otherwise surface as a KeyError rounds later)."""
        check_truth(self.truth_path, pool, num_classes)

    def label(self, ids: Sequence[str]) -> dict[str, int]:
        t = pads.dataset(self.location.path, filesystem=self.location.fs,
                         format="parquet").to_table(
            columns=["id", "label"], filter=pc.field("id").cast(pa.string()).isin(
                pa.array(list(ids), pa.string())))
        found = dict(zip(map(str, t.column("id").to_pylist()), t.column("label").to_pylist()))
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"{len(missing)} ids have no ground truth in {self.truth_path} "
                           f"(e.g. {missing[0]!r})")
        return {i: int(found[i]) for i in ids}


def check_truth(truth: Where, pool: Pool, num_classes: int) -> None:
    """ConfigError unless Parquet ``truth`` (id, label) holds an integer label in
    ``[0, num_classes)`` for every id of ``pool``. Ids are compared as strings (as the oracle
    reads them); when some are missing and the id types differ, the message says so."""
    where = f"data.truth {truth}"
    try:
        loc = resolve(truth)
        table = pads.dataset(loc.path, filesystem=loc.fs, format="parquet").to_table()
    except (OSError, pa.ArrowInvalid) as e:
        raise ConfigError(f"{where} cannot be read as Parquet ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); give a Parquet file of (id, label) "
                          "columns") from None
    absent = [c for c in ("id", "label") if c not in table.column_names]
    if absent:
        raise ConfigError(f"{where} has no {' or '.join(absent)} column (it has "
                          f"{table.column_names}); give a Parquet file of (id, label) columns")
    ids, labels = table.column("id"), table.column("label")
    if not pa.types.is_integer(labels.type):
        raise ConfigError(f"{where}: column label is {labels.type}, not integer class indices; "
                          f"write labels as integers in [0, {num_classes})")
    bad = pc.fill_null(pc.or_(pc.less(labels, 0), pc.greater_equal(labels, num_classes)), True)
    if pc.any(bad).as_py():
        first = pc.filter(table, bad).slice(0, 3)
        examples = ", ".join(f"id {i!r}: {v}" for i, v in zip(first.column("id").to_pylist(),
                                                              first.column("label").to_pylist()))
        raise ConfigError(f"{where}: {pc.sum(bad).as_py()} labels are not classes of the model, "
                          f"[0, {num_classes}) (e.g. {examples}); fix the labels or "
                          "data.num_classes")
    known = pc.cast(ids, pa.string())
    missing, total = [], 0
    for chunk in pool.iter_ids():  # ids as strings, as the oracle reads them
        pool_ids = pa.array(chunk, pa.string())
        total += len(pool_ids)
        missing += pc.filter(pool_ids, pc.invert(pc.is_in(pool_ids, value_set=known))).to_pylist()
    if missing:
        hint = (f" (the pool's ids are string, the truth's {ids.type}: e.g. pool id "
                f"{missing[0]!r}, truth id {ids[0].as_py()!r})"
                if not pa.types.is_string(ids.type) and len(ids) else "")
        raise ConfigError(f"{where} has no label for {len(missing)} of the {total} ids of pool "
                          f"{pool.path} (e.g. {missing[:3]}){hint}; give a truth file with "
                          "every pool id, or use loop.oracle: file to label them yourself")


@register_oracle("file")
class FileOracle(Oracle):
    """Exports the picks once; the answers arrive through ``raydal import-labels``, which
    appends them itself, so this oracle only ever answers "not yet"."""

    @classmethod
    def from_config(cls, config: "RunConfig", truth: str | None,
                    options: None = None) -> "FileOracle":
        return cls()

    def ask(self, request: LabelRequest) -> Answer:
        r = request.round
        csv_path = to_label_paths(request.run_dir, r)["csv"]
        if not csv_path.exists():
            export_for_labeling(request.run_dir, r, request.selection, request.pool,
                                request.classes)
        return Answer(None, message=(
            f"round {r}: {request.selection.num_rows} picks to label in {csv_path} (fill its "
            "label column, or import a Label Studio export), then run `raydal import-labels "
            f"{request.run_dir} FILE` and this command again"))


# ---- the file oracle: export picks, import answers --------------------------------------------
def to_label_paths(run_dir: Location, r: int) -> dict[str, Location]:
    base = run_dir / "to_label"
    return {"csv": base / f"round-{r:04d}.csv",
            "labelstudio": base / f"round-{r:04d}.labelstudio.json",
            "images": base / f"round-{r:04d}"}


def _safe_name(rank: int, id_: str) -> str:
    return f"{rank:05d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', id_)[:80]}.png"


def export_for_labeling(run_dir: Location, r: int, selection: pa.Table, pool: Pool,
                        classes: list[str] | None) -> Location:
    """Write the round's picks for people; returns the CSV path (written last)."""
    paths = to_label_paths(run_dir, r)
    rows = pool.take(selection.column("id").to_pylist())
    images, image_paths = pool.image_inputs(rows)
    where = dict(zip(rows.column("id").to_pylist(),
                     image_paths if image_paths is not None else images))
    ranks = dict(zip(selection.column("id").to_pylist(), selection.column("rank").to_pylist()))
    scores = dict(zip(selection.column("id").to_pylist(), selection.column("score").to_pylist()))
    image_of = {}
    for id_ in ranks:
        if image_paths is not None:
            image_of[id_] = str(where[id_])
        else:  # bytes in the pool: write them out so a person can see them
            target = paths["images"] / _safe_name(ranks[id_], id_)
            atomic_write_bytes(target, where[id_])
            image_of[id_] = str(target)
    order = sorted(ranks, key=ranks.get)
    atomic_write_json(paths["labelstudio"], [
        {"data": {"id": i, "image": image_of[i], "score": scores[i], "rank": ranks[i],
                  **({"choices": classes} if classes else {})}} for i in order])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "image", "score", "rank", "label"])
    for i in order:
        w.writerow([i, image_of[i], repr(scores[i]), ranks[i], ""])
    return atomic_write_bytes(paths["csv"], buf.getvalue().encode())


def class_index(value, classes: list[str] | None, num_classes: int, where: str) -> int:
    if isinstance(value, str):
        v = value.strip()
        if classes and v in classes:
            return classes.index(v)
        if re.fullmatch(r"[+-]?\d+", v):
            value = int(v)
        else:
            hint = f"; expected a class index or one of {classes}" if classes else \
                f"; expected an int in [0, {num_classes})"
            raise LabelError(f"{where}: label {value!r} is not a class{hint}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise LabelError(f"{where}: label {value!r} has the wrong type; expected an int class "
                         "index" + (" or a class name" if classes else ""))
    if not 0 <= value < num_classes:
        raise LabelError(f"{where}: class {value} is out of range [0, {num_classes})")
    return value


def annotated_choice(annotations, where: str):
    """The last choice of a Label Studio task's annotations (cancelled ones skipped), or None
    when no annotation has one. ``annotations``: the task's ``annotations`` list as Label
    Studio exports and serves it."""
    try:
        answers = [a for a in annotations or [] if not a.get("was_cancelled")]
        choices = [c for a in answers for res in a.get("result") or []
                   for c in (res.get("value") or {}).get("choices") or []]
    except (AttributeError, TypeError):  # a hand-made file of another shape
        raise LabelError(f"{where}: annotations are not in Label Studio's export format "
                         "(annotations[].result[].value.choices)") from None
    return choices[-1] if choices else None


def parse_label_file(path: Where, classes: list[str] | None, num_classes: int
                     ) -> dict[str, int]:
    """(id -> class index) from a CSV with ``id`` and ``label`` columns or a Label Studio export
    (a local file or a URI)."""
    path = resolve(path)
    if not path.exists():
        raise LabelError(f"label file {path} does not exist")
    pairs: list[tuple[str, object, str]] = []  # (id, raw label, where)
    if path.suffix.lower() == ".json":
        try:
            tasks = json.loads(path.read_bytes())
        except ValueError as e:  # not JSON, or not UTF-8/16/32
            raise LabelError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(tasks, list):
            raise LabelError(f"{path}: expected a Label Studio export (a JSON list of tasks)")
        for k, task in enumerate(tasks):
            where = f"{path.name} task {k}"
            data = task.get("data") if isinstance(task, dict) else None
            id_ = data.get("id") if isinstance(data, dict) else None
            if id_ is None:
                raise LabelError(f"{where}: no data.id (export the tasks raydal wrote)")
            choice = annotated_choice(task.get("annotations"), f"{where} (id {id_!r})")
            if choice is None:
                raise LabelError(f"{where} (id {id_!r}): no annotation with a choice")
            pairs.append((str(id_), choice, where))
    else:
        pairs = csv_label_rows(path)
    labels: dict[str, int] = {}
    for id_, raw, where in pairs:
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raise LabelError(f"{where}: id {id_!r} has an empty label")
        if id_ in labels:
            raise LabelError(f"{where}: id {id_!r} appears twice; give each id one label")
        labels[id_] = class_index(raw, classes, num_classes, where)
    return labels


def validate_against_picks(labels: dict[str, int], picks: list[str], r: int) -> None:
    unknown = sorted(set(labels) - set(picks))
    if unknown:
        raise LabelError(f"{len(unknown)} ids are not picks of round {r} (e.g. {unknown[0]!r}); "
                         f"label only the ids in to_label/round-{r:04d}.csv")
    missing = sorted(set(picks) - set(labels))
    if missing:
        raise LabelError(f"{len(missing)} of the {len(picks)} picks of round {r} have no label "
                         f"(e.g. {missing[0]!r}); a round is imported whole")


def read_picks(selection_path: Where) -> list[str]:
    return [str(i) for i in read_table(selection_path, columns=["id"]).column("id").to_pylist()]
