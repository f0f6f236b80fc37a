"""Profiles of training steps with the TensorFlow profiler, and reading them.

`ProfileSteps` (a Keras callback) and `profile` (a context manager for
custom loops) write a profile under `<logdir>/plugins/profile/<run>/`, the
layout TensorBoard's profile plugin reads (`pip install
tensorboard-plugin-profile` to view it). The trace viewer then shows every
op under the stable name scopes of the superloop's step (`sgu_0`,
`sgu_1_to_31`, `control`, `register_memory`, `attention`...).

`read_profile` parses the written `*.xplane.pb` back, and `time_by_component`
sums the time spent in the while-loop body per component scope:

* without XLA, each TensorFlow op is one event named `op_name:op_type`, and
  the ops of a loop body run inlined under `.../while/body/_N/...`;
* with XLA (`jit_compile=True`), events carry HLO instruction names such as
  `fusion.12`; the profile stores each compiled module's HLO proto (plane
  `/host:metadata`), which gives every instruction its TensorFlow `op_name`
  (a fusion keeps the `op_name` of its root) and tells whether it lies in
  a `while` body computation.
"""

import collections
import contextlib
import glob
import os
import re
import warnings

import keras
import tensorflow as tf

from superloop_cell.tensorboard._scopes import scope_of, scope_patterns

# The key of `time_by_component` for loop-body time outside every component.
OTHER = "(other)"

# `op_name:OpType`, the name of a TensorFlow op event.
_TF_OP_EVENT = re.compile(r"^(?P<op_name>[^\s:]+):(?P<op_type>\w+)$")
# Lowering a functional `While` inlines its body as `<while>/body/_<id>/`.
_INLINED_BODY = re.compile(r"(?:^|/)body/_\d+/")
_METADATA_PLANE = "/host:metadata"
_HLO_PROTO_STAT = "Hlo Proto"
_PICOSECONDS = 1e12

ProfiledOp = collections.namedtuple(
    "ProfiledOp", ["name", "op_name", "seconds", "in_loop_body", "xla"]
)
ProfiledOp.__doc__ = """One op execution in a profile.

Fields:
    name: The event's name: `op_name:OpType` for a TensorFlow op, the HLO
        instruction name (`fusion.12`, `dot.3`) for an XLA op.
    op_name: The TensorFlow op name (for XLA, from the HLO metadata).
    seconds: Wall time of this execution.
    in_loop_body: Whether it ran inside a `while` loop body (the RNN's
        step, forward or gradient).
    xla: Whether it is an XLA-compiled instruction.
"""


def _check_tensorflow_backend(what):
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"`{what}` profiles TensorFlow ops and needs the TensorFlow Keras "
            f"backend; the backend is {keras.backend.backend()!r} (set "
            "KERAS_BACKEND=tensorflow)."
        )


def _check_steps(steps):
    if isinstance(steps, int) and not isinstance(steps, bool):
        steps = (steps, steps)
    if (
        not isinstance(steps, (tuple, list))
        or len(steps) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool)
                   for s in steps)
        or steps[0] < 1
        or steps[1] < steps[0]
    ):
        raise ValueError(
            "Received an invalid value for argument `steps`: expected a "
            "positive int or a pair `(first, last)` of positive ints with "
            f"first <= last, got {steps!r}."
        )
    return tuple(steps)


