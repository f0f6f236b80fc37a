"""Traces: opt-in, equal to the NumPy references, and plotted."""

import keras
import numpy as np
import pytest

import superloop_cell as sc
from helpers import randomize, sgu_layers, value_and_gradients
from reference import (attention_step, register_memory_step, sgu_step,
                       softsign)

ATOL = 1e-5


def _cell(trace=False):
    return sc.SuperloopCell(
        [sc.SGUCell(5) for _ in range(3)],
        [sc.RegisterMemory(registers=2, width=3), sc.Attention(positions=6, width=1), sc.NeuralStack(width=2, capacity=4)],
        trace=trace, fused=True)


def test_trace_off_by_default_and_output_is_y():
    cell = _cell()
    assert cell.trace is False and cell.trace_layout == []
    assert cell.output_size == cell.y_size == 5


def test_traced_copy_matches_numpy_references():
    cell = sc.SuperloopCell([sc.SGUCell(5) for _ in range(3)],
                            [sc.RegisterMemory(registers=2, width=3), sc.Attention(positions=6, width=1)],
                            fused=True)
    seq = keras.Input((None, 2))
    data = keras.Input((6, 1))
    states = sc.initial_state(cell, seq, data)
    model = keras.Model([seq, data], keras.layers.RNN(
        cell, return_sequences=True)(seq, initial_state=states))
    randomize(cell, scale=0.5, seed=3)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 8, 2)).astype("f4")
    d = rng.normal(size=(2, 6, 1)).astype("f4")
    y, traces = sc.run_with_traces(cell, x, d)
    np.testing.assert_allclose(y, model.predict([x, d], verbose=0),
                               atol=ATOL)
    # Replay with NumPy and check every gate and system trace, step by step.
    layers = sgu_layers(cell)
    kernel = keras.ops.convert_to_numpy(cell.control_kernel)
    bias = keras.ops.convert_to_numpy(cell.control_bias)
    hs = [np.zeros((2, 5)) for _ in layers]
    memory = np.zeros((2, 2, 3))
    position = np.zeros((2, 1))
    feedback = np.zeros((2, 3 + 1))
    for t in range(8):
        u = np.concatenate([x[:, t], feedback], axis=-1)
        for i, (k, r, b) in enumerate(layers):
            z = u @ k + b
            f = (softsign(z[:, :5] + hs[i] @ r) + 1) / 2
            np.testing.assert_allclose(traces[f"sgu_{i}/gate"][:, t], f,
                                       atol=ATOL)
            hs[i] = sgu_step(u, hs[i], k, r, b)
            u = hs[i]
        controls = u @ kernel + bias
        c_mem, c_att = controls[:, :7], controls[:, 7:8]
        for key, logits in (("store", c_mem[:, :2]), ("recall", c_mem[:, 2:4])):
            e = np.exp(logits - logits.max(-1, keepdims=True))
            np.testing.assert_allclose(traces[f"register_memory/{key}"][:, t],
                                       e / e.sum(-1, keepdims=True), atol=ATOL)
        out_mem, memory = register_memory_step(c_mem, memory, 2, 3)
        out_att, position = attention_step(c_att, position, d)
        np.testing.assert_allclose(traces["attention/position"][:, t],
                                   position, atol=ATOL)
        np.testing.assert_allclose(traces["attention/weights"][:, t],
                                   1 / (1 + np.abs(position - np.arange(6))),
                                   atol=ATOL)
        feedback = np.concatenate([out_mem, out_att], axis=-1)


def test_trace_keys_and_widths():
    cell = _cell(trace=True)
    layout = dict(cell.trace_layout)
    assert layout == {
        "sgu_0/gate": 5, "sgu_1/gate": 5, "sgu_2/gate": 5,
        "register_memory/store": 2, "register_memory/recall": 2,
        "attention/position": 1, "attention/weights": 6,
        "neural_stack/push": 1, "neural_stack/pop": 1,
        "neural_stack/strengths": 4, "neural_stack/read_weights": 4,
    }
    assert cell.output_size == 5 + sum(layout.values())


@pytest.mark.parametrize("system", [sc.RegisterMemory(registers=2, width=3),
                                    sc.Attention(positions=4, width=2), sc.NeuralStack(width=2, capacity=3),
                                    sc.HardAttention(positions=4, width=2)])
