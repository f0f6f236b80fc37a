"""NeuralQueue, NeuralDeQue and ContentMemory: NumPy references, constructed
cases, invariants, gradients, config, errors, traces, inside a superloop.

Backend-neutral: runs on TensorFlow and on JAX.
"""

import re

import keras
import numpy as np
import pytest

import superloop_cell as sc
from helpers import BACKEND, value_and_gradients
from reference_memories import (ReferenceDeque, ReferenceQueue, sigmoid,
                                 content_memory_step)
from superloop_cell.systems.content_memory import MEMORY_INIT, ContentMemory
from superloop_cell.systems.neural_deque import NeuralDeQue
from superloop_cell.systems.neural_queue import NeuralQueue

ATOL = 1e-5
BIG = 50.0  # a logit that saturates the sigmoid in float32
HUGE = 1e4  # a degenerate control


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _grad(fn, x):
    """`(fn(x), ∇fn(x))` for a scalar `fn` of the float array `x` (compiled
    on JAX, where op by op costs seconds per new shape)."""
    value, _, (gradient,) = value_and_gradients(
        fn, inputs=[x], compiled=BACKEND == "jax")
    return float(value), gradient


def stepper(system, traces=True):
    """`(control, states) ↦ system(control, states, traces=traces)`, on JAX
    compiled as one program: JAX compiling op by op costs seconds for every
    new shape, far more than the whole step at once."""
    def step(control, states):
        return system(control, list(states), traces=traces)

    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(step)
    return step


def unroll(system, controls, states=None):
    """Runs `system` over `controls` (steps, batch, control_size); returns
    the outputs and traces per step (tensors) and the final states."""
    if states is None:
        states = system.get_initial_state(controls.shape[1])

    step = stepper(system)
    outputs, traces = [], []
    for t in range(controls.shape[0]):
        output, states, trace = step(controls[t], states)
        outputs.append(output)
        traces.append(trace)
    return outputs, traces, states


def run(system, controls, states=None):
    """`unroll` with NumPy results: outputs (steps, batch, output_size),
    a list of trace dicts, the final states."""
    outputs, traces, states = unroll(system, controls, states)
    traces = [{k: _np(v) for k, v in trace.items()} for trace in traces]
    outputs = np.stack([_np(o) for o in outputs])
    return outputs, traces, [_np(s) for s in states]


def logit(p):
    return float(np.log(p / (1.0 - p)))


def softplus_inverse(y):
    """The control that gives `softplus(·) = y` (a strength β)."""
    return float(np.log(np.expm1(y)))


def gamma_logit(gamma):
    """The control that gives the sharpness `γ = 1 + softplus(·)`."""
    return softplus_inverse(gamma - 1.0)


def queue_row(push, pop, value):
    """One queue control row from logits and the wanted value `v_t`."""
    return np.concatenate([[push, pop], np.arctanh(value)]).astype("f4")[None]


def deque_row(push_top, pop_top, push_bottom, pop_bottom, top, bottom):
    return np.concatenate([[push_top, pop_top, push_bottom, pop_bottom],
                           np.arctanh(top), np.arctanh(bottom)]
                          ).astype("f4")[None]


def head_logits(key, beta=0.0, gate=-BIG, move=0, gamma=-BIG):
    """`[key | β | g | shift (3) | γ]` logits; the shift is one-hot on
    `move` ∈ {−1, 0, 1}. The defaults keep the previous weights as they
    are (g ≈ 0, no move, γ = 1)."""
    shift = np.full(3, -BIG)
    shift[move + 1] = BIG
    return np.concatenate([key, [beta, gate], shift, [gamma]])


def memory_row(write_head, erase, add, read_heads):
    """One ContentMemory control row; `erase` as logits, `add` as values."""
    parts = [write_head, erase, np.arctanh(add)] + list(read_heads)
    return np.concatenate(parts).astype("f4")[None]


SYSTEMS = {
    "queue": lambda: NeuralQueue(width=2, capacity=3),
    "deque": lambda: NeuralDeQue(width=2, capacity=3),
    "memory": lambda: ContentMemory(slots=4, width=2, read_heads=2),
}


# -------------------------------------------------------- NumPy references


