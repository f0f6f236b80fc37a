"""Data-parallel training of a superloop on several processes or hosts.

Keras' `keras.distribution` (JAX backend) runs one process per host; each
process feeds its own shard of every global batch and the gradients are
all-reduced, so every process holds the same weights.

Two processes on one machine (CPU collectives over 127.0.0.1):

    python examples/data_parallel.py --num-processes 2 --process-id 0 &
    python examples/data_parallel.py --num-processes 2 --process-id 1

N hosts: the same command on each host with `--coordinator HOST0:PORT`
(an address every host reaches), `--num-processes N` and its own
`--process-id` 0 … N−1. One process alone (`--num-processes 1`) trains on
the whole batch without `keras.distribution`.

Each process writes `OUT/process_<id>.npz`: its losses and final weights.
"""

import argparse
import os
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coordinator", default="127.0.0.1:12355")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="runs/data_parallel")
    args = parser.parse_args(argv)
    if args.num_processes < 1:
        parser.error(f"--num-processes must be at least 1, got "
                     f"{args.num_processes}")
    if not 0 <= args.process_id < args.num_processes:
        parser.error(f"--process-id must be in [0, {args.num_processes - 1}]"
                     f" for --num-processes {args.num_processes}, got "
                     f"{args.process_id}")
    if args.global_batch % args.num_processes:
        parser.error(f"--global-batch ({args.global_batch}) must divide "
                     f"evenly over --num-processes ({args.num_processes})")
    return args


def build_model(optimizer):
    """The small superloop every process trains, compiled with `optimizer`
    (built after `keras.utils.set_random_seed`, so every process starts
    from the same weights)."""
    import keras

    import superloop_cell as sc

    cell = sc.SuperloopCell([sc.SGUCell(8), sc.SGUCell(8)],
                            [sc.RegisterMemory(registers=2, width=4)])
    inputs = keras.Input((6, 2))
    outputs = keras.layers.Dense(1)(keras.layers.RNN(
        cell, return_sequences=True)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer, "mse")
    return model


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    if args.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras
    import numpy as np

    if args.num_processes > 1:
        keras.distribution.initialize(
            args.coordinator, args.num_processes, args.process_id)
        devices = keras.distribution.list_devices()
        if args.global_batch % len(devices):
            raise SystemExit(
                f"--global-batch ({args.global_batch}) must divide evenly "
                f"over the {len(devices)} devices of the mesh")
        keras.distribution.set_distribution(keras.distribution.DataParallel(
            devices=devices, auto_shard_dataset=False))
    keras.utils.set_random_seed(0)  # the same initial weights everywhere
    model = build_model(keras.optimizers.SGD(0.1))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(args.steps, args.global_batch, 6, 2)).astype("f4")
    y = np.cumsum(x[..., :1], axis=2) / 3.0
    local = args.global_batch // args.num_processes
    rows = slice(args.process_id * local, (args.process_id + 1) * local)
    losses = []
    for step in range(args.steps):
        # Each process feeds its shard; the loss is the global batch's.
        losses.append(float(model.train_on_batch(x[step, rows],
                                                 y[step, rows])))
    os.makedirs(args.out, exist_ok=True)
    np.savez(os.path.join(args.out, f"process_{args.process_id}.npz"),
             losses=np.array(losses),
             *[np.asarray(w) for w in model.get_weights()])
    print(f"process {args.process_id}: losses {losses}")


if __name__ == "__main__":
    sys.exit(main())
