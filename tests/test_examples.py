"""The example scripts: each runs end to end on tiny settings, and each data
generator produces the targets its task defines."""

import json
import pathlib
import sys

import keras
import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import associative_recall  # noqa: E402
import custom_system  # noqa: E402
import find_last_two  # noqa: E402
import stack_reverse  # noqa: E402
from _common import RoundedAccuracy  # noqa: E402

pytest.importorskip("matplotlib")

# On TensorFlow the tiny runs skip XLA's compilation; on JAX a step without
# jit runs op by op, slower than compiling it.
JIT = ([] if keras.backend.backend() == "jax" else ["--no-jit-compile"])

SMOKE = {
    "find_last_two": (
        find_last_two,
        ["--quick", "--epochs", "2"] + JIT,
        ["test_accuracy", "baseline_test_accuracy", "first_two_accuracy",
         "train_seconds", "wall_seconds", "kept_epoch", "kept_epoch_seconds",
         "validation_accuracy", "diagnosis"],
    ),
    "associative_recall": (
        associative_recall,
        ["--pairs", "2", "--keys", "4", "--values", "3", "--units", "4",
         "--train-samples", "32", "--test-samples", "16", "--epochs", "1",
         "--batch-size", "16"],
        ["test_accuracy_k", "test_accuracy_2k", "train_seconds",
         "wall_seconds"],
    ),
    "stack_reverse": (
        stack_reverse,
        ["--symbols", "3", "--train-length", "3", "--test-length", "5",
         "--units", "4", "--stack-width", "2", "--train-samples", "32",
         "--test-samples", "8", "--epochs", "1", "--batch-size", "16"],
        ["accuracy_at_train_length", "accuracy_at_test_length",
         "baseline_accuracy_at_test_length", "train_seconds",
         "wall_seconds"],
    ),
    "custom_system": (
        custom_system,
        ["--train-length", "4", "--test-length", "8", "--units", "4",
         "--train-samples", "32", "--test-samples", "16", "--epochs", "1",
         "--batch-size", "16"],
        ["accuracy_at_train_length", "accuracy_at_test_length",
         "baseline_accuracy_at_test_length", "reloaded_outputs_equal",
         "train_seconds", "wall_seconds"],
    ),
}


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_script_runs_and_writes_its_files(name, tmp_path):
    module, argv, metric_keys = SMOKE[name]
    out = tmp_path / name
    summary = module.main(argv + ["--out", str(out), "--verbose", "0",
                                  "--seed", "3"])
    for filename in ("model.keras", "traces.png", "summary.json"):
        assert (out / filename).stat().st_size > 0, filename
    written = json.loads((out / "summary.json").read_text())
    assert written["task"] == module.TASK
    for key in metric_keys:
        assert key in summary and key in written, key
        if "accuracy" in key:
            assert 0.0 <= summary[key] <= 1.0, (key, summary[key])


def test_help_exits_cleanly(capsys):
    for module, _, _ in SMOKE.values():
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--help"])
        assert exit_info.value.code == 0
    assert "--seed" in capsys.readouterr().out


def test_find_last_two_target_is_the_last_2_before_the_9():
    rng = np.random.default_rng(0)
    values, target = find_last_two.make_data(500, rng)
    assert values.shape == (500, find_last_two.POSITIONS)
    for row, answer in zip(values, target):
        assert np.sum(row == 9) == 1
        assert set(np.unique(row)) <= {0, 1, 2, 3, 4, 9}
        peak = int(np.argmax(row == 9))
        assert peak >= 1
        twos = [i for i in range(peak) if row[i] == 2]
        assert twos, row
        assert answer == twos[-1] == find_last_two.answer(row)
    # The answers cover every index the task allows.
    _, many = find_last_two.make_data(5000, rng)
    assert set(many) == set(range(find_last_two.POSITIONS - 1))


