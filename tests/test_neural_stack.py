"""NeuralStack: NumPy reference, constructed cases, invariants, gradients."""

import re

import keras
import numpy as np
import pytest

import superloop_cell as sc
from helpers import float64, to_numpy, value_and_gradients
from superloop_cell.systems.neural_stack import NeuralStack

ATOL = 1e-5
BIG = 50.0  # a logit that saturates the sigmoid in float32


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class ReferenceStack:
    """The stack of Grefenstette et al. as Python lists, one per batch row.

    Elements are kept oldest first; an element pushed more than `capacity`
    steps ago is dropped from the bottom.
    """

    def __init__(self, batch, width, capacity):
        self.width, self.capacity = width, capacity
        self.strengths = [[] for _ in range(batch)]
        self.values = [[] for _ in range(batch)]

    def step(self, control):
        """Returns read (batch, width), strengths and read weights (batch, K),
        the last two padded with empty slots at the front."""
        control = np.asarray(control, np.float64)
        d = sigmoid(control[:, 0])
        u = sigmoid(control[:, 1])
        v = np.tanh(control[:, 2:])
        batch = control.shape[0]
        read = np.zeros((batch, self.width))
        strengths = np.zeros((batch, self.capacity))
        weights = np.zeros((batch, self.capacity))
        for b in range(batch):
            old = self.strengths[b]
            s = []
            for i in range(len(old)):
                above = sum(old[i + 1 :])
                s.append(max(0.0, old[i] - max(0.0, u[b] - above)))
            s.append(d[b])
            values = self.values[b] + [v[b]]
            if len(s) > self.capacity:
                s, values = s[1:], values[1:]
            self.strengths[b], self.values[b] = s, values
            pad = self.capacity - len(s)
            for i in range(len(s)):
                above = sum(s[i + 1 :])
                w = min(s[i], max(0.0, 1.0 - above))
                read[b] += w * values[i]
                weights[b, pad + i] = w
                strengths[b, pad + i] = s[i]
        return read, strengths, weights


def logit(p):
    return np.log(p / (1.0 - p))


def control_row(push, pop, value):
    """One control row from push/pop logits and the wanted value v_t."""
    return np.concatenate([[push, pop], np.arctanh(value)]).astype("f4")[None]


def run(stack, controls, states=None):
    """Runs `stack` over controls (steps, batch, width + 2); returns reads,
    traces (dicts of NumPy arrays) and the final states."""
    if states is None:
        states = stack.get_initial_state(controls.shape[1])
    reads, traces = [], []
    for control in controls:
        read, states, trace = stack(control, states, traces=True)
        traces.append({k: keras.ops.convert_to_numpy(t)
                       for k, t in trace.items()})
        reads.append(keras.ops.convert_to_numpy(read))
    return np.stack(reads), traces, states


# ------------------------------------------------------------- reference


@pytest.mark.parametrize("width,capacity", [(3, 4), (1, 1), (2, 6)])
def test_matches_numpy_step_by_step(width, capacity):
    batch = 3
    stack = NeuralStack(width=width, capacity=capacity)
    assert stack.control_size == width + 2
    assert stack.output_size == width
    assert stack.state_size == [capacity, capacity * width]
    reference = ReferenceStack(batch, width, capacity)
    rng = np.random.default_rng(5)
    states = stack.get_initial_state(batch)
    for _ in range(2 * capacity + 5):  # well past capacity: slots are dropped
        control = rng.normal(0, 2, (batch, width + 2)).astype("f4")
        read, states, trace = stack(control, states, traces=True)
        read_ref, strengths_ref, weights_ref = reference.step(control)
        np.testing.assert_allclose(read, read_ref, atol=ATOL)
        np.testing.assert_allclose(states[0], strengths_ref, atol=ATOL)
        np.testing.assert_allclose(trace["strengths"], strengths_ref,
                                   atol=ATOL)
        np.testing.assert_allclose(trace["read_weights"], weights_ref,
                                   atol=ATOL)
        np.testing.assert_allclose(trace["push"], sigmoid(control[:, :1]),
                                   atol=ATOL)
        np.testing.assert_allclose(trace["pop"], sigmoid(control[:, 1:2]),
                                   atol=ATOL)
        values = keras.ops.convert_to_numpy(states[1])
        values = values.reshape(batch, capacity, width)
        np.testing.assert_allclose(values[:, -1], np.tanh(control[:, 2:]),
                                   atol=ATOL)


def test_trace_shapes():
    stack = NeuralStack(width=3, capacity=5)
    control = np.zeros((2, 5), "f4")
    _, _, trace = stack(control, stack.get_initial_state(2), traces=True)
    assert {k: tuple(v.shape) for k, v in trace.items()} == {
        "push": (2, 1), "pop": (2, 1), "strengths": (2, 5),
        "read_weights": (2, 5)}


# ------------------------------------------------------- constructed cases


