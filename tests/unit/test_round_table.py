"""The per-round table shows each phase's start-up against its whole time."""
from raydal.report import format_table


def _row(r, select, select_up, train, train_up):
    return {"round": r, "num_labeled": 100 * (r + 1), "test_accuracy": 0.5,
            "seconds": {"select": select, "label": 0.0, "train": train},
            "startup_seconds": {"select": select_up, "train": train_up}, "skipped_images": 0}


def test_table_has_start_up_columns_and_the_start_up_share():
    text = format_table([_row(0, 4.0, 3.0, 10.0, 2.0), _row(1, 6.0, 1.0, 20.0, 4.0)])
    lines = text.splitlines()
    assert lines[0] == ("| round | labeled | test acc | select s | start-up | train s | start-up "
                        "| skipped |")
    assert lines[2] == "| 0 | 100 | 0.5000 | 4.0 | 3.0 | 10.0 | 2.0 | 0 |"
    assert lines[3] == "| 1 | 200 | 0.5000 | 6.0 | 1.0 | 20.0 | 4.0 | 0 |"
    assert lines[-1] == "select + train: 40.0 s, 10.0 s of it start-up (25%)"


def test_rows_of_runs_recorded_before_start_up_was_kept_still_format():
    row = _row(0, 4.0, 0.0, 10.0, 0.0)
    del row["startup_seconds"]
    assert "| 0 | 100 | 0.5000 | 4.0 | 0.0 | 10.0 | 0.0 | 0 |" in format_table([row])
