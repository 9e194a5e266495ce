"""Label files from people: CSV and Label Studio exports, every mistake a clear error."""
import json

import pytest

from raydal.labels import LabelError
from raydal.oracle import parse_label_file, validate_against_picks

CLASSES = ["cat", "dog", "bird"]


def _ls_task(id_, choice, cancelled=False):
    return {"data": {"id": id_, "image": f"/x/{id_}.png"},
            "annotations": [{"was_cancelled": cancelled,
                             "result": [{"type": "choices", "value": {"choices": [choice]}}]}]}


def test_csv_accepts_indices_and_class_names(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("id,image,score,rank,label\na,/a.png,1.0,0,dog\nb,/b.png,0.5,1,2\n")
    assert parse_label_file(p, CLASSES, 3) == {"a": 1, "b": 2}


def test_label_studio_export_takes_the_last_kept_annotation(tmp_path):
    p = tmp_path / "export.json"
    task = _ls_task("a", "cat")
    task["annotations"].append(_ls_task("a", "bird", cancelled=True)["annotations"][0])
    p.write_text(json.dumps([task, _ls_task("b", "dog")]))
    assert parse_label_file(p, CLASSES, 3) == {"a": 0, "b": 1}


@pytest.mark.parametrize("content, message", [
    ("id,label\na,dog\na,cat\n", "appears twice"),
    ("id,label\na,7\n", r"class 7 is out of range \[0, 3\)"),
    ("id,label\na,-1\n", "out of range"),
    ("id,label\na,horse\n", "label 'horse' is not a class"),
    ("id,label\na,\n", "empty label"),
    ("id,klass\na,dog\n", "needs 'id' and 'label' columns"),
])
def test_bad_csv_rows_are_named(tmp_path, content, message):
    p = tmp_path / "l.csv"
    p.write_text(content)
    with pytest.raises(LabelError, match=message):
        parse_label_file(p, CLASSES, 3)


@pytest.mark.parametrize("tasks, message", [
    ([_ls_task("a", 1.5)], "wrong type"),
    ([{"data": {}, "annotations": []}], "no data.id"),
    ([{"data": {"id": "a"}, "annotations": []}], "no annotation with a choice"),
    ({"not": "a list"}, "a JSON list of tasks"),
])
def test_bad_label_studio_exports_are_named(tmp_path, tasks, message):
    p = tmp_path / "e.json"
    p.write_text(json.dumps(tasks))
    with pytest.raises(LabelError, match=message):
        parse_label_file(p, CLASSES, 3)


def test_invalid_json_and_missing_file(tmp_path):
    (tmp_path / "e.json").write_text("[{")
    with pytest.raises(LabelError, match="not valid JSON"):
        parse_label_file(tmp_path / "e.json", CLASSES, 3)
    with pytest.raises(LabelError, match="does not exist"):
        parse_label_file(tmp_path / "none.csv", CLASSES, 3)


def test_labels_must_cover_exactly_the_round_picks():
    validate_against_picks({"a": 0, "b": 1}, ["a", "b"], 2)
    with pytest.raises(LabelError, match="1 ids are not picks of round 2"):
        validate_against_picks({"a": 0, "z": 1}, ["a"], 2)
    with pytest.raises(LabelError, match="1 of the 2 picks of round 2 have no label"):
        validate_against_picks({"a": 0}, ["a", "b"], 2)
