"""Each component against its NumPy reference, step by step (atol 1e-5)."""

import keras
import numpy as np
import pytest

import superloop_cell as sc
from helpers import to_numpy, value_and_gradients
from reference import attention_step, register_memory_step, sgu_step

ATOL = 1e-5


def test_sgu_cell_matches_numpy_step_by_step():
    cell = sc.SGUCell(5)
    cell.build((None, 3))
    rng = np.random.default_rng(1)
    for w in cell.weights:
        w.assign(rng.normal(0, 0.7, w.shape).astype("float32"))
    k, r, b = (keras.ops.convert_to_numpy(w) for w in
               (cell.kernel, cell.recurrent_kernel, cell.bias))
    h = np.zeros((4, 5), np.float32)
    h_ref = h.astype(np.float64)
    for _ in range(6):
        x = rng.normal(0, 1.5, (4, 3)).astype("float32")
        out, states = to_numpy(cell(x, [h]))
        h_ref = sgu_step(x, h_ref, k, r, b)
        np.testing.assert_allclose(out, h_ref, atol=ATOL)
        np.testing.assert_allclose(states[0], h_ref, atol=ATOL)
        h = keras.ops.convert_to_numpy(out)


def test_sgu_cell_weight_layout():
    cell = sc.SGUCell(7)
    cell.build((None, 3))
    assert tuple(cell.kernel.shape) == (3, 14)
    assert tuple(cell.recurrent_kernel.shape) == (7, 7)
    assert tuple(cell.bias.shape) == (14,)
    assert cell.state_size == 7 and cell.output_size == 7


def test_sgu_cell_in_plain_keras_rnn_matches_numpy():
    layer = keras.layers.RNN(sc.SGUCell(4), return_sequences=True)
    x = np.random.default_rng(2).normal(size=(3, 9, 2)).astype("float32")
    out = keras.ops.convert_to_numpy(layer(x))
    k, r, b = (keras.ops.convert_to_numpy(w) for w in layer.cell.weights)
    h = np.zeros((3, 4))
    for t in range(9):
        h = sgu_step(x[:, t], h, k, r, b)
        np.testing.assert_allclose(out[:, t], h, atol=ATOL)


def test_register_memory_matches_numpy_step_by_step():
    depth, width, batch = 4, 3, 5
    memory = sc.RegisterMemory(registers=depth, width=width)
    assert memory.control_size == 2 * depth + width
    assert memory.state_size == [depth * width]
    rng = np.random.default_rng(3)
    state = memory.get_initial_state(batch)
    m_ref = np.zeros((batch, depth, width))
    for _ in range(7):
        control = rng.normal(0, 2, (batch, memory.control_size)).astype("f4")
        out, state = memory(control, state)
        out_ref, m_ref = register_memory_step(control, m_ref, depth, width)
        np.testing.assert_allclose(out, out_ref, atol=ATOL)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(state[0]).reshape(batch, depth, width),
            m_ref, atol=ATOL)


def test_register_memory_constructed_case_store_then_recall():
    # One-hot store into register 2, then recall register 2: reads the data.
    memory = sc.RegisterMemory(registers=3, width=2)
    big = 50.0
    store = np.array([[-big, -big, big]])
    recall = np.array([[-big, -big, big]])
    data = np.array([[0.25, -4.0]])
    control = np.concatenate([store, recall, data], axis=-1).astype("f4")
    out, _ = memory(control, memory.get_initial_state(1))
    np.testing.assert_allclose(out, data, atol=ATOL)


@pytest.mark.parametrize("falloff,sharpness", [
    ("linear", 1.0), ("squared", 1.0), ("squared", 2.5), ("gaussian", 1.0),
    ("gaussian", 3.0)])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("clip_position", [False, True])
