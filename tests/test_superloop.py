"""SuperloopCell: wiring against NumPy, fused vs unfused, loop vs unroll,
masking, variable length, gradients, saving, training."""

import keras
import numpy as np
import pytest

import superloop_cell as sc
from superloop_cell.cells import sgu_run
from superloop_cell.stages import AUTO_FUSED_RUN
from helpers import (BACKEND, compiled_value, float64, randomize, rnn_model,
                     sgu_layers, to_numpy, value_and_gradients)
from reference import superloop_run

ATOL = 1e-5


def _attention_model(cell, steps, features, positions, width, **rnn_kwargs):
    seq = keras.Input((steps, features))
    data = keras.Input((positions, width))
    states = sc.initial_state(cell, seq, data)
    outputs = keras.layers.RNN(cell, **rnn_kwargs)(seq, initial_state=states)
    return keras.Model([seq, data], outputs)


@pytest.mark.parametrize("fused, output_feedback", [
    (True, False), (False, False), (True, True), (False, True)])
@pytest.mark.parametrize("depth", [1, 4])
def test_matches_numpy_with_register_memory_and_attention(
        fused, output_feedback, depth):
    positions, width = 5, 2
    systems = [sc.RegisterMemory(registers=3, width=4), sc.Attention(positions=positions, width=width)]
    cell = sc.SuperloopCell([sc.SGUCell(6) for _ in range(depth)], systems,
                            fused=fused, output_feedback=output_feedback)
    assert cell.output_size == 6 + output_feedback * (4 + 2)
    _register_and_attention_match_numpy(cell, output_feedback, seed=depth)


def _register_and_attention_match_numpy(cell, output_feedback, seed):
    """`cell` (its systems a RegisterMemory(3, 4) and an Attention over 5
    positions of width 2) against `reference.superloop_run`."""
    positions, width = 5, 2
    model = _attention_model(cell, None, 3, positions, width,
                             return_sequences=True)
    randomize(cell, scale=0.6, seed=seed)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 9, 3)).astype("f4")
    data = rng.normal(size=(2, positions, width)).astype("f4")
    out = model.predict([x, data], verbose=0)
    ref, _, _ = superloop_run(
        x, sgu_layers(cell),
        keras.ops.convert_to_numpy(cell.control_kernel),
        keras.ops.convert_to_numpy(cell.control_bias),
        [{"kind": "register", "depth": 3, "width": 4},
         {"kind": "attention", "width": width}],
        contexts=[None, data], output_feedback=output_feedback)
    np.testing.assert_allclose(out, ref, atol=ATOL)


@pytest.mark.parametrize("output_feedback", [False, True])
@pytest.mark.parametrize("stack", ["feed_forward", "feed_forward_sgu",
                                   "sgu_feed_forward_sgu"])
def test_feed_forward_cells_match_numpy(stack, output_feedback):
    make = {"feed_forward": lambda: [sc.FeedForwardCell(6)],
            "feed_forward_sgu": lambda: [sc.FeedForwardCell(5),
                                         sc.SGUCell(6)],
            "sgu_feed_forward_sgu": lambda: [sc.SGUCell(4),
                                             sc.FeedForwardCell(5),
                                             sc.SGUCell(6)]}[stack]
    cell = sc.SuperloopCell(
        make(), [sc.RegisterMemory(registers=3, width=4),
                 sc.Attention(positions=5, width=2)],
        output_feedback=output_feedback)
    _register_and_attention_match_numpy(cell, output_feedback,
                                        seed=len(stack))