class ProfileSteps(keras.callbacks.Callback):
    """Profiles train steps `first`…`last` of `fit` with the TF profiler.

    Steps count from 1 over the whole `fit` call (across epochs). The first
    step also traces (and with XLA compiles) the train function, so the
    default skips it. Each profiled step is marked as a step for the
    profile plugin's overview page. It profiles once: in the first `fit`
    that reaches step `first`. If another profiler is running then, it
    warns and profiles nothing.

    Args:
        logdir: The run directory; the profile goes to
            `<logdir>/plugins/profile/<timestamp>/<host>.xplane.pb`.
        steps: `(first, last)`, inclusive, or one int. Default `(2, 4)`.

    Example:

    ```python
    model.fit(x, y, callbacks=[ProfileSteps("logs/train", steps=(2, 4))])
    ```
    """

    def __init__(self, logdir, steps=(2, 4)):
        super().__init__()
        _check_tensorflow_backend("ProfileSteps")
        self.logdir = os.fspath(logdir)
        self.first, self.last = _check_steps(steps)
        self._step = 0
        self._running = False
        self._done = False
        self._step_trace = None

    def on_train_begin(self, logs=None):
        self._step = 0

    def on_train_batch_begin(self, batch, logs=None):
        self._step += 1
        if self._done:
            return
        if self._step == self.first:
            try:
                tf.profiler.experimental.start(self.logdir)
            except tf.errors.AlreadyExistsError as error:
                warnings.warn(f"ProfileSteps: {error}; not profiling.",
                              stacklevel=2)
                self._done = True
                return
            self._running = True
        if self._running:
            self._step_trace = tf.profiler.experimental.Trace(
                "train", step_num=self._step, _r=1
            )
            self._step_trace.__enter__()

    def on_train_batch_end(self, batch, logs=None):
        if self._step_trace is not None:
            self._step_trace.__exit__(None, None, None)
            self._step_trace = None
        if self._running and self._step >= self.last:
            self._stop()

    def on_train_end(self, logs=None):
        if self._running:  # training ended before `last`
            self._stop()
        elif not self._done:
            warnings.warn(
                f"ProfileSteps: training ran {self._step} steps, fewer than "
                f"the first profiled step ({self.first}); nothing was "
                "profiled.",
                stacklevel=2,
            )

    def _stop(self):
        tf.profiler.experimental.stop()
        self._running = False
        self._done = True


@contextlib.contextmanager
def profile(logdir):
    """Profiles everything run inside the block with the TF profiler.

    For custom training loops. Yields `step(n)`, a context manager that
    marks one training step for the profile plugin's step-time views.

    Args:
        logdir: The run directory; the profile goes to
            `<logdir>/plugins/profile/<timestamp>/<host>.xplane.pb`.

    Example:

    ```python
    with profile("logs/train") as step:
        for n in range(3):
            with step(n):
                train_step(x, y)
    ```
    """
    _check_tensorflow_backend("profile")
    tf.profiler.experimental.start(os.fspath(logdir))
    try:
        yield _step_marker
    finally:
        tf.profiler.experimental.stop()


def _step_marker(step):
    return tf.profiler.experimental.Trace("train", step_num=step, _r=1)


# ------------------------------------------------------------------ reading


def _xplane_pb2():
    try:  # where TensorFlow 2.16–2.21 ship it
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError:  # pragma: no cover - other TF layouts
        from tsl.profiler.protobuf import xplane_pb2
    return xplane_pb2


def _hlo_pb2():
    try:
        from tensorflow.compiler.xla.service import hlo_pb2
    except ImportError:  # pragma: no cover - other TF layouts
        from xla.service import hlo_pb2
    return hlo_pb2


def profile_files(logdir):
    """The `*.xplane.pb` files of the latest profile under `logdir`.

    Profiles live in `<logdir>/plugins/profile/<timestamp>/`, one file per
    host; the latest timestamp wins.

    Raises:
        FileNotFoundError: when `logdir` holds no profile.
    """
    runs = sorted(
        d for d in glob.glob(os.path.join(os.fspath(logdir), "plugins",
                                          "profile", "*"))
        if glob.glob(os.path.join(d, "*.xplane.pb"))
    )
    if not runs:
        raise FileNotFoundError(
            f"No profile under {os.fspath(logdir)!r}: expected "
            "plugins/profile/<timestamp>/*.xplane.pb (written by "
            "ProfileSteps or profile)."
        )
    return sorted(glob.glob(os.path.join(runs[-1], "*.xplane.pb")))


def _stat_value(stat, stat_names):
    which = stat.WhichOneof("value")
    if which == "ref_value":
        return stat_names.get(stat.ref_value)
    return getattr(stat, which) if which else None


