"""The benchmarked models and the variant registry.

Every model is `Input((T, 2)) → keras.layers.RNN(cell, return_sequences=True)
→ Dense(1)`, compiled with RMSprop on MSE. Import after
`benchmarks.backend.select` (this module imports Keras).
"""

import inspect
from dataclasses import dataclass

import keras

import superloop_cell
from benchmarks import backend, baselines

INPUT_WIDTH = 2
UNITS = 16
REGISTERS = 4
REGISTER_WIDTH = 8
REFERENCE_DEPTH = 32  # the reference model: 32 SGU layers


def jit_setting(jit_compile):
    """`jit_compile` on TensorFlow and torch; always True on JAX.

    The JAX trainer without jit runs op by op, which no user would train
    with. On torch, True is `torch.compile` of the whole train step.
    """
    return True if backend.active() == "jax" else jit_compile


def register_memory(library=superloop_cell):
    """`RegisterMemory(registers=4, width=8)` of `library`.

    Revisions before the keyword-only sizes called the first size `depth`;
    `benchmarks.ab` runs this module against them too.
    """
    parameters = inspect.signature(library.RegisterMemory).parameters
    first = "registers" if "registers" in parameters else "depth"
    return library.RegisterMemory(**{first: REGISTERS, "width": REGISTER_WIDTH})


def project_cell(depth, units=UNITS, **cell_kwargs):
    """`SuperloopCell` of `depth` `SGUCell(units)` + the register memory.

    `cell_kwargs` go to `SuperloopCell` (`fused=`, `layer_loop=`).
    """
    return superloop_cell.SuperloopCell(
        cells=[superloop_cell.SGUCell(units) for _ in range(depth)],
        systems=[register_memory()],
        **cell_kwargs,
    )


def straightforward_cell(depth, units=UNITS):
    return baselines.StraightforwardSuperloopCell(
        depth, units, memory_depth=REGISTERS, memory_width=REGISTER_WIDTH
    )


def gru_stack_cell(depth, units=UNITS):
    return keras.layers.StackedRNNCells(
        [keras.layers.GRUCell(units) for _ in range(depth)]
    )


def sequence_model(cell, jit_compile=False, steps=None, unroll=False):
    """`RNN(cell, return_sequences=True)` → Dense(1), compiled.

    `steps=None` leaves the time axis unknown (any length).
    """
    inputs = keras.Input((steps, INPUT_WIDTH))
    hidden = keras.layers.RNN(cell, return_sequences=True, unroll=unroll)(
        inputs
    )
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(
        optimizer=keras.optimizers.RMSprop(),
        loss="mse",
        jit_compile=jit_setting(jit_compile),
    )
    return model


@dataclass(frozen=True)
class Variant:
    """One column of the reference table.

    `cell(depth)` builds the cell; `jit_compile` is the model's setting;
    `backends` lists where the variant runs by default.
    """

    cell: object
    jit_compile: bool
    description: str
    backends: tuple = backend.BACKENDS

    def build(self, depth, steps=None):
        return sequence_model(self.cell(depth), self.jit_compile, steps)


VARIANTS = {
    "looped": Variant(
        project_cell, False,
        "default SuperloopCell (fused='auto': the 31 layers after the first "
        "fused at depth 32), jit_compile=False",
    ),
    "looped_xla": Variant(
        project_cell, True,
        "the same model, jit_compile=True (TensorFlow: XLA; torch: "
        "torch.compile of the train step; JAX: the same model as looped)",
        ("tensorflow",),
    ),
    "unfused": Variant(
        lambda depth: project_cell(depth, fused=False), False,
        "SuperloopCell(fused=False): every SGUCell its own cell",
        ("torch",),
    ),
    "straightforward": Variant(
        straightforward_cell, False,
        "the same function written plainly (baselines."
        "StraightforwardSuperloopCell: per layer a concat and two matmuls)",
    ),
    "gru_stack": Variant(
        gru_stack_cell, False,
        "RNN(StackedRNNCells([GRUCell(16)] * depth)), no memory",
    ),
}


def default_variants(backend_name):
    return [n for n, v in VARIANTS.items() if backend_name in v.backends]