@pytest.mark.parametrize("width,capacity,steps,random_start", [
    (3, 8, 8, False),  # capacity = steps: the unbounded queue
    (2, 3, 10, True),  # elements dropped from the front
    (1, 1, 4, True),
])
def test_queue_matches_reference(width, capacity, steps, random_start):
    batch = 3
    queue = NeuralQueue(width=width, capacity=capacity)
    assert queue.control_size == width + 2
    assert queue.output_size == width
    assert queue.state_size == [capacity, capacity * width]
    rng = np.random.default_rng(capacity)
    strengths = np.zeros((batch, capacity), "f4")
    values = np.zeros((batch, capacity, width), "f4")
    if random_start:
        strengths = rng.uniform(0, 1, strengths.shape).astype("f4")
        values = rng.uniform(-1, 1, values.shape).astype("f4")
        states = [strengths, values.reshape(batch, -1)]
    else:
        states = queue.get_initial_state(batch)
    unbounded = steps <= capacity and not random_start
    reference = ReferenceQueue(strengths, values,
                               lifetime=None if unbounded else capacity)
    step = stepper(queue)
    for _ in range(steps):
        control = rng.normal(0, 2, (batch, width + 2)).astype("f4")
        read, states, trace = step(control, states)
        read_ref, weights_ref = reference.step(control)
        strengths_ref = reference.slots(capacity, reference.strengths())
        np.testing.assert_allclose(read, read_ref, atol=ATOL)
        np.testing.assert_allclose(states[0], strengths_ref, atol=ATOL)
        np.testing.assert_allclose(trace["strengths"], strengths_ref,
                                   atol=ATOL)
        np.testing.assert_allclose(trace["read_weights"],
                                   reference.slots(capacity, weights_ref),
                                   atol=ATOL)
        np.testing.assert_allclose(
            _np(states[1]).reshape(batch, capacity, width),
            reference.slots(capacity, [[e.value for e in row]
                                       for row in reference.rows]),
            atol=ATOL)
        np.testing.assert_allclose(trace["push"], sigmoid(control[:, :1]),
                                   atol=ATOL)
        np.testing.assert_allclose(trace["pop"], sigmoid(control[:, 1:2]),
                                   atol=ATOL)


@pytest.mark.parametrize("width,capacity,steps,random_start", [
    (2, 6, 6, False),  # capacity = steps: the unbounded deque
    (2, 2, 7, True),  # the middle elements dropped
    (1, 1, 4, True),
])
def test_deque_matches_reference(width, capacity, steps, random_start):
    batch = 3
    deque = NeuralDeQue(width=width, capacity=capacity)
    assert deque.control_size == 2 * width + 4
    assert deque.output_size == 2 * width
    assert deque.state_size == [2 * capacity, 2 * capacity * width]
    rng = np.random.default_rng(capacity + 10)
    strengths = np.zeros((batch, 2 * capacity), "f4")
    values = np.zeros((batch, 2 * capacity, width), "f4")
    if random_start:
        strengths = rng.uniform(0, 1, strengths.shape).astype("f4")
        values = rng.uniform(-1, 1, values.shape).astype("f4")
        states = [strengths, values.reshape(batch, -1)]
    else:
        states = deque.get_initial_state(batch)
    unbounded = steps <= capacity and not random_start
    reference = ReferenceDeque(strengths, values,
                               lifetime=None if unbounded else capacity)
    step = stepper(deque)
    for _ in range(steps):
        control = rng.normal(0, 2, (batch, 2 * width + 4)).astype("f4")
        output, states, trace = step(control, states)
        ref = reference.step(control, width)
        np.testing.assert_allclose(output[:, :width], ref["top"], atol=ATOL)
        np.testing.assert_allclose(output[:, width:], ref["bottom"],
                                   atol=ATOL)
        strengths_ref = reference.slots(capacity, reference.strengths())
        np.testing.assert_allclose(states[0], strengths_ref, atol=ATOL)
        np.testing.assert_allclose(trace["strengths"], strengths_ref,
                                   atol=ATOL)
        for end in ("top", "bottom"):
            np.testing.assert_allclose(
                trace[end + "_weights"],
                reference.slots(capacity, ref[end + "_weights"]), atol=ATOL)
        np.testing.assert_allclose(
            _np(states[1]).reshape(batch, 2 * capacity, width),
            reference.slots(capacity, [[e.value for e in row]
                                       for row in reference.rows]),
            atol=ATOL)
        for i, name in enumerate(["push_top", "pop_top", "push_bottom",
                                  "pop_bottom"]):
            np.testing.assert_allclose(trace[name],
                                       sigmoid(control[:, i : i + 1]),
                                       atol=ATOL)


