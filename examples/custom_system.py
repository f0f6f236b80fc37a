"""A user-defined external system: a counter that tracks bracket depth.

`Counter` below is a complete `ExternalSystem`: every step it moves a
total, kept as its state, by up to one in either direction and feeds the
total back to the stack. The task needs exactly that: read a string of `(`
and `)` (as one-hot steps) and answer the nesting depth at the end. The
model's answer is the counter's total itself — the system's final state,
read with `return_state=True` — so the controller only has to turn `(`
into +1 and `)` into −1; trained on strings of 1 to 20 brackets it still
counts on strings of 100, with deeper nesting than it ever saw. The same
SGU stack without the system, answering through a Dense layer, is trained
beside it.

Before training, `superloop_cell.testing.check_system` runs `Counter`
through what every built-in system passes (config, `.keras` files, masking,
unrolling, jit, both mixed-precision policies, finite gradients, bad
arguments); run it on any system you write. The model is saved and loaded
back: registering the class with `keras.saving.register_keras_serializable`
is all a custom system needs for `.keras` files (in the process that loads
the file, this module must have been imported).

    python examples/custom_system.py
"""

import sys

import keras
import numpy as np
from keras import ops

from _common import (RoundedAccuracy, Stopwatch, finish, make_parser,
                     prepare, rounded_accuracy, write_traces)
import superloop_cell as sc
from superloop_cell.testing import check_system

TASK = "custom_system"
OPEN, CLOSE = 0, 1


