"""CSV label files as spreadsheets write them: BOMs, UTF-16, ';' and tabs, blank lines."""
import codecs

import pytest

from raydal.labels import LabelError
from raydal.oracle import parse_label_file

CLASSES = ["cat", "dog", "bird"]


@pytest.mark.parametrize("data", [
    codecs.BOM_UTF8 + b"id,label\r\na,dog\r\nb,2\r\n",                 # Excel "CSV UTF-8"
    "id,label\na,dog\nb,2\n".encode("utf-16"),                          # UTF-16 with a BOM
    b"id;label\na;dog\nb;2\n",                                          # Excel, ',' decimals
    b"id\tlabel\na\tdog\nb\t2\n",                                       # tab-separated
    b"\n id , label \n\na,dog\n\n,\nb,2\n",                             # blank lines, spaces
])
def test_spreadsheet_csv_variants_are_read(tmp_path, data):
    p = tmp_path / "labels.csv"
    p.write_bytes(data)
    assert parse_label_file(p, CLASSES, 3) == {"a": 1, "b": 2}


@pytest.mark.parametrize("data, message", [
    ("id,label\na,dog\n".encode("latin-1") + b"\xe9,cat\n", "not UTF-8 text.*CSV UTF-8"),
    (b"id,label,label\na,dog,cat\n", "2 'label' columns; keep one"),
    (b"", r"needs 'id' and 'label' columns, found \[\]"),
    (b"id,image,label\na\n", "line 2: 1 fields, the header has 3"),
])
def test_bad_csv_files_are_named(tmp_path, data, message):
    p = tmp_path / "labels.csv"
    p.write_bytes(data)
    with pytest.raises(LabelError, match=message):
        parse_label_file(p, CLASSES, 3)


def test_json_of_another_shape_is_a_label_error(tmp_path):
    p = tmp_path / "export.json"
    p.write_text('[{"data": {"id": "a"}, "annotations": ["yes"]}]')
    with pytest.raises(LabelError, match="not in Label Studio's export format"):
        parse_label_file(p, CLASSES, 3)
    p.write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(LabelError, match="not valid JSON"):
        parse_label_file(p, CLASSES, 3)