@pytest.mark.parametrize("slots,width,read_heads,random_start", [
    (5, 3, 1, False),
    (4, 2, 2, True),
    (2, 2, 1, True),  # the moves −1 and +1 land on the same slot
    (1, 2, 1, True),
])
@pytest.mark.parametrize("read_before_write", [False, True])
def test_content_memory_matches_reference(slots, width, read_heads,
                                          random_start, read_before_write):
    batch, steps = 3, 4
    memory = ContentMemory(slots=slots, width=width, read_heads=read_heads,
                           read_before_write=read_before_write)
    assert memory.control_size == 3 * width + 6 + read_heads * (width + 6)
    assert memory.output_size == read_heads * width
    assert memory.state_size == [slots * width] + [slots] * (1 + read_heads)
    rng = np.random.default_rng(slots + 20)
    if random_start:
        m = rng.uniform(-1, 1, (batch, slots, width))
        w = rng.dirichlet(np.ones(slots), (batch, 1 + read_heads))
        states = ([m.reshape(batch, -1).astype("f4")]
                  + [w[:, h].astype("f4") for h in range(1 + read_heads)])
    else:
        states = memory.get_initial_state(batch)
    m = _np(states[0]).reshape(batch, slots, width).astype(np.float64)
    w_write = _np(states[1]).astype(np.float64)
    w_read = np.stack([_np(s) for s in states[2:]], axis=1).astype(np.float64)
    step = stepper(memory)
    for _ in range(steps):
        control = rng.normal(0, 2, (batch, memory.control_size)).astype("f4")
        output, states, trace = step(control, states)
        reads, m, w_write, w_read = content_memory_step(
            control, m, w_write, w_read, width, read_heads,
            read_before_write)
        np.testing.assert_allclose(output, reads, atol=ATOL)
        np.testing.assert_allclose(states[0], m.reshape(batch, -1),
                                   atol=ATOL)
        np.testing.assert_allclose(states[1], w_write, atol=ATOL)
        np.testing.assert_allclose(trace["write_weights"], w_write,
                                   atol=ATOL)
        for h in range(read_heads):
            np.testing.assert_allclose(states[2 + h], w_read[:, h],
                                       atol=ATOL)
            np.testing.assert_allclose(trace[f"read_weights_{h}"],
                                       w_read[:, h], atol=ATOL)


def test_content_memory_initial_state():
    memory = ContentMemory(slots=3, width=2, read_heads=2)
    states = memory.get_initial_state(4)
    assert len(states) == 4
    for state, size in zip(states, memory.state_size):
        assert tuple(state.shape) == (4, size)
        assert keras.backend.standardize_dtype(state.dtype) == "float32"
    np.testing.assert_array_equal(states[0], np.full((4, 6), MEMORY_INIT,
                                                     "f4"))
    for weights in states[1:]:
        np.testing.assert_array_equal(weights, [[1, 0, 0]] * 4)


# ---------------------------------------------------- constructed: queue


def test_queue_push_a_push_b_pop_reads_a_then_b():
    # First in, first out: the read shows the front (a) until a pop.
    a, b = np.array([0.5, -0.25]), np.array([-0.75, 0.125])
    controls = np.stack([
        queue_row(BIG, -BIG, a),
        queue_row(BIG, -BIG, b),
        queue_row(-BIG, BIG, np.array([0.9, 0.9])),  # pop, push nothing
    ])
    reads, traces, _ = run(NeuralQueue(width=2, capacity=4), controls)
    np.testing.assert_allclose(reads[:, 0], [a, a, b], atol=ATOL)
    np.testing.assert_allclose(traces[2]["strengths"][0], [0, 0, 1, 0],
                               atol=ATOL)
    np.testing.assert_allclose(traces[2]["read_weights"][0], [0, 0, 1, 0],
                               atol=ATOL)


def test_queue_fractional_push_and_pop_by_hand():
    # Push a at 0.8, push b at 0.5: read 0.8·a + min(0.5, 1 − 0.8)·b.
    # Pop 0.9: a is used up (0.8), b loses the remaining 0.1 and keeps 0.4.
    a, b = np.array([0.4]), np.array([-0.8])
    controls = np.stack([
        queue_row(logit(0.8), -BIG, a),
        queue_row(logit(0.5), -BIG, b),
        queue_row(-BIG, logit(0.9), np.array([0.7])),
    ])
    reads, traces, _ = run(NeuralQueue(width=1, capacity=3), controls)
    np.testing.assert_allclose(
        reads[:, 0, 0], [0.8 * a[0], 0.8 * a[0] + 0.2 * b[0], 0.4 * b[0]],
        atol=ATOL)
    np.testing.assert_allclose(traces[2]["strengths"][0], [0.0, 0.4, 0.0],
                               atol=ATOL)


def test_queue_on_empty_reads_zeros():
    controls = np.stack([queue_row(-BIG, BIG, np.array([0.5, -0.5]))] * 3)
    reads, traces, _ = run(NeuralQueue(width=2, capacity=2), controls)
    np.testing.assert_allclose(reads, 0.0, atol=ATOL)
    np.testing.assert_allclose(traces[-1]["strengths"], 0.0, atol=ATOL)


