"""Data generators, metrics and training plumbing shared by the task
examples on the papers' protocols (`transduction.py`, `ntm_tasks.py`).

Transduction (Grefenstette et al. 2015, §4.1): a source of symbols from a
vocabulary of `vocab`, a separator, then one "go" step per target symbol.
Token ids: `0 … vocab − 1` the symbols, `vocab` the separator, `vocab + 1`
the go symbol (also the padding after a sequence's end, which no loss or
metric sees). A sample of source length L has 2·L + 1 steps:

    steps 0 … L−1      the source symbols
    step  L            separator
    steps L+1 … 2L     go; the target symbol of position j is read out at
                       step L + 1 + j

NTM tasks (Graves et al. 2014, §4.1–4.2), bit vectors:

    copy     [bits (8) | delimiter]: L vectors, a delimiter step, then L
             all-zero steps at which the L vectors are to be output.
    recall   [bits (6) | item delimiter | query delimiter]: k items of 3
             vectors, each preceded by an item-delimiter step; then a
             query-delimiter step, the 3 vectors of one of the first k − 1
             items, a query-delimiter step; then 3 all-zero steps at which
             the item that followed the queried one is to be output.
"""

import argparse
import json
import time

import keras
import numpy as np

from _common import BestWeights
from superloop_cell import mean_loss_weights

TRANSDUCTION_TASKS = ("copy", "reversal", "bigram_flip")
ITEM_VECTORS = 3


# ---------------------------------------------------------------- targets --

def transduce(task, source):
    """The target of `task` for one source sequence (1-D int array)."""
    source = np.asarray(source)
    if task == "copy":
        return source.copy()
    if task == "reversal":
        return source[::-1].copy()
    if task == "bigram_flip":
        if len(source) % 2:
            raise ValueError(f"bigram flip needs an even length, got "
                             f"{len(source)}")
        return source.reshape(-1, 2)[:, ::-1].reshape(-1).copy()
    raise ValueError(f"Unknown task {task!r}; expected one of "
                     f"{TRANSDUCTION_TASKS}.")


def transduction_batch(task, lengths, vocab, rng, steps=None):
    """Samples of the given source lengths, padded at the end.

    Returns `(tokens, target, weight, sources)`: `tokens` `(n, steps)`
    int32 token ids (see the module docstring), `target` `(n, steps)` the
    target symbol at each go step (0 elsewhere), `weight` `(n, steps)` 1 at
    the go steps and 0 elsewhere, `sources` the list of source arrays.
    `steps` defaults to `2·max(lengths) + 1`.
    """
    lengths = np.asarray(lengths, dtype=int)
    steps = steps or 2 * int(lengths.max()) + 1
    n = len(lengths)
    tokens = np.full((n, steps), vocab + 1, "int32")
    target = np.zeros((n, steps), "int32")
    weight = np.zeros((n, steps), "float32")
    sources = []
    for row, length in enumerate(lengths):
        source = rng.integers(0, vocab, size=length)
        sources.append(source)
        tokens[row, :length] = source
        tokens[row, length] = vocab
        target[row, length + 1:2 * length + 1] = transduce(task, source)
        weight[row, length + 1:2 * length + 1] = 1.0
    return tokens, target, weight, sources


def ntm_copy_batch(lengths, rng, bits=8, steps=None):
    """Graves' copy task: `(x, target, weight)`.

    `x` `(n, steps, bits + 1)`: the L random vectors, then the delimiter
    (last channel), then zeros. `target` `(n, steps, bits)`: the L vectors
    at steps L+1 … 2L. `weight` `(n, steps)`: 1 at those steps.
    """
    lengths = np.asarray(lengths, dtype=int)
    steps = steps or 2 * int(lengths.max()) + 1
    n = len(lengths)
    x = np.zeros((n, steps, bits + 1), "float32")
    target = np.zeros((n, steps, bits), "float32")
    weight = np.zeros((n, steps), "float32")
    for row, length in enumerate(lengths):
        vectors = rng.integers(0, 2, size=(length, bits)).astype("float32")
        x[row, :length, :bits] = vectors
        x[row, length, bits] = 1.0
        target[row, length + 1:2 * length + 1] = vectors
        weight[row, length + 1:2 * length + 1] = 1.0
    return x, target, weight


def recall_steps(items):
    """Steps of a recall sample with `items` items."""
    return (ITEM_VECTORS + 1) * items + ITEM_VECTORS + 2 + ITEM_VECTORS


