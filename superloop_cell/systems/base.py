"""The protocol every external system of a superloop implements."""

import keras
from keras import ops

from superloop_cell import _random


class ExternalSystem(keras.layers.Layer):
    """Base class of the systems a superloop drives: memories, heads, stacks.

    At every step the superloop projects the output `y` of its RNN stack to
    one control vector per system; the system reads its control and its own
    states, and returns an output that the stack receives as extra input at
    the next step, and its new states.

    A subclass sets in `__init__`:

    - `control_size`: int, width of the control vector it reads.
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
    starting values.

    Example:

    ```python
    class Accumulator(ExternalSystem):
        # Adds its control to a running sum and feeds the sum back.
        def __init__(self, width, **kwargs):
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