@pytest.mark.parametrize("capacity,expected", [
    (2, "aab0"),  # a dropped after step 3's pop, b after step 4's
    (4, "aaaa"),  # the unbounded queue
])
def test_queue_capacity_drops_the_front(capacity, expected):
    a, b = np.array([0.5]), np.array([-0.3])
    idle = queue_row(-BIG, -BIG, np.array([0.9]))
    controls = np.stack([queue_row(BIG, -BIG, a), queue_row(BIG, -BIG, b),
                         idle, idle])
    reads, _, _ = run(NeuralQueue(width=1, capacity=capacity), controls)
    wanted = {"a": a[0], "b": b[0], "0": 0.0}
    np.testing.assert_allclose(reads[:, 0, 0], [wanted[c] for c in expected],
                               atol=ATOL)


@pytest.mark.parametrize("capacity", [2, 8])
def test_queue_pop_consumes_the_front_before_it_is_dropped(capacity):
    # Read a, then pop while pushing c: the pop takes a (whose slot is
    # dropped at that step anyway), not b; b is read next, then c. The same
    # as the unbounded queue, for any capacity ≥ 2.
    a, b, c = np.array([0.5]), np.array([-0.3]), np.array([0.8])
    controls = np.stack([
        queue_row(BIG, -BIG, a), queue_row(BIG, -BIG, b),
        queue_row(BIG, BIG, c), queue_row(-BIG, BIG, np.array([0.1])),
    ])
    reads, _, _ = run(NeuralQueue(width=1, capacity=capacity), controls)
    np.testing.assert_allclose(reads[:, 0, 0], [a[0], a[0], b[0], c[0]],
                               atol=ATOL)


# ---------------------------------------------------- constructed: deque


def test_deque_pushes_and_pops_at_both_ends():
    a, b, c, e = ([0.5, 0.1], [-0.4, 0.2], [0.3, -0.6], [0.7, 0.7])
    a, b, c, e = map(np.array, (a, b, c, e))
    z = np.zeros(2)
    controls = np.stack([
        deque_row(BIG, -BIG, BIG, -BIG, a, b),  # a on top, b at the bottom
        deque_row(BIG, -BIG, BIG, -BIG, c, e),  # e b a c
        deque_row(-BIG, BIG, -BIG, -BIG, z, z),  # pop top: e b a
        deque_row(-BIG, -BIG, -BIG, BIG, z, z),  # pop bottom: b a
        deque_row(-BIG, BIG, -BIG, BIG, z, z),  # pop both: empty
    ])
    outputs, traces, _ = run(NeuralDeQue(width=2, capacity=8), controls)
    np.testing.assert_allclose(outputs[:, 0, :2], [a, c, a, a, z], atol=ATOL)
    np.testing.assert_allclose(outputs[:, 0, 2:], [b, e, e, b, z], atol=ATOL)
    np.testing.assert_allclose(traces[-1]["strengths"], 0.0, atol=ATOL)


def test_deque_pushed_at_the_top_and_popped_at_the_bottom_is_a_queue():
    a, b = np.array([0.5]), np.array([-0.3])
    z = np.zeros(1)
    controls = np.stack([
        deque_row(BIG, -BIG, -BIG, -BIG, a, z),
        deque_row(BIG, -BIG, -BIG, -BIG, b, z),
        deque_row(-BIG, -BIG, -BIG, BIG, z, z),
    ])
    outputs, _, _ = run(NeuralDeQue(width=1, capacity=4), controls)
    np.testing.assert_allclose(outputs[:, 0, 1], [a[0], a[0], b[0]],
                               atol=ATOL)  # the bottom read
    np.testing.assert_allclose(outputs[:, 0, 0], [a[0], b[0], b[0]],
                               atol=ATOL)  # the top read


def test_deque_fractional_pops_by_hand():
    # Bottom to top: b 0.6 (pushed at the bottom), a 0.7 (at the top).
    # Top pop 0.9 takes a's 0.7 and 0.2 of b; bottom pop 0.3 takes 0.3 of
    # what is left of b (0.4): b keeps 0.1.
    a, b = np.array([0.5]), np.array([-0.9])
    z = np.zeros(1)
    controls = np.stack([
        deque_row(logit(0.7), -BIG, logit(0.6), -BIG, a, b),
        deque_row(-BIG, logit(0.9), -BIG, logit(0.3), z, z),
    ])
    outputs, traces, _ = run(NeuralDeQue(width=1, capacity=3), controls)
    # Step 1: top reads 0.7·a + 0.3·b, bottom 0.6·b + 0.4·a.
    np.testing.assert_allclose(outputs[0, 0],
                               [0.7 * a[0] + 0.3 * b[0],
                                0.6 * b[0] + 0.4 * a[0]], atol=ATOL)
    np.testing.assert_allclose(outputs[1, 0], [0.1 * b[0], 0.1 * b[0]],
                               atol=ATOL)
    np.testing.assert_allclose(traces[1]["strengths"][0],
                               [0, 0.1, 0, 0, 0, 0], atol=ATOL)


