"""The protocol every external system of a superloop implements."""

import numbers

import keras
import numpy as np
from keras import ops

from superloop_cell import _random

# The one field of a system that does not name the parts of its control.
WHOLE_CONTROL = "control"


def _control_bias_values(value):
    """`control_bias` as a dict from field name to a float or a list of
    floats (or None)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(
            "Received an invalid value for argument `control_bias`: expected "
            "None or a dict from control field name to float, got "
            f"{value!r} (type {type(value).__name__})."
        )
    values = {}
    for name, number in value.items():
        if not isinstance(name, str):
            raise TypeError(
                "Received an invalid value for argument `control_bias`: its "
                f"keys must be control field names (str), got {name!r}."
            )
        values[name] = _field_value(name, number)
    return values


def _is_number(value):
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and np.isfinite(value))


def _field_value(name, value):
    """One field's `control_bias` value: a float (every unit alike) or a
    list of floats (one per unit of the field)."""
    if _is_number(value):
        return float(value)
    if (isinstance(value, (list, tuple, np.ndarray))
            and len(value) > 0 and all(_is_number(v) for v in value)):
        return [float(v) for v in value]
    raise ValueError(
        "Received an invalid value for argument `control_bias`: expected a "
        f"finite number, or a list of one per unit, for field {name!r}, "
        f"got {value!r}."
    )


class _FieldBias(keras.initializers.Initializer):
    """A system's slice of the control bias: `base`, then the named fields
    of `values` set to their value (every unit of a field alike)."""

    def __init__(self, base, layout, values):
        self.base = base
        self.layout = list(layout)
        self.values = dict(values)

    def __call__(self, shape, dtype=None):
        start = self.base(shape, dtype=dtype)
        chosen, value = [], []
        for name, size in self.layout:
            chosen += [name in self.values] * size
            given = self.values.get(name, 0.0)
            value += given if isinstance(given, list) else [given] * size
        return ops.where(
            ops.convert_to_tensor(np.array(chosen)),
            ops.convert_to_tensor(np.array(value), dtype=start.dtype),
            start,
        )


class ExternalSystem(keras.layers.Layer):
    """Base class of the systems a superloop drives: memories, heads, stacks.

    At every step the superloop projects the output `y` of its RNN stack to
    one control vector per system; the system reads its control and its own
    states, and returns an output that the stack receives as extra input at
    the next step, and its new states.

    A subclass sets in `__init__`:

    - `control_size`: int, width of the control vector it reads.
    - optionally `control_layout`: the named fields of the control, in the
      order the control vector is sliced: a list of `(name, size)` whose
      sizes add up to `control_size` (for example a stack's
      `[("push", 1), ("pop", 1), ("value", width)]`). Without one the
      whole control is one field, `"control"`. `control_bias={name:
      value}` (an argument every system takes) starts the fields it names
      at that value in the superloop's `control_bias`: a float sets every
      unit of a field alike, a list sets one value per unit.
    - `output_size`: int, width of what it feeds back.
    - `state_size`: list of ints, one per state tensor `(batch, size)`.
      Anything matrix-shaped is flattened here: Keras 3 carries only
      `(batch, size)` states.
    - optionally `context_shape`: a tuple such as `(positions, width)` when
      the system reads per-sample data that is fixed for the whole sequence
      (the attention data). It is carried, flattened, as the **last** state,
      and must be given through `superloop_cell.initial_state`.
    - optionally `control_kernel_initializer` / `control_bias_initializer`:
      initializers for its slice of the superloop's control projection
      (`None` takes the superloop's own).
    - optionally `trace_sizes` (dict, name → width) and `trace_labels`
      (dict, name → str): the per-step tensors that show what the system
      did (weights, positions), and what the entries of a trace wider than
      1 are (e.g. `"register"`; plots label the heatmap's axis with it,
      `"slot"` when not given).
    - optionally `key_state` (int) and `seed`: the index of one of its
      states of size `KEY_SIZE` (4) that holds a random key for sampling
      inside the loop (see `_random.py` and `HardAttention`); the key is
      drawn once per sequence from `seed` when the initial state is made.

    and implements `call(control, states, training=False)` returning
    `(output, new_states)`: `control` is `(batch, control_size)`, `states`
    a list matching `state_size`, `output` is `(batch, output_size)`. A
    system with `trace_sizes` also takes `traces=False`, and with
    `traces=True` returns `(output, new_states, traces)`: a dict of every
    trace in `trace_sizes`, each `(batch, width)`, made from what the same
    pass computed. The superloop asks for traces only when some are
    selected (`SuperloopCell(..., trace=True)`,
    `superloop_cell.run_with_traces`).

    `get_initial_state(batch_size)` gives the states at the start of a
    sequence: zeros, and a fresh key in `key_state`. Override it for other
    starting values, learned ones included (a weight made in `build`):
    `SuperloopCell.get_initial_state` and `superloop_cell.initial_state`
    both call it inside the model, so its weights are trained.

    Mixed precision: the superloop hands a system its control and states in
    the compute dtype (`float16` under `"mixed_float16"`) and expects its
    output and states back in it. The built-in systems compute in float32
    inside (norms, epsilons, softmax and sharpening would underflow in 16
    bits); `superloop_cell.testing.check_system` checks yours under both
    mixed policies.

    Args:
        control_bias: None (default) or a dict from the name of a field of
            `control_layout` to a float (every unit of the field) or a
            list with one float per unit: the starting value of those
            units of the superloop's control bias (set over the system's
            `control_bias_initializer`). An unknown name raises a
            `ValueError` listing the valid ones.
        **kwargs: Base `keras.layers.Layer` arguments.

    Run `superloop_cell.testing.check_system(MySystem(...))` on a system
    you write: it checks what every built-in system passes.

    Example:

    ```python
    class Accumulator(ExternalSystem):
        # Adds its control to a running sum and feeds the sum back.
        def __init__(self, *, width, **kwargs):
            super().__init__(**kwargs)
            self.width = width
            self.control_size = width
            self.output_size = width
            self.state_size = [width]

        def call(self, control, states, training=False):
            total = states[0] + control
            return total, [total]

        def get_config(self):
            return {**super().get_config(), "width": self.width}
    ```
    """

    context_shape = None
    trace_sizes = {}
    trace_labels = {}
    key_state = None
    control_kernel_initializer = None
    control_bias_initializer = None

    def __init__(self, *, control_bias=None, **kwargs):
        super().__init__(**kwargs)
        self._control_bias_values = _control_bias_values(control_bias)

    @property
    def control_layout(self):
        """`[(name, size)]`: the fields of the control, in slicing order."""
        return [(WHOLE_CONTROL, self.control_size)]

    @property
    def control_bias(self):
        """The `control_bias` values given at construction (a dict), or
        None."""
        values = getattr(self, "_control_bias_values", None)
        if values is None:
            return None
        return {name: list(value) if isinstance(value, list) else value
                for name, value in values.items()}

    def check_control_layout(self):
        """Raises unless `control_layout` is a list of `(str, int)` with
        unique names adding up to `control_size`, and every name in
        `control_bias` is one of them (`ValueError` listing the names)."""
        layout = self.control_layout
        owner = type(self).__name__
        if not isinstance(layout, (list, tuple)) or not all(
            isinstance(f, (list, tuple)) and len(f) == 2
            and isinstance(f[0], str) and isinstance(f[1], int)
            and not isinstance(f[1], bool) and f[1] > 0
            for f in layout
        ):
            raise TypeError(
                f"`{owner}.control_layout` must be a list of (name, size) "
                f"pairs with positive int sizes, got {layout!r}."
            )
        names = [name for name, _ in layout]
        if len(set(names)) != len(names):
            raise ValueError(
                f"`{owner}.control_layout` repeats a field name: {names}."
            )
        total = sum(size for _, size in layout)
        if total != self.control_size:
            raise ValueError(
                f"`{owner}.control_layout` adds up to {total}, but "
                f"`control_size` is {self.control_size}: {list(layout)}."
            )
        bias = self.control_bias or {}
        unknown = sorted(set(bias) - set(names))
        if unknown:
            raise ValueError(
                "Received an invalid value for argument `control_bias`: "
                f"unknown field name(s) {unknown} for {owner}; its control "
                f"fields are {names}."
            )
        for name, size in layout:
            value = bias.get(name)
            if isinstance(value, list) and len(value) != size:
                raise ValueError(
                    "Received an invalid value for argument `control_bias`: "
                    f"field {name!r} of {owner} has {size} unit(s), got "
                    f"{len(value)} values: {value}."
                )

    def control_bias_start(self, default):
        """The initializer of this system's slice of the superloop's
        `control_bias`: its own `control_bias_initializer` (or `default`),
        with the fields named in `control_bias` set to their values."""
        base = self.control_bias_initializer or default
        if not self.control_bias:
            return base
        return _FieldBias(base, self.control_layout, self.control_bias)

    def get_config(self):
        config = super().get_config()
        if self.control_bias is not None:
            config["control_bias"] = self.control_bias
        return config

    def get_initial_state(self, batch_size=None):
        """The states at the start of a sequence, in the compute dtype:
        zeros, and a fresh key in `key_state` (drawn from the system's
        `key_generator`, a `keras.random.SeedGenerator`)."""
        states = [
            ops.zeros((batch_size, size), dtype=self.compute_dtype)
            for size in self.state_size
        ]
        if self.key_state is not None:
            states[self.key_state] = _random.draw_keys(
                batch_size, self.key_generator, self.compute_dtype
            )
        return states

    def call(self, control, states, training=False):
        raise NotImplementedError(
            f"{type(self).__name__} must implement "
            "`call(control, states, training=False)`."
        )