def ntm_recall_batch(item_counts, rng, bits=6, steps=None):
    """Graves' associative recall: `(x, target, weight, parts)`.

    `x` `(n, steps, bits + 2)`, channel `bits` the item delimiter and
    `bits + 1` the query delimiter. `target` `(n, steps, bits)`: the item
    after the queried one, at the 3 steps after the closing query
    delimiter; `weight` 1 there. `parts`: per sample `(items, query)`,
    `items` `(k, 3, bits)` and `query` the index of the queried item.
    """
    item_counts = np.asarray(item_counts, dtype=int)
    steps = steps or recall_steps(int(item_counts.max()))
    n = len(item_counts)
    x = np.zeros((n, steps, bits + 2), "float32")
    target = np.zeros((n, steps, bits), "float32")
    weight = np.zeros((n, steps), "float32")
    parts = []
    for row, k in enumerate(item_counts):
        items = rng.integers(0, 2, size=(k, ITEM_VECTORS, bits))
        items = items.astype("float32")
        query = int(rng.integers(0, k - 1))
        t = 0
        for item in items:
            x[row, t, bits] = 1.0
            x[row, t + 1:t + 1 + ITEM_VECTORS, :bits] = item
            t += ITEM_VECTORS + 1
        x[row, t, bits + 1] = 1.0
        x[row, t + 1:t + 1 + ITEM_VECTORS, :bits] = items[query]
        t += ITEM_VECTORS + 1
        x[row, t, bits + 1] = 1.0
        t += 1
        target[row, t:t + ITEM_VECTORS] = items[query + 1]
        weight[row, t:t + ITEM_VECTORS] = 1.0
        parts.append((items, query))
    return x, target, weight, parts


# ---------------------------------------------------------------- metrics --

def coarse_fine(predicted, target, weight):
    """Grefenstette et al.'s two accuracies over a batch of sequences.

    `predicted`, `target`: `(n, steps)` symbol ids; `weight` `(n, steps)`,
    nonzero at the target positions (in order). Coarse: the share of
    sequences whose every target position is right. Fine: the mean over
    sequences of the share of target positions right before the first
    error (1 for a sequence entirely right).
    """
    coarse, fine = [], []
    for p, t, w in zip(predicted, target, weight):
        at = np.flatnonzero(w)
        right = p[at] == t[at]
        wrong = np.flatnonzero(~right)
        prefix = wrong[0] if len(wrong) else len(right)
        coarse.append(float(len(wrong) == 0))
        fine.append(prefix / len(right))
    return float(np.mean(coarse)), float(np.mean(fine))


def bit_errors(probabilities, target, weight):
    """Wrong bits per sequence (output thresholded at 0.5), `(n,)`."""
    wrong = (np.asarray(probabilities) > 0.5) != (np.asarray(target) > 0.5)
    return np.sum(wrong * (np.asarray(weight)[..., None] > 0), axis=(1, 2))


# --------------------------------------------------------------- training --

class FreshBatches(keras.utils.PyDataset):
    """`batches` fresh training batches per epoch, drawn from buckets.

    `make(lengths, rng, steps)` returns `(x, target, weight, ...)` for one
    batch; `buckets` is a list of `(lengths, steps)`: a batch draws its
    bucket with probability proportional to how many lengths it has, then
    `batch_size` lengths uniformly from it, and is padded to `steps`. So the
    lengths over all batches are uniform on the union of the buckets. The
    first two batches of an epoch come from different buckets (Keras takes
    the TensorFlow input signature from the first two batches; so its time
    axis stays free). Reproducible: batch `i` of epoch `e` depends only on
    `(seed, e, i)`.
    """

    def __init__(self, make, buckets, batch_size, batches, seed):
        super().__init__()
        self.make = make
        self.buckets = buckets
        self.batch_size = batch_size
        self.batches = batches
        self.seed = seed
        self.epoch = 0
        sizes = np.array([len(lengths) for lengths, _ in buckets], float)
        self.p = sizes / sizes.sum()
        self.lengths = None

    def set_buckets(self, buckets):
        """Draws the next batches from `buckets` (for a curriculum)."""
        self.buckets = buckets
        sizes = np.array([len(lengths) for lengths, _ in buckets], float)
        self.p = sizes / sizes.sum()

    def __len__(self):
        return self.batches

    def on_epoch_end(self):
        self.epoch += 1

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if index < 2 and len(self.buckets) > 1:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(
                len(self.buckets))
            bucket = order[index]
        else:
            bucket = rng.choice(len(self.buckets), p=self.p)
        lengths, steps = self.buckets[bucket]
        if index == 1 and len(self.buckets) == 1:
            steps += 1  # a second shape, so the time axis stays free
        drawn = rng.choice(lengths, size=self.batch_size)
        x, target, weight = self.make(drawn, rng, steps)[:3]
        return x, target, mean_loss_weights(weight).astype("float32")


