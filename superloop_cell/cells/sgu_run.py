"""One step of a run of same-width SGU layers, with a hand-written gradient.

Inside a step, layer l+1 needs layer l's new state, so the layers form a
chain. Only part of each layer's work is on that chain, though: the
recurrent half `h_l · R_l` reads the *previous* states, and all weight
gradients can wait until the whole chain has been walked back. `sgu_run`
does that part for all layers at once, as batched products over the layer
axis, and keeps the per-layer chain to what must be sequential:

* forward: one product `x_l · K_l` and the gate/candidate arithmetic per
  layer; before it, the recurrent halves of every gate in one batched
  product;
* backward: one product `∂z_l · K_lᵀ` per layer (plus a few elementwise
  ops); before it, every layer's local derivatives from the saved gates
  and candidates; after it, `∂K`, `∂R`, `∂b` and the state gradients of
  all layers in batched products.

On a CPU each op costs microseconds of overhead whatever its size and the
products of a 16-unit layer are tiny, so the number of ops per layer on the
chain and the number of passes over the batched tensors set the step time
(profiles of earlier rounds are in docs/history.md). The run saves, per step, its states and,
stacked along the layer axis, every layer's input, its `s` and its candidate
`c`, instead of the dozen intermediates per layer that automatic
differentiation keeps. Saving `s` and `c` rather than the pre-activations
leaves the backward pass fewer passes over these tensors: `1/(1 + |a|)` is
`1 − |softsign(a)| = 2·min(s, 1 − s)`, and `c > 0` exactly where
`z[u:] > 0`. The batched products use `[R_l | 0]`, the recurrent
kernel padded to the width of z, so that one product gives every layer's
addend `[p_l, 0] + b_l` and the backward products read only the gate half of
`∂z_l` without slicing it out.
Runs deeper than `UNROLL_UP_TO` layers (any run, with `loop=True`) walk the
chain in a loop over groups of layers (`_loops.scan`), so the graph does not
grow with depth either.

Forward, for layer l with input x_l (x_0 = the run's input) and state h_l:

    p_l = h_l · R_l + b_l[:u]                    (all layers at once)
    z  = x_l · K_l + [p_l, b_l[u:]],   a = z[:u],   c = leaky_relu(z[u:], 0.1)
    s  = (1 − softsign(a))/2           (s = 1 − f)
    h'_l = h_l + s · (c − h_l)  =  x_{l+1}

Backward, with δ_l the gradient reaching h'_l (from the loss through the new
state, plus ∂x_{l+1} from the layer above, or for the last layer the
gradient at the run's output y):

    m = −(c − h_l) / (2 (1 + |a|)²) = 2 (h_l − c) · min(s, 1 − s)²
    n = s · (1 if c > 0 else 0.1)
    ∂z_l = [δ_l · m, δ_l · n],   ∂x_l = ∂z_l · K_lᵀ            (the chain)
    ∂K_l = x_lᵀ · ∂z_l,   ∂b_l = Σ_batch ∂z_l,   ∂R_l = h_lᵀ · ∂z_l[:u]
    ∂h_l = δ_l · (1 − s) + ∂z_l[:u] · R_lᵀ                     (all at once)

The code computes `m/2` and moves the factor 2 onto the gate half of the
small weight tensors (`K` in the chain, `∂K`, `∂b`, `∂R`, `R` in `∂h`), which
saves a pass over the batched tensors.
"""

import keras
from keras import ops

from superloop_cell import _loops
from superloop_cell.cells.sgu import CANDIDATE_NEGATIVE_SLOPE, sgu_step

# With `loop=None`, runs up to UNROLL_UP_TO layers deep walk their chain
# written out layer by layer and deeper ones loop over groups of
# LAYERS_PER_ITERATION layers (written out inside the loop body) plus a
# written-out tail of `depth % group` layers. A written-out chain has fewer
# ops per step; a looped one traces and compiles in a time that does not grow
# with the run's depth (`python -m benchmarks.ab --a layer_loop=False --b
# layer_loop=True` measures the trade). Per backend, the setting that wins end
# to end (`python -m benchmarks.mixed_lengths`, training on mixed lengths,
# compilations included):
# - JAX compiles every train step, once per shape: every fused run loops
#   (the loop's faster compilations outweighed its slower steps).
# - TensorFlow: runs of more than 32 layers loop. Uncompiled (one trace for
#   every length) the two tied end to end at depth 32 and the written-out
#   chain stepped faster; with XLA (a compilation per shape) the loop won,
#   but the cell cannot see whether its step is compiled with XLA, so
#   `layer_loop=True` is the user's to pass there.
# - torch: nothing is traced or compiled (Keras' loop runs the step op by op),
#   so a loop saves nothing and costs per step: runs of any depth are
#   written out unless `loop=True` (at depth 48, batch 32, T 16 a train step
#   took 1.24× as long with the loop: `python -m benchmarks.ab --backend
#   torch --depth 48 --steps 16 --batch 32 --a fused=True,layer_loop=False
#   --b fused=True,layer_loop=True`).
# The group size is per backend: TensorFlow without XLA runs the loop op by
# op, where larger groups step faster.
UNROLL_UP_TO = {"torch": None, "jax": 0}.get(keras.backend.backend(), 32)
LAYERS_PER_ITERATION = {"tensorflow": 8}.get(keras.backend.backend(), 4)


