"""The ``labelstudio`` oracle: one task per pick on a live Label Studio server.

The first ask of a round finds (or creates) the project, imports one task per pick and records
{pick id: task id} in ``RUN_DIR/labelstudio/round-NNNN.json`` (atomic). Every later ask reads
the tasks' annotations: when every pick has a choice the loop gets all the labels at once,
otherwise "not yet" and nothing is written. A task's data carries the pick's id and a key of
(run directory, round), so a run killed between the import and the record finds its tasks again
instead of creating them twice.

Images go inline, as ``data:image/...;base64`` URIs: Label Studio shows them without reading the
pool, without a file server, cloud storage or internet, and with the bytes a pool holds (a path
pool's files are read here). The API key is read from the environment variable the config names
and is replaced by ``***`` in every message this module raises.

Its settings are ``LabelStudioOptions``, written under ``loop.oracle_options`` (the top-level
``labelstudio:`` section of older configs is moved there, with a deprecation warning).
"""
from __future__ import annotations

import base64
import contextlib
import os
import re
import time
from typing import TYPE_CHECKING, Any, Iterator

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from raydal.errors import OracleError, RaydalError
from raydal.fs import Location, read_bytes, redact
from raydal.oracle import Answer, LabelRequest, Oracle, annotated_choice, class_index, \
    register_oracle
from raydal.storage import atomic_write_json, read_json

if TYPE_CHECKING:
    from raydal.config import RunConfig

#: Keys that would put a Label Studio secret into the config file (refused by name).
_SECRET_KEYS = ("api_key", "key", "token", "api_token", "access_token", "password")