def test_feed_forward_cell_saves_loads_and_keeps_no_state(tmp_path):
    cell = sc.SuperloopCell(
        [sc.FeedForwardCell(5, activation="relu",
                            kernel_regularizer="l2"), sc.SGUCell(4)],
        [sc.ContentMemory(slots=6, width=3)], output_feedback=True)
    # No state of its own: the same states as the stack without it.
    assert sc.FeedForwardCell(3).state_size == []
    assert cell.state_size == sc.SuperloopCell(
        [sc.SGUCell(4)], [sc.ContentMemory(slots=6, width=3)],
        output_feedback=True).state_size
    model = rnn_model(cell, 2, return_sequences=True)
    randomize(cell, seed=12)
    x = np.random.default_rng(13).normal(size=(2, 5, 2)).astype("f4")
    path = tmp_path / "feed_forward.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(model.predict(x, verbose=0),
                                  loaded.predict(x, verbose=0))
    clone = loaded.layers[-1].cell.cells[0]
    assert isinstance(clone, sc.FeedForwardCell)
    assert clone.get_config() == cell.cells[0].get_config()
    assert clone.get_config()["activation"] == "relu"
    assert loaded.layers[-1].cell.state_size == cell.state_size
    # The feed-forward cell's only weights are its kernel and bias; its
    # regularizer's loss reaches the model.
    assert [w.name for w in cell.cells[0].weights] == ["kernel", "bias"]
    assert len(model.losses) == 1


def test_output_feedback_with_masking_traces_and_config():
    cell = sc.SuperloopCell(
        [sc.SGUCell(4) for _ in range(3)],
        [sc.NeuralStack(width=2, capacity=6),
         sc.RegisterMemory(registers=2, width=3)],
        fused=True, output_feedback=True, trace=["neural_stack/strengths"])
    assert cell.output_size == 4 + (2 + 3) + 6
    inp = keras.Input((None, 2))
    masked = keras.layers.Masking(0.0)(inp)
    out, *final = keras.layers.RNN(cell, return_sequences=True,
                                   return_state=True)(masked)
    model = keras.Model(inp, [out, *final])
    randomize(cell, seed=4)
    x = np.random.default_rng(6).normal(size=(2, 6, 2)).astype("f4")
    x[0, 4:] = 0.0  # sequence 0 has 4 steps
    got = [to_numpy(o) for o in model(x)]
    alone = [to_numpy(o) for o in model(x[:1, :4])]
    # A masked step keeps the whole output: y, the feedback, the traces.
    np.testing.assert_allclose(got[0][0, :4], alone[0][0], atol=ATOL)
    np.testing.assert_allclose(got[0][0, 4:], np.repeat(
        alone[0][0, 3:4], 2, axis=0), atol=ATOL)
    for a, b in zip(got[1:], alone[1:]):
        np.testing.assert_allclose(a[:1], b, atol=ATOL)
    y, feedback, traces = cell.split_output(got[0], with_feedback=True)
    assert y.shape[-1] == 4 and feedback.shape[-1] == 5
    assert list(traces) == ["neural_stack/strengths"]
    # The feedback part is what the systems returned at that step: the
    # feedback state after it.
    final_feedback = cell.split_states(got[1:]).feedback
    np.testing.assert_allclose(feedback[:, -1], final_feedback, atol=ATOL)
    np.testing.assert_allclose(cell.split_output(got[0])[0], y)
    config = cell.get_config()
    assert config["output_feedback"] is True
    clone = sc.SuperloopCell.from_config(config)
    assert clone.output_feedback and clone.output_size == cell.output_size
    with pytest.raises(ValueError, match="`output_feedback`"):
        sc.SuperloopCell([sc.SGUCell(4)], output_feedback=True)
    with pytest.raises(TypeError, match="`output_feedback`"):
        sc.SuperloopCell([sc.SGUCell(4)], [sc.RegisterMemory(
            registers=2, width=2)], output_feedback="yes")


def _loop_runs_deeper_than_4(monkeypatch):
    """Makes fused runs of more than 4 layers loop over groups of 4."""
    monkeypatch.setattr(sgu_run, "UNROLL_UP_TO", 4)
    monkeypatch.setattr(sgu_run, "LAYERS_PER_ITERATION", 4)


