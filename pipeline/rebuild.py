"""One way to derive a Sequential from another: its config edited, its weights copied. The float32
copy (pipeline/model.py), the one-pass and mirrored copies (pipeline/mirror.py) and the LiteRT-ready
copy (pipeline/litert.py) are all made so."""

from __future__ import annotations


def rebuilt(model, edit):
    """The same Sequential with its config changed by `edit(config)` (in place) and its weights: how
    the float32 copy, the one-pass copy and the LiteRT-ready copy are made. The model itself when
    `edit` changes nothing."""
    import copy

    import keras

    config = model.get_config()
    edited = copy.deepcopy(config)
    edit(edited)
    if edited == config:
        return model
    clone = keras.Sequential.from_config(edited)
    clone.set_weights(model.get_weights())
    return clone


def layer_configs(config: dict):
    """Every layer's serialized form in a Sequential's config, a wrapper's inner layers (Bidirectional's
    forward and backward RNNs) included: what `rebuilt`'s edits change."""
    todo = list(config["layers"])
    while todo:
        layer = todo.pop(0)
        yield layer
        inner = layer.get("config", {}).values()  # layers, not initializers: a layer's config has `trainable`
        todo += [v for v in inner if isinstance(v, dict) and "trainable" in v.get("config", {})]
