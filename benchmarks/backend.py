"""Choosing the Keras backend before Keras is imported.

Keras reads `KERAS_BACKEND` once, at its first import, and cannot switch
afterwards. Entry points call `select` first, then import the modules that
import Keras. Nothing here imports Keras.
"""

import logging
import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT_BACKEND = "tensorflow"


def requested(name=None):
    """`name`, else `$KERAS_BACKEND`, else "tensorflow"; checked."""
    chosen = name or os.environ.get("KERAS_BACKEND") or DEFAULT_BACKEND
    if chosen not in BACKENDS:
        raise ValueError(
            f"Received an invalid backend: expected one of {BACKENDS}, got "
            f"{chosen!r}."
        )
    return chosen


def select(name=None):
    """Makes `name` the Keras backend of this process; returns it.

    Sets `KERAS_BACKEND` (and quiets TensorFlow's C++ start-up log) before
    Keras is imported. If Keras is already imported, its backend cannot
    change: the call succeeds only when it is the same one.

    Args:
        name: "tensorflow", "jax", "torch" or `None` (`$KERAS_BACKEND`, else
            "tensorflow").

    Raises:
        ValueError: `name` is not a known backend.
        RuntimeError: Keras was imported before with another backend.
    """
    chosen = requested(name)
    if "keras" in sys.modules:
        active = sys.modules["keras"].backend.backend()
        if active != chosen:
            raise RuntimeError(
                f"Cannot select the Keras backend {chosen!r}: Keras was "
                f"already imported with the backend {active!r}. Call "
                "benchmarks.backend.select() before anything imports Keras."
            )
        return chosen
    os.environ["KERAS_BACKEND"] = chosen
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if chosen == "tensorflow":
        # Retracing on purpose (new lengths) would warn at every new model.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return chosen


def active():
    """The backend of the imported Keras (imports it if needed)."""
    import keras

    return keras.backend.backend()


def is_tensorflow():
    return active() == "tensorflow"