@pytest.mark.parametrize("depth, looped", [
    (3, False), (11, False),  # runs of 2 and 10 layers, written out
    (6, True), (9, True), (11, True),  # one group + tail, two groups, two
])                                      # groups + tail
def test_fused_equals_unfused_outputs_states_and_gradients(
        monkeypatch, depth, looped):
    if looped:  # layer_loop=True, in groups of 4 layers
        monkeypatch.setattr(sgu_run, "LAYERS_PER_ITERATION", 4)
    # The fused run has a hand-written gradient: compare it with autodiff of
    # the unfused cells, through the whole loop, for the weights, the input
    # and the initial state.
    make = lambda fused: sc.SuperloopCell(  # noqa: E731
        [sc.SGUCell(5) for _ in range(depth)], [sc.RegisterMemory(registers=2, width=3)],
        fused=fused, layer_loop=looped)
    unfused, fused = make(False), make(True)
    assert fused.fused_runs == 1 and unfused.fused_runs == 0
    m_unfused = rnn_model(unfused, 2, return_sequences=True,
                          return_state=True)
    m_fused = rnn_model(fused, 2, return_sequences=True, return_state=True)
    randomize(unfused, seed=3)
    # One weight layout whatever `fused` says.
    m_fused.set_weights(m_unfused.get_weights())
    x = np.random.default_rng(0).normal(size=(3, 7, 2)).astype("float32")

    def run(model, cell):
        def loss(x):
            out = model(x)
            # Through the outputs and every final state (a sum over all
            # state values does not depend on the state layout).
            return keras.ops.sum(keras.ops.sin(out[0])) + sum(
                keras.ops.sum(keras.ops.cos(s)) for s in out[1:])

        _, d_weights, (d_x,) = value_and_gradients(
            loss, cell.trainable_weights, [x])
        return [to_numpy(o) for o in model(x)], d_x, d_weights

    a, d_x_a, grads_a = run(m_unfused, unfused)
    b, d_x_b, grads_b = run(m_fused, fused)
    np.testing.assert_allclose(a[0], b[0], atol=ATOL)
    # States: the fused run's one state is the unfused per-layer states.
    run_states = keras.ops.convert_to_numpy(
        fused.split_states(b[1:]).stages[1][0])
    per_layer = [keras.ops.convert_to_numpy(s[0]) for s in
                 unfused.split_states(a[1:]).stages[1:]]
    np.testing.assert_allclose(run_states, np.concatenate(per_layer, -1),
                               atol=ATOL)
    np.testing.assert_allclose(d_x_a, d_x_b, atol=ATOL)
    assert [tuple(w.shape) for w in unfused.trainable_weights] == [
        tuple(w.shape) for w in fused.trainable_weights]
    for w, ga, gb in zip(unfused.trainable_weights, grads_a, grads_b):
        np.testing.assert_allclose(ga, gb, atol=ATOL, err_msg=w.path)


@pytest.mark.parametrize("depth, looped", [(4, False), (9, True)])
def test_fused_gate_trace_gradients_equal_the_unfused_cells(
        monkeypatch, depth, looped):
    # A loss on the traced SGU gates trains through the fused run's gate
    # output, whose gradient is hand-written too (the `d_gates` branch).
    if looped:
        monkeypatch.setattr(sgu_run, "LAYERS_PER_ITERATION", 4)
    make = lambda fused: sc.SuperloopCell(  # noqa: E731
        [sc.SGUCell(5) for _ in range(depth)],
        [sc.NeuralStack(width=2, capacity=4)], fused=fused,
        layer_loop=looped, trace=True)
    unfused, fused = make(False), make(True)
    assert fused.fused_runs == 1 and unfused.fused_runs == 0
    gates = [name for name in sc.trace_names(fused.cells, fused.systems)
             if name.endswith("/gate")]
    assert len(gates) == depth
    m_unfused = rnn_model(unfused, 2, return_sequences=True)
    m_fused = rnn_model(fused, 2, return_sequences=True)
    randomize(unfused, seed=5)
    m_fused.set_weights(m_unfused.get_weights())
    x = np.random.default_rng(1).normal(size=(3, 6, 2)).astype("float32")
    weights = np.random.default_rng(2).normal(
        size=(fused.output_size,)).astype("float32")

    def run(model, cell):
        def loss(x):
            # Every output column weighted: y, the gates, the stack traces.
            return keras.ops.sum(
                keras.ops.multiply(keras.ops.sin(model(x)), weights))

        value, d_weights, (d_x,) = value_and_gradients(
            loss, cell.trainable_weights, [x])
        return value, d_x, d_weights

    value_a, d_x_a, grads_a = run(m_unfused, unfused)
    value_b, d_x_b, grads_b = run(m_fused, fused)
    np.testing.assert_allclose(value_a, value_b, atol=ATOL)
    np.testing.assert_allclose(d_x_a, d_x_b, atol=ATOL)
    for w, ga, gb in zip(unfused.trainable_weights, grads_a, grads_b):
        assert np.any(ga != 0), w.path
        np.testing.assert_allclose(ga, gb, atol=ATOL, err_msg=w.path)


