"""On torch: can the superloop's step run faster than Keras' eager loop?

    python -m benchmarks.torch_step [--depths 4,16] [--batch 32] [--steps 16]
                                    [--rounds 5] [--predict] [--variants ...]

Keras' RNN on torch is a Python loop over T that calls the cell eagerly at
every step (and once more at t = 0, to learn the output's structure), so
every op of the step pays torch's per-op dispatch and autograd bookkeeping.
This compares, on the same model (`SuperloopCell` of `depth` `SGUCell(16)` +
`RegisterMemory(registers=4, width=8)`, `RNN` → `Dense(1)`, RMSprop, MSE):

- `eager`: `fused=False`, as Keras runs it;
- `compiled_call`: the same, with the cell's `call` replaced by
  `torch.compile(cell.call)` (Keras' loop stays eager around it);
- `compiled_step`: the same, `jit_compile=True`: Keras compiles the whole
  train step with `torch.compile` (the loop over T unrolled in the graph);
- `fused`: `fused=True` (the 3 or more layers after the first as one stacked
  run, its weights stacked at every step);
- `fused_cached`: `fused=True` with the stacked weights computed once per
  RNN call instead of once per step (a measurement patch of the private
  `SGURunStage._stacked_weights`; the library does not do this: it gained
  about 10 %, short of the 1.5× that would make it worth the special case).

Per variant: the first step (build, compile, first `train_on_batch`) and
the steady step (median of interleaved rounds), and the steady step relative
to `eager`. `--predict` times `predict_on_batch` instead (the forward pass
only).
"""

import argparse
import time

from benchmarks import backend, measure  # import no Keras

VARIANTS = ("eager", "compiled_call", "compiled_step", "fused",
            "fused_cached")


class CachedWeightsRNN:
    """Builds the `RNN` subclass whose call stacks fused weights once."""

    @staticmethod
    def make():
        import keras

        class RNN(keras.layers.RNN):
            def call(self, sequences, initial_state=None, mask=None,
                     training=False):
                stages = [s for s in self.cell._stages if len(s.cells) > 1]
                for stage in stages:
                    stacked = type(stage)._stacked_weights(stage)
                    stage._stacked_weights = lambda stacked=stacked: stacked
                try:
                    return super().call(sequences, initial_state, mask,
                                        training)
                finally:
                    for stage in stages:
                        del stage._stacked_weights

        return RNN


def build(variant, depth):
    import keras
    import torch

    from benchmarks import models

    fused = variant.startswith("fused")
    cell = models.project_cell(depth, fused=fused)
    if variant == "compiled_call":
        cell.call = torch.compile(cell.call)
    rnn_class = (CachedWeightsRNN.make() if variant == "fused_cached"
                 else keras.layers.RNN)
    inputs = keras.Input((None, models.INPUT_WIDTH))
    hidden = rnn_class(cell, return_sequences=True)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(keras.optimizers.RMSprop(), "mse",
                  jit_compile=variant == "compiled_step")
    return model


def measure_depth(depth, args):
    import keras
    import numpy as np

    x, y = measure.random_batch(np.random.default_rng(measure.SEED),
                                args.batch, args.steps)

    def step(model):
        if args.predict:
            return lambda: model.predict_on_batch(x)
        return lambda: model.train_on_batch(x, y)

    rows, live = [], {}
    for variant in args.variants:
        row = {"variant": variant, "depth": depth}
        rows.append(row)
        keras.utils.set_random_seed(measure.SEED)
        start = time.perf_counter()
        try:
            model = build(variant, depth)
            step(model)()
        except Exception as error:  # noqa: BLE001  (reported in the table)
            row["note"] = measure.error_note(error)
            measure.log(f"  {variant:14s} {row['note']}")
            continue
        row["first_s"] = time.perf_counter() - start
        for _ in range(2):
            step(model)()
        live[variant] = step(model)
        measure.log(f"  {variant:14s} first {row['first_s']:.2f} s")
    times = measure.interleaved(live, args.rounds)
    eager = times.get("eager")
    for row in rows:
        if row["variant"] in times:
            stats = measure.summarize(times[row["variant"]])
            row["steady_ms"] = stats["median_s"] * 1e3
            row["iqr_ms"] = (stats["p75_s"] - stats["p25_s"]) * 1e3
            if eager:
                row["x_eager"] = stats["median_s"] / measure.summarize(
                    eager)["median_s"]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="4,16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--predict", action="store_true",
                        help="time predict_on_batch (forward only)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", help="JSON file (default: benchmarks/out/"
                        "torch_step.json)")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",")]
    if not set(args.variants) <= set(VARIANTS):
        parser.error(f"--variants: expected names from {VARIANTS}, got "
                     f"{','.join(args.variants)!r}.")
    backend.select("torch")
    facts = measure.machine_facts()
    measure.log(measure.machine_line(facts))
    started = time.perf_counter()
    rows = []
    for depth in (int(d) for d in args.depths.split(",")):
        measure.log(f"== depth {depth}, batch {args.batch}, T {args.steps}, "
                    f"{'predict' if args.predict else 'train'}")
        rows.extend(measure_depth(depth, args))
    facts["load_average_at_end"] = measure.load_average()
    measure.log("")
    measure.log(measure.machine_line(facts))
    if measure.busy_note(facts):
        measure.log(measure.busy_note(facts))
    measure.log(measure.table(rows, [
        ("variant", "variant", 0), ("depth", "depth", 0),
        ("first_s", "first_s", 2), ("steady_ms", "steady_ms", 1),
        ("iqr_ms", "iqr_ms", 1), ("x_eager", "x_eager", 2),
        ("note", "note", 0)]))
    elapsed = time.perf_counter() - started
    out = args.out or f"{measure.DEFAULT_OUT}/torch_step.json"
    measure.write_json({"machine": facts, "config": vars(args), "rows": rows,
                        "elapsed_s": elapsed}, out)
    measure.log(f"results: {out} ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
