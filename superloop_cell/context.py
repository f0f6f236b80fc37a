"""Per-sample context for systems such as `Attention`, via the initial state.

Keras 3's `RNN` has no `constants` argument. A system that reads data fixed
for the whole sequence (`context_shape` set) carries it, flattened, as its
last state; `initial_state` builds the full initial state list with the
contexts in place, as a layer, so it works in functional models and saves
with them.
"""

import keras
from keras import ops

from superloop_cell.superloop import check_superloop_cell


@keras.saving.register_keras_serializable(package="superloop_cell")
class SuperloopInitialState(keras.layers.Layer):
    """A superloop's initial state, with the contexts put in.

    Made by `initial_state`. It calls the cell's own
    `initial_states_with(batch, contexts)` — the code behind
    `SuperloopCell.get_initial_state` — inside the model, so both give the
    same states (every system's `get_initial_state`, fresh random keys from
    its `key_generator`) and a learned initial state is trained either
    way. The cell is the one the `RNN` layer runs: a `.keras` file stores
    it once and loads it shared.

    Args:
        cell: The `SuperloopCell`.

    Call arguments:
        inputs: `[sequences, context_0, context_1, ...]`; `sequences` gives
            the batch size (and the feature width, to build the cell).

    Returns:
        A list of `(batch, size)` tensors, one per state.
    """

    def __init__(self, cell, **kwargs):
        super().__init__(**kwargs)
        check_superloop_cell(cell)
        self.cell = cell
        self._slots, self._shapes, self._names = _context_slots(cell)

    def _check(self, shapes):
        if len(shapes) != len(self._slots) + 1:
            raise ValueError(
                f"Expected {len(self._slots)} context tensor(s) (for "
                f"{', '.join(self._names) or 'no system'}), received "
                f"{len(shapes) - 1}."
            )
        for name, expected, shape in zip(self._names, self._shapes,
                                         shapes[1:]):
            if tuple(shape[1:]) != expected:
                raise ValueError(
                    f"The context of `{name}` must have shape (batch, "
                    f"{', '.join(map(str, expected))}); received shape "
                    f"{tuple(shape)}."
                )

    def build(self, input_shape):
        shapes = list(input_shape)
        self._check(shapes)
        # A system's learned initial state is a weight it makes in `build`.
        if not self.cell.built and len(shapes[0]) == 3 and shapes[0][-1]:
            self.cell.build((shapes[0][0], shapes[0][-1]))

    def call(self, inputs):
        sequences, contexts = inputs[0], inputs[1:]
        self._check([x.shape for x in inputs])
        return self.cell.initial_states_with(ops.shape(sequences)[0],
                                             contexts)

    def compute_output_spec(self, inputs):
        batch = inputs[0].shape[0]
        return [
            keras.KerasTensor((batch, size), dtype=self.compute_dtype)
            for size in self.cell.state_size
        ]

    def get_config(self):
        cell = keras.saving.serialize_keras_object(self.cell)
        # Marks the cell as shared with the `RNN` layer that runs it, so a
        # `.keras` file loads both with one cell. Keras marks only the later
        # of two references itself (it copies the earlier config before it
        # knows), and this layer always comes first.
        cell["shared_object_id"] = id(self.cell)
        return {**super().get_config(), "cell": cell}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["cell"] = keras.saving.deserialize_keras_object(config["cell"])
        return cls(**config)


def _context_slots(cell):
    """The state index, shape and name of every context of `cell`."""
    slots, shapes, names = [], [], []
    for i, system in enumerate(cell.systems):
        if i in cell.layout.contexts:
            slots.append(cell.layout.contexts[i])
            shapes.append(tuple(system.context_shape))
            names.append(f"systems[{i}] ({type(system).__name__})")
    return slots, shapes, names


@keras.saving.register_keras_serializable(package="superloop_cell")
class StepMask(keras.layers.Layer):
    """The `(batch, time)` mask of steps whose features are not all `mask_value`.

    Keras 3 fills a layer's `mask` argument from its input only when the
    layer receives a single tensor argument. `keras.layers.RNN(cell)(x,
    initial_state=states)` receives two, so the mask of a `Masking` layer
    is silently dropped there: pass it explicitly with this layer.

    Args:
        mask_value: Float, the padding value. Default 0.0.

    Example:

    ```python
    mask = StepMask(0.0)(sequences)
    y = keras.layers.RNN(cell)(sequences, initial_state=states, mask=mask)
    ```
    """

    def __init__(self, mask_value=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mask_value = float(mask_value)

    def call(self, sequences):
        return ops.any(ops.not_equal(sequences, self.mask_value), axis=-1)

    def compute_output_spec(self, sequences):
        return keras.KerasTensor(sequences.shape[:-1], dtype="bool")

    def get_config(self):
        return {**super().get_config(), "mask_value": self.mask_value}


def initial_state(cell, sequences, contexts=()):
    """The initial state of `cell` with the per-sample contexts of its systems.

    Args:
        cell: A `SuperloopCell`.
        sequences: The RNN's input, `(batch, time, features)`; only its batch
            size is used. Symbolic (`keras.Input`) or concrete.
        contexts: One tensor per system that reads a context (those with
            `context_shape`, such as `Attention`), in the order of
            `cell.systems`; a single tensor is accepted when there is one.
            `Attention(positions=P, width=W)` takes `(batch, P, W)`.

    Returns:
        A list of tensors for `keras.layers.RNN(cell)(sequences,
        initial_state=...)`. With padded sequences, pass the mask explicitly
        too (`mask=StepMask()(sequences)`): Keras drops a `Masking` layer's
        mask when `initial_state` is given.

    Example:

    ```python
    cell = SuperloopCell([SGUCell(8)], [Attention(positions=16, width=1)])
    steps = keras.Input((64, 0))        # no external input: 64 steps
    data = keras.Input((16, 1))
    states = initial_state(cell, steps, data)
    y, *final = keras.layers.RNN(cell, return_state=True)(
        steps, initial_state=states)
    position = cell.system_states(final, 0)[0]
    ```
    """
    check_superloop_cell(cell)
    if not isinstance(contexts, (list, tuple)):
        contexts = [contexts]
    slots, _, names = _context_slots(cell)
    if len(contexts) != len(slots):
        raise ValueError(
            f"Received an invalid value for argument `contexts`: the cell's "
            f"systems read {len(slots)} context(s) ({', '.join(names) or 'none'}),"
            f" but {len(contexts)} were given."
        )
    shape = getattr(sequences, "shape", ())
    if not cell.built and len(shape) == 3 and shape[-1] is not None:
        # Built here, outside the initial-state layer's name scope, its
        # weights keep the paths the RNN layer would give them.
        cell.build((None, shape[-1]))
    return SuperloopInitialState(cell)([sequences, *contexts])
