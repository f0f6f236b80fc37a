"""Argument checks shared by every public class.

Each check raises before any weight is created or any tensor computed, and
its message names the argument and repeats what was received, in the style
of Keras' own errors.
"""

import math
import numbers


def positive_int(name, value):
    """Returns `value` as an `int`, or raises `ValueError` naming `name`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value <= 0
    ):
        raise ValueError(
            f"Received an invalid value for argument `{name}`: expected a "
            f"positive integer, got {value!r} (type {type(value).__name__})."
        )
    return int(value)


def positive_float(name, value):
    """Returns `value` as a `float`, or raises `ValueError` naming `name`.

    Accepts any finite real number above 0 (not a bool)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not value > 0
        or value == float("inf")
    ):
        raise ValueError(
            f"Received an invalid value for argument `{name}`: expected a "
            f"positive finite number, got {value!r} "
            f"(type {type(value).__name__})."
        )
    return float(value)


def finite_float(name, value):
    """Returns `value` as a `float`: `TypeError` for a non-number (or a
    bool), `ValueError` for an infinite or NaN one, naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Received an invalid value for argument `{name}`: expected a "
            f"number, got {value!r} (type {type(value).__name__})."
        )
    if not math.isfinite(value):
        raise ValueError(
            f"Received an invalid value for argument `{name}`: expected a "
            f"finite number, got {value!r}."
        )
    return float(value)


def non_negative_float(name, value):
    """Returns `value` as a `float` if it is a finite real ≥ 0 (not a
    bool), else raises `ValueError` naming `name`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0 <= value < float("inf")
    ):
        raise ValueError(
            f"Received an invalid value for argument `{name}`: expected a "
            f"non-negative number, got {value!r}."
        )
    return float(value)


def optional_int(name, value):
    """Returns `value` if it is None or an int (not a bool), else raises
    `TypeError` naming `name`."""
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, numbers.Integral)
    ):
        raise TypeError(
            f"Received an invalid value for argument `{name}`: expected an "
            f"int or None, got {value!r} (type {type(value).__name__})."
        )
    return value


def boolean(name, value):
    """Returns `value`, or raises `TypeError` naming `name`."""
    if not isinstance(value, bool):
        raise TypeError(
            f"Received an invalid value for argument `{name}`: expected True "
            f"or False, got {value!r} (type {type(value).__name__})."
        )
    return value


def boolean_or(name, value, words):
    """Returns `value` if it is True, False or one of the strings `words`.

    Raises `TypeError` for a value of another type, `ValueError` for another
    string, naming `name`.
    """
    if isinstance(value, bool) or (isinstance(value, str) and value in words):
        return value
    expected = ", ".join(["True", "False"] + [repr(w) for w in words[:-1]])
    expected += f" or {words[-1]!r}"
    error = ValueError if isinstance(value, str) else TypeError
    raise error(
        f"Received an invalid value for argument `{name}`: expected "
        f"{expected}, got {value!r} (type {type(value).__name__})."
    )


def choice(name, value, allowed):
    """Returns `value` if it is one of `allowed`, else raises `ValueError`."""
    if value not in allowed:
        raise ValueError(
            f"Received an invalid value for argument `{name}`: expected one "
            f"of {sorted(allowed)}, got {value!r}."
        )
    return value


def flat_state_sizes(name, state_size):
    """Flattens an RNN cell's `state_size` (int or nested list) to ints."""
    if isinstance(state_size, bool):
        raise TypeError(f"`{name}.state_size` must be ints, got {state_size!r}.")
    if isinstance(state_size, numbers.Integral):
        return [int(state_size)]
    if isinstance(state_size, (list, tuple)):
        sizes = []
        for size in state_size:
            sizes.extend(flat_state_sizes(name, size))
        return sizes
    raise TypeError(
        f"`{name}.state_size` must be an int or a list of ints (Keras 3 "
        f"cannot carry other state shapes), got {state_size!r}."
    )


def keyword_only(owner, args, form):
    """Raises `TypeError` if `args` (an `__init__`'s `*args`) is not empty.

    Sizes are taken by keyword only, so that no positional call written for
    another size order silently swaps two of them. `form` is the keyword
    call to show, e.g. `"RegisterMemory(registers=4, width=8)"`.
    """
    if args:
        raise TypeError(
            f"{owner} takes its arguments by keyword only, e.g. `{form}`; "
            f"received {len(args)} positional argument(s): "
            f"{', '.join(repr(a) for a in args)}."
        )


def required(name, value):
    """Raises `TypeError` if the keyword argument `name` was not given."""
    if value is None:
        raise TypeError(f"Missing required keyword argument `{name}`.")
    return value