def buckets_for(lengths, steps_of, count):
    """Splits `lengths` into `count` contiguous buckets of about equal
    size, each padded to `steps_of(its longest length)`; buckets padded to
    the same steps are merged, so every bucket has its own shape."""
    lengths = np.sort(np.asarray(lengths))
    parts = np.array_split(lengths, min(count, len(lengths)))
    buckets = []
    for part in parts:  # parts padded to the same steps are merged
        steps = steps_of(int(part.max()))
        if buckets and buckets[-1][1] == steps:
            part = np.concatenate([buckets.pop()[0], part])
        buckets.append((part, steps))
    return buckets


def padded_to(multiple, steps_of):
    """`steps_of` rounded up to a multiple of `multiple` (fewer shapes to
    compile when a curriculum moves the bucket boundaries)."""
    return lambda n: -(-steps_of(n) // multiple) * multiple


class Curriculum(keras.callbacks.Callback):
    """Grows the longest training length linearly, from `start` at the first
    epoch to the longest of `lengths` at epoch `epochs` (and after); each
    epoch's lengths are uniform on `lengths` up to that limit."""

    def __init__(self, data, lengths, steps_of, count, start, epochs):
        super().__init__()
        self.data = data
        self.lengths = np.asarray(lengths)
        self.steps_of = steps_of
        self.count = count
        self.start = start
        self.epochs = max(int(epochs), 1)
        self.limit = None
        self.on_epoch_begin(0)

    def on_epoch_begin(self, epoch, logs=None):
        top = self.lengths.max()
        limit = self.start + (top - self.start) * min(1.0,
                                                      epoch / self.epochs)
        limit = max(int(round(limit)), int(self.lengths.min()))
        if limit != self.limit:
            self.limit = limit
            allowed = self.lengths[self.lengths <= limit]
            self.data.set_buckets(buckets_for(allowed, self.steps_of,
                                              self.count))


class Progress(keras.callbacks.Callback):
    """Prints one line per epoch: the loss and `check()`'s metrics, and
    keeps them (with the elapsed seconds) in `history`. Stops training
    once `max_seconds` have passed, or when `done(history)` is true.

    With `score` (a function of an epoch's entry; higher is better, None
    for an epoch without a check), the weights of the best-scoring epoch
    (the latest among equals) are put back when training ends, and that
    epoch is `kept_epoch`."""

    def __init__(self, label, check, max_seconds=None, every=1, done=None,
                 score=None):
        super().__init__()
        self.done = done
        self.label = label
        self.check = check
        self.max_seconds = max_seconds
        self.every = every
        self.score = score
        self.history = []
        self._best = BestWeights(latest_among_equals=True)
        self.start = time.perf_counter()

    @property
    def kept_epoch(self):
        return self._best.epoch

    def on_train_end(self, logs=None):
        if self.kept_epoch is not None:
            self._best.restore(self.model)
            print(f"[{self.label}] kept the weights of epoch "
                  f"{self.kept_epoch}", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.start
        entry = {"epoch": epoch + 1, "seconds": round(seconds, 1),
                 "loss": round(float(logs.get("loss", np.nan)), 5)}
        last = (self.max_seconds is not None
                and seconds >= self.max_seconds)
        if (epoch + 1) % self.every == 0 or last:
            entry.update(self.check())
        self.history.append(entry)
        score = None if self.score is None else self.score(entry)
        if score is not None:
            self._best.offer(self.model, score, entry["epoch"])
        shown = ", ".join(f"{k} {v}" for k, v in entry.items()
                          if k not in ("epoch",))
        print(f"[{self.label}] epoch {epoch + 1}: {shown}", flush=True)
        if self.done is not None and not last and self.done(self.history):
            print(f"[{self.label}] stopping criterion met", flush=True)
            self.model.stop_training = True
        if last:
            print(f"[{self.label}] time limit of {self.max_seconds} s "
                  "reached, stopping", flush=True)
            self.model.stop_training = True


def round_metrics(metrics, digits=4):
    return {k: (round(float(v), digits) if isinstance(v, (float, np.floating))
                else v) for k, v in metrics.items()}


def reached(key, value, epochs, after=0):
    """A `done` for `Progress`: `key` equal to `value` in each of the last
    `epochs` epochs, all of them after epoch `after` (e.g. the end of a
    curriculum)."""
    def done(history):
        last = history[-epochs:]
        return (len(last) == epochs and last[0]["epoch"] > after
                and all(entry.get(key) == value for entry in last))
    return done


def train(model, args, label, *, loss, make, sizes, steps_of, start,
          check, score, done, epochs, max_seconds):
    """Trains `model` as both task scripts do; returns its `Progress`.

    Adam (`args.learning_rate`, gradients clipped to norm
    `args.clipnorm`) on `loss`; `args.steps` fresh batches of
    `args.batch_size` per epoch from `make(sizes, rng, steps)`, in
    `args.buckets` buckets over `sizes` (the training lengths or item
    counts), each padded to `steps_of(size)` rounded up to
    `args.pad_multiple`. With `args.curriculum`, the longest size grows
    from `start` over that many epochs (`Curriculum`). `check()` runs after
    every epoch; `score(entry)` picks the epoch whose weights are kept;
    training stops after `epochs`, once `max_seconds` have passed, or once
    `done = (key, value)` has held in `args.stop_after` epochs in a row
    after the curriculum (0: never).
    """
    model.compile(keras.optimizers.Adam(args.learning_rate,
                                        clipnorm=args.clipnorm), loss)
    # Builds the optimizer's variables before the first step (on
    # TensorFlow that step would otherwise trace them one by one).
    model.optimizer.build(model.trainable_variables)
    pad = padded_to(args.pad_multiple, steps_of)
    batches = FreshBatches(make, buckets_for(sizes, pad, args.buckets),
                           args.batch_size, args.steps, args.seed)
    callbacks = []
    if args.curriculum:
        callbacks.append(Curriculum(batches, sizes, pad, args.buckets,
                                    start=start, epochs=args.curriculum))
    stop = None
    if args.stop_after:
        stop = reached(*done, args.stop_after, after=args.curriculum)
    progress = Progress(label, check, max_seconds, done=stop, score=score)
    callbacks.append(progress)
    print(f"{label}: {model.count_params()} parameters; up to {epochs} "
          f"epochs × {args.steps} batches of {args.batch_size}", flush=True)
    model.fit(batches, epochs=epochs, verbose=0, callbacks=callbacks)
    return progress


def add_training_options(parser, *, units, epochs, learning_rate,
                         pad_multiple, lstm_layers, max_minutes,
                         curriculum_help, stop_after_help, clipnorm=1.0,
                         stop_after=3):
    """Adds the options both task scripts share: `--quick`, the controller's
    size, the training schedule and budget, the LSTM baseline. The
    arguments are the defaults that differ between the scripts (None for
    `clipnorm` or `stop_after`: the script sets it per task after
    parsing), and the help of `--curriculum` and `--stop-after` (what
    grows, what is checked)."""
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings for a smoke test")
    parser.add_argument("--units", type=int, default=units,
                        help="units per layer of the superloop's stack")
    parser.add_argument("--depth", type=int, default=1,
                        help="layers of the superloop's stack")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--steps", type=int, default=100,
                        help="training batches per epoch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--buckets", type=int, default=4,
                        help="length buckets of the training batches")
    parser.add_argument("--learning-rate", type=float, default=learning_rate)
    parser.add_argument("--clipnorm", type=float, default=clipnorm,
                        help="gradients are clipped to this norm")
    parser.add_argument("--curriculum", type=int, default=5,
                        help=curriculum_help)
    parser.add_argument("--stop-after", type=int, default=stop_after,
                        help=stop_after_help)
    parser.add_argument("--pad-multiple", type=int, default=pad_multiple,
                        help="training batches padded to a multiple of this")
    parser.add_argument("--max-minutes", type=float, default=max_minutes,
                        help="stop training after the epoch that passes it")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction,
                        default=False, help="also train the LSTM baseline")
    parser.add_argument("--superloop",
                        action=argparse.BooleanOptionalAction, default=True,
                        help="train the superloop (--no-superloop: the "
                        "baseline only, saved as model.keras, no traces)")
    parser.add_argument("--lstm-units", type=int, default=256)
    parser.add_argument("--lstm-layers", type=int, default=lstm_layers)
    parser.add_argument("--baseline-epochs", type=int, default=None,
                        help="default: --epochs")
    parser.add_argument("--baseline-max-minutes", type=float, default=None,
                        help="default: --max-minutes")


