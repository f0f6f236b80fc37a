"""The task examples on the papers' protocols (`examples/transduction.py`,
`examples/ntm_tasks.py`): their data generators against the tasks'
definitions, the metrics on hand-made cases, and a `--quick` run of each
script writing its files."""

import json
import pathlib
import sys

import keras
import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import _tasks  # noqa: E402
import ntm_tasks  # noqa: E402
import transduction  # noqa: E402

pytest.importorskip("matplotlib")


# ------------------------------------------------------------- transduction

def test_transduce_definitions():
    source = np.array([5, 1, 7, 3, 2, 9])
    np.testing.assert_array_equal(_tasks.transduce("copy", source), source)
    np.testing.assert_array_equal(_tasks.transduce("reversal", source),
                                  [9, 2, 3, 7, 1, 5])
    np.testing.assert_array_equal(_tasks.transduce("bigram_flip", source),
                                  [1, 5, 3, 7, 9, 2])
    with pytest.raises(ValueError, match="even"):
        _tasks.transduce("bigram_flip", source[:5])
    with pytest.raises(ValueError, match="Unknown task"):
        _tasks.transduce("sort", source)


@pytest.mark.parametrize("task", _tasks.TRANSDUCTION_TASKS)
def test_transduction_batch_layout(task):
    vocab = 10
    rng = np.random.default_rng(0)
    lengths = [4, 8, 6] if task == "bigram_flip" else [3, 8, 5]
    tokens, target, weight, sources = _tasks.transduction_batch(
        task, lengths, vocab, rng)
    assert tokens.shape == target.shape == weight.shape == (3, 17)
    for row, (n, source) in enumerate(zip(lengths, sources)):
        assert len(source) == n and source.max() < vocab
        np.testing.assert_array_equal(tokens[row, :n], source)
        assert tokens[row, n] == vocab                    # separator
        assert np.all(tokens[row, n + 1:] == vocab + 1)   # go / padding
        go = np.flatnonzero(weight[row])
        np.testing.assert_array_equal(go, np.arange(n + 1, 2 * n + 1))
        out = target[row, go]
        if task == "copy":
            np.testing.assert_array_equal(out, source)
        elif task == "reversal":
            np.testing.assert_array_equal(out, source[::-1])
        else:  # each pair swapped
            np.testing.assert_array_equal(out[0::2], source[1::2])
            np.testing.assert_array_equal(out[1::2], source[0::2])


def test_bigram_flip_lengths_are_even():
    lengths = transduction.lengths_between("bigram_flip", 8, 64)
    assert lengths.min() == 8 and lengths.max() == 64
    assert np.all(lengths % 2 == 0) and len(lengths) == 29
    assert len(transduction.lengths_between("copy", 65, 128)) == 64


def test_coarse_fine_on_hand_made_cases():
    target = np.array([[0, 1, 2, 3, 0],
                       [0, 4, 5, 6, 7],
                       [0, 0, 1, 1, 0]])
    weight = np.array([[0, 1, 1, 1, 0],
                       [0, 1, 1, 1, 1],
                       [0, 0, 1, 1, 0]], float)
    predicted = target.copy()
    predicted[0, 0] = predicted[0, 4] = 9   # unweighted steps do not count
    predicted[1, 3] = 9                     # 2 of 4 right before the error
    predicted[1, 4] = 9
    predicted[2, 2] = 9                     # 0 of 2 right before the error
    coarse, fine = _tasks.coarse_fine(predicted, target, weight)
    assert coarse == pytest.approx(1 / 3)
    assert fine == pytest.approx((1 + 2 / 4 + 0) / 3)
    # Errors after the first do not change fine; a later right one
    # does not count.
    predicted[2, 3] = 1
    assert _tasks.coarse_fine(predicted, target, weight)[1] == pytest.approx(
        (1 + 0.5 + 0) / 3)
    assert _tasks.coarse_fine(target, target, weight) == (1.0, 1.0)


# ------------------------------------------------------------------ NTM tasks