def test_each_system_trace_matches_its_declared_sizes(system):
    control = np.random.default_rng(0).normal(
        size=(3, system.control_size)).astype("f4")
    states = [np.random.default_rng(1).random((3, s)).astype("f4")
              for s in system.state_size]
    out, new_states, trace = system(control, states, traces=True)
    assert list(trace) == list(system.trace_sizes)
    # The same pass: the output and states equal those without traces.
    out_alone, states_alone = system(control, states)
    np.testing.assert_allclose(out, out_alone)
    for a, b in zip(new_states, states_alone):
        np.testing.assert_allclose(a, b)
    for key, width in system.trace_sizes.items():
        assert tuple(trace[key].shape) == (3, width), key


def test_plot_traces_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from superloop_cell.plotting import plot_traces

    cell = _cell()
    layer = keras.layers.RNN(cell)
    x = np.random.default_rng(5).normal(size=(2, 12, 2)).astype("f4")
    d = np.random.default_rng(6).normal(size=(2, 6, 1)).astype("f4")
    layer(x, initial_state=sc.initial_state(cell, x, d))
    _, traces = sc.run_with_traces(cell, x, d)
    path = plot_traces(traces, tmp_path / "t.png", sample=1)
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 200
    assert image[..., :3].std() > 0.05  # not blank


def test_trace_axis_labels_come_from_the_systems():
    cell = sc.SuperloopCell(
        [sc.SGUCell(3)],
        [sc.RegisterMemory(registers=2, width=3), sc.HardAttention(positions=5, width=1), sc.NeuralStack(width=2, capacity=4),
         sc.RegisterMemory(registers=2, width=2)])
    assert sc.trace_axis_labels(cell) == {
        "register_memory/store": "register",
        "register_memory/recall": "register",
        "hard_attention/weights": "position",
        "hard_attention/probabilities": "move + 1",
        "register_memory_1/store": "register",
        "register_memory_1/recall": "register",
    }
    with pytest.raises(TypeError, match="expected a SuperloopCell"):
        sc.trace_axis_labels(sc.SGUCell(3))


def test_trace_axis_labels_of_a_selection_fit_its_output(tmp_path):
    pytest.importorskip("matplotlib")
    cell = sc.SuperloopCell(
        [sc.SGUCell(3)], [sc.RegisterMemory(registers=2, width=3), sc.NeuralStack(width=2, capacity=4)],
        trace=["register_memory/store", "neural_stack/strengths"])
    assert sc.trace_axis_labels(cell) == {"register_memory/store": "register"}
    out = keras.layers.RNN(cell, return_sequences=True)(
        np.zeros((1, 4, 2), "float32"))
    _, traces = cell.split_output(keras.ops.convert_to_numpy(out))
    from superloop_cell.plotting import plot_traces

    # Used to raise: the labels named a trace the output does not carry.
    path = plot_traces(traces, tmp_path / "some.png",
                       axis_labels=sc.trace_axis_labels(cell))
    assert path.stat().st_size > 0


def test_group_traces_sorts_gates_heatmaps_and_lines_in_order():
    cell = sc.SuperloopCell(
        [sc.SGUCell(3), sc.SGUCell(3)],
        [sc.Attention(positions=5, width=1), sc.NeuralStack(width=2, capacity=4)])
    x = np.random.default_rng(0).normal(size=(2, 6, 1)).astype("f4")
    data = np.random.default_rng(1).normal(size=(2, 5, 1)).astype("f4")
    cell.build((None, 1))
    _, traces = sc.run_with_traces(cell, x, [data])
    groups = sc.group_traces(traces, sc.trace_axis_labels(cell))
    assert list(groups.gates) == ["sgu_0", "sgu_1"]
    assert groups.gates["sgu_1"].shape == (2, 6, 3)
    assert list(groups.systems) == ["attention", "neural_stack"]
    attention = groups.systems["attention"]
    assert set(attention.heatmaps) == {"weights"}
    assert attention.row_labels == {"weights": "position"}
    np.testing.assert_array_equal(attention.lines["position"],
                                  traces["attention/position"][..., 0])
    stack = groups.systems["neural_stack"]
    assert set(stack.heatmaps) == {"strengths", "read_weights"}
    assert stack.row_labels == {"strengths": "slot", "read_weights": "slot"}
    assert set(stack.lines) == {"push", "pop"}
    # Any leading axes are kept: one sample, as the plots pass it.
    one = sc.group_traces({k: v[1] for k, v in traces.items()})
    assert one.systems["neural_stack"].heatmaps["strengths"].shape == (6, 4)
    # A system's own trace called "gate" is the system's, not an SGU gate.
    mine = sc.group_traces({"valve/gate": np.zeros((1, 2, 3))})
    assert not mine.gates and set(mine.systems["valve"].heatmaps) == {"gate"}
    with pytest.raises(ValueError, match="`component/trace`, got 'gate'"):
        sc.group_traces({"gate": np.zeros((1, 2, 3))})


