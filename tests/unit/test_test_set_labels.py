"""A test set whose labels are not classes of the model is refused by a column scan (no image
read), with the count, the first ids and the fix: an accuracy against such labels means
nothing."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydal.errors import PoolError, one_line
from raydal.pool import Pool
from raydal.train import check_test_labels


def _test_set(tmp_path, labels, name="test.parquet") -> Pool:
    n = len(labels)
    pq.write_table(pa.table({"id": [f"t{i:02d}" for i in range(n)],
                             "image": [b"never decoded"] * n, "label": labels}), tmp_path / name)
    return Pool(tmp_path / name)


def test_good_labels_give_the_row_count(tmp_path):
    assert check_test_labels(_test_set(tmp_path, [0, 1, 2, 0]), 3) == 4
    assert check_test_labels(_test_set(tmp_path, [0.0, 2.0], "f.parquet"), 3) == 2


@pytest.mark.parametrize("labels, words", [
    ([0, 1, 7, -1, 2], r"2 of its 5 labels are not classes of the model, integers in \[0, 3\) "
                       r"\(id t02 label 7, id t03 label -1\); fix those labels"),
    (pa.array([0, None, 1], pa.int64()), r"1 of its 3 labels .*\(id t01 label null\)"),
    ([0.0, 1.5, 2.0], r"1 of its 3 labels .*\(id t01 label 1.5\)"),
    (["cat", "dog"], r"column 'label' is string; expected integer class indices 0..2"),
])
def test_labels_that_are_not_classes_are_refused(tmp_path, labels, words):
    with pytest.raises(PoolError, match=words) as err:
        check_test_labels(_test_set(tmp_path, labels), 3)
    assert one_line(str(err.value)) == str(err.value)


def test_many_bad_labels_name_the_first_three_and_count_all(tmp_path):
    with pytest.raises(PoolError, match=r"10 of its 10 labels .*\(id t00 label 3, id t01 label 4, "
                                        r"id t02 label 5\); .*data.num_classes"):
        check_test_labels(_test_set(tmp_path, list(range(3, 13))), 3)


def test_a_test_set_without_labels_is_refused(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "image": [b"x"]}), tmp_path / "t.parquet")
    with pytest.raises(PoolError, match="needs an integer 'label' column"):
        check_test_labels(Pool(tmp_path / "t.parquet"), 3)
