"""Model builders of the benchmarks, the variant registry, analytic FLOPs.

Every model is `Input((T, 2)) → keras.layers.RNN(cell, return_sequences=True)
→ Dense(1)`, compiled with RMSprop on MSE. Import after
`benchmarks.backend.select` (this module imports Keras).
"""

from dataclasses import dataclass

import keras

import superloop_cell
from benchmarks import backend, baselines

INPUT_WIDTH = 2
UNITS = 16
MEMORY_DEPTH = 4
MEMORY_WIDTH = 8
REFERENCE_DEPTH = 32  # the reference configuration: 32 SGU layers
UNROLL_MAX_STEPS = 16  # unroll=True compiles for minutes beyond this

# Analytic FLOPs per sample per time step, forward pass (multiply-add = 2).
SGU_ELEMENTWISE_FLOPS_PER_UNIT = 10
GRU_ELEMENTWISE_FLOPS_PER_UNIT = 15
TRAINING_FLOPS_FACTOR = 3  # forward + backward ≈ 3 × forward
FLOP_FORMULA = (
    "SGU layer, forward, per sample per time step: 2·in·2u + 2·u·u + "
    f"{SGU_ELEMENTWISE_FLOPS_PER_UNIT}u, with u = {UNITS}, in = "
    f"{INPUT_WIDTH}+{MEMORY_WIDTH} (input + memory feedback) for the first "
    "layer and u for the others; GRU layer (gru_stack, gru_layers): "
    f"2·in·3u + 2·u·3u + {GRU_ELEMENTWISE_FLOPS_PER_UNIT}u, in = "
    f"{INPUT_WIDTH} for the first; "
    f"training = {TRAINING_FLOPS_FACTOR} × forward; summed over layers, × T "
    "× batch per train step. The control projection, the register memory and "
    "the Dense head are not counted; `empty` has none."
)


def jit_setting(jit_compile):
    """`jit_compile` on TensorFlow; always True on JAX.

    The JAX trainer without jit runs op by op, which no user would train
    with: on JAX every variant is jitted.
    """
    return jit_compile if backend.is_tensorflow() else True


def project_cell(depth, units=UNITS, library=None, **cell_kwargs):
    """`SuperloopCell([SGUCell(units)] * depth, [RegisterMemory(registers=4, width=8)])`.

    Args:
        depth: number of SGU layers.
        units: width of each. Defaults to `UNITS` (16).
        library: the `superloop_cell` package to build from (another
            revision's, see `benchmarks.versions`). Defaults to `None`: the
            one imported here.
        **cell_kwargs: more `SuperloopCell` arguments (`fused=...`).
    """
    lib = library or superloop_cell
    return lib.SuperloopCell(
        cells=[lib.SGUCell(units) for _ in range(depth)],
        systems=[lib.RegisterMemory(depth=MEMORY_DEPTH, width=MEMORY_WIDTH)],
        **cell_kwargs,
    )


def compiled_head(inputs, hidden, jit_compile):
    """`hidden` → Dense(1), compiled as every variant is (RMSprop, MSE)."""
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(
        optimizer=keras.optimizers.RMSprop(),
        loss="mse",
        jit_compile=jit_setting(jit_compile),
    )
    return model


def sequence_model(cell, jit_compile=False, steps=None, unroll=False):
    """`RNN(cell, return_sequences=True)` → Dense(1), compiled.

    `steps=None` leaves the time axis unknown (any length).
    """
    inputs = keras.Input((steps, INPUT_WIDTH))
    rnn = keras.layers.RNN(cell, return_sequences=True, unroll=unroll)
    return compiled_head(inputs, rnn(inputs), jit_compile)


def project_model(
    depth,
    steps=None,
    units=UNITS,
    library=None,
    jit_compile=False,
    unroll=False,
    **cell_kwargs,
):
    """The reference model around `project_cell`, compiled."""
    cell = project_cell(depth, units, library=library, **cell_kwargs)
    return sequence_model(cell, jit_compile, steps=steps, unroll=unroll)


# Builders of the registry: (depth, units, steps) -> compiled keras.Model.
# `steps` is the T the model will see; only `unrolled` fixes it.


def build_looped(depth, units, steps):
    return project_model(depth, units=units)


def build_looped_xla(depth, units, steps):
    return project_model(depth, units=units, jit_compile=True)


