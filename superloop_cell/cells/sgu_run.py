"""One step of a run of same-width SGU layers, with a hand-written gradient.

Differentiating a deep stack inside `keras.layers.RNN`'s loop the automatic
way makes the backend keep every intermediate of every layer for every step
(about a dozen tensors per layer, each in its own accumulator) and build the
gradient graph op by op from them; for a 32-layer stack that dominates both
the first step (graph construction) and the steady step (saving and
restoring the intermediates).

`sgu_run` saves, per step, the run's input and states and three stacked
`(depth, batch, units)` tensors of internals (`a`, `s`, `c` below): a few
accumulators per step whatever the depth, instead of a dozen per layer.
Its backward pass walks back through the layers with the SGU derivatives
written out below (about two thirds of the ops autodiff emits for them).
Runs deeper than `UNROLL_UP_TO` layers loop over groups of layers
(`_loops.scan`) in both directions, so the graph does not grow with depth
either.

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

# Runs up to this deep are written out layer by layer: on a 2-core CPU a
# loop over a 31-layer run cost 20–30 % more per training step than the
# written-out run (benchmarks/RESULTS.md), for a first step about 2.5 s
# shorter. Deeper runs loop over groups of LAYERS_PER_ITERATION layers
# (written out inside the loop body) plus a written-out tail of
# `depth % group` layers, so the graph stops growing with depth there.
UNROLL_UP_TO = 32
LAYERS_PER_ITERATION = 8


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
    """One SGU layer: `(h', (a, s, c))`, the internals backward needs."""
    units = h.shape[-1]
    z = ops.matmul(x, k) + b
    a = z[:, :units] + ops.matmul(h, r)
    s = 0.5 * (1.0 - ops.softsign(a))
    c = ops.leaky_relu(z[:, units:], negative_slope=CANDIDATE_NEGATIVE_SLOPE)
    return h + s * (c - h), (a, s, c)


def _layer_grad(delta, x, h, k, r, a, s, c):
    """Gradients of one layer given δ at its output: (∂x, ∂h, ∂K, ∂R, ∂b)."""
    d_c = delta * s
    d_a = (-0.5 * delta) * (c - h) / ops.square(1.0 + ops.abs(a))
    # leaky_relu' from the sign of its output c (the same as that of z_c).
    d_zc = d_c * ops.where(c > 0, 1.0, CANDIDATE_NEGATIVE_SLOPE)
    d_z = ops.concatenate([d_a, d_zc], axis=-1)
    # Products with a transposed operand as einsums: no transposed copies.
    d_h = delta * (1.0 - s) + ops.einsum("bj,ij->bi", d_a, r)
    d_r = ops.einsum("bi,bj->ij", h, d_a)
    d_k = ops.einsum("bi,bj->ij", x, d_z)
    d_b = ops.sum(d_z, axis=0)
    d_x = ops.einsum("bj,ij->bi", d_z, k)
    return d_x, d_h, d_k, d_r, d_b


def _forward(x, hs, ks, rs, bs):
    """Layers written out, from lists of per-layer tensors.

    Returns the list of new `h` and the lists of `a`, `s`, `c`."""
    outs, saved = [], ([], [], [])
    for h, k, r, b in zip(hs, ks, rs, bs):
        x, internals = _layer(x, h, k, r, b)
        outs.append(x)
        for kept, value in zip(saved, internals):
            kept.append(value)
    return outs, saved


def _backward(d_x, ups, inputs, hs, ks, rs, a_s, s_s, c_s):
    """Layers written out, last first.

    `d_x` is the gradient reaching the last layer's output from above (None
    for none); returns the gradient at the first layer's input and the
    per-layer lists (∂h, ∂K, ∂R, ∂b)."""
    n = len(hs)
    grads = [[None] * n for _ in range(4)]
    for l in reversed(range(n)):
        delta = ups[l] if d_x is None else ups[l] + d_x
        d_x, *layer_grads = _layer_grad(
            delta, inputs[l], hs[l], ks[l], rs[l], a_s[l], s_s[l], c_s[l]
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


def _unstacked(tensors, start, stop):
    return [ops.unstack(t[start:stop], stop - start) for t in tensors]


def _flat(tensor):
    """`(n_groups, group, batch, units)` → `(n_groups·group, batch, units)`."""
    n = tensor.shape[0] * tensor.shape[1]
    return ops.reshape(tensor, (n,) + _rest(tensor.shape[2:]))


@ops.custom_gradient
def _sgu_run(x, states, kernel, recurrent_kernel, bias):
    depth, units = kernel.shape[0], kernel.shape[1]
    group = LAYERS_PER_ITERATION
    n_groups = depth // group if depth > UNROLL_UP_TO else 0
    looped = n_groups * group  # layers done by the loop; the rest written out
    # Per-layer states as (depth, batch, units).
    hs = ops.transpose(ops.reshape(states, (-1, depth, units)), (1, 0, 2))
    weights = (kernel, recurrent_kernel)

    x_l = x
    looped_outs = []
    if n_groups:

        def forward(carry, per_group):
            new, internals = _forward(
                carry, *(ops.unstack(t, group) for t in per_group)
            )
            return new[-1], tuple(ops.stack(v) for v in (new,) + internals)

        # Each (n_groups, group, batch, units): new h, then a, s, c.
        x_l, (grouped_outs, *looped_saved) = _loops.scan(
            forward,
            x,
            tuple(_grouped(t[:looped], n_groups, group)
                  for t in (hs, kernel, recurrent_kernel, bias)),
            n_groups,
        )
        looped_outs = _ungrouped(grouped_outs)
    tail_outs, tail_saved = _forward(
        x_l, *_unstacked((hs, kernel, recurrent_kernel, bias), looped, depth)
    )
    outs = looped_outs + tail_outs
    new_states = ops.concatenate(outs, axis=-1)

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        ups = ops.split(upstream, depth, axis=-1)
        d_x, tail_grads = _backward(
            None,
            ups[looped:],
            ([x] + outs[:-1])[looped:],
            *_unstacked((hs,) + weights, looped, depth),
            *tail_saved,
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

            ups_looped = ops.transpose(
                ops.reshape(upstream, (-1, depth, units))[:, :looped],
                (1, 0, 2),
            )
            inputs_looped = ops.concatenate(
                [x[None], _flat(grouped_outs)[:-1]], axis=0
            )
            per_layer = (ups_looped, inputs_looped, hs[:looped]) + tuple(
                w[:looped] for w in weights
            )
            d_x, looped_grads = _loops.scan(
                backward,
                d_x,
                tuple(_grouped(t, n_groups, group) for t in per_layer)
                + tuple(looped_saved),
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
