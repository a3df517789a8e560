"""The 2D U-Net (Ronneberger et al. 2015) in Keras 3, backend-agnostic.

Only ``keras.layers`` and ``keras.ops`` are used, so the same code runs on the
TensorFlow (default), JAX and PyTorch backends.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
from keras import layers, ops


@dataclass(frozen=True)
class UNetConfig:
    """Shape of a U-Net.

    Attributes
    ----------
    depth : int
        Number of down-sampling steps; input sides must be multiples of ``2**depth``.
    base_filters : int
        Filters of the first level; doubled at each level down.
    batch_norm : bool
        Batch normalisation after each convolution.
    dropout : float
        Dropout rate in the bottleneck (0 disables it).
    n_classes : int
        1 for a binary mask (sigmoid output); otherwise the number of classes
        including background (softmax output).
    """

    depth: int = 4
    base_filters: int = 16
    batch_norm: bool = True
    dropout: float = 0.0
    n_classes: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def check_input_side(side: int, config: UNetConfig, name: str) -> None:
    """Stop unless ``side`` (pixels) can be a U-Net input side: a multiple of ``2**depth``.

    Raises
    ------
    ValueError
        Naming the setting (``name``) and the sides that would do.
    """
    multiple = 2**config.depth
    if side % multiple:
        below, above = side // multiple * multiple, (side // multiple + 1) * multiple
        raise ValueError(
            f"{name} is {side}, but a U-Net of depth {config.depth} takes sides that are multiples of "
            f"{multiple}: e.g. {below or above} or {above}"
        )


# Keras dtype policies a U-Net can compute in. The mixed ones keep the variables in
# float32 (so float32-trained weights load unchanged) and compute in 16 bits:
# float16 suits GPUs, bfloat16 GPUs and CPUs with bfloat16 instructions (AVX512-BF16, AMX).
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def _conv_block(tensor, filters: int, batch_norm: bool, name: str, dtype: keras.DTypePolicy):
    for index in (1, 2):
        tensor = layers.Conv2D(
            filters, 3, padding="same", use_bias=not batch_norm, name=f"{name}_conv{index}", dtype=dtype
        )(tensor)
        if batch_norm:
            # Momentum 0.9 (not Keras's 0.99) lets the inference statistics keep up
            # with the weights in short training runs.
            tensor = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{index}", dtype=dtype)(tensor)
        tensor = layers.Activation("relu", name=f"{name}_relu{index}", dtype=dtype)(tensor)
    return tensor


def build_unet(
    config: UNetConfig = UNetConfig(), input_channels: int = 1, precision: str = "float32"
) -> keras.Model:
    """Build a 2D U-Net for inputs of any size divisible by ``2**depth``.

    Parameters
    ----------
    config : UNetConfig
        Depth, width, normalisation, dropout and number of classes.
    input_channels : int
        Channels of the input image (1 for grey EM).
    precision : {"float32", "mixed_float16", "mixed_bfloat16"}
        Keras dtype policy of every layer but the last: the mixed policies compute in
        16 bits with float32 variables. Inputs and output probabilities are float32
        whatever the precision.

    Returns
    -------
    keras.Model
        Maps (batch, rows, columns, input_channels) float images in [0, 1] to
        (batch, rows, columns, n_classes) probabilities (sigmoid for one class,
        softmax otherwise).
    """
    if config.depth < 1 or config.base_filters < 1:
        raise ValueError(f"depth and base_filters must be >= 1, got {config}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = keras.DTypePolicy(precision)
    inputs = keras.Input(shape=(None, None, input_channels), name="image")
    skips = []
    tensor = inputs
    for level in range(config.depth):
        tensor = _conv_block(tensor, config.base_filters * 2**level, config.batch_norm, f"down{level}", dtype)
        skips.append(tensor)
        tensor = layers.MaxPooling2D(2, name=f"pool{level}", dtype=dtype)(tensor)
    tensor = _conv_block(
        tensor, config.base_filters * 2**config.depth, config.batch_norm, "bottleneck", dtype
    )
    if config.dropout > 0:
        tensor = layers.Dropout(config.dropout, name="bottleneck_dropout", dtype=dtype)(tensor)
    for level in reversed(range(config.depth)):
        filters = config.base_filters * 2**level
        tensor = layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}_transpose", dtype=dtype)(tensor)
        tensor = layers.Concatenate(name=f"up{level}_concat", dtype=dtype)([tensor, skips[level]])
        tensor = _conv_block(tensor, filters, config.batch_norm, f"up{level}", dtype)
    activation = "sigmoid" if config.n_classes == 1 else "softmax"
    # float32 output layer: probabilities near 0 and 1 keep their precision.
    outputs = layers.Conv2D(
        config.n_classes, 1, activation=activation, dtype="float32", name="probabilities"
    )(tensor)
    return keras.Model(inputs, outputs, name="unet")


def _foreground(y_true, y_pred):
    """Cast labels and drop the background channel of a multi-class output."""
    y_true = ops.cast(y_true, y_pred.dtype)
    if y_pred.shape[-1] > 1:
        return y_true[..., 1:], y_pred[..., 1:]
    return y_true, y_pred


@keras.saving.register_keras_serializable(package="vem3d")
def soft_dice(y_true, y_pred, smooth: float = 1.0):
    """Soft Dice of the foreground over the whole batch (differentiable).

    With several classes, the mean of the per-class Dice (background excluded), so
    a rare class weighs as much as a common one.
    """
    y_true, y_pred = _foreground(y_true, y_pred)
    axes = tuple(range(len(y_pred.shape) - 1))
    intersection = ops.sum(y_true * y_pred, axis=axes)
    return ops.mean((2.0 * intersection + smooth) / (ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes) + smooth))


@keras.saving.register_keras_serializable(package="vem3d")
def hard_dice(y_true, y_pred):
    """Dice of the foreground after thresholding at 0.5, over the whole batch (a metric)."""
    y_true, y_pred = _foreground(y_true, y_pred)
    predicted = ops.cast(y_pred > 0.5, y_pred.dtype)
    intersection = ops.sum(y_true * predicted)
    return (2.0 * intersection + 1e-6) / (ops.sum(y_true) + ops.sum(predicted) + 1e-6)


@keras.saving.register_keras_serializable(package="vem3d")
def dice_loss(y_true, y_pred):
    """1 - soft Dice."""
    return 1.0 - soft_dice(y_true, y_pred)


@keras.saving.register_keras_serializable(package="vem3d")
def bce_loss(y_true, y_pred):
    """Mean cross-entropy: binary for one sigmoid channel, categorical for a softmax."""
    y_true = ops.cast(y_true, y_pred.dtype)
    if y_pred.shape[-1] > 1:
        return ops.mean(keras.losses.categorical_crossentropy(y_true, y_pred))
    return ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))


@keras.saving.register_keras_serializable(package="vem3d")
def bce_dice_loss(y_true, y_pred):
    """Cross-entropy plus Dice loss: stable gradients and robust to class imbalance."""
    return bce_loss(y_true, y_pred) + dice_loss(y_true, y_pred)


LOSSES = {"bce": bce_loss, "dice": dice_loss, "bce_dice": bce_dice_loss}


def unet_gflop(config: UNetConfig, rows: int, columns: int, input_channels: int = 1) -> float:
    """Floating-point operations of one forward pass, in GFLOP (2 per multiply-add).

    Counts the convolutions and transposed convolutions, which are nearly all of the
    work (batch norm, activations, pooling and concatenation are left out). The
    up-sampling steps are 2x2 stride-2 transposed convolutions (one kernel tap per
    output pixel); counting them as up-sampling plus a 2x2 convolution, as often
    quoted for Ronneberger's U-Net, gives 436 rather than 385 GFLOP for 64 filters,
    depth 4, on 512 x 512.

    Parameters
    ----------
    config : UNetConfig
    rows, columns : int
        Input size in pixels (multiples of ``2**depth``).
    input_channels : int
    """
    multiply_adds = 0
    channels = input_channels
    for level in range(config.depth + 1):
        filters = config.base_filters * 2**level
        pixels = (rows // 2**level) * (columns // 2**level)
        multiply_adds += pixels * 9 * (channels * filters + filters * filters)
        channels = filters
    for level in reversed(range(config.depth)):
        filters = config.base_filters * 2**level
        pixels = (rows // 2**level) * (columns // 2**level)
        multiply_adds += pixels * channels * filters  # 2x2 stride-2 transposed conv
        multiply_adds += pixels * 9 * (2 * filters * filters + filters * filters)
        channels = filters
    multiply_adds += rows * columns * channels * config.n_classes
    return 2 * multiply_adds / 1e9


def load_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """Load ``.weights.h5`` weights into ``model``, saying clearly when they do not fit.

    Raises
    ------
    ValueError
        If the file is missing or its layers do not match the model's architecture
        (different depth, width, batch norm or number of classes).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: weights file does not exist")
    try:
        model.load_weights(path)
    except Exception as error:
        raise ValueError(
            f"{path}: weights do not match the configured model "
            f"(check model depth, base_filters, batch_norm and classes): {error}"
        ) from error
