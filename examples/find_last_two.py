r"""Find the last 2 before the 9: a hard attention head walking over the data.

The older superloop project's toy task. Each sample is 16 values in 0–4
with one 9 at a position ≥ 1, and at least one 2 before it; the answer is
the index of the last 2 before the 9.

The model never sees the data as input. Its sequence input has width 0 —
it only sets the number of steps (64) — and the data is the per-sample
context of a `HardAttention` head: each step the head reads the value under
it, the controller (2×SGUCell(32)) gives the logits of the moves −1, 0, +1,
and the head takes one — sampled in training, the most likely one
otherwise. The answer is where the head stands after the last step (its
position state, read with `return_state=True`).

No gradient flows through the moves: the controller is trained by
REINFORCE on the reward −|final position − answer|, with an entropy bonus
(weight 1) that keeps the policy from settling early. Three things make it
learn:

- extra 2s: every training sample whose answer is ≥ 1 gets one more 2
  before the answer, so that stopping on the first 2 met (right in 55 % of
  the test samples, and needing no memory of the 9) is wrong there;
- a curriculum: answers right before the 9 at first, the gap widened over
  the first half of the epochs;
- keep-best: the weights of the epoch that did best on a validation set
  are kept (the test set is used once, at the end).

A GRU that reads the 16 values as a 16-step sequence and regresses the
index is the baseline. The summary's `diagnosis` says how the head fails
where it does (did it reach the 9, end on a 2, on which side of the
answer, stall before the 9), and `first_two_accuracy` scores the first-2
shortcut. Why a soft `Attention` head trained by gradient descent did not
learn this task: docs/soft_head.md.

    python examples/find_last_two.py
    python examples/find_last_two.py --seed 1 --no-baseline
    # go on training a saved model (the optimizer starts afresh):
    python examples/find_last_two.py --out runs/flt_more \
        --initial-model runs/find_last_two/model.keras
"""

import argparse
import sys
from typing import NamedTuple

import keras
import numpy as np

from _common import (RoundedAccuracy, Stopwatch, compile_with_adam, finish,
                     load_superloop, make_parser, prepare, rounded_accuracy,
                     to_float, write_traces)
import superloop_cell as sc

TASK = "find_last_two"
POSITIONS = 16
MAX_VALUE = 4  # ordinary values are 0 … MAX_VALUE
TARGET_VALUE = 2
PEAK_VALUE = 9
ENTROPY_WEIGHT = 1.0
BASELINE_LEARNING_RATE = 3e-3


class Sizes(NamedTuple):
    """How big the run is: the full task, or a tiny one (`--quick`)."""

    steps: int  # superloop steps per sample
    units: int  # per SGU layer
    depth: int  # SGU layers
    train_samples: int  # fresh ones each epoch
    test_samples: int  # also the size of the validation set
    batch_size: int
    epochs: int
    baseline_units: int
    baseline_epochs: int


FULL = Sizes(steps=64, units=32, depth=2, train_samples=8192,
             test_samples=1000, batch_size=128, epochs=100,
             baseline_units=64, baseline_epochs=20)
QUICK = Sizes(steps=6, units=4, depth=2, train_samples=32, test_samples=64,
              batch_size=16, epochs=2, baseline_units=4, baseline_epochs=1)


def make_data(n, rng, max_gap=None):
    """`n` samples: values `(n, POSITIONS)` (ints) and targets `(n,)`.

    The 9 (the peak) is at a uniform position in `[1, POSITIONS − 1]`, the
    answer at a uniform position before it; the values between them are
    drawn from {0, 1, 3, 4} so that the answer is the *last* 2 before the
    9; the others from 0–4. `max_gap`, for the curriculum, bounds how far
    before the 9 the answer is (default: no bound).
    """
    index = np.arange(POSITIONS)[None, :]
    peak = rng.integers(1, POSITIONS, size=(n, 1))
    gaps = peak if max_gap is None else np.minimum(peak, max_gap)
    target = peak - 1 - (rng.random((n, 1)) * gaps).astype(np.int64)
    values = rng.integers(0, MAX_VALUE + 1, size=(n, POSITIONS))
    no_two = rng.integers(0, MAX_VALUE, size=(n, POSITIONS))
    no_two = no_two + (no_two >= TARGET_VALUE)
    between = (index > target) & (index < peak)
    values = np.where(between, no_two, values)
    values = np.where(index == target, TARGET_VALUE, values)
    values = np.where(index == peak, PEAK_VALUE, values)
    return values, target[:, 0]


def answer(values):
    """The reference answer: index of the last 2 before the first 9."""
    values = list(values)
    peak = values.index(PEAK_VALUE)
    return max(i for i in range(peak) if values[i] == TARGET_VALUE)


def first_two(values):
    """The answer of a head that stops on the first 2 it meets: index of
    the first 2 (the shortcut the extra 2s break)."""
    return np.argmax(values == TARGET_VALUE, axis=1)


