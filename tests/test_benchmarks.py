"""The benchmark package's own logic: backend choice, A/B statistics, data.

Fast checks only; the measurements themselves run from `benchmarks/`.
"""

import json
import shutil
import subprocess

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


def test_padded_data_is_bucketed_at_each_batch_longest():
    from benchmarks import datasets

    xs, ys = datasets.sequences(12, 2, 9, seed=3)
    lengths = sorted(len(x) for x in xs)
    assert datasets.batch_maxima(lengths, 4) == tuple(
        sorted({lengths[3], lengths[7], lengths[11]}))
    data = datasets.batches(xs, ys, 4, seed=1, buckets=False)
    for index in range(len(data)):
        x, y, weight = data[index]
        longest = int(data.lengths[data.batch_indices(index)].max())
        assert x.shape == (4, longest, 2) and y.shape == (4, longest, 1)
        assert datasets.batch_length(data, index) == longest
        assert np.sum(weight) == pytest.approx(weight.size)


@pytest.mark.parametrize("name", ["tensorflow", "jax"])
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


def test_a_tiny_reference_run(tmp_path):
    from benchmarks import run

    run.main(["--tiny", "--variants", "looped,straightforward", "--rounds",
              "1", "--out", str(tmp_path)])
    name = keras.backend.backend()
    record = json.loads((tmp_path / f"reference_{name}.json").read_text())
    assert record["baseline_check"]["matches"]
    rows = {r["variant"]: r for r in record["rows"]}
    for row in rows.values():
        assert row["first_s"] > 0 and row["steady_ms"] > 0
        assert row["new_length_s"] > 0
    assert rows["looped"]["x_looped"] == 1.0
    table = run.readme_table([record])
    assert f"| {name}: steady training step |" in table


def test_the_readme_table_divides_by_jax():
    from benchmarks import run

    records = [
        {"machine": {"backend": b}, "rows": [
            {"variant": "looped", "steady_ms": ms, "first_s": 1.0,
             "new_length_s": 2.0}]}
        for b, ms in (("jax", 100.0), ("torch", 250.0))]
    table = run.readme_table(records)
    assert "| torch: steady training step | 250 ms (2.50× JAX) |" in table


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_revision_runs_in_its_own_process(tmp_path):
    if subprocess.run(["git", "-C", ab.measure.REPO_ROOT, "rev-parse"],
                      capture_output=True).returncode != 0:
        pytest.skip("needs a git checkout")
    ab.main(["--a-rev", "HEAD", "--b", "fused=False", "--depth", "2",
             "--steps", "3", "--batch", "4", "--rounds", "1",
             "--steps-per-round", "1", "--no-first-step",
             "--backend", keras.backend.backend(),
             "--out", str(tmp_path / "ab.json")])
    results = json.loads((tmp_path / "ab.json").read_text())
    assert not results["config"]["a_package"].startswith(
        ab.measure.REPO_ROOT)
    assert results["config"]["b_package"].startswith(ab.measure.REPO_ROOT)
    assert results["steady"]["rounds"] == 1


def test_an_unknown_revision_is_a_clear_error():
    if shutil.which("git") is None:
        pytest.skip("needs git")
    with pytest.raises(ValueError, match="no-such-revision"):
        ab.extract("no-such-revision")