def test_attention_matches_numpy_step_by_step(falloff, sharpness, normalize,
                                              clip_position):
    positions, width, batch = 6, 2, 3
    attention = sc.Attention(positions=positions, width=width, falloff=falloff,
                             normalize=normalize, clip_position=clip_position,
                             sharpness=sharpness)
    rng = np.random.default_rng(4)
    data = rng.normal(size=(batch, positions, width)).astype("f4")
    position = np.zeros((batch, 1), "f4")
    state = [position, data.reshape(batch, -1)]
    p_ref = position.astype(np.float64)
    for _ in range(20):
        # Large steps, mostly forward, so that clipping matters.
        control = rng.normal(0, 3, (batch, 1)).astype("f4") + 3.0
        out, state = attention(control, state)
        out_ref, p_ref = attention_step(control, p_ref, data, falloff,
                                        normalize, clip_position, sharpness)
        np.testing.assert_allclose(out, out_ref, atol=ATOL)
        np.testing.assert_allclose(state[0], p_ref, atol=ATOL)
        np.testing.assert_array_equal(state[1], data.reshape(batch, -1))
    if clip_position:
        assert np.all(p_ref <= positions - 1) and np.all(p_ref >= 0)
    else:
        assert np.any(p_ref > positions - 1)  # the options really differ


@pytest.mark.parametrize("falloff,sharpness,normalize", [
    ("gaussian", 3.0, True), ("linear", 1.0, False)])
@pytest.mark.parametrize("clip_position", [False, True])
def test_attention_integer_moves_match_numpy_step_by_step(
        falloff, sharpness, normalize, clip_position):
    positions, width, batch = 6, 2, 4
    attention = sc.Attention(positions=positions, width=width, falloff=falloff,
                             sharpness=sharpness, normalize=normalize,
                             clip_position=clip_position, integer_moves=True)
    assert sc.Attention.from_config(attention.get_config()).integer_moves
    rng = np.random.default_rng(5)
    data = rng.normal(size=(batch, positions, width)).astype("f4")
    state = [np.zeros((batch, 1), "f4"), data.reshape(batch, -1)]
    p_ref = np.zeros((batch, 1))
    moves = set()
    for _ in range(20):
        # Around |softsign| = 0.5 (control ±1), where the rounding flips.
        control = rng.normal(0.5, 1.5, (batch, 1)).astype("f4")
        old = keras.ops.convert_to_numpy(state[0])
        out, state = attention(control, state)
        out_ref, p_ref = attention_step(
            control, p_ref, data, falloff, normalize, clip_position,
            sharpness, integer_moves=True)
        np.testing.assert_allclose(out, out_ref, atol=ATOL)
        np.testing.assert_allclose(state[0], p_ref, atol=ATOL)
        moves.update(np.unique(keras.ops.convert_to_numpy(state[0]) - old))
    assert moves <= {-1.0, 0.0, 1.0} and {-1.0, 0.0, 1.0} <= moves


def test_attention_integer_moves_read_one_slot_exactly():
    data = np.array([[[1.0], [5.0], [2.0], [7.0]]], "f4")
    attention = sc.Attention(positions=4, width=1, falloff="gaussian", sharpness=3.0,
                             normalize=True, integer_moves=True)
    state = [np.zeros((1, 1), "f4"), data.reshape(1, -1)]
    reads = []
    for control in (2.0, 1.2, 0.4, -3.0):  # moves +1, +1, 0, −1
        out, state = attention(np.full((1, 1), control, "f4"), state)
        reads.append(float(keras.ops.convert_to_numpy(out)[0, 0]))
    np.testing.assert_allclose(reads, [5.0, 2.0, 2.0, 5.0], atol=1e-3)


def test_attention_integer_moves_pass_the_soft_gradient_straight_through():
    # At control 0.3 the head does not move (round(0.23) = 0), but the
    # position still receives softsign'(0.3): training can push it.
    data = np.array([[[1.0], [5.0], [2.0], [7.0]]], "f4")
    attention = sc.Attention(positions=4, width=1, integer_moves=True)
    position = np.array([[1.0]], "f4")
    _, (moved, _) = attention(np.full((1, 1), 0.3, "f4"),
                              [position, data.reshape(1, -1)])
    np.testing.assert_array_equal(moved, position)
    grad_move = _gradients(attention, position, data)[2]
    np.testing.assert_allclose(grad_move, 1.0 / (1.0 + 0.3) ** 2, rtol=1e-5)


