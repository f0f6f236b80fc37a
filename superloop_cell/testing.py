"""A conformance harness for external systems: `check_system`.

Every built-in system passes it, and a system you write should too:

```python
from superloop_cell.testing import check_system
check_system(MySystem(width=4))          # raises AssertionError if broken
```

It builds small superloops around the system (`SGUCell(units)` plus the
system, `steps` steps of `features` random inputs, random per-sample data
for a system that reads a context) and checks, in order:

- `control_layout`: `(name, size)` pairs with unique names that add up to
  `control_size`; an unknown `control_bias` name is refused.
- `config`: `from_config(get_config())` rebuilds an equal system.
- `states`: the initial states and a direct `call`'s output, states and
  traces have the declared sizes (`output_size`, `state_size`,
  `trace_sizes`) and the compute dtype.
- `unrolled_equals_looped`: `RNN(unroll=True)` gives the loop's outputs.
- `masking_equals_trimming`: a padded batch with a mask gives, at every
  valid step and in the final states, what each sequence gives alone.
- `jit`: the compiled model (`jit_compile=True`) gives the eager one's
  outputs.
- `saving`: a `.keras` file loads back to the same outputs.
- `mixed_float16`, `mixed_bfloat16`: under each policy, with the float32
  model's weights, the variables stay float32, the system returns the
  compute dtype, predictions are finite and within `mixed_tolerance` of
  float32's, and two epochs of `fit` give finite, decreasing losses
  (for a system that samples in training, one with a `key_state`, the
  inference loss before and after them decreases).
- `finite_gradients`: a training step at zero controls and at large
  controls (control bias ±`large_control`) leaves every weight finite.
- `bad_arguments`: each positive-int size in the config (`seed` aside),
  set to 0 or to a string, raises a `ValueError`/`TypeError` naming it; a positional size
  raises a `TypeError` (for systems whose sizes are keyword-only).

The first broken property raises an `AssertionError` that names the system
and the property and gives the numbers. Random states (a sampling head's
key, `key_state`) are left out of the comparisons: they are redrawn at
every call. Everything here is public Keras and `superloop_cell` API.
"""

import inspect
import os
import tempfile

import keras
import numpy as np
from keras import ops

from superloop_cell.cells.sgu import SGUCell
from superloop_cell.context import StepMask, initial_state
from superloop_cell.superloop import SuperloopCell
from superloop_cell.systems.base import ExternalSystem

CHECKS = (
    "control_layout", "config", "states", "unrolled_equals_looped",
    "masking_equals_trimming", "jit", "saving", "mixed_float16",
    "mixed_bfloat16", "finite_gradients", "bad_arguments",
)
# Largest |difference| from float32 of a prediction under each policy,
# relative to the float32 prediction's largest magnitude (at least 1).
MIXED_TOLERANCE = {"mixed_float16": 2e-2, "mixed_bfloat16": 1e-1}
# float32 comparisons of the same computation done two ways.
_SAME = 1e-5


class _Broken(AssertionError):
    pass


def check_system(system, *, checks=CHECKS, batch_size=3, steps=5,
                 features=2, units=8, large_control=30.0,
                 mixed_tolerance=None, seed=0):
    """Runs `system` through the properties every system must have.

    Args:
        system: An `ExternalSystem` instance, not yet used in a model (the
            harness builds its own copies from its config, and uses the
            instance itself in the first model).
        checks: The names of the checks to run, from `CHECKS` (default:
            all, in that order).
        batch_size: Sequences per batch. Default 3.
        steps: Time steps per sequence. Default 5.
        features: Input features per step. Default 2.
        units: Width of the `SGUCell` that drives the system. Default 8.
        large_control: The control bias magnitude of the large-control
            gradient check. Default 30.0.
        mixed_tolerance: Dict from policy name to tolerance, overriding
            `MIXED_TOLERANCE`.
        seed: Seed of the random inputs, contexts and weights. Default 0.

    Raises:
        TypeError: `system` is not an `ExternalSystem`, or `checks` names an
            unknown check.
        AssertionError: naming the system, the first broken property and
            the numbers that broke it.
    """
    if not isinstance(system, ExternalSystem):
        raise TypeError(
            "Received an invalid value for argument `system`: expected an "
            f"ExternalSystem instance, got {system!r} (type "
            f"{type(system).__name__})."
        )
    unknown = [c for c in checks if c not in CHECKS]
    if unknown or isinstance(checks, str):
        raise TypeError(
            "Received an invalid value for argument `checks`: expected a "
            f"list of names from {list(CHECKS)}, got {checks!r}."
        )
    harness = _Harness(system, batch_size, steps, features, units,
                       large_control,
                       {**MIXED_TOLERANCE, **(mixed_tolerance or {})}, seed)
    for check in CHECKS:
        if check not in checks:
            continue
        try:
            getattr(harness, "check_" + check)()
        except _Broken as broken:
            raise AssertionError(
                f"check_system({type(system).__name__}): property "
                f"`{check}` is broken: {broken}"
            ) from None
        except Exception as error:  # noqa: BLE001 - reported with its name
            raise AssertionError(
                f"check_system({type(system).__name__}): property "
                f"`{check}` raised {type(error).__name__}: {error}"
            ) from error