def test_push_a_push_b_pop_reads_a():
    a, b = np.array([0.5, -0.25]), np.array([-0.75, 0.125])
    controls = np.stack([
        control_row(BIG, -BIG, a),
        control_row(BIG, -BIG, b),
        control_row(-BIG, BIG, np.array([0.9, 0.9])),  # pop, push nothing
    ])
    reads, traces, _ = run(NeuralStack(width=2, capacity=4), controls)
    np.testing.assert_allclose(reads[0, 0], a, atol=ATOL)
    np.testing.assert_allclose(reads[1, 0], b, atol=ATOL)
    np.testing.assert_allclose(reads[2, 0], a, atol=ATOL)
    np.testing.assert_allclose(traces[2]["strengths"][0], [0, 1, 0, 0],
                               atol=ATOL)


def test_pop_on_empty_stack_reads_zeros():
    controls = np.stack([control_row(-BIG, BIG, np.array([0.5, -0.5]))] * 2)
    reads, traces, _ = run(NeuralStack(width=2, capacity=3), controls)
    np.testing.assert_allclose(reads, 0.0, atol=ATOL)
    np.testing.assert_allclose(traces[-1]["strengths"], 0.0, atol=ATOL)


def test_push_with_strength_one_reads_the_value():
    value = np.array([0.3, -0.6, 0.9])
    reads, traces, _ = run(NeuralStack(width=3, capacity=2),
                           control_row(BIG, 0.0, value)[None])
    np.testing.assert_allclose(reads[0, 0], value, atol=ATOL)
    np.testing.assert_allclose(traces[0]["read_weights"][0], [0, 1],
                               atol=ATOL)


def test_fractional_push_and_pop_by_hand():
    # Push a at 0.8, push b at 0.5: read 0.5·b + min(0.8, 1 − 0.5)·a.
    # Pop 0.9: b is used up (0.5), a loses the remaining 0.4 and keeps 0.4.
    a, b = np.array([0.4]), np.array([-0.8])
    controls = np.stack([
        control_row(logit(0.8), -BIG, a),
        control_row(logit(0.5), -BIG, b),
        control_row(-BIG, logit(0.9), np.array([0.7])),
    ])
    reads, traces, _ = run(NeuralStack(width=1, capacity=3), controls)
    np.testing.assert_allclose(reads[:, 0, 0],
                               [0.8 * a[0], 0.5 * b[0] + 0.5 * a[0],
                                0.4 * a[0]], atol=ATOL)
    np.testing.assert_allclose(traces[2]["strengths"][0], [0.4, 0.0, 0.0],
                               atol=ATOL)


def test_capacity_bounds_steps_remembered():
    # A pushed element survives capacity − 1 further steps, then is dropped
    # even though nothing popped it: every step uses a slot.
    capacity, value = 4, np.array([0.5])
    idle = control_row(-BIG, -BIG, np.array([0.9]))
    controls = np.stack([control_row(BIG, -BIG, value)] + [idle] * capacity)
    reads, _, _ = run(NeuralStack(width=1, capacity=capacity), controls)
    np.testing.assert_allclose(reads[:capacity, 0], value[None].repeat(
        capacity, 0), atol=ATOL)
    np.testing.assert_allclose(reads[capacity, 0], [0.0], atol=ATOL)


# -------------------------------------------------------------- invariants


def test_invariants_over_random_runs():
    stack = NeuralStack(width=2, capacity=5)
    rng = np.random.default_rng(6)
    # Mixed scales: soft controls and nearly saturated ones.
    controls = (rng.normal(0, 1, (25, 8, 4))
                * rng.choice([0.5, 3.0, 20.0], (25, 8, 1))).astype("f4")
    reads, traces, _ = run(stack, controls)
    for trace in traces:
        s, w = trace["strengths"], trace["read_weights"]
        assert np.all(s >= 0.0) and np.all(s <= 1.0)
        assert np.all(w >= 0.0) and np.all(w <= s + 1e-7)
        assert np.all(w.sum(axis=-1) <= 1.0 + 1e-6)
    assert np.all(np.abs(reads) <= 1.0 + 1e-6)  # a sub-convex mix of tanh


# --------------------------------------------------------------- gradients


def _loss(stack, controls, projection):
    states = stack.get_initial_state(controls.shape[1])
    total = 0.0
    for t in range(controls.shape[0]):
        read, states = stack(controls[t], states)
        total += keras.ops.sum(keras.ops.multiply(read, projection[t]))
    return total + keras.ops.sum(keras.ops.multiply(states[0],
                                                    projection[0, :, :1]))


@pytest.fixture
def x64():
    """Float64 maths on every backend (floatx left alone)."""
    with float64(floatx=False):
        yield