@pytest.mark.parametrize("capacity,top_read", [(2, "b"), (8, "a")])
def test_deque_capacity_drops_the_middle(capacity, top_read):
    # a pushed at the top at step 1, b at the bottom at step 2. At step 3
    # a bounded deque of capacity 2 drops a, and the top read reaches b
    # across the middle; the unbounded one still reads a.
    a, b = np.array([0.5]), np.array([-0.3])
    z = np.zeros(1)
    controls = np.stack([
        deque_row(BIG, -BIG, -BIG, -BIG, a, z),
        deque_row(-BIG, -BIG, BIG, -BIG, z, b),
        deque_row(-BIG, -BIG, -BIG, -BIG, z, z),
    ])
    outputs, _, _ = run(NeuralDeQue(width=1, capacity=capacity), controls)
    wanted = {"a": a[0], "b": b[0]}
    np.testing.assert_allclose(outputs[:, 0, 0], [a[0], a[0],
                                                  wanted[top_read]],
                               atol=ATOL)
    np.testing.assert_allclose(outputs[:, 0, 1], [a[0], b[0], b[0]],
                               atol=ATOL)


# ------------------------------------------- constructed: content memory


def one_hot(index, size):
    row = np.zeros(size, "f4")
    row[index] = 1.0
    return row


def test_content_memory_writes_then_finds_the_row_by_its_key():
    # Rows are [key (2) | value (2)]. Step 1 writes [k | v] into slot 2 by
    # location; step 2 looks it up with [k | 0] alone and reads v back.
    k, v = np.array([0.8, 0.0]), np.array([-0.5, 0.6])
    rows = np.array([[0.0, 0.5, 0.3, -0.2], [0.0, -0.7, 0.1, 0.4],
                     [0.0, 0.2, 0.1, 0.1], [-0.6, 0.0, 0.2, 0.2]], "f4")
    memory = ContentMemory(slots=4, width=4)
    states = [rows.reshape(1, -1), one_hot(2, 4)[None], one_hot(0, 4)[None]]
    stay = head_logits(np.zeros(4))
    keep = np.full(4, -BIG)  # erase nothing
    controls = np.stack([
        memory_row(stay, np.full(4, BIG), np.concatenate([k, v]), [stay]),
        memory_row(stay, keep, np.zeros(4),
                   [head_logits(np.concatenate([k, [0.0, 0.0]]), beta=40.0,
                                gate=BIG)]),
    ])
    reads, traces, states = run(memory, controls, states)
    written = rows.copy()
    written[2] = np.concatenate([k, v])
    np.testing.assert_allclose(states[0].reshape(4, 4), written, atol=ATOL)
    np.testing.assert_allclose(traces[0]["write_weights"][0], one_hot(2, 4),
                               atol=ATOL)
    np.testing.assert_allclose(traces[1]["read_weights_0"][0], one_hot(2, 4),
                               atol=1e-4)
    np.testing.assert_allclose(reads[1, 0, 2:], v, atol=1e-4)


def test_content_memory_similarity_has_the_epsilon():
    # K(u, v) = u·v / (‖u‖·‖v‖ + 1e-8): a row of norm 1e-8 along the key
    # has K = 1/2, not 1; an orthogonal row K = 0.
    memory = ContentMemory(slots=2, width=2)
    states = [np.array([[1e-8, 0.0, 0.0, 1.0]], "f4"),
              one_hot(0, 2)[None], one_hot(0, 2)[None]]
    beta = 4.0
    head = head_logits(np.array([1.0, 0.0]), beta=softplus_inverse(beta),
                       gate=BIG)
    control = memory_row(head, np.full(2, -BIG), np.zeros(2), [head])
    _, _, trace = stepper(memory)(control, states)
    expected = np.exp([beta * 0.5, 0.0])
    for name in ("write_weights", "read_weights_0"):
        np.testing.assert_allclose(trace[name][0], expected / expected.sum(),
                                   atol=ATOL)