def sgu_run(x, states, kernel, recurrent_kernel, bias, with_gates=False,
            loop=None):
    """One step of `depth` stacked SGU layers of `units` each.

    Args:
        x: `(batch, units)`, the input of the first layer.
        states: `(batch, depth·units)`, every layer's `h`, layer-major.
        kernel: `(depth, units, 2·units)`.
        recurrent_kernel: `(depth, units, units)`.
        bias: `(depth, 2·units)`.
        with_gates: Whether to return every layer's gate `f` too (the
            values the forward pass computed; gradients flow through them).
        loop: Whether to walk the layers in a loop over groups of
            `LAYERS_PER_ITERATION` (True) or written out (False). None
            (default): a loop when `depth > UNROLL_UP_TO` (always on JAX,
            beyond 32 layers on TensorFlow, never on torch).

    Returns:
        `(y, new_states)`: the last layer's new `h`, `(batch, units)` (the
        run's output), and every layer's new `h`, `(batch, depth·units)`.
        Both are returned so that the output needs no slice of the states,
        whose gradient would be a zero-filled tensor of the states' size.
        With `with_gates`, `(y, new_states, f)`, `f` of shape
        `(depth, batch, units)`.
    """
    if loop is None:
        loop = UNROLL_UP_TO is not None and kernel.shape[0] > UNROLL_UP_TO
    run = _RUNS[bool(with_gates), bool(loop)]
    if with_gates:
        y, new_states, s = run(x, states, kernel, recurrent_kernel, bias)
        return y, new_states, 1.0 - s
    return run(x, states, kernel, recurrent_kernel, bias)


def _rest(shape):
    # The batch axis may be unknown while tracing: let reshape infer it.
    return tuple(-1 if d is None else d for d in shape)


def _by_layer(flat, depth, units):
    """`(batch, depth·units)` → `(depth, batch, units)`."""
    return ops.transpose(ops.reshape(flat, (-1, depth, units)), (1, 0, 2))


def _flat(by_layer):
    """`(depth, batch, units)` → `(batch, depth·units)`."""
    depth, units = by_layer.shape[0], by_layer.shape[2]
    return ops.reshape(ops.transpose(by_layer, (1, 0, 2)), (-1, depth * units))


def _forward_chain(x, hs, ks, addends):
    """The sequential part of the forward pass, layers written out.

    Returns the lists of new `h`, of `s` and of candidates `c`, one entry
    per layer."""
    outs, gates, candidates = [], [], []
    for h, k, addend in zip(hs, ks, addends):
        z = ops.matmul(x, k) + addend
        a, z_c = ops.split(z, 2, axis=-1)
        x, s, c = sgu_step(a, z_c, h)
        outs.append(x)
        gates.append(s)
        candidates.append(c)
    return outs, gates, candidates


def _backward_chain(d_x, ups, ks, local_derivatives, offsets=None):
    """The sequential part of the backward pass, last layer first.

    `d_x` is the gradient reaching the last layer's output from above (None
    for none); `offsets`, when given, is added to each layer's `∂z` (the
    gradient reaching the gates directly, when they are an output). Returns
    the gradient at the first layer's input and the lists of δ (the
    gradient at each layer's output) and of `∂z`, in layer order."""
    deltas, d_zs = [None] * len(ups), [None] * len(ups)
    for l in reversed(range(len(ups))):
        delta = ups[l] if d_x is None else ups[l] + d_x
        d_z = ops.concatenate([delta, delta], axis=-1) * local_derivatives[l]
        if offsets is not None:
            d_z = d_z + offsets[l]
        # A product with a transposed operand as an einsum: no copy of Kᵀ.
        d_x = ops.einsum("bj,ij->bi", d_z, ks[l])
        deltas[l], d_zs[l] = delta, d_z
    return d_x, deltas, d_zs