@pytest.mark.parametrize("depth", [2, 15, 16, 32])
def test_weights_and_checkpoints_do_not_depend_on_fused(tmp_path, depth):
    models = {}
    for fused in (True, False, "auto"):
        keras.backend.clear_session()  # the same layer names in each model
        cell = sc.SuperloopCell([sc.SGUCell(3) for _ in range(depth)],
                                [sc.RegisterMemory(registers=2, width=2)], fused=fused)
        models[fused] = rnn_model(cell, 2, return_sequences=True)
    layouts = {f: [(w.path, tuple(w.shape)) for w in m.weights]
               for f, m in models.items()}
    assert layouts[True] == layouts[False] == layouts["auto"]
    assert len(layouts[True]) == 3 * depth + 2
    for cell in (m.layers[-1].cell for m in models.values()):
        assert all(c.built and len(c.weights) == 3 for c in cell.cells)
    randomize(models[True], seed=depth)
    x = np.random.default_rng(depth).normal(size=(2, 5, 2)).astype("f4")
    expected = models[True].predict(x, verbose=0)
    models[True].save_weights(tmp_path / "w.weights.h5")
    models[True].save(tmp_path / "m.keras")
    for fused in (False, "auto"):
        models[fused].load_weights(tmp_path / "w.weights.h5")
        np.testing.assert_allclose(models[fused].predict(x, verbose=0),
                                   expected, atol=ATOL)
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected,
                               atol=ATOL)


def test_auto_settings_per_backend():
    # Chosen by measurement per backend (see stages.py and sgu_run.py): on
    # torch, with nothing compiled, runs fuse sooner and never loop; on JAX,
    # which compiles every train step, every fused run loops.
    torch = BACKEND == "torch"
    assert AUTO_FUSED_RUN == (7 if torch else 15)
    assert sgu_run.UNROLL_UP_TO == {"torch": None, "jax": 0}.get(BACKEND, 32)


@pytest.mark.parametrize("fused, depth, runs", [
    ("auto", AUTO_FUSED_RUN, 0), ("auto", AUTO_FUSED_RUN + 1, 1),
    (True, 3, 1), (False, 16, 0)])
def test_which_runs_are_fused(fused, depth, runs):
    # "auto" (the default) fuses runs of AUTO_FUSED_RUN or more SGU layers
    # after cells[0].
    cell = sc.SuperloopCell([sc.SGUCell(4) for _ in range(depth)],
                            fused=fused)
    assert cell.fused_runs == runs
    assert sc.SuperloopCell([sc.SGUCell(4)]).fused == "auto"
    restored = sc.SuperloopCell.from_config(cell.get_config())
    assert restored.fused == fused
    assert restored.fused_runs == runs


def test_mixed_cells_fall_back_and_match_step_by_step():
    # A GRUCell and an LSTMCell among SGUCells: only same-width SGU runs fuse.
    cells = [sc.SGUCell(4), sc.SGUCell(4), sc.SGUCell(4),
             keras.layers.GRUCell(4), keras.layers.LSTMCell(5),
             sc.SGUCell(5), sc.SGUCell(5), keras.layers.SimpleRNNCell(3)]
    cell = sc.SuperloopCell(cells, [sc.RegisterMemory(registers=2, width=2)], fused=True)
    kinds = [type(s).__name__ for s in cell._stages]
    assert kinds == ["CellStage", "SGURunStage", "CellStage", "CellStage",
                     "SGURunStage", "CellStage"]
    # The previous output and the feedback first; LSTM has two states;
    # every state is in the flat layout.
    assert cell.state_size == [3, 2, 4, 8, 4, 5, 5, 10, 3, 4]
    layer = keras.layers.RNN(cell, return_sequences=True)
    x = np.random.default_rng(1).normal(size=(2, 5, 3)).astype("f4")
    out = keras.ops.convert_to_numpy(layer(x))
    # Drive the cell by hand, step by step, with the same weights.
    states = cell.get_initial_state(2)
    for t in range(5):
        y, states = cell(x[:, t], states)
        np.testing.assert_allclose(out[:, t], to_numpy(y), atol=ATOL)


