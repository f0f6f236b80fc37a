"""superloop_cell.tensorboard: profiles, the step's op graph, trace images,
and the example's logs served by a real TensorBoard.

The checks read what was written with TensorFlow's and TensorBoard's own
readers (`xplane_pb2`, `hlo_pb2`, `EventAccumulator`, the HTTP API) and
match names with their own patterns, so they do not lean on the readers in
`superloop_cell.tensorboard` alone.
"""

import glob
import importlib
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import keras
import numpy as np
import pytest

from helpers import tensorflow_only  # noqa: E402

# superloop_cell.tensorboard reads TensorFlow graphs and profiles.
pytestmark = tensorflow_only

import tensorflow as tf  # noqa: E402
from tensorboard.backend.event_processing import (  # noqa: E402
    event_accumulator, plugin_event_accumulator)

import superloop_cell as sc  # noqa: E402
import superloop_cell.tensorboard as sctb  # noqa: E402

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
SCOPES = ["sgu_0", "sgu_1_to_2", "control", "register_memory", "attention",
          "neural_stack"]
BATCH, STEPS, POSITIONS = 8, 10, 6
EPOCHS = 2
SERVER_WAIT_SECONDS = 60


def _scope_pattern(scope):
    # Keras/TF may suffix any scope with `_1`, `_2`...
    return re.compile(rf"superloop_cell(?:_\d+)?/{scope}(?:_\d+)?/")


def _tiny_model():
    cell = sc.SuperloopCell(
        [sc.SGUCell(8) for _ in range(3)],
        [sc.RegisterMemory(registers=2, width=4), sc.Attention(positions=POSITIONS, width=1),
         sc.NeuralStack(width=2, capacity=4)], fused=True)
    seq = keras.Input((None, 2))
    data = keras.Input((POSITIONS, 1))
    states = sc.initial_state(cell, seq, data)
    y = keras.layers.RNN(cell, return_sequences=True)(
        seq, initial_state=states)
    return keras.Model([seq, data], keras.layers.Dense(1)(y)), cell


def _data(n=4 * BATCH, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, STEPS, 2)).astype("f4"),
            rng.normal(size=(n, POSITIONS, 1)).astype("f4"),
            rng.normal(size=(n, STEPS, 1)).astype("f4"))