def _module_instructions(module):
    """HLO instruction name → (op_name, in a while body) for one module."""
    computations = {c.id: c for c in module.computations}
    # A `while` calls its body first, then its condition.
    pending = [
        i.called_computation_ids[0]
        for c in module.computations
        for i in c.instructions
        if i.opcode == "while" and i.called_computation_ids
    ]
    in_body = set()
    while pending:
        cid = pending.pop()
        if cid in in_body or cid not in computations:
            continue
        in_body.add(cid)
        for instruction in computations[cid].instructions:
            pending.extend(instruction.called_computation_ids)
    return {
        i.name: (i.metadata.op_name, c.id in in_body)
        for c in module.computations
        for i in c.instructions
    }


def _hlo_modules(space):
    """Module name → its instruction table, from the profile's HLO protos."""
    hlo_pb2 = _hlo_pb2()
    modules = {}
    for plane in space.planes:
        if plane.name != _METADATA_PLANE:
            continue
        stat_names = {k: m.name for k, m in plane.stat_metadata.items()}
        for metadata in plane.event_metadata.values():
            for stat in metadata.stats:
                if stat_names.get(stat.metadata_id) != _HLO_PROTO_STAT:
                    continue
                proto = hlo_pb2.HloProto()
                proto.ParseFromString(stat.bytes_value)
                modules[proto.hlo_module.name] = _module_instructions(
                    proto.hlo_module
                )
    return modules


def _hlo_lookup(modules):
    """Instruction name → (op_name, in body), when all modules agree."""
    candidates = collections.defaultdict(set)
    for table in modules.values():
        for name, entry in table.items():
            candidates[name].add(entry)
    return {n: next(iter(c)) for n, c in candidates.items() if len(c) == 1}


def read_profile(logdir):
    """Every op execution of the latest profile under `logdir`.

    Reads TensorFlow op events (`op_name:OpType`) and XLA instruction
    events, the latter mapped to their TensorFlow `op_name` through the HLO
    protos stored in the profile. An XLA instruction whose name several
    compiled modules use with different op names is left out.

    Returns:
        A list of `ProfiledOp`.
    """
    xplane_pb2 = _xplane_pb2()
    ops = []
    for path in profile_files(logdir):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        modules = _hlo_modules(space)
        shared = _hlo_lookup(modules)
        for plane in space.planes:
            if plane.name == _METADATA_PLANE:
                continue
            stat_names = {k: m.name for k, m in plane.stat_metadata.items()}
            for line in plane.lines:
                for event in line.events:
                    op = _classify(plane, event, stat_names, modules, shared)
                    if op is not None:
                        ops.append(op)
    return ops


def _classify(plane, event, stat_names, modules, shared):
    name = plane.event_metadata[event.metadata_id].name
    seconds = event.duration_ps / _PICOSECONDS
    match = _TF_OP_EVENT.match(name)
    if match:
        op_name = match.group("op_name")
        return ProfiledOp(name, op_name, seconds,
                          bool(_INLINED_BODY.search(op_name)), False)
    # On GPUs XLA events name their module; on CPUs only the instruction.
    module = None
    for stat in event.stats:
        if stat_names.get(stat.metadata_id) == "hlo_module":
            module = _stat_value(stat, stat_names)
    table = modules.get(module, shared) if module else shared
    if name not in table:
        return None
    op_name, in_body = table[name]
    return ProfiledOp(name, op_name, seconds, in_body, True)


def time_by_component(ops, cell):
    """Seconds spent in the loop body per component of `cell`'s step.

    Args:
        ops: A list of `ProfiledOp` (from `read_profile`), or a logdir.
        cell: The profiled `SuperloopCell`.

    Returns:
        A dict from each scope of `component_scopes(cell)` (in step order)
        to its seconds, then `OTHER` ("(other)"): the rest of the loop
        body (loop bookkeeping, the systems' state copies...). Forward and
        gradient loop bodies both count.
    """
    if not isinstance(ops, (list, tuple)):
        ops = read_profile(ops)
    patterns = scope_patterns(cell)
    totals = dict.fromkeys(patterns, 0.0)
    totals[OTHER] = 0.0
    for op in ops:
        if op.in_loop_body:
            totals[scope_of(op.op_name, patterns) or OTHER] += op.seconds
    return totals