def test_find_last_two_bounds_for_a_curriculum():
    rng = np.random.default_rng(1)
    values, target = find_last_two.make_data(500, rng, max_gap=2)
    gap = np.argmax(values == 9, axis=1) - target
    assert set(gap) == {1, 2}
    assert all(find_last_two.answer(row) == t for row, t in zip(values,
                                                                 target))
    # The gap starts at 1 and is lifted over the first half of the epochs.
    gaps = [find_last_two.curriculum_gap(epoch, 100) for epoch in range(100)]
    lifted = gaps.index(None)
    assert gaps[0] == 1 and 40 < lifted <= 50
    assert gaps[:lifted] == sorted(gaps[:lifted]) and max(gaps[:lifted]) < 15
    assert set(gaps[lifted:]) == {None}
    assert find_last_two.curriculum_gap(0, 1) == 1


def test_associative_recall_target_is_the_queried_keys_value():
    keys, values, pairs = 6, 5, 4
    x, target, parts = associative_recall.make_data(
        300, pairs, keys, values, np.random.default_rng(2))
    assert x.shape == (300, pairs + 3, keys + values + 3)
    flags = keys + values
    for row, answer in zip(x, target):
        stored = {}
        for step in row[:pairs]:
            assert step[:keys].sum() == 1 and step[keys:flags].sum() == 1
            key = int(step[:keys].argmax())
            assert key not in stored  # keys are distinct
            stored[key] = int(step[keys:flags].argmax())
        np.testing.assert_array_equal(row[pairs], np.eye(row.shape[1])[
            flags + associative_recall.FLAGS.index("delimiter")])
        query = row[pairs + 1]
        assert query[flags + associative_recall.FLAGS.index("query")] == 1
        assert answer == stored[int(query[:keys].argmax())]
        assert row[pairs + 2, flags + associative_recall.FLAGS.index(
            "answer")] == 1
    assert parts["keys"].shape == (300, pairs)


def test_stack_reverse_targets_are_the_reversed_inputs():
    symbols = 5
    lengths = np.array([1, 4, 7, 7, 2])
    x, target, weight = stack_reverse.make_data(
        lengths, symbols, np.random.default_rng(3), steps=16)
    assert x.shape == (5, 16, symbols + 2)
    for row, goal, w, length in zip(x, target, weight, lengths):
        sequence = row[:length, :symbols].argmax(-1)
        assert np.all(row[:length, :symbols].sum(-1) == 1)
        assert row[length, symbols] == 1  # delimiter
        outputs = slice(length + 1, 2 * length + 1)
        np.testing.assert_array_equal(goal[outputs], sequence[::-1])
        np.testing.assert_array_equal(np.nonzero(w)[0],
                                      np.arange(length + 1, 2 * length + 1))
        assert np.all(row[outputs, symbols + 1] == 1)
        assert not row[2 * length + 1:].any()  # padding is all zeros


def test_custom_system_depth_is_opens_minus_closes_and_never_negative():
    x, depth = custom_system.make_data(200, 12, np.random.default_rng(4),
                                       min_length=3)
    step = x[..., custom_system.OPEN] - x[..., custom_system.CLOSE]
    running = np.cumsum(step, axis=1)
    assert np.all(running >= 0)
    np.testing.assert_array_equal(depth, running[:, -1])
    lengths = x.sum(axis=(1, 2))
    assert lengths.min() >= 3 and lengths.max() <= 12
    assert len(set(lengths)) > 1


def test_counter_counts_and_round_trips_its_config():
    counter = custom_system.Counter(width=2)
    total = np.array([[1.0, -2.0]], "float32")
    control = np.array([[20.0, -20.0]], "float32")  # tanh → ±1
    output, (new_total,) = counter(control, [total])
    np.testing.assert_allclose(new_total, [[2.0, -3.0]], atol=1e-6)
    np.testing.assert_allclose(output, np.tanh([[2.0, -3.0]]), atol=1e-6)
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(counter))
    assert isinstance(clone, custom_system.Counter) and clone.width == 2
    with pytest.raises(ValueError, match="width"):
        custom_system.Counter(width=0)


