"""NumPy references for the queue, the deque and the content memory.

Written from the papers' equations, in float64, one batch row at a time:
Grefenstette et al. 2015 (queue eqs. 4–5, deque eqs. 6–11) keep their
elements in Python lists that grow by one (queue) or two (deque) elements
per step; Graves et al. 2014 §3 for the NTM addressing. Nothing here
imports the package.
"""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softplus(x):
    return np.logaddexp(0.0, x)


def softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


class _Element:
    def __init__(self, strength, value, step, side=None):
        self.strength = float(strength)
        self.value = np.asarray(value, np.float64)
        self.step = step  # the step it was pushed at
        self.side = side  # deque only: "bottom" or "top"


def _zeros(batch, slots, row_values):
    """Zeros for `slots` slots of what `row_values` holds per element (a
    number, or a value vector)."""
    trailing = np.shape(row_values[0][0]) if row_values[0] else ()
    return np.zeros((batch, slots) + trailing)


def _read(elements, from_top):
    """`Σ_i min(s[i], max(0, 1 − Σ_{j beyond i} s[j])) · V[i]`, reading
    from the end of the list (`from_top`) or from its start; returns the
    read and each element's weight."""
    order = list(range(len(elements)))
    if from_top:
        order = order[::-1]
    weights = [0.0] * len(elements)
    seen = 0.0
    for i in order:
        weights[i] = min(elements[i].strength, max(0.0, 1.0 - seen))
        seen += elements[i].strength
    read = sum((w * e.value for w, e in zip(weights, elements)), 0.0)
    return read, weights


def _pop(elements, amount, from_top):
    """`s[i] ← max(0, s[i] − max(0, u − Σ_{j beyond i} s[j]))` with the
    sums over the elements nearer the popped end, on the old strengths."""
    order = list(range(len(elements)))
    if from_top:
        order = order[::-1]
    old = [e.strength for e in elements]
    seen = 0.0
    for i in order:
        elements[i].strength = max(0.0, old[i] - max(0.0, amount - seen))
        seen += old[i]


class ReferenceQueue:
    """The queue of eqs. 4–5, front (oldest) first, unbounded.

    `lifetime=L` removes, after the pop of step `t`, the elements pushed at
    step `t − L` or before: the rule the bounded `NeuralQueue` documents.
    The initial elements (`strengths` (batch, K), `values` (batch, K, width),
    front first) are taken as pushed at steps `1 − K … 0`; the first step is
    step 1.
    """

    def __init__(self, strengths, values, lifetime=None):
        strengths = np.asarray(strengths, np.float64)
        values = np.asarray(values, np.float64)
        k = strengths.shape[1]
        self.lifetime, self.t = lifetime, 0
        self.rows = [
            [_Element(s, v, i - k + 1) for i, (s, v) in enumerate(zip(ss, vs))]
            for ss, vs in zip(strengths, values)
        ]

    def step(self, control):
        """Returns the read (batch, width) and each row's read weights."""
        control = np.asarray(control, np.float64)
        self.t += 1
        d, u = sigmoid(control[:, 0]), sigmoid(control[:, 1])
        v = np.tanh(control[:, 2:])
        reads, weights = [], []
        for b, elements in enumerate(self.rows):
            _pop(elements, u[b], from_top=False)
            if self.lifetime is not None:
                elements[:] = [e for e in elements
                               if e.step > self.t - self.lifetime]
            elements.append(_Element(d[b], v[b], self.t))
            read, w = _read(elements, from_top=False)
            reads.append(read)
            weights.append(w)
        return np.stack(reads), weights

    def slots(self, capacity, row_values):
        """`row_values` (one list per row, as from `step`) placed into the
        bounded queue's `capacity` slots (numbers or vectors): the element
        pushed at step `p` is in slot `capacity − 1 − (t − p)`."""
        out = _zeros(len(self.rows), capacity, row_values)
        for b, (elements, values) in enumerate(zip(self.rows, row_values)):
            for e, x in zip(elements, values):
                age = self.t - e.step
                if age < capacity:
                    out[b, capacity - 1 - age] = x
                else:
                    assert np.all(x == 0.0), "an element past the capacity"
        return out

    def strengths(self):
        return [[e.strength for e in elements] for elements in self.rows]