@pytest.mark.parametrize("fused, depth", [(True, 3), (True, 7), (False, 3)])
def test_unroll_and_loop_give_same_outputs_and_gradients(monkeypatch, fused,
                                                         depth):
    # depth 7: the fused run of 6 loops over a group of layers.
    _loop_runs_deeper_than_4(monkeypatch)
    cell_loop = sc.SuperloopCell([sc.SGUCell(4) for _ in range(depth)],
                                 [sc.RegisterMemory(registers=2, width=3)], fused=fused)
    cell_unroll = sc.SuperloopCell.from_config(cell_loop.get_config())
    m_loop = rnn_model(cell_loop, 2, steps=6, return_sequences=True)
    m_unroll = rnn_model(cell_unroll, 2, steps=6, return_sequences=True,
                         unroll=True)
    randomize(m_loop, seed=4)
    m_unroll.set_weights(m_loop.get_weights())
    x = np.random.default_rng(2).normal(size=(2, 6, 2)).astype("float32")

    def outputs_and_grads(model):
        _, grads, _ = value_and_gradients(
            lambda: keras.ops.sum(keras.ops.sin(model(x))),
            model.trainable_weights)
        return to_numpy(model(x)), grads

    out_a, grads_a = outputs_and_grads(m_loop)
    out_b, grads_b = outputs_and_grads(m_unroll)
    np.testing.assert_allclose(out_a, out_b, atol=ATOL)
    assert len(grads_a) == len(grads_b) > 0
    for ga, gb in zip(grads_a, grads_b):
        np.testing.assert_allclose(ga, gb, atol=ATOL)


def _padded_batch_equals_each_alone(model, with_context, sequences):
    rng = np.random.default_rng(7)
    lengths = [7, 3, 5]
    seqs = [rng.normal(size=(n, 2)).astype("f4") + 3.0 for n in lengths]
    ctx = rng.normal(size=(3, 4, 1)).astype("f4")
    padded = np.zeros((3, 7, 2), "f4")
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = s
    inputs = lambda x, c: [x, c] if with_context else x  # noqa: E731
    batch_out = model.predict(inputs(padded, ctx), verbose=0)
    for i, s in enumerate(seqs):
        alone = model.predict(inputs(s[None], ctx[i : i + 1]), verbose=0)
        if sequences:
            got, want = batch_out[0][i, : len(s)], alone[0][0]
        else:
            got, want = batch_out[0][i], alone[0][0]
        np.testing.assert_allclose(got, want, atol=ATOL)
        assert len(batch_out) == len(alone) > 2  # output and the states
        for b_state, a_state in zip(batch_out[1:], alone[1:]):
            np.testing.assert_allclose(b_state[i], a_state[0], atol=ATOL)


@pytest.mark.parametrize("sequences", [True, False])
@pytest.mark.parametrize("cells", ["sgu_looped", "mixed"])
def test_masking_layer_padding_equals_each_sequence_alone(
        monkeypatch, sequences, cells):
    # 7 SGU layers: the fused run of 6 takes the looped path. "mixed": a
    # GRU and an LSTM cell of other widths.
    _loop_runs_deeper_than_4(monkeypatch)
    stack = ([sc.SGUCell(4) for _ in range(7)] if cells == "sgu_looped" else
             [keras.layers.GRUCell(5), keras.layers.LSTMCell(3)])
    cell = sc.SuperloopCell(stack, [sc.RegisterMemory(registers=2, width=3),
                                    sc.NeuralStack(width=2, capacity=3)], fused=True)
    seq = keras.Input((None, 2))
    masked = keras.layers.Masking(0.0)(seq)
    outputs = keras.layers.RNN(cell, return_sequences=sequences,
                               return_state=True)(masked)
    model = keras.Model(seq, outputs)
    randomize(cell, seed=6)
    _padded_batch_equals_each_alone(model, False, sequences)


