r"""Find the last 2 before the 9: an attention head walking over the data.

The older superloop project's toy task. Each sample is 16 values in 0–4
with one 9 at a position ≥ 1, and at least one 2 before it; the answer is
the index of the last 2 before the 9.

The model never sees the data as input. Its sequence input has width 0 —
it only sets the number of steps (64) — and the data is the per-sample
context of a read head: each step the superloop reads the value under the
head and moves it. The answer is where the head stands after the last
step: the position state, read with `return_state=True`, is the model's
output. A GRU that reads the 16 values as a 16-step sequence and regresses
the index with a Dense layer is the baseline.

The default head is `HardAttention`: it stands on one slot and reads it
exactly; each step the controller gives the logits of the moves −1, 0, +1,
a move is sampled in training (the most likely one is taken otherwise),
and the controller is trained by REINFORCE on the reward −|final position
− answer|, with an entropy bonus (`--entropy-weight`). Training data gets
one more 2 before the answer in every sample whose answer is ≥ 1
(`--distractors`), so that stopping on the first 2 met — a shortcut right
in 55 % of the test samples, which needs no memory of the 9 — is wrong
there. `--curriculum` starts with answers right before the 9 and widens the
gap over the first half of the epochs; `--keep-best` keeps the weights of
the epoch that did best on a validation set (the test set is used once).

`--no-hard-attention` trains the soft `Attention` head of the earlier
sessions instead, on its final position (or the last `--loss-steps`), with
its options (`--integer-moves`, `--falloff`, `--sharpness`, ...): its
straight-through gradient pushes every move of a walk alike, including
those of the walk to the 9, and its training collapses (README, Results).
The summary's `diagnosis` says how the head fails (did it reach the 9, did
it end on a 2, on which side of the answer, did it stall before the 9), and
`first_two_accuracy` scores the first-2 shortcut.

    python examples/find_last_two.py                  # about 4 minutes
    # the soft head of the previous session (68.8 % after 16 minutes):
    python examples/find_last_two.py --no-hard-attention --epochs 500 \
        --no-baseline --out runs/flt_500
    # the settings of the earlier sessions, for comparison:
    python examples/find_last_two.py --no-hard-attention \
        --no-integer-moves --falloff squared --sharpness 1 --read-gradient \
        --no-curriculum --no-keep-best --depth 3 --learning-rate 3e-3 \
        --epochs 30 --no-jit-compile
"""

import argparse
import sys

import keras
import numpy as np

from _common import (RoundedAccuracy, Stopwatch, finish, make_parser,
                     prepare, rounded_accuracy, to_float, write_traces)
import superloop_cell as sc
from superloop_cell.tensorboard import find_superloop_cell

TASK = "find_last_two"
POSITIONS = 16
MAX_VALUE = 4  # ordinary values are 0 … MAX_VALUE
TARGET_VALUE = 2
PEAK_VALUE = 9