def _grouped(tensor, n_groups, group):
    """`(n_groups·group, ...)` → `(n_groups, group, ...)`."""
    return ops.reshape(tensor, (n_groups, group) + _rest(tensor.shape[1:]))


def _ungrouped(tensor):
    """`(n_groups, group, ...)` → `(n_groups·group, ...)`."""
    n = tensor.shape[0] * tensor.shape[1]
    return ops.reshape(tensor, (n,) + _rest(tensor.shape[2:]))


def _split_depth(depth, loop):
    """`(n_groups, group)`: how many layers a loop walks, in what groups."""
    group = LAYERS_PER_ITERATION
    return (depth // group, group) if loop else (0, group)


def _walk_forward(x, hs, kernel, addends, loop):
    """The forward chain over all layers.

    Returns `(y, new_states, inputs, gates, candidates)`: the last layer's
    output and the new states `(batch, depth·units)` as the run returns
    them, then, stacked along the layer axis as `(depth, batch, units)`,
    every layer's input, `s` and candidate `c` (what the backward pass
    needs)."""
    depth = kernel.shape[0]
    n_groups, group = _split_depth(depth, loop)
    looped = n_groups * group
    flat, gates, candidates = [], [], []
    if n_groups:

        def step(carry, per_group):
            lists = _forward_chain(
                carry, *(ops.unstack(t, group) for t in per_group)
            )
            return lists[0][-1], tuple(ops.stack(t) for t in lists)

        x_loop, grouped = _loops.scan(
            step,
            x,
            tuple(_grouped(t[:looped], n_groups, group)
                  for t in (hs, kernel, addends)),
            n_groups,
        )
        loop_outs, loop_gates, loop_candidates = map(_ungrouped, grouped)
        flat.append(_flat(loop_outs))
        gates.append(loop_gates)
        candidates.append(loop_candidates)
    tail_outs = []
    if looped < depth:
        tail = depth - looped
        tail_outs, tail_gates, tail_candidates = _forward_chain(
            x_loop if n_groups else x,
            *(ops.unstack(t[looped:], tail) for t in (hs, kernel, addends)),
        )
        flat.extend(tail_outs)
        gates.append(ops.stack(tail_gates))
        candidates.append(ops.stack(tail_candidates))
    # Layer l's input: the run's input, then every layer's output but the
    # last.
    if not n_groups:
        inputs = ops.stack([x] + tail_outs[:-1])
    else:
        inputs = [x[None], loop_outs if tail_outs else loop_outs[:-1]]
        if len(tail_outs) > 1:
            inputs.append(ops.stack(tail_outs[:-1]))
        inputs = ops.concatenate(inputs, axis=0)
    y = tail_outs[-1] if tail_outs else x_loop
    return (
        y,
        _joined(flat, axis=-1),
        inputs,
        _joined(gates, axis=0),
        _joined(candidates, axis=0),
    )


def _joined(tensors, axis):
    return tensors[0] if len(tensors) == 1 else ops.concatenate(tensors, axis)


def _walk_backward(d_y, ups, kernel, local_derivatives, offsets, loop):
    """The backward chain over all layers: `(∂x, δ, ∂z)`, δ and ∂z stacked
    along the layer axis, `(depth, batch, units)` and `(depth, batch,
    2·units)`. `d_y` is the gradient at the run's output, `ups` those at
    the new states, `offsets` (optional) what reaches each `∂z` directly."""
    depth = kernel.shape[0]
    n_groups, group = _split_depth(depth, loop)
    looped = n_groups * group
    per_layer = (ups, kernel, local_derivatives)
    if offsets is not None:
        per_layer += (offsets,)
    d_x, deltas, d_zs = d_y, [], []
    if looped < depth:
        tail = depth - looped
        d_x, tail_deltas, tail_d_zs = _backward_chain(
            d_x, *(ops.unstack(t[looped:], tail) for t in per_layer)
        )
        deltas.append(ops.stack(tail_deltas))
        d_zs.append(ops.stack(tail_d_zs))
    if n_groups:
        if d_x is None:  # nothing reaches the loop from above
            d_x = ops.zeros_like(ups[0])

        def step(d_next, per_group):
            d_x, group_deltas, group_d_zs = _backward_chain(
                d_next, *(ops.unstack(t, group) for t in per_group)
            )
            return d_x, (ops.stack(group_deltas), ops.stack(group_d_zs))

        d_x, grouped = _loops.scan(
            step,
            d_x,
            tuple(_grouped(t[:looped], n_groups, group) for t in per_layer),
            n_groups,
            reverse=True,
        )
        deltas.insert(0, _ungrouped(grouped[0]))
        d_zs.insert(0, _ungrouped(grouped[1]))
    return d_x, _joined(deltas, axis=0), _joined(d_zs, axis=0)


def _run(x, states, kernel, recurrent_kernel, bias, loop):
    """The forward pass, and its gradient as a function of the upstream
    gradients `(∂y, ∂states, ∂s or None)`."""
    depth, units = kernel.shape[0], kernel.shape[1]
    hs = _by_layer(states, depth, units)
    # [R | 0]: the recurrent product lands on the gate half of z, so one
    # batched product and one bias add give every layer's addend.
    padded_recurrent = ops.concatenate(
        [recurrent_kernel, ops.zeros_like(recurrent_kernel)], axis=-1
    )
    addends = (
        ops.einsum("lbi,lij->lbj", hs, padded_recurrent) + bias[:, None, :]
    )
    y, new_states, inputs, gates, candidates = _walk_forward(
        x, hs, kernel, addends, loop
    )

    def grad(d_y, d_states, d_gates=None):
        # Local derivatives of every layer at once, from the saved s and c,
        # with m's factor 2 moved onto the (small) weights: the chain's ∂z'
        # is ∂z / [2, …, 2, 1, …, 1] (`scale`).
        one_minus_s = 1.0 - gates
        q = ops.minimum(gates, one_minus_s)
        m = (hs - candidates) * ops.square(q)
        n = ops.where(
            candidates > 0, gates, CANDIDATE_NEGATIVE_SLOPE * gates
        )
        local_derivatives = ops.concatenate([m, n], axis=-1)
        offsets = None
        if d_gates is not None:
            # ∂s/∂a = −2·q²: with the factor 2 on the weights, −q².
            offsets = ops.concatenate(
                [-d_gates * ops.square(q), ops.zeros_like(q)], axis=-1
            )
        scale = ops.concatenate(
            [ops.full((units,), 2.0, kernel.dtype),
             ops.ones((units,), kernel.dtype)]
        )
        d_x, deltas, d_z = _walk_backward(
            d_y,
            _by_layer(d_states, depth, units),
            kernel * scale,
            local_derivatives,
            offsets,
            loop,
        )

        # Everything that can wait for the whole chain, all layers at once;
        # products with [R | 0] read or write the gate half of ∂z only.
        d_kernel = ops.einsum("lbi,lbj->lij", inputs, d_z) * scale
        d_recurrent = 2.0 * ops.einsum("lbi,lbj->lij", hs, d_z)[..., :units]
        d_bias = ops.sum(d_z, axis=1) * scale
        d_hs = deltas * one_minus_s + ops.einsum(
            "lbj,lij->lbi", d_z, 2.0 * padded_recurrent
        )
        return d_x, _flat(d_hs), d_kernel, d_recurrent, d_bias

    return (y, new_states, gates), grad


def _upstream(args, upstream, count):
    # TensorFlow passes one gradient per output, JAX one tuple.
    if upstream is None:
        upstream = args if len(args) == count else args[0]
    return tuple(upstream)


def _torch_run(outputs, loop):
    """`_run` as a `torch.autograd.Function`: Keras' torch `custom_gradient`
    takes one upstream gradient and saves every input for backward, where
    the run has two or three outputs. Autograd hands `backward` one
    gradient per output (zeros for an unused one)."""
    import torch

    class Run(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, states, kernel, recurrent_kernel, bias):
            results, ctx.grad = _run(x, states, kernel, recurrent_kernel,
                                     bias, loop)
            return tuple(results[:outputs])

        @staticmethod
        def backward(ctx, *upstream):
            grads = ctx.grad(*upstream)
            ctx.grad = None  # frees the saved forward values
            return grads

    return Run.apply


def _custom_run(with_gates, loop):
    """`_run` with its hand-written gradient, for one `with_gates`, `loop`."""
    outputs = 3 if with_gates else 2
    if keras.backend.backend() == "torch":
        return _torch_run(outputs, loop)

    @ops.custom_gradient
    def run(x, states, kernel, recurrent_kernel, bias):
        results, grad = _run(x, states, kernel, recurrent_kernel, bias, loop)

        def run_grad(*args, upstream=None):
            return grad(*_upstream(args, upstream, outputs))

        return results[:outputs], run_grad

    return run


_RUNS = {
    (with_gates, loop): _custom_run(with_gates, loop)
    for with_gates in (False, True)
    for loop in (False, True)
}
