"""The benchmark package's own logic: backend choice, A/B statistics, data.

Fast checks only; the measurements themselves run from `benchmarks/`.
"""

import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from benchmarks import ab, backend, mixed_lengths


def test_select_accepts_the_backend_keras_already_has():
    assert backend.select(keras.backend.backend()) == keras.backend.backend()


def test_select_refuses_another_backend_once_keras_is_imported():
    active = keras.backend.backend()
    other = next(name for name in backend.BACKENDS if name != active)
    with pytest.raises(RuntimeError, match=f"'{other}'.*'{active}'"):
        backend.select(other)


def test_select_refuses_an_unknown_backend():
    with pytest.raises(ValueError, match="'theano'"):
        backend.select("theano")


def test_ratio_statistics_on_known_timings():
    a = [1.0, 2.0, 1.0, 4.0, 2.0]
    b = [0.5, 1.0, 0.8, 2.0, 3.0]  # ratios 0.5, 0.5, 0.8, 0.5, 1.5
    stats = ab.ratio_statistics(a, b)
    assert stats["ratios"] == pytest.approx([0.5, 0.5, 0.8, 0.5, 1.5])
    assert stats["median_ratio"] == pytest.approx(0.5)
    assert (stats["min_ratio"], stats["max_ratio"]) == pytest.approx((0.5, 1.5))
    assert (stats["q1_ratio"], stats["q3_ratio"]) == pytest.approx((0.5, 0.8))
    assert stats["median_a"] == 2.0 and stats["median_b"] == 1.0
    assert stats["rounds"] == 5
    one = ab.ratio_statistics([2.0], [3.0])
    assert one["q1_ratio"] == one["q3_ratio"] == one["median_ratio"] == 1.5
    with pytest.raises(ValueError, match="2 for A and 1 for B"):
        ab.ratio_statistics([1.0, 1.0], [1.0])


def test_rounds_alternate_which_side_goes_first():
    sides = ["A", "B"]
    orders = [ab.round_order(i, sides) for i in range(4)]
    assert orders == [["A", "B"], ["B", "A"], ["A", "B"], ["B", "A"]]


def test_settings_are_parsed_as_literals_or_strings():
    assert ab.parse_settings("fused=True, jit_compile=False,fused2=auto") == {
        "fused": True, "jit_compile": False, "fused2": "auto"}
    assert ab.parse_settings("") == {}
    with pytest.raises(ValueError, match="'fused'"):
        ab.parse_settings("fused")


def test_length_costs_of_known_batches():
    # (length, seconds, traces): 8 is new at index 0 (excluded), 16 at 2.
    records = [(8, 9.0, 1), (8, 1.0, 1), (16, 12.0, 2), (8, 1.2, 2),
               (16, 2.0, 2), (16, 2.2, 2), (16, 1.8, 2)]
    costs = mixed_lengths.length_costs(records)
    assert costs["new_length_ratios"] == {16: pytest.approx(6.0)}
    assert costs["steady_length"] == 16
    assert costs["steady_s"] == pytest.approx(2.0)


def test_padded_batches_pad_to_their_longest_with_normalised_weights():
    from benchmarks import datasets

    xs, ys = datasets.sequences(12, 2, 9, seed=3)
    data = datasets.PaddedBatches(xs, ys, batch_size=4, seed=1)
    assert len(data) == 3
    assert data.batch_length(0) != data.batch_length(1)
    x, y, weight = data[0]
    assert x.shape == (4, data.batch_length(0), 2)
    assert y.shape == (4, data.batch_length(0), 1)
    assert np.sum(weight) == pytest.approx(weight.size)
    real = (weight > 0).sum(axis=1)
    assert real.max() == data.batch_length(0)
    np.testing.assert_allclose(weight[weight > 0], weight.size / real.sum(),
                               rtol=1e-6)


@pytest.mark.parametrize("name", backend.BACKENDS)
def test_quick_variants_exist_and_cover_the_targets(name):
    known = mixed_lengths.variants_for(name)
    quick = mixed_lengths.QUICK_VARIANTS[name]
    assert set(quick) <= set(known)
    # Every model runs; both project cells are compared with both others.
    assert {known[v].model for v in quick} == set(mixed_lengths.MODELS)
    results = {"variants": [
        {"variant": v, "model": known[v].model, "wall_s": 1.0}
        for v in quick]}
    targets = mixed_lengths.target_rows(results, name)
    assert {t["ours"] for t in targets} == {
        mixed_lengths.compiled_name(name, model)
        for model in mixed_lengths.OURS}
    assert len(targets) >= 4


def test_a_toy_mixed_lengths_run():
    record = mixed_lengths.run_variant(
        "superloop/buckets", mixed_lengths.SIZES["toy"])
    assert record["batches"] == 2  # 8 sequences of 3–4 steps, bucket 4
    assert record["distinct_lengths"] == 1
    assert record["traces"] >= 1
    assert record["wall_s"] > 0 and record["peak_mb"] >= record["baseline_mb"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_another_revision_is_imported_beside_the_working_tree():
    from benchmarks import versions

    try:
        old = versions.from_revision("HEAD")
    except ValueError as error:  # not a git checkout
        pytest.skip(str(error))
    current = sys.modules["superloop_cell"]
    assert old.package is not current
    with old.active() as package:
        assert sys.modules["superloop_cell"] is package is old.package
        assert package.SuperloopCell is not current.SuperloopCell
    assert sys.modules["superloop_cell"] is current
    assert keras.saving.get_registered_object(
        "superloop_cell>SuperloopCell") is current.SuperloopCell


def test_an_unknown_revision_is_a_clear_error():
    from benchmarks import versions

    if shutil.which("git") is None or subprocess.run(
            ["git", "-C", versions.REPO_ROOT, "rev-parse"],
            capture_output=True).returncode != 0:
        pytest.skip("needs a git checkout")
    with pytest.raises(ValueError, match="no-such-revision"):
        versions.from_revision("no-such-revision")
