"""MobileNetV2 (ImageNet) with the classic head, taking RGB pixels 0..255."""

from __future__ import annotations

from pathlib import Path

from appliance.seeing.card import LABELS


def resolve_base_weights(base_weights: str) -> str:
    """`imagenet` (Keras downloads it) or a path to a Keras `.h5` weights file, checked to exist."""
    if base_weights == "imagenet":
        return base_weights
    path = Path(base_weights)
    if not path.is_file():
        raise FileNotFoundError(f"--base-weights {base_weights}: no such file (give a .h5 path or 'imagenet')")
    return str(path)


def build_model(input_size: int = 224, alpha: float = 1.0, base_weights: str | None = "imagenet", n_classes: int = 2):
    """The classic recipe's network, with MobileNetV2's preprocessing folded in as its first layer so that the
    exported model takes plain pixels (and its int8 input quantization is exact). `base_weights` None: random
    weights, for a caller that replaces every one (`--init` from an int8 model)."""
    import keras

    base = keras.applications.MobileNetV2(
        weights=None if base_weights is None else resolve_base_weights(base_weights),
        include_top=False,
        alpha=alpha,
        input_shape=(input_size, input_size, 3),
    )
    base.trainable = False
    inputs = keras.Input((input_size, input_size, 3), name="rgb")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="mobilenet_v2_preprocess")(inputs)
    x = base(x, training=False)  # batch norm stays in inference mode, also while fine-tuning
    # The classic head pools 7x7, the whole feature map at 224 px; pool the whole map at any size.
    grid = base.output.shape[1]
    x = keras.layers.AveragePooling2D(pool_size=(grid, grid), name="head_pool")(x)
    x = keras.layers.Flatten(name="head_flatten")(x)
    x = keras.layers.Dense(128, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(0.5, name="head_dropout")(x)
    if not 2 <= n_classes <= len(LABELS):
        raise ValueError(f"n_classes {n_classes} is not 2 or {len(LABELS)}")
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="head_softmax")(x)
    return keras.Model(inputs, outputs, name=f"mask_mobilenetv2_{alpha}_{input_size}")


def base_of(model):
    return next(layer for layer in model.layers if layer.name.startswith("mobilenetv2"))


def unfreeze_top(model, n_layers: int) -> None:
    """Make the top `n_layers` of the MobileNetV2 base trainable (batch norm layers stay frozen)."""
    import keras

    base = base_of(model)
    base.trainable = True
    cut = len(base.layers) - n_layers
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
