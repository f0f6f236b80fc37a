"""Per-sample context for systems such as `Attention`, via the initial state.

Keras 3's `RNN` has no `constants` argument. A system that reads data fixed
for the whole sequence (`context_shape` set) carries it, flattened, as its
last state; `initial_state` builds the full initial state list with the
contexts in place, as a layer, so it works in functional models and saves
with them.
"""

import keras
import numpy as np
from keras import ops

from superloop_cell import _random
from superloop_cell.superloop import check_superloop_cell


@keras.saving.register_keras_serializable(package="superloop_cell")
class SuperloopInitialState(keras.layers.Layer):
    """A superloop's initial state, with the contexts and fresh keys put in.

    Made by `initial_state`; it needs only the state layout, not the cell.
    Every state starts at zero, or at its row of `start_values`; a context
    state takes its context, a key state fresh random keys drawn from a
    `keras.random.SeedGenerator` (one per key state, seeded by its
    system's `seed`).

    Args:
        state_sizes: List of ints, the cell's `state_size`.
        context_slots: List of ints, the state index of each context.
        context_shapes: List of tuples, the shape of each context without
            the batch axis.
        context_names: Names of the systems that read them, for errors.
        start_values: Dict from state index (int or its str) to a list of
            floats, the non-zero starting values of that state (the same
            for every sample).
        key_slots: List of ints, the state index of each random key.
        key_seeds: List of int or None, one seed per key state.

    Call arguments:
        inputs: `[sequences, context_0, context_1, ...]`; `sequences` only
            gives the batch size.

    Returns:
        A list of `(batch, size)` tensors, one per state.
    """

    def __init__(
        self, state_sizes, context_slots, context_shapes, context_names,
        start_values=None, key_slots=(), key_seeds=(), **kwargs,
    ):
        super().__init__(**kwargs)
        self.state_sizes = [int(s) for s in state_sizes]
        self.context_slots = [int(s) for s in context_slots]
        self.context_shapes = [tuple(s) for s in context_shapes]
        self.context_names = list(context_names)
        self.start_values = {
            int(slot): [float(v) for v in values]
            for slot, values in (start_values or {}).items()
        }
        self.key_slots = [int(s) for s in key_slots]
        self.key_seeds = list(key_seeds)
        self._key_generators = [
            keras.random.SeedGenerator(seed) for seed in self.key_seeds
        ]

    def _check(self, shapes):
        if len(shapes) != len(self.context_slots) + 1:
            raise ValueError(
                f"Expected {len(self.context_slots)} context tensor(s) (for "
                f"{', '.join(self.context_names) or 'no system'}), received "
                f"{len(shapes) - 1}."
            )
        for name, expected, shape in zip(
            self.context_names, self.context_shapes, shapes[1:]
        ):
            if tuple(shape[1:]) != expected:
                raise ValueError(
                    f"The context of `{name}` must have shape (batch, "
                    f"{', '.join(map(str, expected))}); received shape "
                    f"{tuple(shape)}."
                )

    def build(self, input_shape):
        self._check(list(input_shape))

    def call(self, inputs):
        sequences, contexts = inputs[0], inputs[1:]
        self._check([x.shape for x in inputs])
        batch = ops.shape(sequences)[0]
        states = []
        for slot, size in enumerate(self.state_sizes):
            state = ops.zeros((batch, size), dtype=self.compute_dtype)
            if slot in self.start_values:
                state = state + ops.convert_to_tensor(
                    self.start_values[slot], self.compute_dtype)
            states.append(state)
        for slot, context in zip(self.context_slots, contexts):
            states[slot] = ops.reshape(
                ops.cast(context, self.compute_dtype),
                (batch, self.state_sizes[slot]),
            )
        for slot, generator in zip(self.key_slots, self._key_generators):
            states[slot] = _random.draw_keys(batch, generator,
                                             self.compute_dtype)
        return states

    def compute_output_spec(self, inputs):
        batch = inputs[0].shape[0]
        return [
            keras.KerasTensor((batch, size), dtype=self.compute_dtype)
            for size in self.state_sizes
        ]

    def get_config(self):
        return {
            **super().get_config(),
            "state_sizes": self.state_sizes,
            "context_slots": self.context_slots,
            "context_shapes": [list(s) for s in self.context_shapes],
            "context_names": self.context_names,
            "start_values": {str(k): v for k, v in self.start_values.items()},
            "key_slots": self.key_slots,
            "key_seeds": self.key_seeds,
        }


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
    layout = cell.layout
    slots, shapes, names = [], [], []
    for i, system in enumerate(cell.systems):
        if i in layout.contexts:
            slots.append(layout.contexts[i])
            shapes.append(tuple(system.context_shape))
            names.append(f"systems[{i}] ({type(system).__name__})")
    if len(contexts) != len(slots):
        raise ValueError(
            f"Received an invalid value for argument `contexts`: the cell's "
            f"systems read {len(slots)} context(s) ({', '.join(names) or 'none'}),"
            f" but {len(contexts)} were given."
        )
    start_values, key_slots, key_seeds = {}, [], []
    for i, (system, indices) in enumerate(zip(cell.systems, layout.systems)):
        if system.key_state is not None:
            key_slots.append(indices[system.key_state])
            key_seeds.append(getattr(system, "seed", None))
        # Non-zero starting values a system gives every sample (e.g. a
        # memory's initial fill), read off one sample of its initial state.
        own_start = system.get_initial_state(1)
        for j, (slot, value) in enumerate(zip(indices, own_start)):
            if j == system.key_state or slot in layout.contexts.values():
                continue
            row = np.asarray(ops.convert_to_numpy(value), np.float64)[0]
            if np.any(row != 0):
                start_values[slot] = row.tolist()
    layer = SuperloopInitialState(
        cell.state_size, slots, shapes, names,
        start_values=start_values, key_slots=key_slots, key_seeds=key_seeds,
    )
    return layer([sequences, *contexts])
