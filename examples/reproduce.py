"""Runs the README's result rows and writes their table.

Each row is one example script run with its default settings (the
command in the table) for several seeds; each seed's `summary.json` is
kept under `results/<row>/seed<N>/` (committed: small files, no models).
The README's results table is this script's `--table` output, and
`tests/test_results.py` checks both that it matches the committed
summaries and that every summary was made with the script's current
defaults (so a changed default means a rerun).

    python examples/reproduce.py ntm_recall             # seeds 0 1 2
    python examples/reproduce.py ntm_recall --seeds 3   # one more
    python examples/reproduce.py --table                # the README table
    python examples/reproduce.py --update-readme        # written into it
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
SEEDS = (0, 1, 2)


class Row:
    """One results row: `script` run with `args` on `backend`.

    `model` describes what the script builds; `metrics` is a list of
    `(label, key path, digits or "%")` read from each seed's summary;
    `time` the key path of the training time; `seeds` the runs the row
    reports.
    """

    def __init__(self, name, task, script, args, backend, model, metrics,
                 time=("train_seconds",), seeds=SEEDS):
        self.name, self.task, self.script = name, task, script
        self.seeds = tuple(seeds)
        self.args, self.backend, self.model = list(args), backend, model
        self.metrics, self.time = metrics, time

    def command(self, seed="S"):
        prefix = ("" if self.backend == "tensorflow"
                  else f"KERAS_BACKEND={self.backend} ")
        return " ".join([f"{prefix}python examples/{self.script}.py",
                         *self.args, "--seed", str(seed)])

    def argv(self, seed):
        """The script's arguments for `seed`, run in the repository root."""
        return [*self.args, "--seed", str(seed), "--out",
                str(self.folder(seed).relative_to(ROOT)), "--verbose", "0"]

    def folder(self, seed):
        return RESULTS / self.name / f"seed{seed}"

    def summaries(self):
        """`{seed: summary}` of the committed runs."""
        found = {}
        for path in sorted((RESULTS / self.name).glob("seed*/summary.json")):
            found[int(path.parent.name[4:])] = json.loads(path.read_text())
        return dict(sorted(found.items()))


def _bits(label, key):
    return (label, ("superloop", "test", key, "bits_per_sequence"), 3)


def _transduction(task, system):
    return Row(
        f"transduction_{task}", f"transduction {task.replace('_', ' ')}: "
        "128 symbols, train lengths 8–64, test 65–128 (Grefenstette et al. "
        "2015)", "transduction", ["--task", task], "jax",
        f"`SGUCell(64)` + `{system}(width=32, capacity=130)`",
        [("test coarse", ("superloop", "test_lengths_coarse"), 3),
         ("test fine", ("superloop", "test_lengths_fine"), 3)],
        time=("superloop", "train_seconds"))


ROWS = [
    Row("find_last_two", "find-last-two (the main job): index of the last "
        "2 before the 9 in 16 values, as a head's final position after 64 "
        "steps", "find_last_two", [], "tensorflow",
        "`2×SGUCell(32)` + `HardAttention(positions=16, width=1)`, REINFORCE",
        [("test", ("test_accuracy",), "%"),
         ("GRU(64) reading the values", ("baseline_test_accuracy",), "%")]),
    Row("stack_reverse", "reverse 8 symbols; train length 20, test 40",
        "stack_reverse", [], "tensorflow",
        "`2×SGUCell(32)` + `NeuralStack(width=8, capacity=82)`",
        [("per token at 20", ("accuracy_at_train_length",), "%"),
         ("at 40", ("accuracy_at_test_length",), "%"),
         ("LSTM(33) at 40", ("baseline_accuracy_at_test_length",), "%")]),
    Row("associative_recall", "associative recall of k = 4 key→value pairs "
        "(8 keys, 8 values; chance 12.5 %)", "associative_recall", [],
        "tensorflow", "`2×SGUCell(64)` + `RegisterMemory(registers=9, "
        "width=8)`",
        [("k = 4", ("test_accuracy_k",), "%"),
         ("k = 8", ("test_accuracy_2k",), "%")]),
    Row("custom_system", "bracket nesting depth through the user-written "
        "`Counter`; train length 20, test 100", "custom_system", [],
        "tensorflow", "`2×SGUCell(16)` + `Counter(width=1)`",
        [("at 20", ("accuracy_at_train_length",), "%"),
         ("at 100", ("accuracy_at_test_length",), "%"),
         ("no system, at 100", ("baseline_accuracy_at_test_length",), "%")]),
    _transduction("reversal", "NeuralStack"),
    _transduction("copy", "NeuralQueue"),
    _transduction("bigram_flip", "NeuralDeQue"),
    Row("ntm_copy", "NTM copy of 8-bit vectors, train lengths 1–20 (Graves "
        "et al. 2014); wrong bits per sequence", "ntm_tasks",
        ["--task", "copy"], "jax",
        "`SGUCell(100)` + `ContentMemory(slots=128, width=20)`, readout "
        "from `[y_t, read_t]`",
        [_bits("at 20", "length_20"), _bits("at 40", "length_40"),
         _bits("at 100", "length_100")],
        time=("superloop", "train_seconds")),
    Row("ntm_recall", "NTM associative recall, train 2–6 items (Graves et "
        "al. 2014); wrong bits per sequence (chance 9)", "ntm_tasks",
        ["--task", "recall"], "jax",
        "`FeedForwardCell(100)` + `ContentMemory(slots=128, width=20, "
        "read_heads=4, read_before_write=True)`, readout from "
        "`[y_t, read_t]`",
        [_bits("at 6 items", "items_6"), _bits("at 12 items", "items_12")],
        time=("superloop", "train_seconds")),
]
BY_NAME = {row.name: row for row in ROWS}