def test_tanh_keeps_float64_and_float32(x64):
    from superloop_cell.systems._soft_ops import tanh

    x = np.array([-30.0, -1.5, -1e-9, 0.0, 1e-9, 0.3, 30.0])
    wide = tanh(keras.ops.convert_to_tensor(x, "float64"))
    assert keras.backend.standardize_dtype(wide.dtype) == "float64"
    # Exact to float64 rounding in absolute terms (2·sigmoid − 1 is a
    # difference of numbers near 1): within two float64 epsilons.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(wide), np.tanh(x),
                               rtol=1e-14, atol=2 * np.finfo("f8").eps)
    narrow = tanh(keras.ops.convert_to_tensor(x, "float32"))
    assert keras.backend.standardize_dtype(narrow.dtype) == "float32"


def test_gradient_matches_finite_differences(x64):
    stack = NeuralStack(width=2, capacity=3, dtype="float64")
    rng = np.random.default_rng(7)
    controls = rng.normal(0, 1.5, (5, 2, 4))  # 5 steps > capacity 3
    projection = rng.normal(size=(5, 2, 2))
    _, _, (analytic,) = value_and_gradients(
        lambda c: _loss(stack, c, projection), inputs=[controls])
    assert np.any(np.abs(analytic) > 1e-3)
    eps = 1e-6
    numeric = np.zeros_like(controls)
    for index in np.ndindex(controls.shape):
        plus, minus = controls.copy(), controls.copy()
        plus[index] += eps
        minus[index] -= eps
        numeric[index] = (
            float(_loss(stack, plus, projection))
            - float(_loss(stack, minus, projection))
        ) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_no_nan_or_inf_at_saturated_strengths():
    stack = NeuralStack(width=3, capacity=4)
    rng = np.random.default_rng(8)
    signs = rng.choice([-1.0, 1.0], (9, 4, 5))
    controls = (1e4 * signs).astype("f4")
    projection = rng.normal(size=(9, 4, 3)).astype("f4")
    final = {}

    def loss(controls):
        states = stack.get_initial_state(4)
        total = 0.0
        reads = []
        for t in range(9):
            read, states, trace = stack(controls[t], states, traces=True)
            reads.append(read)
            total += keras.ops.sum(keras.ops.multiply(read, projection[t]))
            total += keras.ops.sum(trace["read_weights"])
        final["reads"], final["states"] = reads, states
        return total

    loss(controls)
    reads, states = final["reads"], final["states"]  # eager values
    _, _, (gradient,) = value_and_gradients(loss, inputs=[controls])
    reads, states = [to_numpy(r) for r in reads], [to_numpy(s) for s in states]
    assert np.all(np.isfinite(np.stack(reads)))
    assert np.all(np.isfinite(states[0])) and np.all(np.isfinite(states[1]))
    assert np.all(np.isfinite(gradient))
    strengths = keras.ops.convert_to_numpy(states[0])
    assert set(np.unique(strengths)) <= {0.0, 1.0}  # really saturated


# ------------------------------------------------------ inside a superloop


def test_in_superloop_rnn_and_save_load(tmp_path):
    cell = sc.SuperloopCell([sc.SGUCell(8)], [NeuralStack(width=4, capacity=6)])
    inputs = keras.Input((None, 3))
    sequences, *states = keras.layers.RNN(
        cell, return_sequences=True, return_state=True)(inputs)
    model = keras.Model(inputs, [sequences] + states)
    x = np.random.default_rng(9).normal(size=(2, 10, 3)).astype("f4")
    outputs = [keras.ops.convert_to_numpy(o) for o in model(x)]
    assert outputs[0].shape == (2, 10, 8)
    assert np.all(np.isfinite(outputs[0]))
    strengths, values = cell.system_states(outputs[1:], 0)
    assert strengths.shape == (2, 6) and values.shape == (2, 24)
    assert np.all(strengths >= 0.0) and np.all(strengths <= 1.0)

    path = tmp_path / "stack.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    loaded_cell = loaded.layers[-1].cell
    assert isinstance(loaded_cell.systems[0], NeuralStack)
    assert loaded_cell.systems[0].capacity == 6
    for got, want in zip(loaded(x), outputs):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want,
                                   rtol=0, atol=1e-6)


# ------------------------------------------------------- config and errors


def test_config_round_trip():
    stack = NeuralStack(width=5, capacity=7, name="stack")
    config = stack.get_config()
    assert config["width"] == 5 and config["capacity"] == 7
    clone = NeuralStack.from_config(config)
    assert (clone.width, clone.capacity, clone.name) == (5, 7, "stack")
    assert clone.state_size == stack.state_size
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(stack))
    assert isinstance(restored, NeuralStack)
    assert restored.get_config() == config


@pytest.mark.parametrize("argument", ["width", "capacity"])
@pytest.mark.parametrize("bad", [0, -1, 2.5, "3"])
def test_bad_arguments_raise_naming_the_argument(argument, bad):
    kwargs = {"width": 3, "capacity": 3, argument: bad}
    pattern = f"`{argument}`.*{re.escape(repr(bad))}"
    with pytest.raises(ValueError, match=pattern):
        NeuralStack(**kwargs)