def add_distractors(values, target, share, rng):
    """Puts one more 2 before the answer in `share` of the samples whose
    answer is ≥ 1 (the answer stays the last 2 before the 9): for them,
    stopping on the first 2 met is wrong. Returns new values."""
    if not share:
        return values
    values = values.copy()
    picked = np.nonzero((target >= 1) & (rng.random(len(target)) < share))[0]
    slots = (rng.random(len(picked)) * target[picked]).astype(np.int64)
    values[picked, slots] = TARGET_VALUE
    return values


def curriculum_gap(epoch, epochs):
    """The `max_gap` of an epoch: 1 at first, widened over the first half
    of the `epochs`; None (no bound) from then on."""
    ramp = max(1, epochs // 2)
    widening = 1 + (POSITIONS - 1) * epoch // ramp
    return widening if widening < POSITIONS - 1 else None


def as_data(values):
    """Integer values `(n, POSITIONS)` as the head's data, float32
    `(n, POSITIONS, 1)`."""
    return values[..., None].astype("float32")


def diagnose(cell, values, target, steps):
    """How the trained head fails, from its position at every step.

    Returns shares of the samples: `reached_the_9` (the head stood on the 9
    at some step), `ended_on_a_2`, `ended_right_of_answer`,
    `ended_left_of_answer`, and `stalled_before_the_9` (never reached it
    and stood still over the last half of the steps).
    """
    no_input = np.zeros((len(values), steps, 0), "float32")
    _, traces = sc.run_with_traces(cell, no_input, as_data(values))
    head = cell.component_names["systems"][0]
    positions = np.round(traces[f"{head}/position"][..., 0]).astype(int)
    final = positions[:, -1]
    peak = np.argmax(values == PEAK_VALUE, axis=1)
    reached = np.any(positions == peak[:, None], axis=1)
    read = values[np.arange(len(values)), final]
    still = np.all(positions[:, steps // 2:] == final[:, None], axis=1)
    return {k: to_float(np.mean(v)) for k, v in {
        "reached_the_9": reached,
        "ended_on_a_2": read == TARGET_VALUE,
        "ended_right_of_answer": final > target,
        "ended_left_of_answer": final < target,
        "stalled_before_the_9": ~reached & still,
    }.items()}


def build_superloop(sizes, seed, like=None):
    """`(model, trainer, cell)`: `model` answers with the head's final
    position `(batch, 1)`; `trainer` (the same layers) outputs what the
    REINFORCE loss needs, `(batch, 3)`: the final position, the
    log-probability of the walk and its mean entropy per step.

    With `like` (a `SuperloopCell` with a `HardAttention` head), the cell
    is a copy of it, its weights included.
    """
    if like is None:
        # The head first: its initializers draw their seeds when made.
        head = sc.HardAttention(positions=POSITIONS, width=1, seed=seed)
        cell = sc.SuperloopCell(
            [sc.SGUCell(sizes.units) for _ in range(sizes.depth)], [head])
    else:
        config = {**like.get_config(), "trace": False}
        config.pop("name", None)
        cell = sc.SuperloopCell.from_config(config)
    steps = keras.Input((sizes.steps, 0), name="steps")
    data = keras.Input((POSITIONS, 1), name="data")
    states = sc.initial_state(cell, steps, data)
    _, *final = keras.layers.RNN(cell, return_state=True)(
        steps, initial_state=states)
    position, log_prob, entropy = cell.system_states(final, 0)[:3]
    walk = keras.layers.Concatenate()(
        [position, log_prob, entropy / sizes.steps])
    model = keras.Model([steps, data], position, name="superloop")
    trainer = keras.Model([steps, data], walk, name="superloop_trainer")
    if like is not None:
        cell.set_weights(like.get_weights())
    return model, trainer, cell


def load_head(path, steps):
    """The `SuperloopCell` of a model this script saved, to train on."""
    model, cell = load_superloop(path)
    saved_steps = model.inputs[0].shape[1]
    if saved_steps != steps:
        raise ValueError(f"--initial-model {path} runs {saved_steps} steps; "
                         f"this run has {steps} (--quick: {QUICK.steps}, "
                         f"otherwise {FULL.steps})")
    if not isinstance(cell.systems[0], sc.HardAttention):
        raise ValueError(f"--initial-model {path}: its head is "
                         f"{type(cell.systems[0]).__name__}; this script "
                         "trains a HardAttention head")
    return cell


def walk_loss(target, walk):
    """REINFORCE with the reward −|final position − answer| (`walk` is the
    trainer's output)."""
    target = keras.ops.reshape(target, (-1,))
    reward = -keras.ops.abs(walk[:, 0] - target)
    return sc.reinforce_loss(reward, walk[:, 1], walk[:, 2], ENTROPY_WEIGHT)


def build_gru(units):
    data = keras.Input((POSITIONS, 1), name="data")
    hidden = keras.layers.GRU(units)(data)
    index = keras.layers.Dense(1)(hidden)
    return keras.Model(data, index, name="gru_baseline")


def train_baseline(sizes, args, rng, test_data, test_target):
    """Trains the GRU baseline; returns its summary entries."""
    clock = Stopwatch()
    values, target = make_data(sizes.train_samples * 2, rng)
    gru = build_gru(sizes.baseline_units)
    compile_with_adam(gru, "mse", BASELINE_LEARNING_RATE, args.jit_compile)
    print(f"baseline: GRU({sizes.baseline_units}) + Dense(1) on the 16 "
          f"values, {gru.count_params()} parameters")
    gru.fit(as_data(values), target.astype("float32"),
            batch_size=sizes.batch_size, epochs=sizes.baseline_epochs,
            callbacks=[RoundedAccuracy(test_data, test_target)],
            verbose=args.verbose)
    return {
        "baseline_test_accuracy": rounded_accuracy(gru, test_data,
                                                   test_target),
        "baseline_parameters": gru.count_params(),
        "baseline_train_seconds": clock.seconds(),
    }


def parse_args(argv):
    parser = make_parser(TASK, __doc__)
    parser.add_argument("--epochs", type=int, default=argparse.SUPPRESS,
                        help=f"default: {FULL.epochs}, or {QUICK.epochs} with "
                             "--quick; the curriculum spans the first half")
    parser.add_argument("--learning-rate", type=float, default=3e-3,
                        help="Adam's learning rate for the controller")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction,
                        default=True, help="also train the GRU baseline")
    parser.add_argument("--initial-model", default=None,
                        help="go on training a model.keras this script "
                             "saved (the optimizer starts afresh)")
    parser.add_argument("--jit-compile", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="XLA-compile the train steps (without it JAX "
                             "runs op by op)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run, to check that the script works: "
                             f"{QUICK}")
    args = parser.parse_args(argv)
    if not hasattr(args, "epochs"):
        args.epochs = (QUICK if args.quick else FULL).epochs
    if args.epochs < 0:
        parser.error(f"--epochs must be ≥ 0, got {args.epochs}")
    return args


def main(argv=None):
    args = parse_args(argv)
    sizes = (QUICK if args.quick else FULL)._replace(epochs=args.epochs)
    out = prepare(args)
    rng = np.random.default_rng(args.seed)
    test_values, test_target = make_data(sizes.test_samples, rng)
    test_data = as_data(test_values)
    test_no_input = np.zeros((len(test_data), sizes.steps, 0), "float32")
    no_input = np.zeros((sizes.train_samples, sizes.steps, 0), "float32")

    clock = Stopwatch()
    saved = (load_head(args.initial_model, sizes.steps)
             if args.initial_model else None)
    model, trainer, cell = build_superloop(sizes, args.seed, like=saved)
    compile_with_adam(trainer, walk_loss, args.learning_rate,
                      args.jit_compile)
    print(f"superloop: {len(cell.cells)}×SGUCell({cell.cells[0].units}), "
          f"HardAttention(positions={POSITIONS}, width=1), {sizes.steps} steps, "
          f"{model.count_params()} parameters, REINFORCE on the final "
          "position"
          + (f", from {args.initial_model}" if args.initial_model else ""))
    # Model selection on fresh validation samples, never on the test set;
    # from their own stream, so that the training data does not depend on
    # it.
    val_values, val_target = make_data(
        sizes.test_samples, np.random.default_rng([args.seed, 1]))
    monitor = RoundedAccuracy([test_no_input, as_data(val_values)],
                              val_target, keep_best=True, model=model)
    for epoch in range(sizes.epochs):
        values, target = make_data(sizes.train_samples, rng,
                                   max_gap=curriculum_gap(epoch, sizes.epochs))
        values = add_distractors(values, target, 1.0, rng)
        trainer.fit([no_input, as_data(values)], target.astype("float32"),
                    batch_size=sizes.batch_size, initial_epoch=epoch,
                    epochs=epoch + 1, callbacks=[monitor],
                    verbose=args.verbose)
    train_seconds = clock.seconds()
    if monitor.best_epoch is not None:
        monitor.restore_best()
        print(f"kept the weights of epoch {monitor.best_epoch + 1}, reached "
              f"after {monitor.best_seconds} s (validation accuracy "
              f"{monitor.best_accuracy})")
    test_inputs = [test_no_input, test_data]
    summary = {
        "task": TASK,
        "test_accuracy": rounded_accuracy(model, test_inputs, test_target),
        "always_zero_accuracy": to_float(np.mean(test_target == 0)),
        "first_two_accuracy": to_float(np.mean(
            first_two(test_values) == test_target)),
        "parameters": model.count_params(),
        "train_seconds": train_seconds,
        "kept_epoch": (0 if monitor.best_epoch is None
                       else monitor.best_epoch + 1),
        "validation_accuracy": monitor.best_accuracy,
        "kept_epoch_seconds": monitor.best_seconds,
        "diagnosis": diagnose(cell, test_values, test_target, sizes.steps),
    }
    model.save(out / "model.keras")
    write_traces(cell, test_no_input[:1], test_data[:1], out / "traces.png",
                 f"find last 2: data {test_values[0].tolist()}, "
                 f"answer {test_target[0]}")
    if args.baseline:
        summary.update(train_baseline(sizes, args, rng, test_data,
                                      test_target))
    summary["wall_seconds"] = clock.seconds()
    summary["config"] = {**vars(args), **sizes._asdict()}
    return finish(out, summary)


if __name__ == "__main__":
    main(sys.argv[1:])