def _xspace(run):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    (path,) = glob.glob(os.path.join(run, "plugins", "profile", "*",
                                     "*.xplane.pb"))
    space = xplane_pb2.XSpace()
    space.ParseFromString(pathlib.Path(path).read_bytes())
    return space


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny model fitted for 2 epochs of 4 steps with all 3 callbacks."""
    keras.utils.set_random_seed(0)
    run = str(tmp_path_factory.mktemp("run"))
    model, cell = _tiny_model()
    model.compile("rmsprop", "mse", jit_compile=False)
    x, d, y = _data()
    probe = (x[:4], d[:4])
    model.fit([x, d], y, batch_size=BATCH, epochs=EPOCHS, verbose=0,
              callbacks=[sctb.ProfileSteps(run, steps=(2, 3)),
                         sctb.GraphWriter(run),
                         sctb.TraceImages(run, probe[0], contexts=probe[1],
                                          samples=2)])
    return {"run": run, "model": model, "cell": cell, "probe": probe}


# ------------------------------------------------------------------ scopes


def test_component_scopes_follow_the_step():
    _, cell = _tiny_model()
    assert sctb.component_scopes(cell) == SCOPES
    assert sctb.find_superloop_cell(keras.Sequential([
        keras.Input((None, 2)), keras.layers.RNN(sc.SuperloopCell(
            [sc.SGUCell(4)]))])).y_size == 4
    with pytest.raises(ValueError, match="found 0"):
        sctb.find_superloop_cell(keras.Sequential([
            keras.Input((None, 2)), keras.layers.GRU(3)]))


# ---------------------------------------------------------------- profiles


def test_profile_without_xla_has_every_scope_in_the_loop_body(trained):
    space = _xspace(trained["run"])
    op_names = [m.name.split(":")[0] for plane in space.planes
                for m in plane.event_metadata.values() if ":" in m.name]
    # Lowered while loops run their body inlined as `.../body/_N/...`.
    body = [n for n in op_names if re.search(r"/while/body/_\d+/", n)]
    for scope in SCOPES:
        assert any(_scope_pattern(scope).search(n) for n in body), scope
    seconds = sctb.time_by_component(trained["run"], trained["cell"])
    assert list(seconds)[:-1] == SCOPES
    assert all(seconds[s] > 0 for s in SCOPES), seconds


def test_profile_steps_profiles_the_asked_steps(trained):
    space = _xspace(trained["run"])
    steps = set()
    for plane in space.planes:
        names = {k: m.name for k, m in plane.stat_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                if plane.event_metadata[event.metadata_id].name == "train":
                    steps.update(s.int64_value for s in event.stats
                                 if names[s.metadata_id] == "step_num")
    assert steps == {2, 3}


def test_profile_steps_rejects_bad_steps():
    for steps in [(0, 2), (3, 2), (1, 2, 3), "2", 0]:
        with pytest.raises(ValueError, match="`steps`"):
            sctb.ProfileSteps("unused", steps=steps)


def test_profile_with_xla_maps_hlo_ops_back_to_scopes(tmp_path):
    """A custom jit-compiled train step, profiled with `profile()`."""
    model, cell = _tiny_model()
    x, d, y = _data(BATCH)

    @tf.function(jit_compile=True)
    def train_step(x, d, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model([x, d], training=True) - y) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        for variable, grad in zip(model.trainable_variables, grads):
            variable.assign_sub(0.01 * grad)
        return loss

    train_step(x, d, y)  # compile outside the profile
    with sctb.profile(tmp_path) as step:
        for n in range(2):
            with step(n):
                train_step(x, d, y)

    # Events on CPU name HLO instructions; the profile stores the HLO.
    from tensorflow.compiler.xla.service import hlo_pb2

    space = _xspace(str(tmp_path))
    (metadata,) = [p for p in space.planes if p.name == "/host:metadata"]
    stat_names = {k: m.name for k, m in metadata.stat_metadata.items()}
    op_names = {}
    for event_metadata in metadata.event_metadata.values():
        for stat in event_metadata.stats:
            if stat_names[stat.metadata_id] == "Hlo Proto":
                proto = hlo_pb2.HloProto.FromString(stat.bytes_value)
                op_names.update((i.name, i.metadata.op_name)
                                for c in proto.hlo_module.computations
                                for i in c.instructions)
    executed = {m.name for p in space.planes
                for m in p.event_metadata.values()} & set(op_names)
    for scope in SCOPES:
        assert any(_scope_pattern(scope).search(op_names[n])
                   for n in executed), scope

    ops = [op for op in sctb.read_profile(tmp_path) if op.in_loop_body]
    assert ops and all(op.xla for op in ops)
    seconds = sctb.time_by_component(ops, cell)
    assert all(seconds[s] > 0 for s in SCOPES), seconds


# ------------------------------------------------------------------- graph


def test_graph_of_the_train_step_has_the_loop_body_scopes(trained):
    accumulator = event_accumulator.EventAccumulator(trained["run"])
    accumulator.Reload()
    graph = accumulator.Graph()  # the classic reader of `event.graph_def`
    library = {f.signature.name: f for f in graph.library.function}
    bodies = {node.attr["body"].func.name
              for f in library.values() for node in f.node_def
              if node.op in ("While", "StatelessWhile")}
    assert len(bodies) == 2  # the forward loop and its gradient
    names = [node.name for b in bodies for node in library[b].node_def]
    for scope in SCOPES:
        assert any(_scope_pattern(scope).search(n) for n in names), scope
    found = sctb.loop_body_ops(sctb.read_step_graph(trained["run"]),
                               trained["cell"])
    assert list(found) == SCOPES and all(found.values())


# --------------------------------------------------------------- internals


def _decode(encoded):
    return tf.io.decode_png(encoded, channels=3).numpy()


def _summaries(run, plugin):
    """`{tag: [TensorEvent]}` of one TensorBoard plugin's summaries."""
    accumulator = plugin_event_accumulator.EventAccumulator(
        run, size_guidance={plugin_event_accumulator.TENSORS: 0})
    accumulator.Reload()
    return {tag: accumulator.Tensors(tag)
            for tag in accumulator.PluginTagToContent(plugin)}