@pytest.mark.parametrize("sequences", [True, False])
def test_explicit_mask_with_context_equals_each_sequence_alone(sequences):
    # With `initial_state`, Keras drops a Masking layer's mask: pass `mask=`.
    cell = sc.SuperloopCell([sc.SGUCell(4) for _ in range(3)],
                            [sc.RegisterMemory(registers=2, width=3), sc.Attention(positions=4, width=1)],
                            fused=True)
    seq = keras.Input((None, 2))
    data = keras.Input((4, 1))
    states = sc.initial_state(cell, seq, data)
    outputs = keras.layers.RNN(cell, return_sequences=sequences,
                               return_state=True)(
        seq, initial_state=states, mask=sc.StepMask(0.0)(seq))
    model = keras.Model([seq, data], outputs)
    randomize(cell, seed=6)
    _padded_batch_equals_each_alone(model, True, sequences)


def test_one_model_runs_short_and_long_sequences_without_rebuild():
    cell = sc.SuperloopCell([sc.SGUCell(4) for _ in range(3)],
                            [sc.RegisterMemory(registers=2, width=3)], fused=True)
    model = rnn_model(cell, 2, return_sequences=True)
    weights_before = [w.path for w in model.weights]
    for steps in (3, 300):
        x = np.ones((2, steps, 2), "f4")
        assert model.predict(x, verbose=0).shape == (2, steps, 4)
    assert [w.path for w in model.weights] == weights_before


def test_no_external_input_only_length_matters():
    # The older project's `model_inputs = 0`: inputs of width 0.
    cell = sc.SuperloopCell([sc.SGUCell(6), sc.SGUCell(6)],
                            [sc.Attention(positions=8, width=1)], fused=True)
    steps = keras.Input((None, 0))
    data = keras.Input((8, 1))
    states = sc.initial_state(cell, steps, data)
    _, *final = keras.layers.RNN(cell, return_state=True)(
        steps, initial_state=states)
    position = cell.system_states(final, 0)[0]
    model = keras.Model([steps, data], position)
    d = np.random.default_rng(0).normal(size=(2, 8, 1)).astype("f4")
    p10 = model.predict([np.zeros((2, 10, 0), "f4"), d], verbose=0)
    p20 = model.predict([np.zeros((2, 20, 0), "f4"), d], verbose=0)
    assert p10.shape == (2, 1)
    # Untrained, the head walks forward: further after more steps.
    assert np.all(p20 > p10) and np.all(p10 > 0)
    layers = sgu_layers(cell)
    ref, sys_states, _ = superloop_run(
        np.zeros((2, 10, 0)), layers,
        keras.ops.convert_to_numpy(cell.control_kernel),
        keras.ops.convert_to_numpy(cell.control_bias),
        [{"kind": "attention", "width": 1}], contexts=[d])
    np.testing.assert_allclose(p10, sys_states[0], atol=ATOL)


@pytest.mark.parametrize("fused", [True, False])
def test_gradients_match_finite_differences(fused):
    with float64():
        cell = sc.SuperloopCell([sc.SGUCell(3), sc.SGUCell(3), sc.SGUCell(3)],
                                [sc.RegisterMemory(registers=2, width=2), sc.Attention(positions=3, width=1)],
                                fused=fused)
        model = _attention_model(cell, 4, 2, 3, 1, return_sequences=True)
        randomize(cell, seed=8)
        rng = np.random.default_rng(9)
        x = rng.normal(size=(2, 4, 2))
        d = rng.normal(size=(2, 3, 1))
        projection = rng.normal(size=(2, 4, 3))

        def loss():
            # No `ops.sin` here: on JAX it computes in float32.
            out = model([x, d])
            return keras.ops.sum(keras.ops.multiply(out, projection)
                                 + keras.ops.square(out))

        _, grads, _ = value_and_gradients(loss, cell.trainable_weights)
        loss = compiled_value(loss, cell.trainable_weights)
        eps = 1e-6
        for w, g in zip(cell.trainable_weights, grads):
            flat = keras.ops.convert_to_numpy(w).reshape(-1).copy()
            for idx in rng.choice(flat.size, size=min(4, flat.size),
                                  replace=False):
                orig = flat[idx]
                flat[idx] = orig + eps
                w.assign(flat.reshape(w.shape))
                up = float(loss())
                flat[idx] = orig - eps
                w.assign(flat.reshape(w.shape))
                down = float(loss())
                flat[idx] = orig
                w.assign(flat.reshape(w.shape))
                numeric = (up - down) / (2 * eps)
                analytic = g.reshape(-1)[idx]
                np.testing.assert_allclose(analytic, numeric, rtol=1e-5,
                                           atol=1e-7, err_msg=w.path)


