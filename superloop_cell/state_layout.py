"""The named layout of a superloop's state, and its flat serialisation.

Keras carries an RNN cell's state as one flat list of `(batch, size)`
tensors. `StateLayout` is built once per `SuperloopCell` and is the only
place that knows where each part lies in that list:

    [output]                        the previous step's output (y and the
                                    traces); first, because Keras keeps
                                    `states[0]` as the output of a masked
                                    step (its JAX loop reads it there)
    + [feedback]                    only when there are systems: what the
                                    systems returned, the stack's extra input
    + every stage's states          in order; a fused SGU run is one state
                                    of `depth·units`, other cells' states are
                                    flattened
    + every system's states         in order; a system's context (such as
                                    the attention data) is its last state

`split` turns a flat list into a `SuperloopState` and `join` turns one back.
"""

import collections

SuperloopState = collections.namedtuple(
    "SuperloopState", ["output", "feedback", "stages", "systems"]
)
SuperloopState.__doc__ = """A superloop's state by name.

    output: `(batch, output_size)`, the previous step's output.
    feedback: `(batch, feedback_size)` tensor, or None without systems.
    stages: One list of state tensors per stage.
    systems: One list of state tensors per system, in `cell.systems` order.
"""


class StateLayout:
    """Where each part of a superloop's state lies in the flat state list.

    Args:
        output_size: Int, width of the cell's output.
        feedback_size: Int, width of the feedback (0 without systems).
        stage_sizes: One list of ints per stage.
        system_sizes: One list of ints per system.
        context_states: One bool per system: whether its last state is a
            context.

    Attributes:
        sizes: The flat list of state sizes (the cell's `state_size`).
        output: Index of the output state.
        feedback: Index of the feedback state, or None.
        stages: One list of indices per stage.
        systems: One list of indices per system.
        contexts: `{system index: state index}` of every context.
    """

    def __init__(self, output_size, feedback_size, stage_sizes, system_sizes,
                 context_states):
        sizes = [int(output_size)]
        self.output = 0
        self.feedback = None
        if feedback_size:
            self.feedback = len(sizes)
            sizes.append(int(feedback_size))

        def take(group):
            start = len(sizes)
            sizes.extend(int(s) for s in group)
            return list(range(start, len(sizes)))

        self.stages = [take(group) for group in stage_sizes]
        self.systems = [take(group) for group in system_sizes]
        self.contexts = {
            i: indices[-1]
            for i, (indices, has_context) in enumerate(
                zip(self.systems, context_states))
            if has_context
        }
        self.sizes = sizes

    def __len__(self):
        return len(self.sizes)

    def split(self, states):
        """A flat state list → `SuperloopState`."""
        states = list(states)
        if len(states) != len(self.sizes):
            raise ValueError(
                f"Expected {len(self.sizes)} states (sizes {self.sizes}), "
                f"received {len(states)}."
            )
        return SuperloopState(
            output=states[self.output],
            feedback=None if self.feedback is None else states[self.feedback],
            stages=[[states[i] for i in group] for group in self.stages],
            systems=[[states[i] for i in group] for group in self.systems],
        )

    def join(self, state):
        """A `SuperloopState` → the flat state list."""
        flat = [state.output]
        if self.feedback is not None:
            flat.append(state.feedback)
        for group in list(state.stages) + list(state.systems):
            flat.extend(group)
        if len(flat) != len(self.sizes):
            raise ValueError(
                f"The state parts hold {len(flat)} tensors; the layout has "
                f"{len(self.sizes)}."
            )
        return flat