def make_data(n, rng, positions=POSITIONS, max_peak=None, max_gap=None):
    """`n` samples: values `(n, positions)` (ints) and targets `(n,)`.

    The 9 (the peak) is at a uniform position in `[1, max_peak]` (default
    `positions − 1`), the answer at a uniform position before it; the
    values between them are drawn from {0, 1, 3, 4} so that the answer is
    the *last* 2 before the 9; the others from 0–4. `max_gap`, for a
    curriculum, bounds how far before the 9 the answer is (default: no
    bound).
    """
    index = np.arange(positions)[None, :]
    max_peak = positions - 1 if max_peak is None else max_peak
    peak = rng.integers(1, max_peak + 1, size=(n, 1))
    gaps = peak if max_gap is None else np.minimum(peak, max_gap)
    target = peak - 1 - (rng.random((n, 1)) * gaps).astype(np.int64)
    values = rng.integers(0, MAX_VALUE + 1, size=(n, positions))
    no_two = rng.integers(0, MAX_VALUE, size=(n, positions))
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
    the first 2 (a shortcut the training can fall into, see README)."""
    return np.argmax(values == TARGET_VALUE, axis=1)


def diagnose(cell, values, target, steps, scale):
    """How the trained head fails, from its position at every step.

    Returns shares of the samples: `reached_the_9` (the head stood on the 9
    at some step), `ended_on_a_2`, `ended_right_of_answer`,
    `ended_left_of_answer`, and `stalled_before_the_9` (never reached it
    and stood still over the last half of the steps).
    """
    data = (values[..., None] * scale).astype("float32")
    no_input = np.zeros((len(values), steps, 0), "float32")
    _, traces = sc.run_with_traces(cell, no_input, data)
    head = cell.component_names["systems"][0]
    positions = np.round(traces[f"{head}/position"][..., 0]).astype(int)
    final = positions[:, -1]
    peak = np.argmax(values == PEAK_VALUE, axis=1)
    reached = np.any(positions == peak[:, None], axis=1)
    on_slot = (final >= 0) & (final < POSITIONS)
    read = values[np.arange(len(values)), np.clip(final, 0, POSITIONS - 1)]
    still = np.all(positions[:, steps // 2:] == final[:, None], axis=1)
    return {k: to_float(np.mean(v)) for k, v in {
        "reached_the_9": reached,
        "ended_on_a_2": on_slot & (read == TARGET_VALUE),
        "ended_right_of_answer": final > target,
        "ended_left_of_answer": final < target,
        "stalled_before_the_9": ~reached & still,
    }.items()}


def build_superloop(args, like=None):
    """`(model, trainer, cell)`: `model` answers with the head's final
    position `(batch, 1)`; `trainer` (the same layers) outputs what the loss
    needs: with `HardAttention`, `[final position, log-probability of the
    walk, mean entropy per step]`; with `Attention`, the position at each of
    the last `--loss-steps` steps.

    With `like` (a `SuperloopCell`), the cell is a copy of it, its weights
    included.
    """
    # With a loss on several steps, the cell carries the head's position
    # per step: only that trace, which costs little (see README).
    trace = ["attention/position"] if args.loss_steps > 1 else False
    hard = (args.hard_attention if like is None
            else isinstance(like.systems[0], sc.HardAttention))
    if hard and trace:
        raise ValueError("--loss-steps applies to the soft `Attention` head "
                         "(--no-hard-attention); got --loss-steps "
                         f"{args.loss_steps} with a HardAttention head")
    if like is None:
        if hard:
            head = sc.HardAttention(POSITIONS, 1, seed=args.seed)
        else:
            head = sc.Attention(POSITIONS, 1, falloff=args.falloff,
                                normalize=args.normalize,
                                clip_position=args.clip_position,
                                sharpness=args.sharpness,
                                read_gradient=args.read_gradient,
                                integer_moves=args.integer_moves)
        cell = sc.SuperloopCell(
            [sc.SGUCell(args.units) for _ in range(args.depth)], [head],
            trace=trace)
    else:
        config = {**like.get_config(), "trace": trace}
        config.pop("name", None)
        cell = sc.SuperloopCell.from_config(config)
    steps = keras.Input((args.steps, 0), name="steps")
    data = keras.Input((POSITIONS, 1), name="data")
    states = sc.initial_state(cell, steps, data)
    if trace:
        outputs = keras.layers.RNN(cell, return_sequences=True)(
            steps, initial_state=states)
        positions = cell.split_output(outputs)[1]["attention/position"]
        position = positions[:, -1]
        tail = positions[:, -args.loss_steps:, 0]
    else:
        _, *final = keras.layers.RNN(cell, return_state=True)(
            steps, initial_state=states)
        position = tail = cell.system_states(final, 0)[0]
        if hard:
            # What the REINFORCE loss needs: the final position, the
            # log-probability of the walk and its mean entropy per step.
            log_prob, entropy = cell.system_states(final, 0)[1:3]
            tail = keras.layers.Concatenate()(
                [position, log_prob, entropy / args.steps])
    model = keras.Model([steps, data], position, name="superloop")
    trainer = keras.Model([steps, data], tail, name="superloop_trainer")
    if like is not None:
        cell.set_weights(like.get_weights())
    return model, trainer, cell


def load_superloop(path, steps):
    """A model saved by this script, and its `SuperloopCell`, to train on."""
    model = keras.models.load_model(path)
    saved_steps = model.inputs[0].shape[1]
    if saved_steps != steps:
        raise ValueError(f"--initial-model {path} runs {saved_steps} steps; "
                         f"got --steps {steps}")
    return model, find_superloop_cell(model)


def build_gru(units):
    data = keras.Input((POSITIONS, 1), name="data")
    hidden = keras.layers.GRU(units)(data)
    index = keras.layers.Dense(1)(hidden)
    return keras.Model(data, index, name="gru_baseline")


def walk_loss(entropy_weight):
    """The loss of a `HardAttention` walk: REINFORCE with the reward
    −|final position − answer| (`y_pred` is the trainer's output)."""

    def loss(target, outputs):
        target = keras.ops.reshape(target, (-1,))
        reward = -keras.ops.abs(outputs[:, 0] - target)
        return sc.reinforce_loss(reward, outputs[:, 1], outputs[:, 2],
                                 entropy_weight)

    return loss


def compile_model(model, args, epochs, learning_rate, loss=None):
    if loss is None:
        loss = (keras.losses.Huber(delta=1.0) if args.loss == "huber"
                else "mse")
    if args.cosine_decay and epochs > 0:
        batches = -(-args.train_samples // args.batch_size)
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=epochs * batches, alpha=0.01)
    model.compile(keras.optimizers.Adam(learning_rate, clipnorm=1.0),
                  loss, jit_compile=args.jit_compile)


def curriculum_gap(epoch, args):
    """The `max_gap` of an epoch: with `--curriculum` 1 at first, lifted
    over half the epochs; never above `--max-gap`."""
    gap = args.max_gap
    if args.curriculum:
        ramp = max(1, args.epochs // 2)
        widening = 1 + (POSITIONS - 1) * epoch // ramp
        if widening < POSITIONS - 1:
            gap = widening if gap is None else min(gap, widening)
    return gap


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


def scaled(values, args):
    return (values[..., None] * args.scale).astype("float32")


def parse_args(argv):
    parser = make_parser(TASK, __doc__)
    parser.add_argument("--steps", type=int, default=64,
                        help="superloop steps per sample")
    parser.add_argument("--units", type=int, default=32,
                        help="units per SGU layer")
    parser.add_argument("--depth", type=int, default=2, help="SGU layers")
    parser.add_argument("--hard-attention",
                        action=argparse.BooleanOptionalAction, default=True,
                        help="a HardAttention head (moves sampled from the "
                             "controller's policy, trained by REINFORCE); "
                             "--no-hard-attention: the soft Attention head "
                             "below, trained on its final position")
    parser.add_argument("--entropy-weight", type=float, default=1.0,
                        help="HardAttention: weight of the entropy bonus")
    parser.add_argument("--distractors", type=float, default=None,
                        help="share of training samples (answer ≥ 1) given "
                             "one more 2 before the answer (default: 1.0 "
                             "with --hard-attention, else 0)")
    parser.add_argument("--falloff", choices=("linear", "squared", "gaussian"),
                        default="gaussian", help="attention falloff")
    parser.add_argument("--sharpness", type=float, default=8.0,
                        help="attention sharpness (distance scale)")
    parser.add_argument("--read-gradient",
                        action=argparse.BooleanOptionalAction, default=False,
                        help="let the read pass gradients to the position")
    parser.add_argument("--integer-moves",
                        action=argparse.BooleanOptionalAction, default=True,
                        help="round each move of the head to a whole slot "
                             "(straight-through gradient)")
    parser.add_argument("--max-gap", type=int, default=None,
                        help="an easier task: the answer is at most this far "
                             "before the 9, in training and test data")
    parser.add_argument("--initial-model", default=None,
                        help="go on training a model.keras this script "
                             "saved (its size and attention options are "
                             "kept; the optimizer starts afresh)")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction,
                        default=True, help="normalise the attention weights")
    parser.add_argument("--clip-position",
                        action=argparse.BooleanOptionalAction, default=False,
                        help="keep the head in [0, 15]")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="the data values are multiplied by this")
    parser.add_argument("--curriculum", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="bound the distance from the answer to the 9 "
                             "(1 at first), lifting the bound over the first "
                             "half of the epochs")
    parser.add_argument("--train-samples", type=int, default=8192,
                        help="fresh training samples per epoch")
    parser.add_argument("--test-samples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="default: 3e-3 with --hard-attention, else "
                             "1e-3")
    parser.add_argument("--loss", choices=("mse", "huber"), default="mse")
    parser.add_argument("--loss-steps", type=int, default=1,
                        help="the loss is on the head's position at each of "
                             "the last this many steps (it must get there "
                             "and stay); 1: the final position only")
    parser.add_argument("--cosine-decay",
                        action=argparse.BooleanOptionalAction, default=False,
                        help="decay the learning rate to 1 %% of itself "
                             "over the epochs (cosine)")
    parser.add_argument("--keep-best", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="check accuracy on fresh validation samples "
                             "after every epoch and keep the best epoch's "
                             "weights (the test set is not used for this)")
    parser.add_argument("--jit-compile", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="XLA-compile the train step (on JAX, Keras "
                             "runs op by op without it: 2 s per step here, "
                             "against 35 ms with XLA on TensorFlow)")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction,
                        default=True, help="also train the GRU baseline")
    parser.add_argument("--baseline-units", type=int, default=64)
    parser.add_argument("--baseline-epochs", type=int, default=20)
    parser.add_argument("--baseline-learning-rate", type=float, default=3e-3)
    args = parser.parse_args(argv)
    if args.learning_rate is None:
        args.learning_rate = 3e-3 if args.hard_attention else 1e-3
    if args.distractors is None:
        args.distractors = 1.0 if args.hard_attention else 0.0
    if not 0.0 <= args.distractors <= 1.0:
        parser.error(f"--distractors must be in [0, 1], got {args.distractors}")
    if args.entropy_weight < 0:
        parser.error(f"--entropy-weight must be ≥ 0, got {args.entropy_weight}")
    if not 1 <= args.loss_steps <= args.steps:
        parser.error(f"--loss-steps must be in 1..--steps ({args.steps}), "
                     f"got {args.loss_steps}")
    if args.max_gap is not None and not 1 <= args.max_gap < POSITIONS:
        parser.error(f"--max-gap must be in 1..{POSITIONS - 1}, got "
                     f"{args.max_gap}")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = prepare(args)
    rng = np.random.default_rng(args.seed)
    test_values, test_target = make_data(args.test_samples, rng,
                                         max_gap=args.max_gap)
    test_data = scaled(test_values, args)
    test_no_input = np.zeros((len(test_data), args.steps, 0), "float32")
    no_input = np.zeros((args.train_samples, args.steps, 0), "float32")

    clock = Stopwatch()
    saved = None
    if args.initial_model:
        saved = load_superloop(args.initial_model, args.steps)[1]
    model, trainer, cell = build_superloop(args, like=saved)
    head = cell.systems[0]
    hard = isinstance(head, sc.HardAttention)
    compile_model(trainer, args, args.epochs, args.learning_rate,
                  walk_loss(args.entropy_weight) if hard else None)
    options = {k: v for k, v in head.get_config().items()
               if k not in ("name", "trainable", "dtype", "positions",
                            "width")}
    print(f"superloop: {len(cell.cells)}×SGUCell({cell.cells[0].units}), "
          f"{type(head).__name__}({POSITIONS}, 1, {options}), "
          f"{args.steps} steps, {model.count_params()} parameters, "
          + ("REINFORCE on the final position" if hard else
             f"loss on the position at the last {args.loss_steps} step(s)")
          + (f", from {args.initial_model}" if args.initial_model else ""))
    test_inputs = [test_no_input, test_data]
    if args.keep_best:
        # Model selection on fresh validation samples, never on the test
        # set; from their own stream, so that the training data stays the
        # same with and without --keep-best.
        val_values, val_target = make_data(
            args.test_samples, np.random.default_rng([args.seed, 1]),
            max_gap=args.max_gap)
        monitor = RoundedAccuracy([test_no_input, scaled(val_values, args)],
                                  val_target, keep_best=True, model=model)
    else:
        monitor = RoundedAccuracy(test_inputs, test_target, model=model)
    for epoch in range(args.epochs):
        values, target = make_data(args.train_samples, rng,
                                   max_gap=curriculum_gap(epoch, args))
        values = add_distractors(values, target, args.distractors, rng)
        if not hard:
            target = np.repeat(target[:, None], args.loss_steps, axis=1)
        trainer.fit([no_input, scaled(values, args)], target.astype("float32"),
                    batch_size=args.batch_size, initial_epoch=epoch,
                    epochs=epoch + 1, callbacks=[monitor],
                    verbose=args.verbose)
    train_seconds = clock.seconds()
    if args.keep_best and monitor.best_epoch is not None:
        monitor.restore_best()
        print(f"kept the weights of epoch {monitor.best_epoch + 1}, reached "
              f"after {monitor.best_seconds} s (validation accuracy "
              f"{monitor.best_accuracy})")
    summary = {
        "task": TASK,
        "test_accuracy": rounded_accuracy(model, test_inputs, test_target),
        "always_zero_accuracy": to_float(np.mean(test_target == 0)),
        "first_two_accuracy": to_float(np.mean(
            first_two(test_values) == test_target)),
        "parameters": model.count_params(),
        "train_seconds": train_seconds,
    }
    if args.keep_best:
        summary["kept_epoch"] = monitor.best_epoch + 1 if args.epochs else 0
        summary["validation_accuracy"] = monitor.best_accuracy
        summary["kept_epoch_seconds"] = monitor.best_seconds
    summary["diagnosis"] = diagnose(cell, test_values, test_target,
                                    args.steps, args.scale)
    model.save(out / "model.keras")
    write_traces(cell, test_no_input[:1], test_data[:1],
                 out / "traces.png",
                 f"find last 2: data {test_values[0].tolist()}, "
                 f"answer {test_target[0]}")

    if args.baseline:
        clock_gru = Stopwatch()
        values, target = make_data(args.train_samples * 2, rng,
                                   max_gap=args.max_gap)
        gru = build_gru(args.baseline_units)
        compile_model(gru, args, args.baseline_epochs,
                      args.baseline_learning_rate)
        print(f"baseline: GRU({args.baseline_units}) + Dense(1) on the 16 "
              f"values, {gru.count_params()} parameters")
        gru.fit(scaled(values, args), target.astype("float32"),
                batch_size=args.batch_size, epochs=args.baseline_epochs,
                callbacks=[RoundedAccuracy(test_data, test_target)],
                verbose=args.verbose)
        summary["baseline_test_accuracy"] = rounded_accuracy(
            gru, test_data, test_target)
        summary["baseline_parameters"] = gru.count_params()
        summary["baseline_train_seconds"] = clock_gru.seconds()
    summary["wall_seconds"] = clock.seconds()
    summary["config"] = vars(args)
    return finish(out, summary)


if __name__ == "__main__":
    main(sys.argv[1:])