def test_ntm_copy_batch():
    rng = np.random.default_rng(1)
    x, target, weight = _tasks.ntm_copy_batch([3, 5], rng, bits=8)
    assert x.shape == (2, 11, 9) and target.shape == (2, 11, 8)
    for row, n in enumerate([3, 5]):
        np.testing.assert_array_equal(x[row, n], [0] * 8 + [1])
        assert not x[row, n + 1:].any() and not x[row, :n, 8].any()
        np.testing.assert_array_equal(np.flatnonzero(weight[row]),
                                      np.arange(n + 1, 2 * n + 1))
        np.testing.assert_array_equal(target[row, n + 1:2 * n + 1],
                                      x[row, :n, :8])
        assert not target[row, :n + 1].any()
        assert set(np.unique(x[row, :n, :8])) <= {0.0, 1.0}


def test_ntm_recall_target_is_the_successor_of_the_query():
    rng = np.random.default_rng(2)
    counts = [2, 6, 12, 4]
    x, target, weight, parts = _tasks.ntm_recall_batch(counts, rng, bits=6)
    assert x.shape == (4, _tasks.recall_steps(12), 8)
    queried = set()
    for row, (k, (items, query)) in enumerate(zip(counts, parts)):
        assert items.shape == (k, 3, 6) and 0 <= query < k - 1
        queried.add(query)
        # Item delimiters (channel 6) every 4 steps, each followed by the
        # item's 3 vectors.
        np.testing.assert_array_equal(np.flatnonzero(x[row, :, 6]),
                                      4 * np.arange(k))
        for i in range(k):
            np.testing.assert_array_equal(x[row, 4 * i + 1:4 * i + 4, :6],
                                          items[i])
        # The query between two query delimiters (channel 7).
        q = 4 * k
        np.testing.assert_array_equal(np.flatnonzero(x[row, :, 7]),
                                      [q, q + 4])
        np.testing.assert_array_equal(x[row, q + 1:q + 4, :6], items[query])
        # Then the successor of the queried item, at zero-input steps.
        out = np.flatnonzero(weight[row])
        np.testing.assert_array_equal(out, [q + 5, q + 6, q + 7])
        assert not x[row, q + 5:].any()
        np.testing.assert_array_equal(target[row, out], items[query + 1])
        assert _tasks.recall_steps(k) == q + 8
    assert len(queried) > 1


def test_bit_errors_per_sequence():
    target = np.zeros((2, 3, 4))
    target[0, 1] = [1, 0, 1, 0]
    weight = np.array([[0, 1, 1], [0, 1, 0]], float)
    probabilities = np.full((2, 3, 4), 0.2)
    probabilities[0, 1] = [0.9, 0.1, 0.4, 0.6]     # 2 wrong bits
    probabilities[0, 0] = 0.9                      # unweighted step
    probabilities[1, 1, 0] = 0.51                  # 1 wrong bit
    probabilities[1, 2] = 0.99                     # unweighted step
    np.testing.assert_array_equal(
        _tasks.bit_errors(probabilities, target, weight), [2, 1])


def test_fresh_batches_are_reproducible_and_bucketed():
    make = lambda lengths, rng, steps: _tasks.ntm_copy_batch(  # noqa: E731
        lengths, rng, 4, steps)
    buckets = _tasks.buckets_for(np.arange(1, 21), lambda n: 2 * n + 1, 4)
    assert [b[1] for b in buckets] == [11, 21, 31, 41]
    data = _tasks.FreshBatches(make, buckets, 8, 6, seed=5)
    again = _tasks.FreshBatches(make, buckets, 8, 6, seed=5)
    shapes = [data[i][0].shape[1] for i in range(6)]
    assert shapes[0] != shapes[1]
    for i in range(6):
        x, y, w = data[i]
        np.testing.assert_array_equal(x, again[i][0])
        # The weights average to 1 over the batch (Keras' reduction).
        assert w.mean() == pytest.approx(1.0)
    data.on_epoch_end()
    assert not np.array_equal(data[0][0], again[0][0]) or (
        data[0][0].shape != again[0][0].shape)


# ------------------------------------------------------------ quick runs

def test_progress_puts_back_the_best_epochs_weights():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    scores = iter([0.2, 0.9, 0.5, 0.9, 0.1])  # best: epoch 4 (latest tie)
    progress = _tasks.Progress("t", lambda: {"s": next(scores)},
                               score=lambda e: e.get("s"))
    progress.set_model(model)
    kernels = []
    for epoch in range(5):
        model.layers[0].kernel.assign([[float(epoch)]])
        kernels.append(float(epoch))
        progress.on_epoch_end(epoch, {"loss": 0.0})
    progress.on_train_end()
    assert progress.kept_epoch == 4
    assert float(keras.ops.convert_to_numpy(
        model.layers[0].kernel)[0, 0]) == kernels[3]


