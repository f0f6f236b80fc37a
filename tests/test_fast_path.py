"""What the fast path promises beyond equal outputs: a graph that does not
grow with depth, and how `fit` traces a padded dataset per backend."""

import keras
import numpy as np

import superloop_cell as sc
from helpers import TENSORFLOW, TORCH


def _train_graph_size(depth, fused=True):
    """Ops in the traced gradient step: TensorFlow graph nodes (with its
    function library), JAX equations (with every sub-jaxpr), or the nodes
    of the autograd graph torch records for a 3-step sequence."""
    cell = sc.SuperloopCell([sc.SGUCell(4) for _ in range(depth)],
                            [sc.RegisterMemory(registers=2, width=2)], fused=fused)
    layer = keras.layers.RNN(cell, return_sequences=True)
    layer(np.zeros((1, 2, 2), "float32"))
    if TORCH:
        loss = keras.ops.sum(layer(np.zeros((1, 3, 2), "float32")))
        seen, pending = set(), [loss.grad_fn]
        while pending:
            node = pending.pop()
            if node is not None and node not in seen:
                seen.add(node)
                pending.extend(n for n, _ in node.next_functions)
        return len(seen)
    if TENSORFLOW:
        import tensorflow as tf

        @tf.function
        def train(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(layer(x))
            return tape.gradient(loss, layer.trainable_weights)

        graph = train.get_concrete_function(
            tf.TensorSpec((None, None, 2))).graph.as_graph_def()
        return len(graph.node) + sum(len(f.node_def)
                                     for f in graph.library.function)
    import jax

    def loss(values, x):
        out, _ = layer.stateless_call(values, [], x)
        return out.sum()

    values = [v.value for v in layer.trainable_variables]
    jaxpr = jax.make_jaxpr(jax.grad(loss))(values, np.zeros((1, 3, 2), "f4"))

    def count(jaxpr):
        total = 0
        for eqn in jaxpr.eqns:
            total += 1
            for param in eqn.params.values():
                for sub in param if isinstance(param, (list, tuple)) else [
                        param]:
                    inner = getattr(sub, "jaxpr", None)
                    if inner is not None:
                        total += count(getattr(inner, "jaxpr", inner))
        return total

    return count(jaxpr.jaxpr)


def test_graph_does_not_grow_with_depth():
    # Runs deeper than UNROLL_UP_TO layers loop over groups of layers.
    small, deep = _train_graph_size(42), _train_graph_size(66)
    fused_per_layer = (deep - small) / 24
    unfused_per_layer = (_train_graph_size(6, fused=False)
                         - _train_graph_size(3, fused=False)) / 3
    # Only bookkeeping (splitting the states, reading and stacking each
    # layer's weights outside the loop) grows with the depth of a fused
    # run; each unfused layer
    # adds its whole forward and gradient graph.
    assert fused_per_layer < unfused_per_layer / 10, (fused_per_layer,
                                                      unfused_per_layer)
    if TENSORFLOW:
        # The weights are stacked once outside the while loop.
        assert deep < 1.15 * small, (small, deep)
    elif TORCH:
        # Per layer: its 3 weights (leaves) and reading each at each of
        # the 3 steps; the fused run itself is one node per step.
        assert fused_per_layer <= 15, (small, deep)
    else:
        # JAX traces the stacking of the 3 weights into the program: per
        # layer one stacked operand each, one slice of each gradient.
        assert fused_per_layer <= 6, (small, deep)


def test_fit_on_padded_dataset_traces_per_backend():
    import tensorflow as tf

    cell = sc.SuperloopCell([sc.SGUCell(4) for _ in range(6)],
                            [sc.RegisterMemory(registers=2, width=3)], fused=True)
    inp = keras.Input((None, 2))
    out = keras.layers.Dense(1)(keras.layers.RNN(
        cell, return_sequences=True)(inp))
    model = keras.Model(inp, out)
    model.compile("rmsprop", "mse")
    traces = []
    original = model.train_step

    def counting_train_step(*args):  # JAX passes (state, data)
        traces.append(1)  # Python runs here once per trace
        return original(*args)

    model.train_step = counting_train_step
    lengths = [3, 9, 5, 14, 7, 11, 4, 8]
    rng = np.random.default_rng(0)

    def samples():
        for n in lengths * 4:
            x = rng.normal(size=(n, 2)).astype("float32")
            yield x, np.cumsum(x[:, :1], axis=0)

    spec = (tf.TensorSpec((None, 2), tf.float32),
            tf.TensorSpec((None, 1), tf.float32))
    data = tf.data.Dataset.from_generator(samples, output_signature=spec)
    data = data.padded_batch(4)  # each batch padded to its own length
    model.fit(data, epochs=2, verbose=0)
    if TENSORFLOW:
        # Keras traces the step on the first batch (TF 2.21 traces it
        # twice there); new lengths later in the epoch and epoch 2 add none.
        assert 1 <= len(traces) <= 2, len(traces)
    elif TORCH:
        # Keras' torch trainer runs the step eagerly: once per batch, any
        # length, nothing compiled.
        assert len(traces) == 2 * len(lengths), len(traces)
    else:
        # JAX compiles per shape: once per distinct padded length, in the
        # first epoch only (superloop_cell.data.BucketedSequences bounds
        # the number of shapes).
        padded = {max(lengths[i:i + 4]) for i in range(0, len(lengths), 4)}
        assert len(traces) == len(padded), (len(traces), padded)
