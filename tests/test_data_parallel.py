"""Data-parallel training: `keras.distribution` on JAX across 2 processes
(examples/data_parallel.py), and TensorFlow's MirroredStrategy on two
logical CPU devices. Every child process has a timeout and is killed."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from helpers import tensorflow_only

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "data_parallel.py"
TIMEOUT = 240


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _finish(processes):
    try:
        return [p.communicate(timeout=TIMEOUT) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.communicate()


def _result(path):
    data = np.load(path)
    weights = [data[f"arr_{i}"] for i in range(len(data.files) - 1)]
    return data["losses"], weights


def test_two_processes_hold_the_same_weights_as_one_on_the_whole_batch(
        tmp_path):
    port = _free_port()
    processes = [_start("--num-processes", 2, "--process-id", i,
                        "--coordinator", f"127.0.0.1:{port}",
                        "--out", tmp_path / "two")
                 for i in range(2)]
    outputs = _finish(processes)
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    single = _start("--out", tmp_path / "one")
    (_, err), = _finish([single])
    assert single.returncode == 0, err[-3000:]
    losses = [_result(tmp_path / "two" / f"process_{i}.npz") for i in (0, 1)]
    alone = _result(tmp_path / "one" / "process_0.npz")
    # Both processes apply the same all-reduced gradients.
    np.testing.assert_array_equal(losses[0][0], losses[1][0])
    for a, b in zip(losses[0][1], losses[1][1]):
        np.testing.assert_array_equal(a, b)
    # And train as one process does on the concatenated batch (float32
    # sums in another order: 1e-5 relative).
    np.testing.assert_allclose(losses[0][0], alone[0], rtol=1e-5)
    for a, b in zip(losses[0][1], alone[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--num-processes", 2, "--process-id", 2], "--process-id must be in"),
    (["--num-processes", 3, "--global-batch", 8], "must divide evenly"),
])
def test_bad_configuration_fails_fast_with_a_clear_error(args, message):
    process = _start(*args)
    (_, err), = _finish([process])
    assert process.returncode == 2
    assert message in err


MIRRORED = """
import os
os.environ["KERAS_BACKEND"] = "tensorflow"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import sys
import keras, numpy as np
sys.path.insert(0, "examples")
from data_parallel import build_model
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
with strategy.scope():
    model = build_model(keras.optimizers.Adam(0.01))
rng = np.random.default_rng(1)
x = rng.normal(size=(64, 6, 2)).astype("f4")
y = np.cumsum(x[..., :1], axis=1) / 3.0
losses = model.fit(x, y, epochs=4, batch_size=16, verbose=0).history["loss"]
assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
print("mirrored ok", losses)
"""


@tensorflow_only
def test_mirrored_strategy_on_two_logical_cpus_trains():
    process = subprocess.Popen([sys.executable, "-c", MIRRORED],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=ROOT,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    (out, err), = _finish([process])
    assert process.returncode == 0, err[-3000:]
    assert "mirrored ok" in out