def _check_files(out):
    for filename in ("model.keras", "traces.png", "summary.json"):
        assert (out / filename).stat().st_size > 0, filename
    return json.loads((out / "summary.json").read_text())


def test_transduction_quick_run(tmp_path):
    out = tmp_path / "transduction"
    summary = transduction.main(["--task", "bigram_flip", "--quick",
                                 "--baseline", "--seed", "1",
                                 "--out", str(out)])
    written = _check_files(out)
    assert written["task"] == transduction.TASK
    for model in ("superloop", "lstm_baseline"):
        result = summary[model]
        assert result["parameters"] > 0 and result["train_seconds"] > 0
        for key in ("train_lengths_coarse", "train_lengths_fine",
                    "test_lengths_coarse", "test_lengths_fine"):
            assert 0.0 <= result[key] <= 1.0
            assert key in written[model]
        assert 1 <= result["kept_epoch"] <= result["epochs_run"]
    assert written["protocol"]["even_lengths_only"]
    assert written["protocol"]["differences"]


@pytest.mark.parametrize("task", ["copy", "recall"])
def test_ntm_tasks_quick_run(task, tmp_path):
    out = tmp_path / task
    # Only the superloop (the default; the transduction quick run covers
    # an LSTM baseline).
    summary = ntm_tasks.main(["--task", task, "--quick", "--out", str(out)])
    written = _check_files(out)
    assert written["ntm_task"] == task
    tests = summary["superloop"]["test"]
    assert len(tests) == 2
    for result in tests.values():
        assert result["bits_per_sequence"] >= 0
        assert 0.0 <= result["perfect"] <= 1.0
    assert "superloop" in written and "lstm_baseline" not in written
    assert written["protocol"]["differences"]


def test_ntm_tasks_per_task_defaults_and_overrides():
    copy = ntm_tasks.parse_args(["--task", "copy"])
    recall = ntm_tasks.parse_args(["--task", "recall"])
    for args, task in ((copy, "copy"), (recall, "recall")):
        for key, value in ntm_tasks.TASK_DEFAULTS[task].items():
            assert getattr(args, key) == value, (task, key)
    assert (copy.clipnorm, recall.clipnorm) == (1.0, 10.0)
    assert (copy.controller, recall.controller) == ("sgu", "feedforward")
    assert (copy.read_heads, recall.read_heads) == (1, 4)
    assert (copy.stop_after, recall.stop_after) == (10, 3)
    overridden = ntm_tasks.parse_args(
        ["--task", "recall", "--no-read-before-write", "--clipnorm", "2",
         "--write-shift-bias", "1.5", "--read-init", "location",
         "--controller", "sgu"])
    assert not overridden.read_before_write
    assert overridden.controller == "sgu"
    assert overridden.clipnorm == 2.0
    assert overridden.write_shift_bias == 1.5
    assert overridden.read_init == "location"


def test_ntm_location_bias_read_heads_start_on_location_or_content():
    location = ntm_tasks.location_bias(2, shift=3.0)
    assert location["write_shift"] == [-3.0, -3.0, 3.0]
    assert location["write_gate"] == location["read1_gate"] == -3.0
    assert "read0_strength" not in location
    content = ntm_tasks.location_bias(2, read_init="content")
    for h in range(2):
        assert content[f"read{h}_gate"] == 0.0
        assert content[f"read{h}_strength"] == 5.0
        assert content[f"read{h}_sharpening"] == 2.0
    assert content["write_gate"] == -3.0
    # The summary's words are read off the same values.
    recall = ntm_tasks.bias_difference(
        ntm_tasks.parse_args(["--task", "recall"]))
    assert "shift logits [-4.0, -4.0, 4.0]" in recall
    assert "gate logit 0 and key strength logit 5 (content)" in recall
    copy = ntm_tasks.bias_difference(ntm_tasks.parse_args(["--task", "copy"]))
    assert copy.endswith("gate logit -3 (location)")
    with pytest.raises(ValueError, match="`read_init`.*'both'"):
        ntm_tasks.location_bias(1, read_init="both")
