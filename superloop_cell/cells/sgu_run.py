"""One step of a run of same-width SGU layers, with a hand-written gradient.

Differentiating a deep stack inside `keras.layers.RNN`'s loop the automatic
way makes the backend keep every intermediate of every layer for every step
(about a dozen tensors per layer, each in its own accumulator) and build the
gradient graph op by op from them; for a 32-layer stack that dominates both
the first step (graph construction) and the steady step (saving and
restoring the intermediates).

`sgu_run` keeps only the run's input and its new states. Its backward pass
walks back through the layers, recomputing each layer's internals from its
input and state, with the SGU derivatives written out below. Runs deeper
than `UNROLL_UP_TO` layers loop over the layer axis (`_loops.scan`) in both
directions, so the graph does not grow with depth either.

Forward, for layer l with input x_l (x_0 = the run's input) and state h_l:

    z  = x_l · K_l + b_l,   a = z_g + h_l · R_l,   g = softsign(a)
    c  = leaky_relu(z_c, 0.1),   s = (1 − g)/2   (s = 1 − f)
    h'_l = h_l + s · (c − h_l)  =  x_{l+1}

Backward, with δ the gradient reaching h'_l (from the loss through the new
state, plus from layer l+1 through x_{l+1}):

    ∂c = δ · s,   ∂s = δ · (c − h_l),   ∂h_l = δ · (1 − s)
    ∂a = −∂s / (2 (1 + |a|)²)
    ∂z_c = ∂c · (1 if z_c > 0 else 0.1),   ∂z_g = ∂a
    ∂h_l += ∂a · R_lᵀ,   ∂R_l = h_lᵀ · ∂a
    ∂K_l = x_lᵀ · ∂z,   ∂b_l = Σ_batch ∂z,   ∂x_l = ∂z · K_lᵀ
"""

from keras import ops

from superloop_cell import _loops
from superloop_cell.cells.sgu import CANDIDATE_NEGATIVE_SLOPE

# Runs up to this deep are written out layer by layer (no loop overhead);
# deeper runs loop over the layer axis, keeping the graph size constant.
UNROLL_UP_TO = 4


def sgu_run(x, states, kernel, recurrent_kernel, bias):
    """One step of `depth` stacked SGU layers of `units` each.

    Args:
        x: `(batch, units)`, the input of the first layer.
        states: `(batch, depth·units)`, every layer's `h`, layer-major.
        kernel: `(depth, units, 2·units)`.
        recurrent_kernel: `(depth, units, units)`.
        bias: `(depth, 2·units)`.

    Returns:
        `(batch, depth·units)`: every layer's new `h`; the run's output is
        the last `units` columns.
    """
    if kernel.shape[0] > UNROLL_UP_TO:
        return _sgu_run_looped(x, states, kernel, recurrent_kernel, bias)
    return _sgu_run_unrolled(x, states, kernel, recurrent_kernel, bias)


def _layer(x, h, k, r, b):
    """One SGU layer: `(h', (a, z_c, s, c))`, the internals for backward."""
    units = h.shape[-1]
    z = ops.matmul(x, k) + b
    a = z[:, :units] + ops.matmul(h, r)
    zc = z[:, units:]
    s = 0.5 * (1.0 - ops.softsign(a))
    c = ops.leaky_relu(zc, negative_slope=CANDIDATE_NEGATIVE_SLOPE)
    return h + s * (c - h), (a, zc, s, c)


def _layer_grad(delta, x, h, k, r, b):
    """Gradients of one layer given δ at its output: (∂x, ∂h, ∂K, ∂R, ∂b)."""
    _, (a, zc, s, c) = _layer(x, h, k, r, b)
    d_c = delta * s
    d_s = delta * (c - h)
    d_a = -0.5 * d_s / ops.square(1.0 + ops.abs(a))
    d_zc = d_c * ops.where(zc > 0, 1.0, CANDIDATE_NEGATIVE_SLOPE)
    d_z = ops.concatenate([d_a, d_zc], axis=-1)
    d_h = delta * (1.0 - s) + ops.matmul(d_a, ops.transpose(r))
    d_r = ops.matmul(ops.transpose(h), d_a)
    d_k = ops.matmul(ops.transpose(x), d_z)
    d_b = ops.sum(d_z, axis=0)
    d_x = ops.matmul(d_z, ops.transpose(k))
    return d_x, d_h, d_k, d_r, d_b


@ops.custom_gradient
def _sgu_run_looped(x, states, kernel, recurrent_kernel, bias):
    depth = kernel.shape[0]
    units = kernel.shape[1]
    hs = ops.transpose(ops.reshape(states, (-1, depth, units)), (1, 0, 2))

    def forward(carry, per_layer):
        h, k, r, b = per_layer
        h_new, _ = _layer(carry, h, k, r, b)
        return h_new, (h_new,)

    _, (outs,) = _loops.scan(
        forward, x, (hs, kernel, recurrent_kernel, bias), depth
    )
    new_states = ops.reshape(ops.transpose(outs, (1, 0, 2)), (-1, depth * units))

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        ups = ops.transpose(ops.reshape(upstream, (-1, depth, units)), (1, 0, 2))
        inputs = ops.concatenate([x[None], outs[:-1]], axis=0)

        def backward(d_next, per_layer):
            up, x_l, h, k, r, b = per_layer
            d_x, d_h, d_k, d_r, d_b = _layer_grad(up + d_next, x_l, h, k, r, b)
            return d_x, (d_h, d_k, d_r, d_b)

        d_x, (d_h, d_k, d_r, d_b) = _loops.scan(
            backward,
            ops.zeros_like(x),
            (ups, inputs, hs, kernel, recurrent_kernel, bias),
            depth,
            reverse=True,
        )
        d_states = ops.reshape(ops.transpose(d_h, (1, 0, 2)), (-1, depth * units))
        return d_x, d_states, d_k, d_r, d_b

    return new_states, grad


@ops.custom_gradient
def _sgu_run_unrolled(x, states, kernel, recurrent_kernel, bias):
    depth = kernel.shape[0]
    kernels = ops.unstack(kernel, depth)
    recurrent_kernels = ops.unstack(recurrent_kernel, depth)
    biases = ops.unstack(bias, depth)
    hs = ops.split(states, depth, axis=-1)
    outs = []
    x_l = x
    for h, k, r, b in zip(hs, kernels, recurrent_kernels, biases):
        x_l, _ = _layer(x_l, h, k, r, b)
        outs.append(x_l)
    new_states = ops.concatenate(outs, axis=-1)

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        ups = ops.split(upstream, depth, axis=-1)
        inputs = [x] + outs[:-1]
        d_h, d_k, d_r, d_b = ([None] * depth for _ in range(4))
        d_x = None
        for l in reversed(range(depth)):
            delta = ups[l] if d_x is None else ups[l] + d_x
            d_x, d_h[l], d_k[l], d_r[l], d_b[l] = _layer_grad(
                delta, inputs[l], hs[l], kernels[l], recurrent_kernels[l],
                biases[l],
            )
        return (
            d_x,
            ops.concatenate(d_h, axis=-1),
            ops.stack(d_k),
            ops.stack(d_r),
            ops.stack(d_b),
        )

    return new_states, grad