def build_unrolled(depth, units, steps):
    return project_model(depth, steps=steps, units=units, unroll=True)


def straightforward_cell(depth, units):
    return baselines.StraightforwardSuperloopCell(
        depth, units, memory_depth=MEMORY_DEPTH, memory_width=MEMORY_WIDTH
    )


def gru_stack_cell(depth, units):
    return keras.layers.StackedRNNCells(
        [keras.layers.GRUCell(units) for _ in range(depth)]
    )


def build_straightforward(depth, units, steps, jit_compile=False):
    return sequence_model(straightforward_cell(depth, units), jit_compile)


def build_gru_stack(depth, units, steps, jit_compile=False):
    return sequence_model(gru_stack_cell(depth, units), jit_compile)


def build_gru_layers(depth, units, steps):
    # What a user writes first: `depth` GRU layers, each its own loop over T.
    inputs = keras.Input((steps, INPUT_WIDTH))
    hidden = inputs
    for _ in range(depth):
        hidden = keras.layers.GRU(units, return_sequences=True)(hidden)
    return compiled_head(inputs, hidden, False)


def build_empty(depth, units, steps):
    return sequence_model(baselines.EmptyCell())


@dataclass(frozen=True)
class Variant:
    build: object  # (depth, units, steps) -> compiled keras.Model
    description: str
    flops: str  # "sgu", "gru" or "none"
    fixed_steps: bool = False  # the model is built for one T
    default: bool = True  # run unless --variants names a subset


VARIANTS = {
    "looped": Variant(
        build_looped,
        "SuperloopCell (default construction: fused='auto') in "
        "keras.layers.RNN, jit_compile=False",
        "sgu",
    ),
    "looped_xla": Variant(
        build_looped_xla,
        "same model, jit_compile=True (XLA)",
        "sgu",
    ),
    "unrolled": Variant(
        build_unrolled,
        f"same cell, RNN(unroll=True), fixed T (run only for T <= "
        f"{UNROLL_MAX_STEPS})",
        "sgu",
        fixed_steps=True,
    ),
    "straightforward": Variant(
        build_straightforward,
        "baselines.StraightforwardSuperloopCell: same function, written "
        "the obvious way (per-layer concat + two matmuls)",
        "sgu",
    ),
    "gru_stack": Variant(
        build_gru_stack,
        "RNN(StackedRNNCells([GRUCell(16)] * depth)), no memory",
        "gru",
    ),
    "gru_layers": Variant(
        build_gru_layers,
        "depth keras.layers.GRU(16, return_sequences=True) layers, each its "
        "own loop over T, no memory; only when --variants names it (the GPU "
        "run compares against keras.layers.GRU)",
        "gru",
        default=False,
    ),
    "empty": Variant(
        build_empty,
        "baselines.EmptyCell: the loop and train step with next to no work",
        "none",
    ),
}

DEFAULT_VARIANTS = [name for name, v in VARIANTS.items() if v.default]


def train_flops(kind, depth, steps, batch):
    """Analytic training FLOPs of one train step (see `FLOP_FORMULA`).

    Args:
        kind: "sgu", "gru" or "none" (a variant's `flops`).
        depth, steps, batch: layers, time steps and rows of the step.

    Returns:
        The FLOPs, or `None` for "none".
    """
    u = UNITS
    if kind == "sgu":
        first_in = INPUT_WIDTH + MEMORY_WIDTH
        gates, elementwise = 2, SGU_ELEMENTWISE_FLOPS_PER_UNIT
        recurrent_gates = 1  # the recurrent kernel feeds the gate only
    elif kind == "gru":
        first_in = INPUT_WIDTH
        gates, elementwise = 3, GRU_ELEMENTWISE_FLOPS_PER_UNIT
        recurrent_gates = 3
    else:
        return None

    def per_layer(n_in):
        return (
            2 * n_in * gates * u + 2 * u * recurrent_gates * u + elementwise * u
        )

    forward = per_layer(first_in) + (depth - 1) * per_layer(u)
    return TRAINING_FLOPS_FACTOR * forward * steps * batch


def variant_flops(variant, depth, steps, batch):
    """`train_flops` of a registry variant by name."""
    return train_flops(VARIANTS[variant].flops, depth, steps, batch)