@keras.saving.register_keras_serializable(package="examples")
class Counter(sc.ExternalSystem):
    """A total that moves by up to one per step, fed back squashed.

        total_t  = total_{t−1} + tanh(control)             (batch, width)
        output_t = tanh(total_t)                           (batch, width)

    The step is squashed so that a confident controller makes steps of
    exactly ±1 (|control| ≳ 4 is within 1e-3 of it) whatever its state, and
    the count stays exact over long strings; the feedback is squashed so
    that the stack's input stays in the range it was trained on however far
    the total grows. The exact total is the state, for `return_state=True`
    to read.

    Control (`width`, one field named `control`): the step, before
    `tanh`. State: `[total (width)]`, zero at the start. `trace` returns
    the total. Under mixed precision it computes in the compute dtype:
    `tanh` and a sum neither underflow nor overflow in 16 bits.

    Args:
        width: Positive integer, number of independent counters. Default 1.
        **kwargs: `ExternalSystem` arguments (`control_bias`) and base
            `keras.layers.Layer` arguments.
    """

    def __init__(self, *, width=1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(
                "Received an invalid value for argument `width`: expected a "
                f"positive integer, got {width!r}.")
        self.width = width
        self.control_size = self.width
        self.output_size = self.width
        self.state_size = [self.width]
        self.trace_sizes = {"total": self.width}
        # What the rows of the "total" heatmap are, for plots.
        self.trace_labels = {"total": "unit"}

    def call(self, control, states, training=False, traces=False):
        total = states[0] + ops.tanh(control)
        if traces:  # the superloop asks only when a trace is selected
            return ops.tanh(total), [total], {"total": total}
        return ops.tanh(total), [total]

    def get_config(self):
        return {**super().get_config(), "width": self.width}


def make_data(n, length, rng, min_length=None):
    """`n` bracket strings that never close below depth 0.

    Lengths are uniform in `[min_length, length]` (all `length` when
    `min_length` is None); shorter strings are padded with all-zero steps,
    which the models mask out.

    Returns `(x, depth)`: `x` `(n, length, 2)` one-hot (`(`, `)`), `depth`
    `(n,)` the nesting depth after the last bracket.
    """
    lengths = rng.integers(min_length or length, length + 1, size=n)
    x = np.zeros((n, length, 2), "float32")
    depth = np.zeros(n, "int64")
    for t in range(length):
        live = t < lengths
        close = (rng.random(n) < 0.5) & (depth > 0)
        x[live, t, np.where(close, CLOSE, OPEN)[live]] = 1.0
        depth = depth + live * np.where(close, -1, 1)
    return x, depth.astype("float32")


def build_counter(args):
    """The superloop whose answer is its `Counter`'s final total."""
    cell = sc.SuperloopCell(
        [sc.SGUCell(args.units) for _ in range(args.depth)],
        [Counter(width=1)])
    brackets = keras.Input((None, 2), name="brackets")
    masked = keras.layers.Masking(0.0)(brackets)
    _, *final = keras.layers.RNN(cell, return_state=True)(masked)
    total = cell.system_states(final, 0)[0]
    return keras.Model(brackets, total, name="counter_superloop"), cell


def build_plain(args):
    """The same SGU stack, no system: a Dense layer reads the last output."""
    cell = sc.SuperloopCell(
        [sc.SGUCell(args.units) for _ in range(args.depth)])
    brackets = keras.Input((None, 2), name="brackets")
    masked = keras.layers.Masking(0.0)(brackets)
    depth = keras.layers.Dense(1)(keras.layers.RNN(cell)(masked))
    return keras.Model(brackets, depth, name="plain_sgu_stack")


def train(model, x, depth, args, label, held_out):
    """Fits on `(x, depth)`, logging the rounded accuracy on `held_out`."""
    model.compile(keras.optimizers.Adam(args.learning_rate, clipnorm=1.0),
                  "mse")
    print(f"{label}: {model.count_params()} parameters")
    model.fit(x, depth, batch_size=args.batch_size, epochs=args.epochs,
              callbacks=[RoundedAccuracy(*held_out)], verbose=args.verbose)


def parse_args(argv):
    parser = make_parser(TASK, __doc__)
    parser.add_argument("--train-length", type=int, default=20)
    parser.add_argument("--test-length", type=int, default=100)
    parser.add_argument("--units", type=int, default=16,
                        help="units per SGU layer")
    parser.add_argument("--depth", type=int, default=2, help="SGU layers")
    parser.add_argument("--train-samples", type=int, default=2048)
    parser.add_argument("--test-samples", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = prepare(args)
    rng = np.random.default_rng(args.seed)
    x, depth = make_data(args.train_samples, args.train_length, rng,
                         min_length=1)
    tests = {"train_length": make_data(args.test_samples,
                                       args.train_length, rng),
             "test_length": make_data(args.test_samples,
                                      args.test_length, rng)}

    check_system(Counter(width=1), seed=args.seed)
    print("Counter passes superloop_cell.testing.check_system", flush=True)

    clock = Stopwatch()
    model, cell = build_counter(args)
    train(model, x, depth, args,
          f"superloop: {args.depth}×SGUCell({args.units}), Counter(width=1)",
          tests["test_length"])
    summary = {"task": TASK, "train_length": args.train_length,
               "test_length": args.test_length}
    for name, data in tests.items():
        summary[f"accuracy_at_{name}"] = rounded_accuracy(model, *data)
    summary["parameters"] = model.count_params()
    summary["train_seconds"] = clock.seconds()

    path = out / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x_test, depth_test = tests["test_length"]
    summary["reloaded_outputs_equal"] = bool(np.array_equal(
        model.predict(x_test[:8], verbose=0),
        loaded.predict(x_test[:8], verbose=0)))
    brackets = "".join("()"[i] for i in x_test[0, :40].argmax(-1))
    write_traces(cell, x_test[:1], (), out / "traces.png",
                 f"bracket depth {depth_test[0]:.0f} after "
                 f"{args.test_length} brackets; the first 40: {brackets}")

    clock_plain = Stopwatch()
    plain = build_plain(args)
    train(plain, x, depth, args, "baseline: same SGU stack, no system",
          tests["test_length"])
    for name, data in tests.items():
        summary[f"baseline_accuracy_at_{name}"] = rounded_accuracy(plain,
                                                                 *data)
    summary["baseline_train_seconds"] = clock_plain.seconds()
    summary["wall_seconds"] = clock.seconds()
    summary["config"] = vars(args)
    return finish(out, summary)


if __name__ == "__main__":
    main(sys.argv[1:])
