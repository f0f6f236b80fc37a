"""Sequence reversal with a `NeuralStack`, against a plain LSTM.

Each sample is L symbols, a delimiter, then L output steps; at the output
steps the model must emit the symbols in reverse order. One step's features
are

    [symbol one-hot (symbols) | delimiter | output]

    input steps     the symbol
    delimiter step  delimiter flag
    output steps    output flag only; target: the input reversed

Training uses every length from 1 to `--train-length`, padded with
all-zero steps that a `keras.layers.Masking` layer masks out; the loss
and the accuracy count the output steps only. The test is per-token
accuracy on the output steps at `--test-length` (40 by default), which no
training sample reaches.

The stack is a shift register (see `NeuralStack`): the symbol pushed at the
first step must still be there at the last output step, 2·L steps later, so
the capacity defaults to 2·test length + 2.

The baseline is a `keras.layers.LSTM` with about as many parameters,
trained the same way.

    python examples/stack_reverse.py
    python examples/stack_reverse.py --epochs 30 --no-baseline
"""

import argparse
import sys

import keras
import numpy as np

from _common import (Stopwatch, finish, make_parser, prepare, to_float,
                     write_traces)
import superloop_cell as sc

TASK = "stack_reverse"


def feature_width(symbols):
    return symbols + 2


def make_data(lengths, symbols, rng, steps=None):
    """One sample per entry of `lengths`, padded to `steps` time steps.

    Returns `(x, target, weight)`: `x` `(n, steps, symbols + 2)`, `target`
    `(n, steps)` symbol ids (the reversed input at the output steps, 0
    elsewhere), `weight` `(n, steps)`, 1 at the output steps and 0
    elsewhere. `steps` defaults to `2·max(lengths) + 1`.
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    steps = steps or 2 * int(lengths.max()) + 1
    x = np.zeros((n, steps, feature_width(symbols)), "float32")
    target = np.zeros((n, steps), "int32")
    weight = np.zeros((n, steps), "float32")
    for row, length in enumerate(lengths):
        sequence = rng.integers(0, symbols, size=length)
        x[row, np.arange(length), sequence] = 1.0
        x[row, length, symbols] = 1.0
        outputs = np.arange(length + 1, 2 * length + 1)
        x[row, outputs, symbols + 1] = 1.0
        target[row, outputs] = sequence[::-1]
        weight[row, outputs] = 1.0
    return x, target, weight


def _sequence_model(recurrent, symbols, name):
    sequences = keras.Input((None, feature_width(symbols)), name="sequences")
    masked = keras.layers.Masking(0.0)(sequences)
    hidden = recurrent(masked)
    probabilities = keras.layers.Dense(symbols, activation="softmax")(hidden)
    return keras.Model(sequences, probabilities, name=name)


def build_stack_model(args, capacity):
    cell = sc.SuperloopCell(
        [sc.SGUCell(args.units) for _ in range(args.depth)],
        [sc.NeuralStack(width=args.stack_width, capacity=capacity)],
    )
    layer = keras.layers.RNN(cell, return_sequences=True)
    return _sequence_model(layer, args.symbols, "superloop"), cell


def build_lstm_model(units, symbols):
    layer = keras.layers.LSTM(units, return_sequences=True)
    return _sequence_model(layer, symbols, "lstm_baseline")


def lstm_units_for(parameters, symbols):
    """The LSTM width whose model has about `parameters` parameters."""
    width = feature_width(symbols)
    best = 1
    for units in range(1, 1024):
        count = 4 * units * (width + units + 1) + symbols * (units + 1)
        if abs(count - parameters) < abs(
                4 * best * (width + best + 1) + symbols * (best + 1)
                - parameters):
            best = units
    return best


def token_accuracy(model, x, target, weight):
    predicted = model.predict(x, batch_size=250, verbose=0).argmax(-1)
    return to_float(np.sum((predicted == target) * weight) / np.sum(weight))


def train(model, data, args, label):
    x, target, weight = data
    model.compile(keras.optimizers.Adam(args.learning_rate, clipnorm=1.0),
                  "sparse_categorical_crossentropy",
                  weighted_metrics=["accuracy"])
    print(f"{label}: {model.count_params()} parameters")
    model.fit(x, target, sample_weight=weight, batch_size=args.batch_size,
              epochs=args.epochs, verbose=args.verbose)


def parse_args(argv):
    parser = make_parser(TASK, __doc__)
    parser.add_argument("--symbols", type=int, default=8,
                        help="alphabet size")
    parser.add_argument("--train-length", type=int, default=20,
                        help="training lengths are 1 … this")
    parser.add_argument("--test-length", type=int, default=40)
    parser.add_argument("--units", type=int, default=32,
                        help="units per SGU layer")
    parser.add_argument("--depth", type=int, default=2, help="SGU layers")
    parser.add_argument("--stack-width", type=int, default=8,
                        help="values per stack element")
    parser.add_argument("--capacity", type=int, default=None,
                        help="stack slots (default: 2·test length + 2)")
    parser.add_argument("--train-samples", type=int, default=8192)
    parser.add_argument("--test-samples", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction,
                        default=True, help="also train the LSTM baseline")
    args = parser.parse_args(argv)
    args.capacity = args.capacity or 2 * args.test_length + 2
    return args


def main(argv=None):
    args = parse_args(argv)
    out = prepare(args)
    capacity = args.capacity
    rng = np.random.default_rng(args.seed)
    lengths = rng.integers(1, args.train_length + 1, size=args.train_samples)
    train_data = make_data(lengths, args.symbols, rng)
    test_sets = {
        "train_length": make_data(
            np.full(args.test_samples, args.train_length), args.symbols, rng),
        "test_length": make_data(
            np.full(args.test_samples, args.test_length), args.symbols, rng),
    }

    clock = Stopwatch()
    model, cell = build_stack_model(args, capacity)
    train(model, train_data, args,
          f"superloop: {args.depth}×SGUCell({args.units}), NeuralStack(width="
          f"{args.stack_width}, capacity={capacity})")
    summary = {"task": TASK, "train_length": args.train_length,
               "test_length": args.test_length}
    for name, data in test_sets.items():
        summary[f"accuracy_at_{name}"] = token_accuracy(model, *data)
    summary["parameters"] = model.count_params()
    summary["train_seconds"] = clock.seconds()
    model.save(out / "model.keras")
    x_test, target_test, _ = test_sets["test_length"]
    symbols = x_test[0, : args.test_length, : args.symbols].argmax(-1)
    write_traces(cell, x_test[:1], (), out / "traces.png",
                 f"reverse, length {args.test_length}: "
                 f"{' '.join(map(str, symbols))}")

    if args.baseline:
        clock_lstm = Stopwatch()
        units = lstm_units_for(model.count_params(), args.symbols)
        lstm = build_lstm_model(units, args.symbols)
        train(lstm, train_data, args, f"baseline: LSTM({units})")
        for name, data in test_sets.items():
            summary[f"baseline_accuracy_at_{name}"] = token_accuracy(
                lstm, *data)
        summary["baseline_parameters"] = lstm.count_params()
        summary["baseline_train_seconds"] = clock_lstm.seconds()
    summary["wall_seconds"] = clock.seconds()
    summary["config"] = {**vars(args), "capacity": capacity}
    return finish(out, summary)


if __name__ == "__main__":
    main(sys.argv[1:])
