"""Associative recall with a `RegisterMemory`: store k pairs, recall one.

Each sample shows k key→value pairs, one pair per step, then a delimiter,
then a query (one of the shown keys), then an answer step; the model must
output the value stored with the queried key at the answer step. Keys are
distinct within a sample; values may repeat.

One step's features are one-hot blocks and flags:

    [key (keys) | value (values) | delimiter | query | answer]

    pair steps       key and value set
    delimiter step   delimiter flag
    query step       key set, query flag
    answer step      answer flag; the target is read from this step's output

The answer step exists because the memory's read reaches the stack one step
later, as feedback. The memory has one register per key plus one spare,
so a direct-mapped store (the key chooses the register, the spare takes
the writes of the steps that should store nothing) would hold any number
of pairs up to the number of keys. Trained at k pairs, the model is tested
at k and at 2k. In practice training finds another solution: the trace
shows the pairs written, blended, into one or two registers, which holds
k pairs well and 2k pairs only in part.

    python examples/associative_recall.py
    python examples/associative_recall.py --pairs 3 --keys 6 --epochs 30
"""

import sys

import keras
import numpy as np

from _common import (Stopwatch, finish, make_parser, prepare, to_float,
                     write_traces)
import superloop_cell as sc

TASK = "associative_recall"
FLAGS = ("delimiter", "query", "answer")


def feature_width(keys, values):
    return keys + values + len(FLAGS)


def make_data(n, pairs, keys, values, rng):
    """`n` samples of `pairs` pairs: inputs `(n, pairs + 3, width)`, targets.

    Returns `(sequences, target, parts)`: `target` `(n,)` is the value of
    the queried key; `parts` holds the raw `keys` `(n, pairs)`, `values`
    `(n, pairs)` and `query` `(n,)` (the index of the queried pair).
    """
    if pairs > keys:
        raise ValueError(f"Cannot draw {pairs} distinct keys from {keys}.")
    key_ids = np.argsort(rng.random((n, keys)), axis=1)[:, :pairs]
    value_ids = rng.integers(0, values, size=(n, pairs))
    query = rng.integers(0, pairs, size=n)
    rows = np.arange(n)
    width = feature_width(keys, values)
    flag = keys + values
    x = np.zeros((n, pairs + 3, width), "float32")
    for i in range(pairs):
        x[rows, i, key_ids[:, i]] = 1.0
        x[rows, i, keys + value_ids[:, i]] = 1.0
    x[:, pairs, flag + FLAGS.index("delimiter")] = 1.0
    x[rows, pairs + 1, key_ids[rows, query]] = 1.0
    x[:, pairs + 1, flag + FLAGS.index("query")] = 1.0
    x[:, pairs + 2, flag + FLAGS.index("answer")] = 1.0
    target = value_ids[rows, query]
    return x, target, {"keys": key_ids, "values": value_ids, "query": query}


def build_model(args):
    cell = sc.SuperloopCell(
        [sc.SGUCell(args.units) for _ in range(args.depth)],
        [sc.RegisterMemory(registers=args.keys + 1, width=args.register_width)],
    )
    sequences = keras.Input((None, feature_width(args.keys, args.values)))
    last = keras.layers.RNN(cell)(sequences)
    probabilities = keras.layers.Dense(args.values, activation="softmax")(last)
    return keras.Model(sequences, probabilities), cell


def accuracy(model, x, target):
    predicted = model.predict(x, batch_size=500, verbose=0).argmax(-1)
    return to_float(np.mean(predicted == target))


def parse_args(argv):
    parser = make_parser(TASK, __doc__)
    parser.add_argument("--pairs", type=int, default=4,
                        help="k, the pairs per training sample")
    parser.add_argument("--keys", type=int, default=8,
                        help="distinct keys (at least 2k to test at 2k)")
    parser.add_argument("--values", type=int, default=8,
                        help="distinct values")
    parser.add_argument("--units", type=int, default=64,
                        help="units per SGU layer")
    parser.add_argument("--depth", type=int, default=2, help="SGU layers")
    parser.add_argument("--register-width", type=int, default=8,
                        help="values per register")
    parser.add_argument("--train-samples", type=int, default=16384)
    parser.add_argument("--test-samples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = prepare(args)
    rng = np.random.default_rng(args.seed)
    x, target, _ = make_data(args.train_samples, args.pairs, args.keys,
                             args.values, rng)
    test_pairs = {"k": args.pairs, "2k": min(2 * args.pairs, args.keys)}
    tests = {name: make_data(args.test_samples, pairs, args.keys,
                             args.values, rng)
             for name, pairs in test_pairs.items()}

    clock = Stopwatch()
    model, cell = build_model(args)
    model.compile(keras.optimizers.Adam(args.learning_rate, clipnorm=1.0),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    print(f"superloop: {args.depth}×SGUCell({args.units}), RegisterMemory("
          f"registers={args.keys + 1}, width={args.register_width}), "
          f"{model.count_params()} parameters; k = {args.pairs} pairs")
    x_k, target_k, _ = tests["k"]
    model.fit(x, target, batch_size=args.batch_size, epochs=args.epochs,
              validation_data=(x_k, target_k), verbose=args.verbose)
    train_seconds = clock.seconds()
    summary = {"task": TASK, "pairs": args.pairs}
    for name, (x_test, target_test, _) in tests.items():
        summary[f"test_accuracy_{name}"] = accuracy(model, x_test,
                                                    target_test)
        summary[f"pairs_{name}"] = test_pairs[name]
    summary["chance"] = to_float(1.0 / args.values)
    summary["parameters"] = model.count_params()
    summary["train_seconds"] = train_seconds
    model.save(out / "model.keras")
    x_2k, target_2k, parts = tests["2k"]
    write_traces(cell, x_2k[:1], (), out / "traces.png",
                 f"associative recall, {test_pairs['2k']} pairs: keys "
                 f"{parts['keys'][0].tolist()}, values "
                 f"{parts['values'][0].tolist()}, query key "
                 f"{parts['keys'][0][parts['query'][0]]} → {target_2k[0]}")
    summary["wall_seconds"] = clock.seconds()
    summary["config"] = vars(args)
    return finish(out, summary)


if __name__ == "__main__":
    main(sys.argv[1:])
