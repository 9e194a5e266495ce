"""loop.oracle labelstudio against a real Label Studio server on 127.0.0.1.

The server runs from its own venv (label-studio pins Django and much else): REPO/.ls-venv
(`python3 -m venv .ls-venv && .ls-venv/bin/pip install label-studio==1.23.2`), or the executable
named by RAYDAL_LABEL_STUDIO. The README's test command (and so CI) makes that venv; run
alone without it the server test skips, and fails where RAYDAL_REQUIRE_LABEL_STUDIO=1.
"""
import json
import os
import secrets
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydal.build import check_config
from raydal.config import parse_config
from raydal.errors import ConfigError, OracleError
from raydal.labels import LabelLog
from raydal.loop import ActiveLoop
from raydal.pool import Pool
from raydal.testing.servers import free_port, local_server

REPO = Path(__file__).resolve().parents[2]
SERVER = Path(os.environ.get("RAYDAL_LABEL_STUDIO", REPO / ".ls-venv" / "bin" / "label-studio"))
KEY_ENV = "RAYDAL_TEST_LABEL_STUDIO_KEY"
CLASSES = ["cat", "dog", "bird"]
# Label Studio migrates a fresh SQLite database at start: ~2 min on 2 busy cores, 9+ at load 10-22
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A fresh Label Studio (SQLite in a tmp folder, one user with a known token): (url, key)."""
    if not SERVER.exists():
        reason = (f"no Label Studio server at {SERVER}: python3 -m venv .ls-venv && "
                  ".ls-venv/bin/pip install label-studio==1.23.2 (or set RAYDAL_LABEL_STUDIO)")
        if os.environ.get("RAYDAL_REQUIRE_LABEL_STUDIO") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    home = tmp_path_factory.mktemp("label-studio")
    port, key = free_port(), secrets.token_hex(20)
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(home), "DJANGO_DB": "sqlite",
           "LABEL_STUDIO_USERNAME": "raydal@example.com",
           "LABEL_STUDIO_PASSWORD": secrets.token_hex(8), "LABEL_STUDIO_USER_TOKEN": key,
           "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true", "SENTRY_DSN": "",
           "FRONTEND_SENTRY_DSN": "", "COLLECT_ANALYTICS": "false",
           "LATEST_VERSION_CHECK": "false",  # no pypi.org: nothing leaves the machine
           # 1.23 accepts only personal access tokens unless the organization allows legacy
           # ones; the oracle passes either to the SDK, the test knows a legacy token up front
           "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true"}
    url = f"http://127.0.0.1:{port}"
    cmd = [str(SERVER), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(home / "data")]
    # migrating a fresh SQLite database: minutes on a loaded 2-core machine
    with local_server(cmd, f"{url}/health", home / "server.log", env, 900) as seconds:
        print(f"Label Studio started in {seconds:.1f}s")
        yield url, key


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 40-image pool and a 20-image test set of 3 classes."""
    d = tmp_path_factory.mktemp("ls-data")
    x = np.random.default_rng(1).integers(0, 256, (60, 28, 28), dtype=np.uint8)
    Pool.from_numpy(x[:40], path=d / "pool.parquet")
    test = Pool.from_numpy(x[40:], path=d / "test_images.parquet")
    t = pq.read_table(test.path)
    pq.write_table(t.append_column("label", pa.array(np.arange(20) % 3)), d / "test.parquet")
    return d


def config(data, run_dir, url, project="raydal round trip", **labelstudio):
    return parse_config({
        "run_dir": str(run_dir), "progress": False,
        "data": {"dataset": None, "pool": str(data / "pool.parquet"),
                 "test": str(data / "test.parquet"), "num_classes": 3, "class_names": CLASSES},
        "model": {"name": "test_resnet", "in_chans": 1, "img_size": 32},
        "loop": {"initial": 8, "per_round": 4, "rounds": 0, "oracle": "labelstudio",
                 "oracle_options": {"url": url, "project": project, "api_key_env": KEY_ENV,
                                    **labelstudio}},
        "training": {"epochs": 1, "batch_size": 8}})


