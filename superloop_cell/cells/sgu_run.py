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
than `UNROLL_UP_TO` layers loop over groups of layers (`_loops.scan`) in
both directions, so the graph does not grow with depth either.

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

# Runs up to this deep are written out layer by layer (no loop overhead).
# Deeper runs loop over groups of LAYERS_PER_ITERATION layers, written out
# inside the loop body, plus a written-out tail of `depth % group` layers:
# the graph stays the same size whatever the depth, and the loop's own cost
# per iteration is shared by a group (see benchmarks/RESULTS.md).
UNROLL_UP_TO = 4
LAYERS_PER_ITERATION = 4


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
    # Products with a transposed operand as einsums: no transposed copies.
    d_h = delta * (1.0 - s) + ops.einsum("bj,ij->bi", d_a, r)
    d_r = ops.einsum("bi,bj->ij", h, d_a)
    d_k = ops.einsum("bi,bj->ij", x, d_z)
    d_b = ops.sum(d_z, axis=0)
    d_x = ops.einsum("bj,ij->bi", d_z, k)
    return d_x, d_h, d_k, d_r, d_b


def _forward(x, hs, ks, rs, bs):
    """Layers written out: lists of per-layer tensors → list of new h."""
    outs = []
    for h, k, r, b in zip(hs, ks, rs, bs):
        x, _ = _layer(x, h, k, r, b)
        outs.append(x)
    return outs


def _backward(d_x, ups, inputs, hs, ks, rs, bs):
    """Layers written out, last first: `d_x` is the gradient reaching the
    last layer's output from above (None for none); returns the gradient at
    the first layer's input and the per-layer (∂h, ∂K, ∂R, ∂b) lists."""
    n = len(hs)
    grads = [[None] * n for _ in range(4)]
    for l in reversed(range(n)):
        delta = ups[l] if d_x is None else ups[l] + d_x
        d_x, *layer_grads = _layer_grad(
            delta, inputs[l], hs[l], ks[l], rs[l], bs[l]
        )
        for g, value in zip(grads, layer_grads):
            g[l] = value
    return d_x, grads


def _rest(shape):
    # The batch axis may be unknown while tracing: let reshape infer it.
    return tuple(-1 if d is None else d for d in shape)


def _grouped(tensor, n_groups, group):
    """`(n_groups·group, ...)` → `(n_groups, group, ...)`."""
    return ops.reshape(tensor, (n_groups, group) + _rest(tensor.shape[1:]))


def _ungrouped(tensor):
    """`(n_groups, group, ...)` → a list of `n_groups·group` tensors."""
    n = tensor.shape[0] * tensor.shape[1]
    return ops.unstack(ops.reshape(tensor, (n,) + _rest(tensor.shape[2:])), n)


@ops.custom_gradient
def _sgu_run(x, states, kernel, recurrent_kernel, bias):
    depth, units = kernel.shape[0], kernel.shape[1]
    group = LAYERS_PER_ITERATION
    n_groups = depth // group if depth > UNROLL_UP_TO else 0
    looped = n_groups * group  # layers done by the loop; the rest written out
    # Per-layer states as (depth, batch, units).
    hs = ops.transpose(ops.reshape(states, (-1, depth, units)), (1, 0, 2))
    weights = (kernel, recurrent_kernel, bias)

    def unstacked(tensors, start, stop):
        return [ops.unstack(t[start:stop], stop - start) for t in tensors]

    outs = []
    x_l = x
    if n_groups:

        def forward(carry, per_group):
            new = _forward(carry, *(ops.unstack(t, group) for t in per_group))
            return new[-1], (ops.stack(new),)

        x_l, (looped_outs,) = _loops.scan(
            forward,
            x,
            tuple(_grouped(t[:looped], n_groups, group)
                  for t in (hs,) + weights),
            n_groups,
        )
        outs = _ungrouped(looped_outs)
    tail = _forward(x_l, *unstacked((hs,) + weights, looped, depth))
    outs = list(outs) + tail
    new_states = ops.concatenate(outs, axis=-1)

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        ups = ops.split(upstream, depth, axis=-1)
        inputs = [x] + outs[:-1]
        d_x, tail_grads = _backward(
            None, ups[looped:], inputs[looped:],
            *unstacked((hs,) + weights, looped, depth),
        )
        grads = [list(g) for g in tail_grads]
        if n_groups:
            if d_x is None:  # no tail: nothing reaches the loop from above
                d_x = ops.zeros_like(x)

            def backward(d_next, per_group):
                d_x, group_grads = _backward(
                    d_next, *(ops.unstack(t, group) for t in per_group)
                )
                return d_x, tuple(ops.stack(g) for g in group_grads)

            per_layer = (
                ops.stack(ups[:looped]),
                ops.stack(inputs[:looped]),
                hs[:looped],
            ) + tuple(w[:looped] for w in weights)
            d_x, looped_grads = _loops.scan(
                backward,
                d_x,
                tuple(_grouped(t, n_groups, group) for t in per_layer),
                n_groups,
                reverse=True,
            )
            for g, looped_g in zip(grads, looped_grads):
                g[:0] = _ungrouped(looped_g)
        d_h, d_k, d_r, d_b = grads
        return (
            d_x,
            ops.concatenate(d_h, axis=-1),
            ops.stack(d_k),
            ops.stack(d_r),
            ops.stack(d_b),
        )

    return new_states, grad