def _fail_unless(condition, message):
    if not condition:
        raise _Broken(message)


def _largest_difference(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


class _Harness:
    def __init__(self, system, batch_size, steps, features, units,
                 large_control, mixed_tolerance, seed):
        self.system = system
        self.config = system.get_config()
        self.batch_size, self.steps = batch_size, steps
        self.features, self.units = features, units
        self.large_control = large_control
        self.mixed_tolerance = mixed_tolerance
        self.seed = seed
        rng = np.random.default_rng(seed)
        # Inputs away from 0, so that `StepMask` masks only the padding.
        self.x = (rng.uniform(0.5, 1.5, (batch_size, steps, features))
                  * rng.choice([-1.0, 1.0], (batch_size, steps, features))
                  ).astype("float32")
        self.contexts = []
        if system.context_shape is not None:
            self.contexts.append(rng.normal(
                size=(batch_size, *system.context_shape)).astype("float32"))
        self.targets = rng.normal(size=(batch_size, steps, 1)).astype(
            "float32")
        self._reference = None

    # ----------------------------------------------------------- building

    def fresh_system(self):
        """A new copy of the system, in the current global dtype policy."""
        config = {k: v for k, v in self.config.items() if k != "dtype"}
        return type(self.system).from_config(config)

    def model(self, system=None, any_length=False, unroll=False,
              masked=False, head=False):
        """`[x, *contexts] → [y (batch, T, units), *final states]` (T the
        harness's `steps`, or any with `any_length`), or with `head` a
        `Dense(1)` on `y` (for `fit`)."""
        system = system if system is not None else self.fresh_system()
        cell = SuperloopCell([SGUCell(self.units)], [system])
        x = keras.Input((None if any_length else self.steps,
                         self.features))
        contexts = [keras.Input(c.shape[1:]) for c in self.contexts]
        rnn = keras.layers.RNN(cell, return_sequences=True,
                               return_state=True, unroll=unroll)
        kwargs = {}
        if contexts:
            kwargs["initial_state"] = initial_state(cell, x, contexts)
        if masked:
            kwargs["mask"] = StepMask()(x)
        y, *states = rnn(x, **kwargs)
        inputs = [x, *contexts]
        if head:
            return keras.Model(inputs, keras.layers.Dense(1)(y)), cell
        return keras.Model(inputs, [y, *states]), cell

    def compared(self, cell, outputs):
        """The outputs without the random-key states."""
        y, states = outputs[0], list(outputs[1:])
        key = self.system.key_state
        kept = [y]
        own = cell.layout.systems[0]
        for index, state in enumerate(states):
            if key is not None and index == own[key]:
                continue
            kept.append(state)
        return [np.asarray(ops.convert_to_numpy(k), np.float64) for k in kept]

    def reference(self):
        """The float32 model (built once), its cell and its predictions."""
        if self._reference is None:
            keras.utils.set_random_seed(self.seed)
            model, cell = self.model()
            outputs = model.predict([self.x, *self.contexts], verbose=0)
            self._reference = (model, cell, self.compared(cell, outputs))
        return self._reference

    def same_outputs(self, what, expected, got, tolerance=_SAME):
        for i, (a, b) in enumerate(zip(expected, got)):
            name = "y" if i == 0 else f"final state {i - 1}"
            _fail_unless(a.shape == b.shape,
                         f"{what}: {name} has shape {b.shape}, expected "
                         f"{a.shape}")
            difference = _largest_difference(a, b)
            scale = max(1.0, float(np.max(np.abs(a))) if a.size else 1.0)
            _fail_unless(
                np.all(np.isfinite(b)) and difference <= tolerance * scale,
                f"{what}: {name} differs by up to {difference:.3g} (allowed "
                f"{tolerance * scale:.3g})",
            )

    # -------------------------------------------------------------- checks

    def check_control_layout(self):
        system = self.system
        try:
            system.check_control_layout()
        except (TypeError, ValueError) as error:
            raise _Broken(str(error)) from None
        names = [name for name, _ in system.control_layout]
        bad = {"no such field": 1.0}
        try:
            type(system)(**{**self.config, "control_bias": bad}
                         ).check_control_layout()
        except ValueError as error:
            _fail_unless(all(n in str(error) for n in names),
                         f"the error for an unknown `control_bias` name "
                         f"does not list the fields {names}: {error}")
        else:
            raise _Broken("an unknown `control_bias` name was accepted")

    def check_config(self):
        rebuilt = self.fresh_system()
        _fail_unless(type(rebuilt) is type(self.system),
                     f"from_config gave a {type(rebuilt).__name__}")
        again = rebuilt.get_config()
        _fail_unless(again == self.config,
                     f"get_config after from_config differs: {again} vs "
                     f"{self.config}")
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(self.system))
        _fail_unless(restored.get_config() == self.config,
                     "keras.saving.serialize/deserialize_keras_object does "
                     "not give back the same config (is the class "
                     "registered with keras.saving."
                     "register_keras_serializable?)")

    def check_states(self):
        system = self.fresh_system()
        system.build((None, system.control_size))
        batch = self.batch_size
        dtype = system.compute_dtype
        states = list(system.get_initial_state(batch))
        self._check_state_list("get_initial_state", system, states, dtype)
        if self.contexts:
            states[-1] = ops.reshape(ops.convert_to_tensor(self.contexts[0]),
                                     (batch, -1))
        control = ops.convert_to_tensor(np.random.default_rng(
            self.seed).normal(size=(batch, system.control_size)), dtype)
        result = system(control, states)
        _fail_unless(isinstance(result, (tuple, list)) and len(result) == 2,
                     "call must return (output, new_states)")
        output, new_states = result
        _fail_unless(tuple(output.shape) == (batch, system.output_size),
                     f"the output has shape {tuple(output.shape)}, expected "
                     f"{(batch, system.output_size)}")
        self._dtype_is("the output", output, dtype)
        self._check_state_list("call", system, list(new_states), dtype)
        if system.trace_sizes:
            _, _, traces = system(control, states, traces=True)
            _fail_unless(set(traces) == set(system.trace_sizes),
                         f"traces {sorted(traces)} are not trace_sizes' "
                         f"{sorted(system.trace_sizes)}")
            for name, width in system.trace_sizes.items():
                _fail_unless(tuple(traces[name].shape) == (batch, width),
                             f"trace {name!r} has shape "
                             f"{tuple(traces[name].shape)}, expected "
                             f"{(batch, width)}")

    def _dtype_is(self, what, tensor, dtype):
        got = keras.backend.standardize_dtype(tensor.dtype)
        _fail_unless(got == dtype, f"{what} is {got}, expected {dtype}")

    def _check_state_list(self, where, system, states, dtype):
        sizes = list(system.state_size)
        _fail_unless(len(states) == len(sizes),
                     f"{where} gave {len(states)} states, state_size "
                     f"declares {len(sizes)}")
        for i, (state, size) in enumerate(zip(states, sizes)):
            _fail_unless(tuple(state.shape) == (self.batch_size, size),
                         f"{where}: state {i} has shape "
                         f"{tuple(state.shape)}, expected "
                         f"{(self.batch_size, size)}")
            self._dtype_is(f"{where}: state {i}", state, dtype)

    def check_unrolled_equals_looped(self):
        model, cell, expected = self.reference()
        unrolled, cell2 = self.model(unroll=True)
        unrolled.set_weights(model.get_weights())
        got = self.compared(cell2, unrolled.predict(
            [self.x, *self.contexts], verbose=0))
        self.same_outputs("unroll=True against the loop", expected, got)

    def check_masking_equals_trimming(self):
        model, _, _ = self.reference()
        masked, cell = self.model(any_length=True, masked=True)
        trimmed, _ = self.model(any_length=True)
        masked.set_weights(model.get_weights())
        trimmed.set_weights(model.get_weights())
        lengths = [self.steps - (i % self.steps) for i in
                   range(self.batch_size)]
        padded = self.x.copy()
        for i, length in enumerate(lengths):
            padded[i, length:] = 0.0
        out = self.compared(cell, masked.predict([padded, *self.contexts],
                                                 verbose=0))
        for i, length in enumerate(lengths):
            alone = self.compared(cell, trimmed.predict(
                [padded[i:i + 1, :length],
                 *[c[i:i + 1] for c in self.contexts]], verbose=0))
            expected = [alone[0]] + alone[1:]
            got = [out[0][i:i + 1, :length]] + [s[i:i + 1] for s in out[1:]]
            self.same_outputs(f"sequence {i} (length {length} of "
                              f"{self.steps}) padded and masked against "
                              "trimmed", expected, got)

    def check_jit(self):
        model, cell, expected = self.reference()
        compiled, cell2 = self.model()
        compiled.set_weights(model.get_weights())
        compiled.compile(jit_compile=True)
        got = self.compared(cell2, compiled.predict(
            [self.x, *self.contexts], verbose=0))
        self.same_outputs("jit_compile=True against eager", expected, got)

    def check_saving(self):
        model, cell, expected = self.reference()
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "system.keras")
            model.save(path)
            loaded = keras.saving.load_model(path)
        got = loaded.predict([self.x, *self.contexts], verbose=0)
        self.same_outputs(".keras file saved and loaded", expected,
                          self.compared(cell, got))

    def _mixed(self, policy):
        model, _, expected = self.reference()
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(policy)
        try:
            mixed, cell = self.model()
            mixed.set_weights(model.get_weights())
            for variable in mixed.weights:
                _fail_unless(variable.dtype == "float32",
                             f"variable {variable.path} is {variable.dtype}")
            system = cell.systems[0]
            _fail_unless(system.compute_dtype == policy.split("_")[1],
                         f"the system computes in {system.compute_dtype}")
            self.states_in(system, policy.split("_")[1])
            got = self.compared(cell, mixed.predict(
                [self.x, *self.contexts], verbose=0))
            self.same_outputs(f"{policy} against float32", expected, got,
                              self.mixed_tolerance[policy])
            self.fit_decreases(policy)
        finally:
            keras.config.set_dtype_policy(previous)

    def fit_decreases(self, policy):
        """Two epochs of `fit` give finite, decreasing losses. A system
        that samples in training (one with a `key_state`) has a random
        training loss: its inference loss (`evaluate`) before and after
        must decrease instead."""
        keras.utils.set_random_seed(self.seed)
        trained, _ = self.model(head=True)
        trained.compile(keras.optimizers.Adam(1e-2), "mse")
        data = [self.x, *self.contexts]
        before = trained.evaluate(data, self.targets, verbose=0)
        history = trained.fit(data, self.targets, epochs=2,
                              batch_size=self.batch_size, verbose=0,
                              shuffle=False)
        losses = history.history["loss"]
        if self.system.key_state is not None:
            after = trained.evaluate(data, self.targets, verbose=0)
            losses, what = [before, *losses, after], "evaluate, fit, evaluate"
            decreasing = after < before
        else:
            what, decreasing = "fit", losses[1] < losses[0]
        _fail_unless(np.all(np.isfinite(losses)) and decreasing,
                     f"two epochs of fit under {policy} gave losses "
                     f"{losses} ({what}), expected finite and decreasing")

    def states_in(self, system, dtype):
        states = list(system.get_initial_state(self.batch_size))
        control = ops.zeros((self.batch_size, system.control_size), dtype)
        output, new_states = system(control, states)[:2]
        self._dtype_is("the output", output, dtype)
        for i, state in enumerate(new_states):
            self._dtype_is(f"state {i}", state, dtype)

    def check_mixed_float16(self):
        self._mixed("mixed_float16")

    def check_mixed_bfloat16(self):
        self._mixed("mixed_bfloat16")

    def check_finite_gradients(self):
        for name, bias in (("zero controls", 0.0),
                           ("large controls", self.large_control),
                           ("large negative controls", -self.large_control)):
            keras.utils.set_random_seed(self.seed)
            model, cell = self.model(head=True)
            cell.control_kernel.assign(
                np.zeros(cell.control_kernel.shape, "float32"))
            cell.control_bias.assign(
                np.full(cell.control_bias.shape, bias, "float32"))
            model.compile(keras.optimizers.SGD(1e-3), "mse")
            loss = model.train_on_batch([self.x, *self.contexts],
                                        self.targets)
            _fail_unless(np.isfinite(loss), f"{name}: the loss is {loss}")
            for variable in model.trainable_weights:
                value = ops.convert_to_numpy(variable)
                _fail_unless(np.all(np.isfinite(value)),
                             f"{name}: a training step made {variable.path} "
                             "non-finite (a NaN or infinite gradient)")

    def check_bad_arguments(self):
        cls = type(self.system)
        base = set(keras.layers.Layer().get_config()) | {"control_bias",
                                                         "seed"}
        sizes = [key for key, value in self.config.items()
                 if key not in base and isinstance(value, int)
                 and not isinstance(value, bool) and value > 0]
        for key in sizes:
            for bad in (0, "3"):
                try:
                    cls(**{**self.config, key: bad})
                except (ValueError, TypeError) as error:
                    _fail_unless(f"`{key}`" in str(error) or key in str(error),
                                 f"the error for {key}={bad!r} does not name "
                                 f"`{key}`: {error}")
                else:
                    raise _Broken(f"{key}={bad!r} was accepted")
        signature = inspect.signature(cls.__init__)
        if any(p.kind is p.VAR_POSITIONAL
               for p in signature.parameters.values()):
            # Sizes by keyword only: a positional call must be refused.
            positional = [self.config[key] for key in sizes[:2]]
            if positional:
                try:
                    cls(*positional)
                except TypeError as error:
                    _fail_unless("keyword" in str(error),
                                 "the TypeError for a positional call does "
                                 f"not show the keyword form: {error}")
                else:
                    raise _Broken(f"{cls.__name__}{tuple(positional)} was "
                                  "accepted positionally")
