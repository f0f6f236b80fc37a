"""The per-weight options (initializer, regularizer, constraint) of the
stack's cells, as their `get_config` writes them."""

import keras

_SERIALIZE = {
    "initializer": keras.initializers.serialize,
    "regularizer": keras.regularizers.serialize,
    "constraint": keras.constraints.serialize,
}


def weight_options_config(layer, weights):
    """`{"<weight>_<kind>": serialized or None}` for each of `weights`
    (e.g. `("kernel", "bias")`) and each kind, read from `layer`'s
    attributes of those names."""
    config = {}
    for kind, to_config in _SERIALIZE.items():
        for weight in weights:
            name = f"{weight}_{kind}"
            value = getattr(layer, name)
            config[name] = None if value is None else to_config(value)
    return config