@pytest.mark.parametrize("case", ["zeros", "plus_1e4", "minus_1e4", "long"])
def test_no_nan_or_inf(case):
    steps = 2000 if case == "long" else 20
    cell = sc.SuperloopCell([sc.SGUCell(4) for _ in range(3)],
                            [sc.RegisterMemory(registers=2, width=3), sc.Attention(positions=4, width=2)],
                            fused=True)
    model = _attention_model(cell, None, 2, 4, 2, return_sequences=True)
    value = {"zeros": 0.0, "plus_1e4": 1e4, "minus_1e4": -1e4}.get(case, 1.0)
    x = np.full((2, steps, 2), value, "float32")
    d = np.full((2, 4, 2), value if case != "long" else 0.5, "float32")
    out = model.predict([x, d], verbose=0)
    _, grads, _ = value_and_gradients(
        lambda: keras.ops.sum(model([x, d])), model.trainable_weights,
        compiled=True)
    assert np.all(np.isfinite(out))
    for g in grads:
        assert np.all(np.isfinite(g))


def test_save_and_load_keras_file_gives_identical_outputs(tmp_path):
    cell = sc.SuperloopCell(
        [sc.SGUCell(4), sc.SGUCell(4), sc.SGUCell(4),
         keras.layers.LSTMCell(3)],
        [sc.RegisterMemory(registers=2, width=3), sc.Attention(positions=4, width=1, falloff="squared",
                                               normalize=True)],
        fused=True)
    model = _attention_model(cell, None, 2, 4, 1, return_sequences=True)
    randomize(cell, seed=10)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 6, 2)).astype("f4")
    d = rng.normal(size=(2, 4, 1)).astype("f4")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(model.predict([x, d], verbose=0),
                                  loaded.predict([x, d], verbose=0))
    loaded_cell = loaded.layers[-1].cell
    assert isinstance(loaded_cell, sc.SuperloopCell)
    assert loaded_cell.systems[1].falloff == "squared"


def test_config_round_trip():
    cell = sc.SuperloopCell(
        [sc.SGUCell(4), keras.layers.GRUCell(3), sc.SGUCell(5)],
        [sc.RegisterMemory(registers=2, width=3), sc.Attention(positions=6, width=2, clip_position=True)],
        control_bias_initializer="ones", fused=False, layer_loop=True,
        name="loop")
    config = cell.get_config()
    assert config["layer_loop"] is True
    clone = sc.SuperloopCell.from_config(config)
    assert clone.get_config() == config
    assert [type(c) for c in clone.cells] == [type(c) for c in cell.cells]
    assert clone.systems[1].clip_position is True
    assert clone.state_size == cell.state_size
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(cell))
    assert again.get_config() == config


# JAX always compiles the step (`jit_compile=False` there runs it op by op,
# a debugging mode many times slower); TensorFlow runs it either way; torch
# runs it eagerly (`True` would hand it to torch.compile).
@pytest.mark.parametrize("jit_compile", {"tensorflow": [False, True],
                                         "jax": [True]}.get(BACKEND, [False]))
def test_fit_lowers_loss_on_a_learnable_task(jit_compile):
    # Running sum of the input: needs memory across steps.
    rng = np.random.default_rng(12)
    x = rng.normal(size=(128, 12, 1)).astype("f4")
    y = np.cumsum(x, axis=1) / 4.0
    cell = sc.SuperloopCell([sc.SGUCell(8) for _ in range(3)],
                            [sc.RegisterMemory(registers=2, width=4)], fused=True)
    inp = keras.Input((None, 1))
    out = keras.layers.Dense(1)(
        keras.layers.RNN(cell, return_sequences=True)(inp))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(0.01), "mse", jit_compile=jit_compile)
    history = model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