def test_trace_images_histograms_and_scalars(trained):
    images = _summaries(trained["run"], "images")
    slots = {"attention/weights": POSITIONS, "register_memory/store": 2,
             "register_memory/recall": 2, "neural_stack/strengths": 4,
             "neural_stack/read_weights": 4, "sgu/gate_mean": 3}
    assert set(images) == set(slots)
    for tag, rows in slots.items():
        # Logged before training (step 0) and after every epoch.
        assert [e.step for e in images[tag]] == list(range(EPOCHS + 1))
        for event in images[tag]:
            width, height, *pngs = event.tensor_proto.string_val
            assert len(pngs) == 2  # `samples=2`
            for png in pngs:
                image = _decode(png)
                assert image.shape == (int(height), int(width), 3)
                assert image.shape[0] % rows == 0, tag
                assert image.shape[1] % STEPS == 0, tag
                assert len(np.unique(image.reshape(-1, 3), axis=0)) > 1, tag
    accumulator = plugin_event_accumulator.EventAccumulator(trained["run"])
    accumulator.Reload()
    rows = {tag: accumulator.SummaryMetadata(tag).summary_description
            for tag in slots}
    assert "position on y" in rows["attention/weights"]
    assert "register on y" in rows["register_memory/store"]
    assert "SGU layer on y" in rows["sgu/gate_mean"]
    assert "slot on y" in rows["neural_stack/strengths"]
    histograms = _summaries(trained["run"], "histograms")
    assert set(histograms) == {"sgu_0/gate", "sgu_1/gate", "sgu_2/gate"}
    scalars = _summaries(trained["run"], "scalars")
    assert {"attention/position_mean", "neural_stack/push_mean",
            "neural_stack/pop_mean", "sgu_0/gate_mean"} <= set(scalars)

    # The last summaries show the trained weights: redo them from traces.
    _, traces = sc.run_with_traces(trained["cell"], *trained["probe"])
    last = images["attention/weights"][-1].tensor_proto.string_val[2]
    np.testing.assert_array_equal(
        _decode(last), sctb.heatmap(traces["attention/weights"][0].T))
    position = tf.make_ndarray(
        scalars["attention/position_mean"][-1].tensor_proto)
    np.testing.assert_allclose(position, traces["attention/position"].mean(),
                               rtol=1e-5)


def test_heatmap_puts_slot_zero_at_the_bottom():
    image = sctb.heatmap(np.array([[0.0, 0.0], [1.0, 1.0]]))
    assert image.shape == (sctb.internals.MIN_IMAGE_HEIGHT,
                           sctb.internals.MIN_IMAGE_WIDTH, 3)
    np.testing.assert_array_equal(image[-1, 0], sctb.colorize(0.0))
    np.testing.assert_array_equal(image[0, 0], sctb.colorize(1.0))
    # Outside [0, 1] the range is the array's own.
    np.testing.assert_array_equal(sctb.colorize(np.array([-3.0, 5.0])),
                                  sctb.colorize(np.array([0.0, 1.0])))


# ------------------------------------------------------- a real TensorBoard


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port, path, **query):
    url = f"http://127.0.0.1:{port}/{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def _wait_for(port, path, ready, server):
    """Polls `path` until `ready(json)`; fails after SERVER_WAIT_SECONDS."""
    deadline = time.monotonic() + SERVER_WAIT_SECONDS
    last = None
    while time.monotonic() < deadline:
        assert server.poll() is None, "tensorboard exited"
        try:
            last = json.loads(_get(port, path))
            if ready(last):
                return last
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"/{path} not ready after {SERVER_WAIT_SECONDS} s: {last}")


# Keras' own TensorBoard callback (used by the example) trips this one.
@pytest.mark.filterwarnings(
    "ignore:__array__ implementation:DeprecationWarning")
def test_example_logs_in_a_real_tensorboard(tmp_path, capsys):
    sys.path.insert(0, str(EXAMPLES))
    try:
        example = importlib.import_module("tensorboard_inspection")
    finally:
        sys.path.remove(str(EXAMPLES))
    logdir = tmp_path / "logs"
    example.main(["--logdir", str(logdir), "--epochs", "1",
                  "--train-samples", "256", "--steps", "12"])
    printed = capsys.readouterr().out
    assert f"tensorboard --logdir {logdir}" in printed

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
         "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        listing = _wait_for(port, "data/plugins_listing", bool, server)
        for plugin in ("images", "histograms", "graphs", "scalars"):
            assert listing[plugin]["enabled"], plugin
        images = _wait_for(port, "data/plugin/images/tags",
                           lambda t: "train" in t, server)["train"]
        assert {"attention/weights", "register_memory/store",
                "neural_stack/strengths", "sgu/gate_mean"} <= set(images)
        histograms = _wait_for(port, "data/plugin/histograms/tags",
                               lambda t: "train" in t, server)["train"]
        assert {"sgu_0/gate", "sgu_1/gate", "sgu_2/gate"} <= set(histograms)
        graphs = _wait_for(port, "data/plugin/graphs/info",
                           lambda t: "train" in t, server)["train"]
        assert graphs["run_graph"]

        # One image, served as a PNG that decodes.
        (first, *_) = json.loads(_get(port, "data/plugin/images/images",
                                      run="train", tag="attention/weights",
                                      sample=0))
        png = _get(port, "data/plugin/images/individualImage?"
                   + first["query"])
        assert _decode(png).shape[2] == 3
        # The served op graph holds the loop body's scopes (the example's
        # three SGU layers are not fused under the default fused="auto").
        graph = _get(port, "data/plugin/graphs/graph", run="train").decode()
        for scope in ["sgu_0", "sgu_1", "sgu_2", "attention", "register_memory",
                      "neural_stack", "control"]:
            assert re.search(rf"while/superloop_cell(_\d+)?/{scope}"
                             r"(_\d+)?/", graph), scope
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
