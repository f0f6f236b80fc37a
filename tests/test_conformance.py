"""The systems' contract: `superloop_cell.testing.check_system` on every
built-in system, the harness catching broken systems, named controls
(`control_layout`, `control_bias`) and the one initial-state path.

Backend-neutral.
"""

import keras
import numpy as np
import pytest
from keras import ops

import superloop_cell as sc
from helpers import value_and_gradients
from superloop_cell.testing import CHECKS, check_system

BUILT_IN = {
    "RegisterMemory": lambda: sc.RegisterMemory(registers=3, width=2),
    "Attention": lambda: sc.Attention(positions=4, width=2),
    "HardAttention": lambda: sc.HardAttention(positions=4, width=2, seed=1),
    "NeuralStack": lambda: sc.NeuralStack(width=2, capacity=4),
    "NeuralQueue": lambda: sc.NeuralQueue(width=2, capacity=4),
    "NeuralDeQue": lambda: sc.NeuralDeQue(width=2, capacity=3),
    "ContentMemory": lambda: sc.ContentMemory(slots=4, width=3,
                                              read_heads=2),
    "ContentMemory-read_before_write": lambda: sc.ContentMemory(
        slots=3, width=2, read_before_write=True),
}


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_built_in_system_passes_the_harness(name):
    check_system(BUILT_IN[name]())


def test_built_in_systems_with_a_control_bias_pass_the_harness():
    check_system(sc.NeuralDeQue(width=2, capacity=3,
                                control_bias={"push_top": 2.0,
                                              "pop_bottom": -1.0}),
                 checks=["control_layout", "config", "saving"])


# ------------------------------------------------- systems the harness fails