class LabelStudioOptions(BaseModel):
    """Where ``loop.oracle: labelstudio`` creates its tasks (``loop.oracle_options``). The API
    key is read only from the environment variable named by ``api_key_env``, never from the
    config file (which is copied into the run directory and into tracking params)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="the server, e.g. http://127.0.0.1:8080")
    project: int | str = Field(description="a project id, or a title (created with one Choices "
                               "control over the data set's classes if absent)")
    api_key_env: str = Field("LABEL_STUDIO_API_KEY", description="NAME of the environment "
                             "variable that holds the API key (a legacy token or a personal "
                             "access token)")
    timeout_s: float = Field(60.0, gt=0, description="seconds per request to the server")

    @model_validator(mode="before")
    @classmethod
    def _no_secret_here(cls, data: Any) -> Any:
        if isinstance(data, dict):
            bad = [k for k in data if str(k).lower() in _SECRET_KEYS]
            if bad:
                raise ValueError(f"key {bad[0]!r}: an API key is never read from the "
                                 "config file (it is copied to the run directory and tracking "
                                 "params); remove it and export it in the environment variable "
                                 "named by api_key_env (default LABEL_STUDIO_API_KEY)")
        return data

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"got {redact(v)!r}; expected the server's http(s):// address, "
                             "e.g. http://127.0.0.1:8080")
        return v.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", v):  # a key pasted here is not echoed back
            raise ValueError("expected the NAME of an environment variable (upper case letters, "
                             "digits and _, e.g. LABEL_STUDIO_API_KEY), not the key itself")
        return v

_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"),
          (b"BM", "image/bmp"), (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"))


def data_uri(image: bytes) -> str:
    """An encoded image as a ``data:`` URI (its type read from the first bytes)."""
    mime = "image/webp" if image[:4] == b"RIFF" and image[8:12] == b"WEBP" else next(
        (m for magic, m in _MAGIC if image.startswith(magic)), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(image).decode()}"


def label_config(classes: list[str]) -> str:
    """A labeling interface: the image and one single-choice control over ``classes``."""
    from xml.sax.saxutils import quoteattr
    choices = "".join(f"<Choice value={quoteattr(c)}/>" for c in classes)
    return ('<View><Image name="image" value="$image"/>'
            f'<Choices name="label" toName="image" choice="single" showInLine="true">{choices}'
            "</Choices></View>")


@register_oracle("labelstudio")
class LabelStudioOracle(Oracle):
    """Tasks on the server of its options (``LabelStudioOptions``); the key from
    ``api_key_env``."""

    Options = LabelStudioOptions

    def __init__(self, config: LabelStudioOptions, api_key: str):
        self.config = config
        self._key = api_key
        self._client = None

    def __repr__(self) -> str:
        return f"LabelStudioOracle({self.redact(self.config.url)}, project={self.config.project!r})"

    @classmethod
    def from_config(cls, config: "RunConfig", truth: str | None,
                    options: LabelStudioOptions | None = None) -> "LabelStudioOracle":
        ls = options
        key = os.environ.get(ls.api_key_env, "").strip()
        if not key:
            raise OracleError(f"the environment variable {ls.api_key_env} is not set: export the "
                              "Label Studio API key in it (Account & Settings > Access Token), or "
                              "name another variable in loop.oracle_options.api_key_env")
        return cls(ls, key)

    def check_reachable(self) -> None:
        """OracleError within seconds unless the server answers its ``/health`` (checked before
        a run starts: its first request comes only after round 0's selection)."""
        from raydal.services import REACH_TIMEOUT_S, unreachable
        why = unreachable(self.config.url, "/health/")
        if why is not None:
            raise OracleError(
                f"Label Studio at {self.redact(self.config.url)} did not answer its /health within "
                f"{REACH_TIMEOUT_S:g} s ({self.redact(why)}); start the server (label-studio "
                "start), fix loop.oracle_options.url, or choose another loop.oracle")

    def redact(self, text: str) -> str:
        """``text`` without the API key (nor a password in a URL)."""
        return redact(str(text).replace(self._key, "***"))

    # ---- the protocol --------------------------------------------------------------------------
    def ask(self, request: LabelRequest) -> Answer:
        r = request.round
        record_path = request.run_dir / "labelstudio" / f"round-{r:04d}.json"
        with self._errors():
            record = read_json(record_path) or {}
            if not record.get("tasks"):
                record = self._create_tasks(request, record, record_path)
            labels, waiting = self._collect(record["tasks"], request)
        if waiting:
            return Answer(None, message=(
                f"round {r}: {len(waiting)} of {len(record['tasks'])} picks are not labeled yet in "
                f"Label Studio project {record['project']} at {self.redact(self.config.url)} "
                f"(e.g. task {waiting[0]}); label them, then run this command again"))
        return Answer(labels, source=f"labelstudio:{record['project']}")

    # ---- steps ---------------------------------------------------------------------------------
    def _create_tasks(self, request: LabelRequest, record: dict, path: Location) -> dict:
        """Import the round's tasks once; returns and writes the record {project, key, tasks}."""
        key = f"{redact(str(request.run_dir))}#round-{request.round:04d}"
        project = record.get("project") or self._project(request)
        atomic_write_json(path, {"project": project, "key": key, "tasks": {}})  # importing
        made = self._tasks_with_key(project, key)  # a killed run's import, if any
        todo = [i for i in request.picks if i not in made]
        if todo:
            ranks = dict(zip(request.picks, request.selection.column("rank").to_pylist()))
            rows = request.pool.take(todo)
            images, paths = request.pool.image_inputs(rows)
            blobs = images if paths is None else [read_bytes(p) for p in paths]
            self.client.projects.import_tasks(id=project, request=[
                {"image": data_uri(b), "id": i, "rank": ranks[i], "raydal_key": key}
                for i, b in zip(map(str, rows.column("id").to_pylist()), blobs)])
            made = self._tasks_with_key(project, key, expect=len(request.picks))
        record = {"project": project, "key": key,
                  "tasks": {i: made[i] for i in request.picks}}
        atomic_write_json(path, record)
        return record

    def _project(self, request: LabelRequest) -> int:
        """The configured project's id (a title that no project has is created)."""
        want = self.config.project
        if isinstance(want, int):
            return int(self.client.projects.get(id=want).id)
        found = [p.id for p in self.client.projects.list(title=want) if p.title == want]
        if found:
            return int(found[0])
        classes = request.classes or [str(k) for k in range(request.num_classes)]
        return int(self.client.projects.create(title=want, label_config=label_config(classes)).id)

    def _tasks_with_key(self, project: int, key: str, expect: int = 0) -> dict[str, int]:
        """{pick id: task id} of the project's tasks made for ``key``; waits up to timeout_s for
        ``expect`` of them (an import may be processed in the background)."""
        deadline = time.monotonic() + self.config.timeout_s
        while True:
            found = {}
            for task in self.client.tasks.list(project=project, fields="all"):
                data = task.data if isinstance(task.data, dict) else {}
                if data.get("raydal_key") == key:
                    found.setdefault(str(data.get("id")), int(task.id))
            if len(found) >= expect or time.monotonic() > deadline:
                if len(found) < expect:
                    raise OracleError(f"Label Studio project {project} shows {len(found)} of the "
                                      f"{expect} tasks imported for {key}; run again")
                return found
            time.sleep(0.5)

    def _collect(self, tasks: dict[str, int], request: LabelRequest
                 ) -> tuple[dict[str, int], list[int]]:
        """(labels of the answered picks, task ids still waiting)."""
        labels, waiting = {}, []
        for id_, task_id in tasks.items():
            where = f"Label Studio task {task_id} (id {id_!r})"
            answers = [{"was_cancelled": a.was_cancelled, "result": a.result}
                       for a in self.client.annotations.list(id=task_id)]
            choice = annotated_choice(answers, where)
            if choice is None:
                waiting.append(task_id)
            else:
                labels[id_] = class_index(choice, request.classes, request.num_classes, where)
        return labels, waiting

    # ---- the client ----------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            try:
                from label_studio_sdk import LabelStudio
            except ImportError:
                raise OracleError("loop.oracle labelstudio needs the Label Studio SDK: "
                                  "pip install 'raydal[labelstudio]'") from None
            self._client = LabelStudio(base_url=self.config.url, api_key=self._key,
                                       timeout=self.config.timeout_s)
        return self._client

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Server and network failures as one redacted OracleError line."""
        try:
            yield
        except RaydalError as e:
            raise type(e)(self.redact(str(e))) from None
        except Exception as e:  # httpx, the SDK's ApiError: the server's answer, redacted
            status = getattr(e, "status_code", None)  # an ApiError: its body, not its headers
            text = f"HTTP {status}: {getattr(e, 'body', '')}" if status else \
                f"{type(e).__name__}: {e}"
            detail = " ".join(self.redact(text).split())[:500]
            raise OracleError(
                f"Label Studio at {self.redact(self.config.url)} failed ({detail}); check that "
                f"the server runs, that loop.oracle_options.project exists and that "
                f"{self.config.api_key_env} holds a valid API key") from None