def test_normalised_gaussian_far_outside_reads_the_nearest_slot():
    # exp(−d²) underflows to 0 for every slot this far away; the weights are
    # computed shifted by the nearest slot, so the read stays finite.
    attention = sc.Attention(positions=4, width=1, falloff="gaussian", sharpness=3.0,
                             normalize=True)
    data = np.array([[[1.0], [2.0], [3.0], [4.0]]], "f4")
    for start, nearest in ((60.0, 4.0), (-60.0, 1.0)):
        position = np.array([[start]], "f4")
        control = np.zeros((1, 1), "f4")
        out, _ = attention(control, [position, data.reshape(1, -1)])
        np.testing.assert_allclose(out, [[nearest]], atol=ATOL)
    grads = _gradients(attention, np.array([[60.0]], "f4"), data)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_attention_read_gradient_off_reads_the_same_without_gradient():
    data = np.array([[[1.0], [5.0], [2.0], [7.0]]], "f4")
    position = np.array([[0.8]], "f4")
    control = np.full((1, 1), 0.3, "f4")
    reads = {}
    for flag in (True, False):
        attention = sc.Attention(positions=4, width=1, falloff="gaussian", sharpness=2.0,
                                 normalize=True, read_gradient=flag)
        assert sc.Attention.from_config(
            attention.get_config()).read_gradient is flag
        reads[flag], _ = attention(control, [position,
                                             data.reshape(1, -1)])
        grad_position, grad_control, grad_move = _gradients(
            attention, position, data)
        if flag:
            assert abs(grad_position[0, 0]) > 1e-3
        else:
            np.testing.assert_array_equal(grad_position, 0.0)
            np.testing.assert_array_equal(grad_control, 0.0)
        # The position itself keeps its path: ∂p_t/∂control = softsign'.
        np.testing.assert_allclose(grad_move, 1.0 / (1.0 + 0.3) ** 2,
                                   rtol=1e-5)
    np.testing.assert_allclose(reads[True], reads[False], atol=ATOL)


def _gradients(attention, position, data):
    """At control 0.3: ∂read/∂position, ∂read/∂control, ∂p_t/∂control."""
    control = np.full((1, 1), 0.3, "f4")

    def run(position, control):
        return attention(control, [position, data.reshape(1, -1)])

    _, _, (d_position, d_control) = value_and_gradients(
        lambda p, c: keras.ops.sum(run(p, c)[0]), inputs=[position, control])
    _, _, (_, d_move) = value_and_gradients(
        lambda p, c: keras.ops.sum(run(p, c)[1][0]),
        inputs=[position, control])
    return d_position, d_control, d_move


def test_attention_weights_trace_matches_definition():
    attention = sc.Attention(positions=5, width=1, normalize=True)
    control = np.array([[0.0], [3.0]], "f4")
    data = np.zeros((2, 5), "f4")
    _, _, trace = attention(control, [np.array([[2.0], [1.0]], "f4"), data],
                            traces=True)
    weights = keras.ops.convert_to_numpy(trace["weights"])
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=ATOL)
    assert weights[0].argmax() == 2  # position 2, no movement


def test_attention_control_head_walks_forward_untrained():
    cell = sc.SuperloopCell([sc.SGUCell(4)], [sc.Attention(positions=16, width=1)])
    cell.build((None, 0))
    k = keras.ops.convert_to_numpy(cell.control_kernel)
    b = keras.ops.convert_to_numpy(cell.control_bias)
    assert k.min() >= 0.0 and k.max() <= 0.1
    np.testing.assert_allclose(b, 0.9)
    # With integer moves: bias 1.5, so every control is in [1.5, 1.5 + 0.4]
    # for the 4 units' outputs in (−1, 1): one whole slot per step.
    cell = sc.SuperloopCell([sc.SGUCell(4)],
                            [sc.Attention(positions=16, width=1, integer_moves=True)])
    cell.build((None, 0))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(cell.control_bias), 1.5)
