"""One step of a run of same-width SGU layers, with a hand-written gradient.

Differentiating a deep stack inside `keras.layers.RNN`'s loop the automatic
way makes the backend keep every intermediate of every layer for every step
(about a dozen tensors per layer) and builds a gradient graph op by op from
them; for a 32-layer stack that dominates both the first step (graph
construction) and the steady step (saving and restoring the intermediates).

`sgu_run` keeps only the run's input and states. Its backward pass
recomputes the forward pass of the run (cheap: small matrices) and walks
back through the layers with the SGU derivatives written out below, so the
loop saves two tensors per step whatever the depth.

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

from superloop_cell.cells.sgu import CANDIDATE_NEGATIVE_SLOPE


def _forward(x, hs, kernels, recurrent_kernels, biases, keep):
    """Runs the layers; with `keep`, also returns what the backward needs."""
    saved = []
    outs = []
    for h, k, r, b in zip(hs, kernels, recurrent_kernels, biases):
        units = h.shape[-1]
        z = ops.matmul(x, k) + b
        a = z[:, :units] + ops.matmul(h, r)
        zc = z[:, units:]
        s = 0.5 * (1.0 - ops.softsign(a))
        c = ops.leaky_relu(zc, negative_slope=CANDIDATE_NEGATIVE_SLOPE)
        h_new = h + s * (c - h)
        if keep:
            saved.append((x, h, a, zc, s, c))
        outs.append(h_new)
        x = h_new
    return outs, saved


def _backward(upstream, saved, kernels, recurrent_kernels):
    depth = len(saved)
    grads_h = [None] * depth
    grads_k = [None] * depth
    grads_r = [None] * depth
    grads_b = [None] * depth
    d_next = None  # gradient reaching x_{l+1} from the layer above
    for l in reversed(range(depth)):
        x, h, a, zc, s, c = saved[l]
        delta = upstream[l] if d_next is None else upstream[l] + d_next
        d_c = delta * s
        d_s = delta * (c - h)
        d_a = -0.5 * d_s / ops.square(1.0 + ops.abs(a))
        d_zc = d_c * ops.where(zc > 0, 1.0, CANDIDATE_NEGATIVE_SLOPE)
        d_z = ops.concatenate([d_a, d_zc], axis=-1)
        grads_h[l] = delta * (1.0 - s) + ops.matmul(
            d_a, ops.transpose(recurrent_kernels[l])
        )
        grads_r[l] = ops.matmul(ops.transpose(h), d_a)
        grads_k[l] = ops.matmul(ops.transpose(x), d_z)
        grads_b[l] = ops.sum(d_z, axis=0)
        d_next = ops.matmul(d_z, ops.transpose(kernels[l]))
    return d_next, grads_h, grads_k, grads_r, grads_b


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
    return _sgu_run(x, states, kernel, recurrent_kernel, bias)


@ops.custom_gradient
def _sgu_run(x, states, kernel, recurrent_kernel, bias):
    depth = kernel.shape[0]
    kernels = ops.unstack(kernel, depth)
    recurrent_kernels = ops.unstack(recurrent_kernel, depth)
    biases = ops.unstack(bias, depth)
    hs = ops.split(states, depth, axis=-1)
    outs, _ = _forward(x, hs, kernels, recurrent_kernels, biases, keep=False)
    new_states = ops.concatenate(outs, axis=-1)

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        # Recompute rather than keep: the loop then saves x and the states
        # only (see the module docstring).
        _, saved = _forward(
            x, hs, kernels, recurrent_kernels, biases, keep=True
        )
        d_x, d_h, d_k, d_r, d_b = _backward(
            ops.split(upstream, depth, axis=-1),
            saved,
            kernels,
            recurrent_kernels,
        )
        return (
            d_x,
            ops.concatenate(d_h, axis=-1),
            ops.stack(d_k),
            ops.stack(d_r),
            ops.stack(d_b),
        )

    return new_states, grad
