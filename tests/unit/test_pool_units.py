"""The units a selection's tasks read a Parquet pool in (raydal.selection.pool_units and
read_unit): together they are every row of the pool exactly once, whatever the files and row
groups."""
import pyarrow as pa
import pyarrow.parquet as pq

from raydal.pool import Pool
from raydal.selection import (MAX_PIECE_BYTES, MIN_UNIT_ROWS, UNITS_PER_WORKER, pool_units,
                              read_unit, unit_rows)
from raydal.transforms import InputSpec


def _table(start: int, n: int) -> pa.Table:
    ids = [f"{i:06d}" for i in range(start, start + n)]
    return pa.table({"id": pa.array(ids, pa.string()),
                     "image": pa.array([i.encode() for i in ids], pa.binary())})


def _read_all(pool: Pool, units: list[dict], rows: int) -> list[str]:
    got = []
    for unit in units:
        for block in read_unit(pool, unit, rows):
            assert len(block["id"]) <= rows
            assert [b.decode() for b in block["image"]] == list(block["id"])
            got += list(block["id"])
    return got


def test_a_one_file_pool_is_split_at_row_groups_and_into_slices(tmp_path):
    path = tmp_path / "pool.parquet"
    pq.write_table(_table(0, 1000), path, row_group_size=300)  # groups 300, 300, 300, 100
    pool = Pool(path)
    units = pool_units(pool, workers=2)
    # about UNITS_PER_WORKER x 2 units (1000 / 16 rows: 63, so MIN_UNIT_ROWS); slices of at
    # least MIN_UNIT_ROWS rows, so a group of 100 stays whole
    assert [(u["row_group"], u["stop"] - u["start"]) for u in units] == \
        [(g, 75) for g in range(3) for _ in range(4)] + [(3, 100)]
    assert all(u["stop"] - u["start"] >= MIN_UNIT_ROWS for u in units)
    for rows in (7, 64, 1000):
        assert _read_all(pool, units, rows) == [f"{i:06d}" for i in range(1000)]


def test_a_pool_of_many_files_is_read_file_by_file(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    n_files = UNITS_PER_WORKER * 2 + 1
    for k in range(n_files):
        pq.write_table(_table(k * 10, 0 if k == 3 else 10), folder / f"part-{k:03d}.parquet",
                       row_group_size=4)
    pool = Pool(folder)
    units = pool_units(pool, workers=2)
    assert len(units) == n_files and all(u["row_group"] == -1 for u in units)
    got = _read_all(pool, units, rows=3)
    assert sorted(got) == [f"{i:06d}" for i in range(n_files * 10) if not 30 <= i < 40]


def test_few_files_with_an_empty_one_give_units_of_the_rows_only(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(_table(0, 140), folder / "a.parquet")
    pq.write_table(_table(0, 0), folder / "b.parquet")
    pq.write_table(_table(140, 160), folder / "c.parquet")
    pool = Pool(folder)
    units = pool_units(pool, workers=1)
    assert all(u["stop"] > u["start"] for u in units)
    assert _read_all(pool, units, rows=50) == [f"{i:06d}" for i in range(300)]


def test_pieces_carry_at_most_max_piece_bytes_of_decoded_images(tmp_path):
    path = tmp_path / "pool.parquet"
    pq.write_table(_table(0, 5000), path)
    pool = Pool(path)
    big = InputSpec(3, 224)
    assert unit_rows(pool, 2, big, pixels=True) == MAX_PIECE_BYTES // (3 * 224 * 224)
    assert unit_rows(pool, 2, big, pixels=False) == 2500  # checked images carry no pixels
    assert unit_rows(pool, 100, InputSpec(1, 28), pixels=True) == 50
