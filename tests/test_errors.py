"""Bad input: a clear ValueError/TypeError naming the argument, raised
before any computation."""

import re

import keras
import numpy as np
import pytest

import superloop_cell as sc


@pytest.mark.parametrize("value", [0, -3, 2.5, "4", True])
@pytest.mark.parametrize("make", [
    lambda v: sc.SGUCell(v),
    lambda v: sc.FeedForwardCell(v),
    lambda v: sc.RegisterMemory(registers=v, width=4),
    lambda v: sc.RegisterMemory(registers=4, width=v),
    lambda v: sc.Attention(positions=v, width=1),
    lambda v: sc.Attention(positions=3, width=v),
], ids=["SGUCell.units", "FeedForwardCell.units", "RegisterMemory.registers", "RegisterMemory.width",
        "Attention.positions", "Attention.width"])
def test_non_positive_or_non_integer_sizes(make, value):
    with pytest.raises(ValueError, match=r"argument `(units|registers|width|"
                                         r"positions)`.*got " +
                                         repr(value).replace(".", r"\.")):
        make(value)


@pytest.mark.parametrize("make, form", [
    (lambda: sc.RegisterMemory(4, 8), "RegisterMemory(registers="),
    (lambda: sc.Attention(16, 1), "Attention(positions="),
    (lambda: sc.HardAttention(16, 1), "HardAttention(positions="),
    (lambda: sc.NeuralStack(8, 32), "NeuralStack(width="),
    (lambda: sc.NeuralQueue(8, 32), "NeuralQueue(width="),
    (lambda: sc.NeuralDeQue(8, 32), "NeuralDeQue(width="),
    (lambda: sc.ContentMemory(16, 8), "ContentMemory(slots="),
])
def test_system_sizes_are_keyword_only(make, form):
    with pytest.raises(TypeError, match=r"keyword only, e\.g\. `"
                                        + re.escape(form)):
        make()


def test_missing_system_size_names_it():
    with pytest.raises(TypeError, match="keyword argument `width`"):
        sc.RegisterMemory(registers=4)
    with pytest.raises(TypeError, match="keyword argument `capacity`"):
        sc.NeuralStack(width=4)


@pytest.mark.parametrize("bad", ["no_such_activation", 3])
def test_feed_forward_activation_is_checked(bad):
    with pytest.raises(ValueError, match=r"argument `activation`.*got " +
                       re.escape(repr(bad))):
        sc.FeedForwardCell(4, activation=bad)


def test_content_memory_read_before_write_is_a_bool():
    with pytest.raises(TypeError, match="`read_before_write`.*'yes'"):
        sc.ContentMemory(slots=3, width=1, read_before_write="yes")


def test_attention_options_are_checked():
    with pytest.raises(ValueError, match="`falloff`.*'cubic'"):
        sc.Attention(positions=3, width=1, falloff="cubic")
    with pytest.raises(TypeError, match="`normalize`.*'yes'"):
        sc.Attention(positions=3, width=1, normalize="yes")
    with pytest.raises(TypeError, match="`read_gradient`.*'no'"):
        sc.Attention(positions=3, width=1, read_gradient="no")
    with pytest.raises(TypeError, match="`integer_moves`.*1"):
        sc.Attention(positions=3, width=1, integer_moves=1)
    for bad in (0, -1.5, float("inf"), float("nan"), "2", True):
        with pytest.raises(ValueError, match="`sharpness`.*positive finite "
                                             "number, got " + re.escape(
                                                 repr(bad))):
            sc.Attention(positions=3, width=1, sharpness=bad)


@pytest.mark.parametrize("bad, error", [
    ("always", ValueError), ("Auto", ValueError), (1, TypeError),
    (None, TypeError), (np.bool_(True), TypeError)])
def test_fused_is_checked(bad, error):
    with pytest.raises(error, match="`fused`: expected True, False or "
                                    "'auto', got " + re.escape(repr(bad))):
        sc.SuperloopCell([sc.SGUCell(3)] * 3, fused=bad)


@pytest.mark.parametrize("bad, error", [
    ("loop", ValueError), (0, TypeError), (None, TypeError)])
def test_layer_loop_is_checked(bad, error):
    with pytest.raises(error, match="`layer_loop`: expected True, False or "
                                    "'auto', got " + re.escape(repr(bad))):
        sc.SuperloopCell([sc.SGUCell(3)] * 3, layer_loop=bad)


@pytest.mark.parametrize("bad, error, message", [
    ("attention/position", TypeError, "list of trace names, got "
                                      "'attention/position'"),
    ([1], TypeError, r"list of trace names, got \[1\]"),
    (1, TypeError, "list of trace names, got 1"),
    ([], ValueError, r"an empty list; this cell's traces are \['sgu_0/gate'"),
    (["attention/where"], ValueError,
     r"unknown trace names \['attention/where'\]; this cell's traces are "
     r"\['sgu_0/gate', 'attention/position', 'attention/weights'\]"),
])
def test_trace_is_checked(bad, error, message):
    with pytest.raises(error, match="argument `trace`: .*" + message):
        sc.SuperloopCell([sc.SGUCell(3)], [sc.Attention(positions=4, width=1)], trace=bad)


def test_empty_cells():
    with pytest.raises(ValueError, match="`cells`.*empty list"):
        sc.SuperloopCell([], [sc.RegisterMemory(registers=2, width=2)])


def test_cells_not_a_list():
    with pytest.raises(TypeError, match="`cells`.*SGUCell"):
        sc.SuperloopCell(sc.SGUCell(3))