def test_content_memory_shift_moves_the_weights_by_one_slot():
    slots = 5
    memory = ContentMemory(slots=slots, width=2)
    rng = np.random.default_rng(12)
    rows = rng.uniform(-1, 1, (1, 2 * slots)).astype("f4")
    step = stepper(memory)
    for start, move in [(0, -1), (2, 0), (2, 1), (4, 1)]:
        states = [rows, one_hot(start, slots)[None],
                  one_hot(start, slots)[None]]
        head = head_logits(rng.normal(size=2), beta=3.0, move=move)
        control = memory_row(head, np.full(2, -BIG), np.zeros(2), [head])
        _, _, trace = step(control, states)
        moved = one_hot((start + move) % slots, slots)  # circular
        for name in ("write_weights", "read_weights_0"):
            np.testing.assert_allclose(trace[name][0], moved, atol=ATOL,
                                       err_msg=f"{name} {start=} {move=}")


def test_content_memory_gamma_sharpens():
    previous = np.array([0.1, 0.2, 0.3, 0.4], "f4")
    memory = ContentMemory(slots=4, width=2)
    states = [np.zeros((1, 8), "f4"), previous[None], previous[None]]
    stay = head_logits(np.zeros(2))
    step, peaks = stepper(memory), []
    for gamma in (1.0, 2.0, 5.0):
        head = head_logits(np.zeros(2),
                           gamma=-BIG if gamma == 1.0 else gamma_logit(gamma))
        control = memory_row(stay, np.full(2, -BIG), np.zeros(2), [head])
        _, _, trace = step(control, states)
        weights = trace["read_weights_0"][0]
        expected = previous.astype(np.float64) ** gamma
        np.testing.assert_allclose(weights, expected / expected.sum(),
                                   atol=ATOL)
        peaks.append(_np(weights).max())
    assert peaks[0] < peaks[1] < peaks[2]


def test_content_memory_huge_gamma_gives_one_hot_not_zeros():
    # γ ≈ 1e4: written literally, every w̃^γ underflows to 0.
    previous = np.array([0.3, 0.45, 0.25], "f4")
    memory = ContentMemory(slots=3, width=2)
    states = [np.zeros((1, 6), "f4"), previous[None], previous[None]]
    head = head_logits(np.zeros(2), gamma=HUGE)
    control = memory_row(head, np.full(2, -BIG), np.zeros(2), [head])
    _, _, trace = stepper(memory)(control, states)
    for name in ("write_weights", "read_weights_0"):
        np.testing.assert_allclose(trace[name][0], [0, 1, 0], atol=ATOL)


# -------------------------------------------------------------- invariants


def mixed_controls(rng, steps, batch, size):
    """Soft, nearly saturated and saturated controls mixed."""
    scale = rng.choice([0.5, 3.0, 20.0, HUGE], (steps, batch, 1))
    return (rng.normal(0, 1, (steps, batch, size)) * scale).astype("f4")


@pytest.mark.parametrize("name", ["queue", "deque"])
def test_strength_invariants_over_random_runs(name):
    system = SYSTEMS[name]()
    rng = np.random.default_rng(6)
    reads, traces, _ = run(system, mixed_controls(rng, 20, 6,
                                                  system.control_size))
    weight_names = {"queue": ["read_weights"],
                    "deque": ["top_weights", "bottom_weights"]}[name]
    for trace in traces:
        s = trace["strengths"]
        assert np.all(s >= 0.0) and np.all(s <= 1.0)
        for weights in weight_names:
            w = trace[weights]
            assert np.all(w >= 0.0) and np.all(w <= s + 1e-7)
            assert np.all(w.sum(axis=-1) <= 1.0 + 1e-6)
    assert np.all(np.abs(reads) <= 1.0 + 1e-6)  # a sub-convex mix of tanh


def test_content_memory_weights_are_distributions():
    memory = ContentMemory(slots=5, width=3, read_heads=2)
    rng = np.random.default_rng(7)
    reads, traces, states = run(memory, mixed_controls(rng, 15, 6,
                                                       memory.control_size))
    assert np.all(np.isfinite(reads))
    for trace in traces:
        assert set(trace) == {"write_weights", "read_weights_0",
                              "read_weights_1"}
        for w in trace.values():
            assert np.all(w >= 0.0)
            np.testing.assert_allclose(w.sum(axis=-1), 1.0, atol=1e-5)
    assert all(np.all(np.isfinite(s)) for s in states)


# --------------------------------------------------------------- gradients


def _loss_fn(system, states, projection):
    """`controls ↦ Σ outputs·projection + Σ traces + Σ final states`."""
    def loss(controls):
        outputs, traces, final = unroll(system, controls, states)
        total = 0.0
        for t, output in enumerate(outputs):
            total += keras.ops.sum(keras.ops.multiply(output, projection[t]))
            total += sum(keras.ops.sum(v) for v in traces[t].values())
        return total + sum(keras.ops.sum(s) for s in final)
    return loss