def test_plot_traces_labels_and_checks_its_axes(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.axes

    from superloop_cell.plotting import plot_traces

    ylabels = []
    set_ylabel = matplotlib.axes.Axes.set_ylabel
    monkeypatch.setattr(
        matplotlib.axes.Axes, "set_ylabel",
        lambda ax, label, *a, **k: (ylabels.append(label),
                                    set_ylabel(ax, label, *a, **k))[1])

    traces = {"register_memory/store": np.zeros((1, 4, 2), "f4")}
    with pytest.raises(TypeError, match="`axis_labels`: expected a dict"):
        plot_traces(traces, tmp_path / "t.png", axis_labels=["register"])
    with pytest.raises(ValueError, match=r"not in `traces`: \['attention/w"):
        plot_traces(traces, tmp_path / "t.png",
                    axis_labels={"attention/weights": "position"})
    plot_traces(traces, tmp_path / "t.png")
    plot_traces(traces, tmp_path / "t.png",
                axis_labels={"register_memory/store": "register"})
    # (The colour bars set empty labels.)
    assert [label for label in ylabels if label] == ["slot", "register"]


def test_selected_traces_equal_the_full_ones_and_keep_their_order():
    full = _cell(trace=True)
    names = ["neural_stack/read_weights", "attention/position", "sgu_1/gate"]
    some = _cell(trace=names)
    assert some.trace is True
    # Layout order is the full cell's order, whatever the order asked for.
    assert [n for n, _ in some.trace_layout] == [
        "sgu_1/gate", "attention/position", "neural_stack/read_weights"]
    assert some.output_size == 5 + 5 + 1 + 4
    assert sc.trace_names(full.cells, full.systems) == [
        n for n, _ in full.trace_layout]
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 9, 2)).astype("f4")
    d = rng.normal(size=(3, 6, 1)).astype("f4")
    outputs = {}
    for cell in (full, some):
        layer = keras.layers.RNN(cell, return_sequences=True)
        layer.build((None, None, 2))
        outputs[id(cell)] = layer
    randomize(full, scale=0.5, seed=8)
    some.set_weights(full.get_weights())
    y_full, traces_full = full.split_output(keras.ops.convert_to_numpy(
        outputs[id(full)](x, initial_state=sc.initial_state(full, x, d))))
    y_some, traces_some = some.split_output(keras.ops.convert_to_numpy(
        outputs[id(some)](x, initial_state=sc.initial_state(some, x, d))))
    np.testing.assert_allclose(y_some, y_full, atol=ATOL)
    assert sorted(traces_some) == sorted(names)
    for name in names:
        np.testing.assert_allclose(traces_some[name], traces_full[name],
                                   atol=ATOL)


def test_selected_traces_round_trip_through_config():
    cell = _cell(trace=["attention/position"])
    config = cell.get_config()
    assert config["trace"] == ["attention/position"]
    twin = sc.SuperloopCell.from_config(config)
    assert twin.trace_layout == [("attention/position", 1)]
    assert sc.SuperloopCell.from_config(_cell(True).get_config()).trace is True


def test_a_position_trace_trains_a_loss_on_every_step():
    # The use the selection is for: a loss on the head's position at each
    # step, through the integer moves' straight-through gradient.
    head = sc.Attention(positions=5, width=1, integer_moves=True, falloff="gaussian",
                        sharpness=8.0, normalize=True)
    cell = sc.SuperloopCell([sc.SGUCell(4)], [head],
                            trace=["attention/position"])
    steps = keras.Input((6, 0))
    data = keras.Input((5, 1))
    seq = keras.layers.RNN(cell, return_sequences=True)(
        steps, initial_state=sc.initial_state(cell, steps, data))
    model = keras.Model([steps, data], seq)
    x = [np.zeros((4, 6, 0), "f4"),
         np.random.default_rng(9).random((4, 5, 1)).astype("f4")]
    def loss():
        position = cell.split_output(model(x))[1]["attention/position"]
        return keras.ops.mean(keras.ops.square(position - 1.0))

    _, (grads,), _ = value_and_gradients(loss, [cell.control_bias])
    assert np.all(np.isfinite(grads)) and np.abs(grads).max() > 0