def test_a_key_in_the_config_file_is_refused_and_never_echoed():
    """The oracle's own options model (LabelStudioOptions) refuses them in the build step."""
    base = {"dataset": None, "pool": "p", "test": "t", "num_classes": 3}

    def check(options):
        check_config(parse_config({"data": base, "loop": {"oracle": "labelstudio",
                                                          "oracle_options": options}}))
    with pytest.raises(ConfigError, match="never read from the config file") as e:
        check({"url": "http://x", "project": 1, "api_key": "s3cr3t"})
    assert "s3cr3t" not in str(e.value)
    with pytest.raises(ConfigError, match="NAME of an environment variable") as e:
        check({"url": "http://x", "project": 1, "api_key_env": "0f3a9c77e1"})
    assert "0f3a9c77e1" not in str(e.value)
    with pytest.raises(ConfigError, match="needs loop.oracle_options with url, project"):
        check({})


def _answer(client, task_id, choice):
    """What a person's click on a choice stores."""
    client.annotations.create(id=task_id, result=[{
        "from_name": "label", "to_name": "image", "type": "choices",
        "value": {"choices": [choice]}}], was_cancelled=False)


def _files_text(folder: Path) -> str:
    return "".join(p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*")
                   if p.is_file() and p.suffix in {".json", ".yaml", ".jsonl", ".txt", ".csv"})


def test_round_trip_waits_for_every_pick_then_continues(ray_cluster, data, label_studio,
                                                         tmp_path, capsys, monkeypatch):
    from label_studio_sdk import LabelStudio
    url, key = label_studio
    monkeypatch.setenv(KEY_ENV, key)
    run_dir = tmp_path / "run"
    cfg = config(data, run_dir, url)
    client = LabelStudio(base_url=url, api_key=key)

    assert ActiveLoop.from_config(cfg).run() == []  # round 0's 8 picks become 8 tasks; nothing labeled
    record = json.loads((run_dir / "labelstudio" / "round-0000.json").read_text())
    project, tasks = record["project"], record["tasks"]
    picks = pq.read_table(run_dir / "selections" / "round-0000.parquet").column("id").to_pylist()
    assert sorted(tasks) == sorted(picks) and len(set(tasks.values())) == 8
    served = {t.id: t.data for t in client.tasks.list(project=project, fields="all")}
    assert sorted(served) == sorted(tasks.values())
    assert all(served[tasks[i]]["id"] == i and served[tasks[i]]["image"].startswith(
        "data:image/png;base64,") for i in picks)
    assert json.loads((run_dir / "state.json").read_text())["phase"] == "awaiting_labels"

    answers = {i: k % 3 for k, i in enumerate(sorted(picks))}  # not the truth: the person's
    for i in sorted(picks)[:5]:
        _answer(client, tasks[i], CLASSES[answers[i]])
    # a run killed after the import but before the record: found again, not made twice
    (run_dir / "labelstudio" / "round-0000.json").write_text(
        json.dumps({**record, "tasks": {}}))
    assert ActiveLoop.from_config(cfg).run() == []  # 5 of 8 answered: wait, write nothing
    assert "3 of 8 picks are not labeled yet" in capsys.readouterr().out
    assert LabelLog(run_dir / "labels").rounds() == []
    assert len(list(client.tasks.list(project=project))) == 8
    assert json.loads((run_dir / "labelstudio" / "round-0000.json").read_text()) == record

    for i in sorted(picks)[5:]:
        _answer(client, tasks[i], CLASSES[answers[i]])
    rows = ActiveLoop.from_config(cfg).run()
    assert [r["num_labeled"] for r in rows] == [8]
    assert LabelLog(run_dir / "labels").labels() == answers
    out = capsys.readouterr()
    assert key not in out.out + out.err and key not in _files_text(run_dir)


def test_a_wrong_key_or_a_missing_variable_is_one_redacted_line(ray_cluster, data,
                                                                label_studio, tmp_path,
                                                                monkeypatch):
    url, _ = label_studio
    wrong = secrets.token_hex(20)
    monkeypatch.setenv(KEY_ENV, wrong)
    with pytest.raises(OracleError) as e:
        ActiveLoop.from_config(config(data, tmp_path / "run", url)).run()
    assert "Label Studio at" in str(e.value) and wrong not in str(e.value)
    assert "\n" not in str(e.value)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(OracleError, match=f"environment variable {KEY_ENV} is not set"):
        ActiveLoop.from_config(config(data, tmp_path / "run2", url)).run()