@pytest.mark.parametrize("name", ["queue", "deque", "memory"])
def test_gradients_finite_at_degenerate_controls(name):
    system = SYSTEMS[name]()
    # The memory's gradient takes seconds to compile on JAX per step.
    steps = 2 if name == "memory" else 4
    fills = ["zeros", "+huge", "-huge", "±huge"]  # one batch row each
    rng = np.random.default_rng(8)
    row = (steps, 1, system.control_size)
    controls = np.concatenate([
        np.zeros(row), np.full(row, HUGE), np.full(row, -HUGE),
        HUGE * rng.choice([-1.0, 1.0], row),
    ], axis=1).astype("f4")
    states = [_np(s) for s in system.get_initial_state(len(fills))]
    if name == "memory":
        # The same controls again from all-zero states: memory rows of
        # norm 0, and previous weights that sum to 0.
        fills += [fill + " from zero states" for fill in fills]
        controls = np.concatenate([controls, controls], axis=1)
        states = [np.concatenate([s, np.zeros_like(s)]) for s in states]
    projection = rng.normal(size=(steps, len(fills), system.output_size))
    loss = _loss_fn(system, states, projection.astype("f4"))
    value, gradient = _grad(loss, controls)
    assert np.isfinite(value)
    assert gradient.shape == controls.shape
    for i, fill in enumerate(fills):
        assert np.all(np.isfinite(gradient[:, i])), fill
    assert np.any(np.abs(gradient[:, 0]) > 1e-4)  # the zero controls


def _queue_reference_loss(capacity, width):
    def loss(controls, projection):
        batch = controls.shape[1]
        reference = ReferenceQueue(np.zeros((batch, capacity)),
                                   np.zeros((batch, capacity, width)),
                                   lifetime=capacity)
        return sum(np.sum(reference.step(c)[0] * p)
                   for c, p in zip(controls, projection))
    return loss


def _deque_reference_loss(capacity, width):
    def loss(controls, projection):
        batch = controls.shape[1]
        reference = ReferenceDeque(np.zeros((batch, 2 * capacity)),
                                   np.zeros((batch, 2 * capacity, width)),
                                   lifetime=capacity)
        total = 0.0
        for c, p in zip(controls, projection):
            ref = reference.step(c, width)
            total += np.sum(np.concatenate([ref["top"], ref["bottom"]], -1)
                            * p)
        return total
    return loss


def _memory_reference_loss(slots, width, read_heads):
    def loss(controls, projection):
        batch = controls.shape[1]
        m = np.full((batch, slots, width), MEMORY_INIT)
        w_write = np.zeros((batch, slots))
        w_write[:, 0] = 1.0
        w_read = np.repeat(w_write[:, None], read_heads, axis=1)
        total = 0.0
        for c, p in zip(controls, projection):
            reads, m, w_write, w_read = content_memory_step(
                c, m, w_write, w_read, width, read_heads)
            total += np.sum(reads * p)
        return total
    return loss


@pytest.mark.parametrize("name", ["queue", "deque", "memory"])
def test_gradient_matches_finite_differences_of_the_reference(name):
    system, reference_loss = {
        "queue": (NeuralQueue(width=2, capacity=2), _queue_reference_loss(2, 2)),
        "deque": (NeuralDeQue(width=1, capacity=2), _deque_reference_loss(2, 1)),
        "memory": (ContentMemory(slots=3, width=2), _memory_reference_loss(3, 2, 1)),
    }[name]
    # 4 steps > capacity 2: the queue and deque drop elements. 2 steps of
    # the memory go through every state.
    batch, steps = 2, 2 if name == "memory" else 4
    rng = np.random.default_rng(9)
    controls = rng.normal(0, 1.5, (steps, batch, system.control_size))
    projection = rng.normal(size=(steps, batch, system.output_size))

    def loss(c):
        outputs, _, _ = unroll(system, c)
        return sum(keras.ops.sum(keras.ops.multiply(o, projection[t]
                                                    .astype("f4")))
                   for t, o in enumerate(outputs))

    _, analytic = _grad(loss, controls.astype("f4"))
    assert np.any(np.abs(analytic) > 1e-3)
    eps = 1e-6
    numeric = np.zeros_like(controls)
    for index in np.ndindex(controls.shape):
        plus, minus = controls.copy(), controls.copy()
        plus[index] += eps
        minus[index] -= eps
        numeric[index] = (reference_loss(plus, projection)
                          - reference_loss(minus, projection)) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-3, atol=2e-4)