def test_find_last_two_goes_on_from_a_saved_model(tmp_path):
    argv = ["--quick", "--no-baseline", "--verbose", "0", "--seed", "5"] + JIT
    saved = str(tmp_path / "a" / "model.keras")
    first = find_last_two.main(argv + ["--epochs", "2",
                                       "--out", str(tmp_path / "a")])
    # No further epochs: the reloaded model answers the same test set alike.
    again = find_last_two.main(argv + ["--epochs", "0", "--initial-model",
                                       saved, "--out", str(tmp_path / "b")])
    assert again["test_accuracy"] == first["test_accuracy"]
    assert again["parameters"] == first["parameters"]
    assert again["kept_epoch"] == 0
    cell = find_last_two.load_head(saved, find_last_two.QUICK.steps)
    assert isinstance(cell.systems[0], find_last_two.sc.HardAttention)
    with pytest.raises(ValueError, match="runs 6 steps; this run has 64"):
        find_last_two.main(["--out", str(tmp_path / "c"),
                            "--initial-model", saved])
    with pytest.raises(SystemExit):  # argparse: a negative --epochs
        find_last_two.main(argv + ["--epochs", "-1"])
    # A model with the soft `Attention` head of earlier versions is refused.
    sc = find_last_two.sc
    soft = sc.SuperloopCell([sc.SGUCell(4)], [sc.Attention(positions=16, width=1)])
    steps, data = keras.Input((6, 0)), keras.Input((16, 1))
    outputs = keras.layers.RNN(soft)(
        steps, initial_state=sc.initial_state(soft, steps, data))
    keras.Model([steps, data], outputs).save(tmp_path / "soft.keras")
    with pytest.raises(ValueError, match="its head is Attention"):
        find_last_two.main(argv + ["--out", str(tmp_path / "d"),
                                   "--initial-model",
                                   str(tmp_path / "soft.keras")])


def test_rounded_accuracy_keeps_the_best_epochs_weights():
    inputs = np.arange(6, dtype="float32")[:, None]
    target = np.arange(6)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    monitor = RoundedAccuracy(inputs, target, keep_best=True)
    monitor.set_model(model)
    # Epoch 0 answers x (all right), epoch 1 answers 2x (only 0 right).
    for epoch, slope in enumerate((1.0, 2.0)):
        model.set_weights([np.array([[slope]], "f4"), np.zeros(1, "f4")])
        logs = {}
        monitor.on_epoch_end(epoch, logs)
        assert logs["val_rounded_accuracy"] == (1.0 if slope == 1 else 0.1667)
    assert (monitor.best_epoch, monitor.best_accuracy) == (0, 1.0)
    assert monitor.best_seconds >= 0.0
    monitor.restore_best()
    np.testing.assert_array_equal(model.get_weights()[0], [[1.0]])


def test_find_last_two_diagnosis_of_a_head_that_walks_right():
    # A head whose control is its bias alone, with +1 the most likely move,
    # stands on slot t after step t outside training (it takes the most
    # likely move): the diagnosis follows from the data.
    _, _, cell = find_last_two.build_superloop(find_last_two.QUICK, seed=0)
    cell.control_kernel.assign(np.zeros(cell.control_kernel.shape, "f4"))
    cell.control_bias.assign(np.array([0.0, 0.0, 1.0], "f4"))
    values, target = find_last_two.make_data(300, np.random.default_rng(2))
    got = find_last_two.diagnose(cell, values, target, 6)
    peak = np.argmax(values == 9, axis=1)
    expected = {
        "reached_the_9": np.mean(peak <= 6),
        "ended_on_a_2": np.mean(values[:, 6] == 2),
        "ended_right_of_answer": np.mean(target < 6),
        "ended_left_of_answer": np.mean(target > 6),
        "stalled_before_the_9": 0.0,
    }
    assert got == pytest.approx(expected, abs=1e-4)
    assert 0 < expected["reached_the_9"] < 1  # the case is not trivial
    assert list(find_last_two.first_two(np.array([[0, 2, 2, 9]]))) == [1]


def test_find_last_two_distractors_keep_the_answer_and_break_the_shortcut():
    rng = np.random.default_rng(6)
    values, target = find_last_two.make_data(400, rng)
    more = find_last_two.add_distractors(values, target, 1.0, rng)
    assert [find_last_two.answer(row) for row in more] == list(target)
    shortcut = find_last_two.first_two(more) == target
    # Every sample with an answer ≥ 1 now has an earlier 2.
    assert not np.any(shortcut & (target >= 1))
    assert np.array_equal(more[target == 0], values[target == 0])
    assert find_last_two.add_distractors(values, target, 0.0, rng) is values
