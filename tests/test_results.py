"""The README's results table against the committed runs.

Every row of the README's results table is `examples/reproduce.py`'s, made
from the `summary.json` files committed under `results/`; each of those was
made by the row's command with the script's current defaults. A changed
default, a rerun or an edited README number makes these tests fail.
"""

import importlib
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import reproduce  # noqa: E402

# What a seed's summary may record differently from a fresh parse of the
# row's command: where it was written and how much it printed.
NOT_SETTINGS = ("out", "verbose")
# Options added after a committed run was made, with the value that gives
# the behaviour those runs had: a run that does not record one counts as
# made with this value (and is stale once the script's default differs).
# Empty while every committed summary records every option of its script.
ADDED_SINCE = {}


def _committed():
    return [(row, seed, summary) for row in reproduce.ROWS
            for seed, summary in row.summaries().items()]


def test_every_row_has_its_seeds_committed():
    for row in reproduce.ROWS:
        assert list(row.summaries()) == list(row.seeds), row.name


def test_readme_results_table_is_the_committed_runs():
    readme = (ROOT / "README.md").read_text()
    table = reproduce.table()
    assert table.count("\n") >= 2
    missing = [line for line in table.splitlines() if line not in readme]
    assert not missing, ("README rows differ from `python examples/"
                         "reproduce.py --table`:\n" + "\n".join(missing))


@pytest.mark.parametrize(
    "row, seed, summary", _committed(),
    ids=[f"{row.name}-seed{seed}" for row, seed, _ in _committed()])
def test_summary_was_made_by_the_rows_command_with_todays_defaults(
        row, seed, summary):
    script = importlib.import_module(row.script)
    expected = json.loads(json.dumps(vars(script.parse_args(row.argv(seed)))))
    recorded = {**ADDED_SINCE, **summary["config"]}
    changed = {key: (recorded.get(key), value)
               for key, value in expected.items()
               if key not in NOT_SETTINGS and recorded.get(key) != value}
    assert not changed, (f"{row.name} seed {seed}: (recorded, today's) "
                         f"{changed}; rerun `python examples/reproduce.py "
                         f"{row.name}`")
    assert summary["backend"] == row.backend
    assert summary["task"] == script.TASK


def test_table_cells_are_median_and_range():
    assert reproduce.spread([0.5, 0.25, 1.0], 2) == "0.50 (0.25–1.00)"
    assert reproduce.spread([0.9], "%") == "90.0 %"
    assert reproduce.spread([1.0, 1.0, 1.0], 2) == "1.00 (all 3)"
    assert reproduce.spread([3.0, 1.0, 2.0, 4.0], 1) == "2.5 (1.0–4.0)"
