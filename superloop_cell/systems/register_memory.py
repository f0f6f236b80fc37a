"""A soft register memory: `registers` registers of `width` values each."""

import keras
from keras import ops

from superloop_cell import _validation
from superloop_cell.systems._precision import computes_in_float32
from superloop_cell.systems._soft_ops import softmax
from superloop_cell.systems.base import ExternalSystem



@keras.saving.register_keras_serializable(package="superloop_cell")
class RegisterMemory(ExternalSystem):
    """Soft register memory written and read once per step.

    Control (`2·registers + width`): `[store logits | recall logits | data]`.

        store  = softmax(store logits)                     (batch, registers)
        recall = softmax(recall logits)                    (batch, registers)
        M_t    = (1 − store)[:, :, None] · M_{t−1} + store ⊗ data
        output = recall · M_t                              (batch, width)

    `M` is `(batch, registers, width)`, zero at the start and read after this
    step's write. It is carried flattened as one state of `registers·width`.

    Args:
        registers: Positive integer, number of registers.
        width: Positive integer, values per register.
        control_bias: None (default) or a dict from control field to float, the
            field's starting value in the superloop's `control_bias`. Fields
            (`control_layout`): `"store"`, `"recall"`, `"data"`.
        **kwargs: Base `keras.layers.Layer` arguments.

    Example:

    >>> cell = SuperloopCell([SGUCell(16)], [RegisterMemory(registers=4, width=8)])
    """

    def __init__(self, *args, registers=None, width=None, **kwargs):
        _validation.keyword_only(
            "RegisterMemory", args, "RegisterMemory(registers=4, width=8)")
        super().__init__(**kwargs)
        self.registers = _validation.positive_int(
            "registers", _validation.required("registers", registers))
        self.width = _validation.positive_int(
            "width", _validation.required("width", width))
        self.control_size = 2 * self.registers + self.width
        self.output_size = self.width
        self.state_size = [self.registers * self.width]
        self.trace_sizes = {"store": self.registers, "recall": self.registers}
        self.trace_labels = {"store": "register", "recall": "register"}
        self.check_control_layout()

    @property
    def control_layout(self):
        return [("store", self.registers), ("recall", self.registers),
                ("data", self.width)]

    def _split(self, control):
        # One split and one softmax over (batch, 2, depth) for both address
        # vectors: slices and `[:, :, None]` indexing would each add a
        # strided slice to the step, and its gradient a zero-filled one.
        logits, data = ops.split(control, [2 * self.registers], axis=-1)
        weights = softmax(ops.reshape(logits, (-1, 2, self.registers)))
        store, recall = ops.unstack(weights, 2, axis=1)
        return store, recall, data

    @computes_in_float32
    def call(self, control, states, training=False, traces=False):
        store, recall, data = self._split(control)
        memory = ops.reshape(states[0], (-1, self.registers, self.width))
        # (1 − store)·M + store·data, written as M + store·(data − M).
        memory = memory + ops.expand_dims(store, -1) * (
            ops.expand_dims(data, 1) - memory
        )
        # A broadcast product and a sum, not an einsum: TensorFlow's einsum
        # (and its gradient) is several times slower on tensors this small.
        output = ops.sum(ops.expand_dims(recall, -1) * memory, axis=1)
        new_states = [ops.reshape(memory, (-1, self.registers * self.width))]
        if traces:
            return output, new_states, {"store": store, "recall": recall}
        return output, new_states

    def get_config(self):
        return {**super().get_config(), "registers": self.registers, "width": self.width}