# ------------------------------------------------------------------ traces


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_traces_come_from_the_same_call(name):
    system = SYSTEMS[name]()
    rng = np.random.default_rng(10)
    control = rng.normal(size=(2, system.control_size)).astype("f4")
    states = system.get_initial_state(2)
    plain = stepper(system, traces=False)(control, states)
    assert len(plain) == 2
    output, new_states, traces = stepper(system)(control, states)
    assert {k: tuple(v.shape) for k, v in traces.items()} == {
        k: (2, width) for k, width in system.trace_sizes.items()}
    assert set(system.trace_labels) <= set(system.trace_sizes)
    assert "trace" not in type(system).__dict__  # one pass, no `trace()`
    np.testing.assert_array_equal(_np(output), _np(plain[0]))
    for got, want in zip(new_states, plain[1]):
        np.testing.assert_array_equal(_np(got), _np(want))
    assert tuple(output.shape) == (2, system.output_size)
    assert [tuple(s.shape) for s in new_states] == [
        (2, size) for size in system.state_size]


# ------------------------------------------------------ inside a superloop


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_in_superloop_rnn_and_save_load(name, tmp_path):
    system = SYSTEMS[name]()
    cell = sc.SuperloopCell([sc.SGUCell(8)], [system])
    inputs = keras.Input((None, 3))
    outputs = keras.layers.RNN(cell, return_sequences=True)(inputs)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(11).normal(size=(2, 6, 3)).astype("f4")
    y = _np(model(x))
    assert y.shape == (2, 6, 8)
    assert np.all(np.isfinite(y))

    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    loaded_system = loaded.layers[-1].cell.systems[0]
    assert type(loaded_system) is type(system)
    assert loaded_system.get_config() == system.get_config()
    np.testing.assert_allclose(_np(loaded(x)), y, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_superloop_collects_the_traces(name):
    system = SYSTEMS[name]()
    cell = sc.SuperloopCell([sc.SGUCell(4)], [system])
    layer = keras.layers.RNN(cell, return_sequences=True)
    x = np.random.default_rng(13).normal(size=(2, 5, 3)).astype("f4")
    y = _np(layer(x))
    y_traced, traces = sc.run_with_traces(cell, x)
    np.testing.assert_allclose(y_traced, y, atol=1e-6)
    scope = cell.component_names["systems"][0]
    for key, width in system.trace_sizes.items():
        assert traces[f"{scope}/{key}"].shape == (2, 5, width)
        assert np.all(np.isfinite(traces[f"{scope}/{key}"]))


def test_superloop_starts_from_the_systems_initial_state():
    memory = ContentMemory(slots=3, width=2)
    cell = sc.SuperloopCell([sc.SGUCell(4)], [memory])
    states = cell.get_initial_state(2)
    got = [_np(s) for s in cell.system_states(states, 0)]
    want = [_np(s) for s in memory.get_initial_state(2)]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


# ------------------------------------------------------- config and errors


@pytest.mark.parametrize("cls,kwargs", [
    (NeuralQueue, {"width": 5, "capacity": 7}),
    (NeuralDeQue, {"width": 3, "capacity": 4}),
    (ContentMemory, {"slots": 6, "width": 3, "read_heads": 2}),
])
def test_config_round_trip(cls, kwargs):
    system = cls(**kwargs, name="system")
    config = system.get_config()
    expected = kwargs
    assert {k: config[k] for k in expected} == expected
    clone = type(system).from_config(config)
    assert clone.name == system.name
    assert clone.get_config() == config
    for attribute in ("control_size", "output_size", "state_size",
                      "trace_sizes", "trace_labels"):
        assert getattr(clone, attribute) == getattr(system, attribute)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(system))
    assert type(restored) is type(system)
    assert restored.get_config() == config


@pytest.mark.parametrize("cls,kwargs,argument", [
    (NeuralQueue, {"width": 2, "capacity": 3}, "width"),
    (NeuralQueue, {"width": 2, "capacity": 3}, "capacity"),
    (NeuralDeQue, {"width": 2, "capacity": 3}, "width"),
    (NeuralDeQue, {"width": 2, "capacity": 3}, "capacity"),
    (ContentMemory, {"slots": 4, "width": 2}, "slots"),
    (ContentMemory, {"slots": 4, "width": 2}, "width"),
    (ContentMemory, {"slots": 4, "width": 2}, "read_heads"),
])
def test_bad_arguments_raise_naming_the_argument(cls, kwargs, argument):
    cls(**kwargs)  # the defaults are fine
    for bad in [0, -1, 2.5, "3", True]:
        pattern = f"`{argument}`.*{re.escape(repr(bad))}"
        with pytest.raises(ValueError, match=pattern):
            cls(**{**kwargs, argument: bad})
    # A size left out (None) is a missing keyword argument.
    error = ValueError if argument == "read_heads" else TypeError
    with pytest.raises(error, match=f"`{argument}`"):
        cls(**{**kwargs, argument: None})