class ReferenceDeque:
    """The deque of eqs. 6–11, bottom first, unbounded.

    `lifetime=L` removes, after the pops of step `t`, the elements pushed at
    step `t − L` or before. The initial elements (`strengths` (batch, 2K),
    `values` (batch, 2K, width), bottom first) are taken as in the bounded
    deque: bottom slot `i` pushed at the bottom at step `−i`, top slot
    `2K − 1 − i` pushed at the top at step `−i`.
    """

    def __init__(self, strengths, values, lifetime=None):
        strengths = np.asarray(strengths, np.float64)
        values = np.asarray(values, np.float64)
        k = strengths.shape[1] // 2
        self.lifetime, self.t = lifetime, 0
        self.rows = []
        for ss, vs in zip(strengths, values):
            row = [_Element(ss[i], vs[i], -i, "bottom") for i in range(k)]
            row += [_Element(ss[2 * k - 1 - i], vs[2 * k - 1 - i], -i, "top")
                    for i in reversed(range(k))]
            self.rows.append(row)

    def step(self, control, width):
        """Returns the reads at the top and at the bottom (batch, width)
        and each row's top and bottom read weights."""
        control = np.asarray(control, np.float64)
        self.t += 1
        d_top, u_top = sigmoid(control[:, 0]), sigmoid(control[:, 1])
        d_bot, u_bot = sigmoid(control[:, 2]), sigmoid(control[:, 3])
        v_top = np.tanh(control[:, 4 : 4 + width])
        v_bot = np.tanh(control[:, 4 + width :])
        result = {"top": [], "bottom": [], "top_weights": [],
                  "bottom_weights": []}
        for b, elements in enumerate(self.rows):
            _pop(elements, u_top[b], from_top=True)
            _pop(elements, u_bot[b], from_top=False)
            if self.lifetime is not None:
                elements[:] = [e for e in elements
                               if e.step > self.t - self.lifetime]
            elements.insert(0, _Element(d_bot[b], v_bot[b], self.t, "bottom"))
            elements.append(_Element(d_top[b], v_top[b], self.t, "top"))
            for end, from_top in (("top", True), ("bottom", False)):
                read, w = _read(elements, from_top)
                result[end].append(read)
                result[end + "_weights"].append(w)
        result["top"] = np.stack(result["top"])
        result["bottom"] = np.stack(result["bottom"])
        return result

    def slots(self, capacity, row_values):
        """`row_values` placed into the bounded deque's `2·capacity` slots:
        a bottom element pushed at step `p` is in slot `t − p`, a top one in
        slot `2·capacity − 1 − (t − p)`."""
        out = _zeros(len(self.rows), 2 * capacity, row_values)
        for b, (elements, values) in enumerate(zip(self.rows, row_values)):
            for e, x in zip(elements, values):
                age = self.t - e.step
                if age >= capacity:
                    assert np.all(x == 0.0), "an element past the capacity"
                elif e.side == "bottom":
                    out[b, age] = x
                else:
                    out[b, 2 * capacity - 1 - age] = x
        return out

    def strengths(self):
        return [[e.strength for e in elements] for elements in self.rows]


# ------------------------------------------------------------ content memory


def _head(raw, width):
    """Parses `[key | β | g | shift (3) | γ]` of one head (1-D)."""
    return {
        "key": raw[:width],
        "beta": softplus(raw[width]),
        "g": sigmoid(raw[width + 1]),
        "shift": softmax(raw[width + 2 : width + 5]),
        "gamma": 1.0 + softplus(raw[width + 5]),
    }


def cosine(u, v):
    """`K(u, v) = u·v / (‖u‖·‖v‖ + 1e-8)`."""
    return u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-8)


def address(head, memory, previous):
    """NTM addressing, Graves et al. eqs. 5–9, for one head (1-D weights)."""
    slots = memory.shape[0]
    content = softmax(head["beta"] * np.array(
        [cosine(head["key"], memory[i]) for i in range(slots)]))
    gated = head["g"] * content + (1.0 - head["g"]) * previous
    kernel = np.zeros(slots)  # the shift weights over offsets mod slots
    for move, p in zip((-1, 0, 1), head["shift"]):
        kernel[move % slots] += p
    shifted = np.array([
        sum(gated[j] * kernel[(i - j) % slots] for j in range(slots))
        for i in range(slots)
    ])
    powered = shifted ** head["gamma"]
    return powered / powered.sum()


def content_memory_step(control, memory, write_weights, read_weights,
                        width, read_heads, read_before_write=False):
    """One step for a batch: write, then every read head reads (the memory
    written this step, or with `read_before_write` the one before it).

    Args:
        control: (batch, control_size).
        memory: (batch, slots, width).
        write_weights: (batch, slots).
        read_weights: (batch, read_heads, slots).

    Returns:
        `(reads (batch, read_heads·width), memory, write_weights,
        read_weights)`, shaped as the arguments.
    """
    control = np.asarray(control, np.float64)
    batch, slots = write_weights.shape
    new_memory = np.zeros((batch, slots, width))
    new_write = np.zeros((batch, slots))
    new_read = np.zeros((batch, read_heads, slots))
    reads = np.zeros((batch, read_heads * width))
    for b in range(batch):
        raw = control[b]
        head = _head(raw[: width + 6], width)
        erase = sigmoid(raw[width + 6 : 2 * width + 6])
        add = np.tanh(raw[2 * width + 6 : 3 * width + 6])
        w = address(head, memory[b], write_weights[b])
        m = memory[b] * (1.0 - np.outer(w, erase)) + np.outer(w, add)
        new_memory[b], new_write[b] = m, w
        for h in range(read_heads):
            start = 3 * width + 6 + h * (width + 6)
            head = _head(raw[start : start + width + 6], width)
            source = memory[b] if read_before_write else m
            r = address(head, source, read_weights[b, h])
            new_read[b, h] = r
            reads[b, h * width : (h + 1) * width] = r @ source
    return reads, new_memory, new_write, new_read