def lookup(summary, path):
    for key in path:
        summary = summary[key]
    return summary


def _number(value, digits):
    if digits == "%":
        return f"{100 * value:.1f} %"
    return f"{value:.{digits}f}"


def spread(values, digits):
    """`median (min–max)`; `value (all n)` when every run gave it."""
    median = _number(statistics.median(values), digits)
    low, high = _number(min(values), digits), _number(max(values), digits)
    if low == high:
        return median if len(values) == 1 else f"{median} (all {len(values)})"
    return f"{median} ({low}–{high})"


def cells(row):
    """The row's table cells from its committed summaries (None if it has
    none)."""
    summaries = row.summaries()
    if not summaries:
        return None
    runs = list(summaries.values())
    result = "; ".join(
        f"{label} **{spread([lookup(s, path) for s in runs], digits)}**"
        if i == 0 else
        f"{label} {spread([lookup(s, path) for s in runs], digits)}"
        for i, (label, path, digits) in enumerate(row.metrics))
    parameters = {lookup(s, row.time[:-1] + ("parameters",)) for s in runs}
    seconds = spread([lookup(s, row.time) for s in runs], 0)
    seeds = ", ".join(map(str, summaries))
    return [row.task, f"`{row.command()}`, S = {seeds}",
            f"{row.model}, "
            f"{'/'.join(f'{p:,}' for p in sorted(parameters))} params",
            result, f"{seconds} s"]


def table():
    """The README's results table (markdown), from the committed runs."""
    lines = ["| task | command | model | result: median (min–max) over "
             "the seeds | training time |", "|---|---|---|---|---|"]
    for row in ROWS:
        found = cells(row)
        if found is not None:
            lines.append("| " + " | ".join(found) + " |")
    return "\n".join(lines)


def update_readme(path=ROOT / "README.md"):
    """Replaces the results table in the README (the block of table lines
    starting with the header, or the line `RESULTS_TABLE`) with `table()`."""
    lines = path.read_text().split("\n")
    rows = table().split("\n")
    start = next(i for i, line in enumerate(lines)
                 if line == rows[0] or line == "RESULTS_TABLE")
    end = start + 1
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[start:end] = rows
    path.write_text("\n".join(lines))


def run(row, seeds):
    env = {**os.environ, "KERAS_BACKEND": row.backend}
    for seed in seeds:
        command = [sys.executable, str(ROOT / "examples" /
                                       f"{row.script}.py"), *row.argv(seed)]
        print(" ".join(command), flush=True)
        subprocess.run(command, env=env, check=True, cwd=ROOT)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="*", metavar="ROW",
                        help="rows to run: " + ", ".join(BY_NAME))
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="default: the row's seeds (0 1 2)")
    parser.add_argument("--table", action="store_true",
                        help="print the README's results table")
    parser.add_argument("--update-readme", action="store_true",
                        help="write the table into README.md")
    args = parser.parse_args(argv)
    unknown = [name for name in args.rows if name not in BY_NAME]
    if unknown:
        parser.error(f"unknown rows {unknown}; expected some of "
                     f"{list(BY_NAME)}")
    for name in args.rows:
        run(BY_NAME[name], args.seeds or BY_NAME[name].seeds)
    if args.update_readme:
        update_readme()
    if args.table or not (args.rows or args.update_readme):
        print(table())


if __name__ == "__main__":
    main(sys.argv[1:])