def parse_task_args(parser, argv):
    """`parser.parse_args(argv)`, with the default `--out` made one folder
    per task (`runs/<script>_<task>`)."""
    args = parser.parse_args(argv)
    if args.out == parser.get_default("out"):
        args.out = f"{args.out}_{args.task}"
    return args


def flattened(results):
    """`{"test": {"coarse": 1.0}}` → `{"test_coarse": 1.0}`."""
    return {f"{name}_{key}": value for name, metrics in results.items()
            for key, value in metrics.items()}


def training_record(model, progress, seconds, args, results):
    """What `summary.json` keeps of one trained model: its size, training
    time, epochs and sequences seen, `results` and the per-epoch history."""
    epochs = len(progress.history)
    return {
        "parameters": model.count_params(),
        "train_seconds": seconds,
        "epochs_run": epochs,
        "kept_epoch": progress.kept_epoch,
        "sequences_seen": epochs * args.steps * args.batch_size,
        **results,
        "history": progress.history,
    }


def finish_without_traces(summary, out, traces):
    """`_common.finish`'s summary, with the trace plot dropped from its
    files (and from `summary.json`) when no superloop was run."""
    if not traces:
        summary["files"].pop("traces", None)
        (out / "summary.json").write_text(json.dumps(summary, indent=2)
                                          + "\n")
    return summary
