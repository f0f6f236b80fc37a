"""The protocol every external system of a superloop implements."""

import keras
from keras import ops


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

    and implements `call(control, states, training=False)` returning
    `(output, new_states)`: `control` is `(batch, control_size)`, `states`
    a list matching `state_size`, `output` is `(batch, output_size)`.

    `trace(control, states)` may return a dict of per-step tensors that show
    what the system did (weights, positions), each `(batch, width)`, with
    the widths declared in `trace_sizes` (a dict, name → width); the
    superloop collects them when traces are asked for
    (`SuperloopCell(..., trace=True)`, `superloop_cell.run_with_traces`).
    `trace_labels` (a dict, name → str, optional) says what the entries of
    a trace wider than 1 are, e.g. `"register"`; plots label the heatmap's
    axis with it (`superloop_cell.trace_axis_labels`), `"slot"` when not
    given.

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
    control_kernel_initializer = None
    control_bias_initializer = None

    def get_initial_state(self, batch_size=None):
        """Zeros for every state, in the compute dtype."""
        return [
            ops.zeros((batch_size, size), dtype=self.compute_dtype)
            for size in self.state_size
        ]

    def call(self, control, states, training=False):
        raise NotImplementedError(
            f"{type(self).__name__} must implement "
            "`call(control, states, training=False)`."
        )

    def trace(self, control, states):
        """Per-step tensors that show what the system did; none by default."""
        return {}