@keras.saving.register_keras_serializable(package="test_conformance")
class Sum(sc.ExternalSystem):
    """Adds its control to a running sum and feeds the sum back; options
    break one property each."""

    def __init__(self, *, width, broken=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(width, int) or isinstance(width, bool):
            raise TypeError(f"`width` must be an int, got {width!r}.")
        if width < 1:
            raise ValueError(f"`width` must be positive, got {width}.")
        self.width = width
        self.broken = broken
        self.control_size = width
        self.output_size = width
        self.state_size = [width + (broken == "state_size")]

    @property
    def control_layout(self):
        if self.broken == "layout":
            return [("add", self.width + 1)]
        return super().control_layout

    def call(self, control, states, training=False):
        total = states[0][:, :self.width] + control
        if self.broken == "float16":
            # A norm of small numbers with an epsilon: 0/0 in float16.
            small = total * 1e-4
            norm = ops.sqrt(ops.sum(small * small, axis=-1, keepdims=True)
                            + 1e-12)
            return small / norm, [total]
        if self.broken == "nan_gradient":
            return ops.sqrt(ops.abs(total)), [total]
        return total, [total]

    def get_config(self):
        config = {**super().get_config(), "width": self.width}
        if self.broken != "config":
            config["broken"] = self.broken
        return config


def test_a_correct_user_system_passes():
    check_system(Sum(width=2))


@pytest.mark.parametrize("broken, check, words", [
    ("layout", "control_layout", "adds up to 4"),
    ("state_size", "states", "state 0 has shape"),
    ("config", "config", "differs"),
    ("float16", "mixed_float16", "mixed_float16 against float32"),
    ("nan_gradient", "finite_gradients", "non-finite"),
])
def test_the_harness_names_the_broken_property(broken, check, words):
    system = Sum(width=3, broken=broken)
    with pytest.raises(AssertionError) as error:
        check_system(system, checks=[check])
    message = str(error.value)
    assert f"check_system(Sum): property `{check}`" in message, message
    assert words in message, message


def test_the_harness_refuses_bad_arguments():
    with pytest.raises(TypeError, match="`system`"):
        check_system(keras.layers.Dense(2))
    with pytest.raises(TypeError, match="`checks`"):
        check_system(Sum(width=2), checks=["no_such_check"])
    with pytest.raises(TypeError, match="`checks`"):
        check_system(Sum(width=2), checks="config")
    assert set(CHECKS) >= {"saving", "mixed_float16", "mixed_bfloat16"}


# ---------------------------------------------------------- named controls


def _bias_of(cell, index):
    start = sum(s.control_size for s in cell.systems[:index])
    size = cell.systems[index].control_size
    return ops.convert_to_numpy(cell.control_bias)[start:start + size]


def test_control_bias_starts_the_named_fields():
    stack = sc.NeuralStack(width=3, capacity=4,
                           control_bias={"push": 2.5, "value": [1, 2, 3]})
    memory = sc.ContentMemory(slots=4, width=2, read_heads=1,
                              control_bias={"read0_shift": -1.0})
    cell = sc.SuperloopCell([sc.SGUCell(4)],
                            [sc.RegisterMemory(registers=2, width=2), stack,
                             memory])
    cell.build((None, 3))
    np.testing.assert_array_equal(_bias_of(cell, 1), [2.5, 0, 1, 2, 3])
    expected = np.zeros(memory.control_size)
    offset = 0
    for name, size in memory.control_layout:
        if name == "read0_shift":
            expected[offset:offset + size] = -1.0
        offset += size
    np.testing.assert_array_equal(_bias_of(cell, 2), expected)
    np.testing.assert_array_equal(_bias_of(cell, 0),
                                  np.zeros(cell.systems[0].control_size))


def test_control_bias_keeps_the_systems_own_initializer_elsewhere():
    head = sc.HardAttention(positions=5, width=1, forward_bias=1.5,
                            control_bias={"back": -2.0})
    cell = sc.SuperloopCell([sc.SGUCell(4)], [head])
    cell.build((None, 3))
    plain = sc.SuperloopCell([sc.SGUCell(4)],
                             [sc.HardAttention(positions=5, width=1,
                                               forward_bias=1.5)])
    plain.build((None, 3))
    got, before = _bias_of(cell, 0), _bias_of(plain, 0)
    assert got[0] == -2.0
    np.testing.assert_array_equal(got[1:], before[1:])


def test_control_layouts_add_up_and_name_the_documented_fields():
    for make in BUILT_IN.values():
        system = make()
        assert sum(s for _, s in system.control_layout) == system.control_size
    assert [n for n, _ in sc.NeuralStack(width=2, capacity=3)
            .control_layout] == ["push", "pop", "value"]
    assert [n for n, _ in sc.NeuralDeQue(width=2, capacity=3)
            .control_layout] == ["push_top", "pop_top", "push_bottom",
                                 "pop_bottom", "value_top", "value_bottom"]
    memory = sc.ContentMemory(slots=4, width=2, read_heads=2)
    names = [n for n, _ in memory.control_layout]
    assert names[:7] == ["write_key", "write_strength", "write_gate",
                         "write_shift", "write_sharpening", "erase", "add"]
    assert names[-1] == "read1_sharpening"
    assert Sum(width=3).control_layout == [("control", 3)]


def test_control_bias_is_serialised():
    stack = sc.NeuralQueue(width=2, capacity=3,
                           control_bias={"pop": -3.0, "value": [0.5, 1.0]})
    config = stack.get_config()
    assert config["control_bias"] == {"pop": -3.0, "value": [0.5, 1.0]}
    assert sc.NeuralQueue.from_config(config).control_bias == (
        stack.control_bias)
    assert "control_bias" not in sc.NeuralQueue(width=2,
                                                 capacity=3).get_config()


def test_a_user_system_takes_a_control_bias_on_its_one_field():
    cell = sc.SuperloopCell([sc.SGUCell(4)],
                            [Sum(width=2, control_bias={"control": 0.75})])
    cell.build((None, 3))
    np.testing.assert_array_equal(_bias_of(cell, 0), [0.75, 0.75])


@pytest.mark.parametrize("bias, error, words", [
    ({"psh": 1.0}, ValueError, "unknown field name(s) ['psh']"),
    ({"value": [1.0]}, ValueError, "field 'value' of NeuralStack has 2"),
    ({"push": float("nan")}, ValueError, "for field 'push'"),
    ({"push": "1"}, ValueError, "for field 'push'"),
    ([("push", 1.0)], TypeError, "expected None or a dict"),
    ({1: 1.0}, TypeError, "field names (str)"),
])
def test_a_bad_control_bias_is_refused_naming_it(bias, error, words):
    with pytest.raises(error) as raised:
        sc.NeuralStack(width=2, capacity=3, control_bias=bias)
    assert "`control_bias`" in str(raised.value)
    assert words in str(raised.value), str(raised.value)


def test_the_unknown_name_error_lists_the_fields():
    with pytest.raises(ValueError) as raised:
        sc.RegisterMemory(registers=2, width=2, control_bias={"read": 1.0})
    assert "['store', 'recall', 'data']" in str(raised.value)


def test_a_user_layout_that_does_not_add_up_is_refused_by_the_cell():
    with pytest.raises(ValueError, match="adds up to 4"):
        sc.SuperloopCell([sc.SGUCell(4)], [Sum(width=3, broken="layout")])


# ------------------------------------------------ one initial-state path


@keras.saving.register_keras_serializable(package="test_conformance")
class LearnedStart(sc.ExternalSystem):
    """A running sum that starts at a learned vector."""

    def __init__(self, *, width, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.control_size = width
        self.output_size = width
        self.state_size = [width]

    def build(self, control_shape):
        self.start = self.add_weight(shape=(self.width,), name="start",
                                     initializer="ones")

    def get_initial_state(self, batch_size=None):
        return [ops.broadcast_to(ops.cast(self.start, self.compute_dtype),
                                 (batch_size, self.width))]

    def call(self, control, states, training=False):
        total = states[0] * ops.tanh(control)
        return total, [total]

    def get_config(self):
        return {**super().get_config(), "width": self.width}


def _start_gradient(use_initial_state):
    """The loss and its gradient in the learned start, for the same
    weights, with the RNN's own initial state or `initial_state(...)`."""
    keras.utils.set_random_seed(0)
    cell = sc.SuperloopCell([sc.SGUCell(3)], [LearnedStart(width=2)])
    x = keras.Input((4, 2))
    rnn = keras.layers.RNN(cell, return_sequences=True)
    if use_initial_state:
        y = rnn(x, initial_state=sc.initial_state(cell, x))
    else:
        y = rnn(x)
    model = keras.Model(x, y)
    xs = np.random.default_rng(1).normal(size=(2, 4, 2)).astype("float32")
    start = cell.systems[0].start
    start.assign(np.array([0.5, -1.5], "float32"))

    def loss(xs):
        return ops.sum(ops.square(model(xs)))

    value, grads, _ = value_and_gradients(loss, [start], [xs])
    return value, grads[0]


def test_a_learned_initial_state_gets_the_same_gradient_on_both_paths():
    own_value, own = _start_gradient(use_initial_state=False)
    value, gradient = _start_gradient(use_initial_state=True)
    assert np.all(np.isfinite(gradient)) and np.all(gradient != 0), gradient
    np.testing.assert_allclose(value, own_value, rtol=1e-6)
    np.testing.assert_allclose(gradient, own, rtol=1e-5, atol=1e-7)


def test_both_initial_state_paths_give_the_same_states():
    cell = sc.SuperloopCell([sc.SGUCell(3)],
                            [sc.RegisterMemory(registers=2, width=2),
                             sc.Attention(positions=3, width=2),
                             LearnedStart(width=2)])
    cell.build((None, 2))
    cell.systems[2].start.assign(np.array([0.25, 0.5], "float32"))
    context = np.arange(12, dtype="float32").reshape(2, 3, 2)
    live = cell.initial_states_with(2, [context])
    layer = sc.initial_state(cell, np.zeros((2, 4, 2), "float32"), context)
    assert len(live) == len(layer) == len(cell.state_size)
    for a, b in zip(live, layer):
        np.testing.assert_array_equal(ops.convert_to_numpy(a),
                                      ops.convert_to_numpy(b))
    np.testing.assert_array_equal(
        ops.convert_to_numpy(cell.system_states(layer, 1)[-1]),
        context.reshape(2, 6))
    np.testing.assert_array_equal(
        ops.convert_to_numpy(cell.system_states(layer, 2)[0]),
        [[0.25, 0.5], [0.25, 0.5]])
