"""Independent NumPy re-implementations of every component, step by step.

Written from the equations in the issue/docstrings, not from the package: the
tests compare the Keras cells against these on random weights and inputs.
"""

import numpy as np


def softsign(x):
    return x / (1.0 + np.abs(x))


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sgu_step(x, h, kernel, recurrent_kernel, bias):
    units = h.shape[-1]
    z = x @ kernel + bias
    f = (softsign(z[:, :units] + h @ recurrent_kernel) + 1.0) / 2.0
    zc = z[:, units:]
    c = np.where(zc > 0, zc, 0.1 * zc)
    return (1.0 - f) * c + f * h


def register_memory_step(control, memory, depth, width):
    """memory: (batch, depth, width). Returns (output, new memory)."""
    store = softmax(control[:, :depth])
    recall = softmax(control[:, depth : 2 * depth])
    data = control[:, 2 * depth :]
    new = np.empty_like(memory)
    for b in range(memory.shape[0]):
        for i in range(depth):
            new[b, i] = (1 - store[b, i]) * memory[b, i] + store[b, i] * data[b]
    out = np.einsum("bd,bdw->bw", recall, new)
    return out, new


def attention_step(control, position, data, falloff="linear",
                   normalize=False, clip_position=False, sharpness=1.0,
                   integer_moves=False):
    """position: (batch, 1); data: (batch, positions, width)."""
    positions = data.shape[1]
    move = softsign(control)
    if integer_moves:
        move = np.round(move)
    p = position + move
    if clip_position:
        p = np.clip(p, 0, positions - 1)
    n = np.arange(positions)[None, :]
    d = sharpness * (p - n)
    if falloff == "linear":
        w = 1.0 / (1.0 + np.abs(d))
    elif falloff == "squared":
        w = 1.0 / (1.0 + d ** 2)
    else:
        w = np.exp(-d ** 2)
    if normalize:
        w = w / w.sum(axis=-1, keepdims=True)
    out = np.einsum("bn,bnw->bw", w, data)
    return out, p


def superloop_run(x_seq, layers, control_kernel, control_bias, systems,
                  contexts=None, output_feedback=False):
    """Runs a superloop of SGU and feed-forward layers over (batch, T,
    features).

    layers: list of (kernel, recurrent_kernel, bias) for an SGU layer,
        (kernel, bias) for a feed-forward tanh layer (no state).
    systems: list of dicts {"kind": "register"|"attention", ...params}.
    output_feedback: whether each step's output is `[y_t, feedback_t]`
        (the systems' outputs of the same step) rather than `y_t`.
    Returns (outputs (batch, T, width), final dict with positions/memories).
    """
    batch, steps, _ = x_seq.shape
    hs = [np.zeros((batch, layer[1].shape[0]), np.float64)
          if len(layer) == 3 else None for layer in layers]
    feedback_width = sum(s["width"] for s in systems)
    feedback = np.zeros((batch, feedback_width))
    sys_state = []
    for s in systems:
        if s["kind"] == "register":
            sys_state.append(np.zeros((batch, s["depth"], s["width"])))
        else:
            sys_state.append(np.zeros((batch, 1)))
    outputs = []
    for t in range(steps):
        u = np.concatenate([x_seq[:, t], feedback], axis=-1)
        for i, layer in enumerate(layers):
            if len(layer) == 2:
                u = np.tanh(u @ layer[0] + layer[1])
                continue
            hs[i] = sgu_step(u, hs[i], *layer)
            u = hs[i]
        y = u
        if not systems:
            outputs.append(y)
            continue
        controls = y @ control_kernel + control_bias
        start = 0
        fed = []
        for i, s in enumerate(systems):
            if s["kind"] == "register":
                size = 2 * s["depth"] + s["width"]
                out, sys_state[i] = register_memory_step(
                    controls[:, start : start + size], sys_state[i],
                    s["depth"], s["width"])
            else:
                size = 1
                opts = {k: s[k] for k in ("falloff", "normalize",
                                          "clip_position") if k in s}
                out, sys_state[i] = attention_step(
                    controls[:, start : start + size], sys_state[i],
                    contexts[i], **opts)
            start += size
            fed.append(out)
        feedback = np.concatenate(fed, axis=-1)
        outputs.append(np.concatenate([y, feedback], axis=-1)
                       if output_feedback else y)
    return np.stack(outputs, axis=1), sys_state, hs


def hard_attention_step(control, position, log_prob, entropy, data,
                        choice=None):
    """HardAttention, one step. `choice` (batch,) in {0, 1, 2} is the move
    taken (−1, 0, +1); None takes the most likely one."""
    positions = data.shape[1]
    shifted = control - control.max(axis=-1, keepdims=True)
    log_pi = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    if choice is None:
        choice = control.argmax(axis=-1)
    rows = np.arange(len(control))
    p = np.clip(position + (choice - 1.0)[:, None], 0, positions - 1)
    log_prob = log_prob + log_pi[rows, choice][:, None]
    entropy = entropy - (np.exp(log_pi) * log_pi).sum(axis=-1, keepdims=True)
    out = data[rows, p[:, 0].astype(int)]
    return out, p, log_prob, entropy


def reinforce_loss(reward, log_prob, entropy=None, entropy_weight=0.0):
    advantage = reward - reward.mean()
    advantage = advantage / (advantage.std() + 1e-3)
    loss = -advantage * log_prob
    if entropy is not None:
        loss = loss - entropy_weight * entropy
    return loss


def _fmix32(h):
    h = h.astype(np.uint32)
    h ^= h >> np.uint32(16)
    h = (h * np.uint32(0x85EBCA6B)).astype(np.uint32)
    h ^= h >> np.uint32(13)
    h = (h * np.uint32(0xC2B2AE35)).astype(np.uint32)
    h ^= h >> np.uint32(16)
    return h


def key_uniform(key, count):
    """The in-loop random draws of a key of 4 byte values (least significant
    first): `count` uniforms from MurmurHash3's finaliser of the key
    xor-ed with (k + 1)·0x61C88647, and the key advanced by 0x2545F491
    modulo 2³¹."""
    key = np.round(key).astype(np.uint64)
    value = sum(key[:, i] << np.uint64(8 * i) for i in range(4))
    value = value.astype(np.uint32)
    draws = []
    for k in range(count):
        salt = np.uint32(((k + 1) * 0x61C88647) & 0xFFFFFFFF)
        top = _fmix32(value ^ salt) >> np.uint32(8)
        draws.append((top.astype(np.float64) + 0.5) / 2 ** 24)
    nxt = (value.astype(np.uint64) + 0x2545F491) & 0x7FFFFFFF
    next_key = np.stack([(nxt >> np.uint64(8 * i)) & np.uint64(255)
                         for i in range(4)], axis=-1)
    return np.stack(draws, axis=-1), next_key.astype(np.float64)