@pytest.mark.parametrize("bad, message", [
    (keras.layers.Dense(3), r"`cells\[1\]`.*Dense"),
    ("gru", r"`cells\[1\]`.*'gru'"),
    (sc.RegisterMemory(registers=2, width=2), r"`cells\[1\]` is an external system"),
    (keras.layers.RNN(sc.SGUCell(2)), r"`cells\[1\]` is a `keras.layers.RNN`"),
])
def test_object_in_cells_that_is_not_a_cell(bad, message):
    with pytest.raises(TypeError, match=message):
        sc.SuperloopCell([sc.SGUCell(3), bad])


@pytest.mark.parametrize("bad, message", [
    (sc.SGUCell(3), r"`systems\[0\]`.*ExternalSystem.*SGUCell"),
    (keras.layers.Dense(3), r"`systems\[0\]`.*Dense"),
    (42, r"`systems\[0\]`.*42"),
])
def test_object_in_systems_that_is_not_a_system(bad, message):
    with pytest.raises(TypeError, match=message):
        sc.SuperloopCell([sc.SGUCell(3)], [bad])


def test_user_system_with_bad_sizes():
    class Broken(sc.ExternalSystem):
        def __init__(self):
            super().__init__()
            self.control_size = 0
            self.output_size = 2
            self.state_size = [2]

    with pytest.raises(ValueError, match=r"`systems\[0\].control_size`"):
        sc.SuperloopCell([sc.SGUCell(3)], [Broken()])


@pytest.mark.parametrize("labels, error, message", [
    (["store"], TypeError, r"`systems\[0\].trace_labels` must be a dict"),
    ({"nothing": "slot"}, ValueError,
     r"names the trace 'nothing', which is not in its `trace_sizes`"),
    ({"total": 3}, TypeError, r"`systems\[0\].trace_labels\['total'\]` must "
                              r"be a str"),
])
def test_user_system_with_bad_trace_labels(labels, error, message):
    class Labelled(sc.ExternalSystem):
        def __init__(self):
            super().__init__()
            self.control_size = self.output_size = 2
            self.state_size = [2]
            self.trace_sizes = {"total": 2}
            self.trace_labels = labels

    with pytest.raises(error, match=message):
        sc.SuperloopCell([sc.SGUCell(3)], [Labelled()])


def _model(cell, features):
    inp = keras.Input((None, features))
    return keras.Model(inp, keras.layers.RNN(cell)(inp))


@pytest.mark.parametrize("shape", [(2, 3), (2, 4, 3, 1)])
def test_input_of_wrong_rank(shape):
    layer = keras.layers.RNN(sc.SuperloopCell([sc.SGUCell(3)]))
    with pytest.raises(ValueError, match="(batch, time, features)|rank"):
        layer(np.zeros(shape, "float32"))


def test_feature_width_differs_from_build():
    cell = sc.SuperloopCell([sc.SGUCell(3)], [sc.RegisterMemory(registers=2, width=2)])
    layer = keras.layers.RNN(cell)
    layer(np.zeros((1, 2, 3), "float32"))
    with pytest.raises(ValueError, match="built for inputs with 3 features, "
                                         "but received 5"):
        layer(np.zeros((1, 2, 5), "float32"))


# Keras builds a functional RNN from shapes alone: the two checks below fire
# when the step is first traced (first eager call, predict or fit), before
# anything is computed.

def test_non_float_input():
    cell = sc.SuperloopCell([sc.SGUCell(3)], [sc.RegisterMemory(registers=2, width=2)])
    with pytest.raises(TypeError, match="floating-point inputs.*int32"):
        keras.layers.RNN(cell)(np.zeros((1, 2, 2), "int32"))
    inp = keras.Input((None, 2), dtype="int32")
    model = keras.Model(inp, keras.layers.RNN(cell)(inp))
    with pytest.raises(TypeError, match="floating-point inputs.*int32"):
        model.predict(np.zeros((1, 2, 2), "int32"), verbose=0)


def test_attention_data_missing():
    cell = sc.SuperloopCell([sc.SGUCell(3)], [sc.Attention(positions=4, width=1)])
    with pytest.raises(ValueError, match=r"`systems\[0\]` \(Attention\) "
                                         r"reads per-sample data"):
        keras.layers.RNN(cell)(np.zeros((1, 3, 2), "float32"))


def test_attention_data_count_wrong():
    cell = sc.SuperloopCell([sc.SGUCell(3)], [sc.Attention(positions=4, width=1)])
    seq = keras.Input((None, 2))
    with pytest.raises(ValueError, match="`contexts`.*1 context.*0 were"):
        sc.initial_state(cell, seq, [])


@pytest.mark.parametrize("shape", [(4,), (5, 1), (4, 2), (4, 1, 1)])
def test_attention_data_of_wrong_shape(shape):
    cell = sc.SuperloopCell([sc.SGUCell(3)], [sc.Attention(positions=4, width=1)])
    seq = keras.Input((None, 2))
    with pytest.raises(ValueError, match=r"context of `systems\[0\] "
                                         r"\(Attention\)` must have shape "
                                         r"\(batch, 4, 1\)"):
        sc.initial_state(cell, seq, keras.Input(shape))


def test_attention_data_of_wrong_shape_eager():
    cell = sc.SuperloopCell([sc.SGUCell(3)], [sc.Attention(positions=4, width=1)])
    with pytest.raises(ValueError, match=r"received shape \(2, 3, 1\)"):
        sc.initial_state(cell, np.zeros((2, 5, 2), "float32"),
                         np.zeros((2, 3, 1), "float32"))


def test_initial_state_needs_a_superloop_cell():
    with pytest.raises(TypeError, match="`cell`.*SGUCell"):
        sc.initial_state(sc.SGUCell(3), keras.Input((None, 2)))
