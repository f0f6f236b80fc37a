"""Train a small superloop briefly and log everything TensorBoard can show.

The task is `find_last_two.py`'s (an attention head walks over 16 values to
find the last 2 before the 9), with a register memory and a neural stack
added so that every kind of system shows up. Under `--logdir` it writes
one TensorBoard run, `train`:

* loss curves (Keras' `TensorBoard` callback, also a `validation` run);
* a profile of train steps 2–4 (`ProfileSteps`), readable with the
  profile plugin (`pip install tensorboard-plugin-profile`);
* the op graph of the real train step, while-loop body included
  (`GraphWriter`), in the Graphs dashboard;
* heatmaps, histograms and scalars of what the superloop does on a fixed
  probe batch, before training and after every epoch (`TraceImages`).

It then prints where the loop body's time went in the profiled steps and
the command that opens TensorBoard.

    python examples/tensorboard_inspection.py --logdir runs/tensorboard
"""

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import superloop_cell as sc  # noqa: E402
import superloop_cell.tensorboard as sctb  # noqa: E402
from find_last_two import POSITIONS, make_data  # noqa: E402

PROBE_SAMPLES = 2


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--logdir", default=os.path.join(
        "runs", "tensorboard_inspection"), help="TensorBoard log directory")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=24,
                        help="superloop steps per sample")
    parser.add_argument("--units", type=int, default=16,
                        help="units per SGU layer")
    parser.add_argument("--depth", type=int, default=3, help="SGU layers")
    parser.add_argument("--profile-steps", type=int, nargs=2,
                        default=(2, 4), metavar=("FIRST", "LAST"),
                        help="train steps to profile (from 1, inclusive)")
    parser.add_argument("--jit-compile", action=argparse.BooleanOptionalAction,
                        default=False, help="XLA-compile the train step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=0, choices=(0, 1, 2),
                        help="Keras fit verbosity")
    return parser.parse_args(argv)


def build_model(args):
    """The find-last-two superloop with one system of each kind."""
    cell = sc.SuperloopCell(
        [sc.SGUCell(args.units) for _ in range(args.depth)],
        [sc.Attention(positions=POSITIONS, width=1, falloff="squared", normalize=True,
                      clip_position=True),
         sc.RegisterMemory(registers=4, width=4),
         sc.NeuralStack(width=4, capacity=8)],
    )
    steps = keras.Input((args.steps, 0), name="steps")
    data = keras.Input((POSITIONS, 1), name="data")
    states = sc.initial_state(cell, steps, data)
    _, *final = keras.layers.RNN(cell, return_state=True)(
        steps, initial_state=states)
    position = cell.system_states(final, 0)[0]
    model = keras.Model([steps, data], position, name="superloop")
    model.compile(keras.optimizers.Adam(3e-3, clipnorm=1.0),
                  keras.losses.Huber(), jit_compile=args.jit_compile)
    return model, cell


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    logdir = pathlib.Path(args.logdir)
    run = logdir / "train"
    rng = np.random.default_rng(args.seed)
    values, target = make_data(args.train_samples, rng)
    test_values, test_target = make_data(256, rng)
    data = (values[..., None] * 0.25).astype("float32")
    test_data = (test_values[..., None] * 0.25).astype("float32")
    no_input = np.zeros((len(data), args.steps, 0), "float32")
    test_no_input = np.zeros((len(test_data), args.steps, 0), "float32")

    model, cell = build_model(args)
    callbacks = [
        keras.callbacks.TensorBoard(str(logdir), write_graph=False,
                                    profile_batch=0),
        sctb.ProfileSteps(run, steps=tuple(args.profile_steps)),
        sctb.GraphWriter(run),
        sctb.TraceImages(run, test_no_input[:PROBE_SAMPLES],
                         contexts=test_data[:PROBE_SAMPLES],
                         samples=PROBE_SAMPLES),
    ]
    start = time.perf_counter()
    history = model.fit(
        [no_input, data], target.astype("float32"),
        batch_size=args.batch_size, epochs=args.epochs,
        validation_data=([test_no_input, test_data],
                         test_target.astype("float32")),
        callbacks=callbacks, verbose=args.verbose)
    seconds = time.perf_counter() - start

    breakdown = sctb.time_by_component(sctb.read_profile(run), cell)
    total = sum(breakdown.values()) or 1.0
    first, last = args.profile_steps
    print(f"trained {args.epochs} epochs in {seconds:.1f} s; final loss "
          f"{history.history['loss'][-1]:.3f}, val_loss "
          f"{history.history['val_loss'][-1]:.3f}")
    print(f"loop-body time per component, train steps {first}-{last} "
          "(forward and gradient loops):")
    for scope, spent in breakdown.items():
        print(f"  {scope:<16} {spent * 1e3:8.2f} ms  {spent / total:6.1%}")
    print(f"profile:  {sctb.profile_files(run)[0]}")
    print(f"graph:    Graphs tab, run '{run.name}' (the loop body is under "
          "Functions)")
    print("images:   " + ", ".join(sorted(_image_tags(cell))))
    print("\nView it (the Profile tab needs `pip install "
          "tensorboard-plugin-profile`):")
    print(f"  tensorboard --logdir {logdir}")
    return {"logdir": str(logdir), "run": str(run), "seconds": seconds,
            "loop_body_seconds": breakdown}


def _image_tags(cell):
    tags = {"sgu/gate_mean"}
    for name, system in zip(cell.component_names["systems"], cell.systems):
        tags.update(f"{name}/{key}"
                    for key, width in system.trace_sizes.items() if width > 1)
    return tags


if __name__ == "__main__":
    main(sys.argv[1:])
