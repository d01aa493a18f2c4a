"""Model builders (functions of their hyperparameters) and the one way a model is saved and loaded.

Every model takes raw RGB pixels in 0..255 (float32 or uint8) of shape (S, S, 3) and outputs the probability
that the image is a deepfake. Pixel scaling lives inside the model; which pixels it sees (crops or a resize)
is described by the ``input_spec`` in its metadata and cut by :mod:`dfd.preprocess`.

A saved model is a folder holding ``model.keras`` and ``metadata.json``; :func:`load_model` reads both.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers, ops  # noqa: E402

from dfd.layout import METADATA_FILE, MODEL_FILE  # noqa: E402 - the saved model's files, importable from here too
from dfd.preprocess import InputSpec, choose_crop_size, larger_than_crop, make_spec  # noqa: E402

CLASS_NAMES = ["real", "deepfake"]  # index = model output's meaning: P(deepfake)

ARCHITECTURES = ("patchnet", "patchnet-v1", "seed-cnn", "efficientnet-b0")

# The 3x3 Laplacian both patchnets start their trainable high-pass kernel from (per colour channel).
LAPLACIAN = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype="float32")


def input_spec_for(arch: str, crop_size: int, eval_crops: int = 5, face_crop: bool = False) -> InputSpec:
    """How images are cut for ``arch``: seed-cnn resizes to 64 x 64; the others use native-resolution crops.
    With ``face_crop`` the views are cut from the largest detected face (see :mod:`dfd.faces`)."""
    if arch == "seed-cnn":
        return make_spec("resize", 64, 1, face_crop=face_crop)
    return make_spec("crop", crop_size, eval_crops, face_crop=face_crop)


def input_spec_for_data(arch: str, min_sides: list[int], *, max_crop: int, crop_size: int = 0,
                        eval_crops: int = 5, face_crop: bool = False) -> InputSpec:
    """The input spec for training ``arch`` on images whose shorter sides are ``min_sides``: the crop size
    comes from the data (see :func:`dfd.preprocess.choose_crop_size`), and scoring averages several crops only
    when the images are clearly larger than one crop."""
    crop = choose_crop_size(min_sides, max_crop, crop_size)
    big = larger_than_crop(min_sides, crop)
    return input_spec_for(arch, crop, eval_crops if big else 1, face_crop=face_crop)


def build_model(
    arch: str = "patchnet",
    input_size: int = 128,
    *,
    width: int = 32,
    dropout: float = 0.3,
    learning_rate: float = 2e-3,
    seed: int = 42,
    weights_path: str = "",
) -> keras.Model:
    """Build and compile a detector. ``width`` scales the number of filters (patchnet only);
    ``weights_path`` is an optional backbone weights file (efficientnet-b0 only, no-top weights)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(input_size, input_size, 3), name="pixels")
    if arch == "seed-cnn":
        x = layers.Rescaling(1.0 / 255)(inputs)
        for filters in (32, 32, 64, 64):
            x = layers.Conv2D(filters, 3, activation="relu", padding="same")(x)
            x = layers.MaxPooling2D()(x)
        x = layers.Flatten()(x)
        x = layers.Dense(64, activation="relu")(x)
        x = layers.Dropout(0.5)(x)
    elif arch == "patchnet":
        x = _patchnet_body(inputs, width, dropout, pool_early=input_size >= 64)
    elif arch == "patchnet-v1":
        x = _patchnet_v1_body(inputs, width, dropout)
    elif arch == "efficientnet-b0":
        x = _efficientnet_body(inputs, dropout, weights_path)
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    outputs = layers.Dense(1, activation="sigmoid", name="p_fake", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name=arch.replace("-", "_"))
    _init_highpass(model)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
    )
    return model


@keras.saving.register_keras_serializable(package="dfd")
class HighpassStem(layers.Layer):
    """The detector's front end: pixels (0..255) -> ReLU(conv3x3/2(concat[x, highpass(x)])), x = pixels/127.5 - 1.

    The parameters are those of the two-layer form (a per-channel 3x3 high-pass kernel, started as a Laplacian
    and trainable, whose residual exposes resampling and blending traces, and a 3x3 stride-2 convolution over
    pixels and residual), so training sees the same inductive bias. The forward pass composes them into one
    5x5 stride-2 convolution on the raw pixels: the scaling, the residual and the 6-channel stack are never
    materialised at full resolution, which is where the two-layer form spent most of its time on CPU
    (docs/SCALING.md). Only the border pixels differ from the two-layer form (padding is applied once).
    """

    def __init__(self, filters: int, strides: int = 2, **kwargs: Any):
        super().__init__(**kwargs)
        self.filters, self.strides = filters, strides

    def build(self, input_shape: Any) -> None:
        channels = int(input_shape[-1])
        self.highpass = self.add_weight(
            name="highpass", shape=(3, 3, channels),
            initializer=keras.initializers.Constant(np.repeat(LAPLACIAN[:, :, None], channels, axis=2)))
        self.pixel_kernel = self.add_weight(name="pixel_kernel", shape=(3, 3, channels, self.filters),
                                            initializer="glorot_uniform")
        self.residual_kernel = self.add_weight(name="residual_kernel", shape=(3, 3, channels, self.filters),
                                               initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def kernel(self) -> Any:
        """The composed 5x5 kernel on scaled pixels: the pixel kernel, plus the residual kernel convolved
        with the high-pass kernel (cross-correlations compose by summing offsets)."""
        k = ops.pad(self.pixel_kernel, [[1, 1], [1, 1], [0, 0], [0, 0]])
        for a in range(3):
            for b in range(3):
                shifted = self.highpass[a, b][None, None, :, None] * self.residual_kernel
                k = k + ops.pad(shifted, [[a, 2 - a], [b, 2 - b], [0, 0], [0, 0]])
        return k

    def call(self, pixels: Any) -> Any:
        k = self.kernel()
        # conv(pixels / 127.5 - 1, k) = conv(pixels, k / 127.5) - sum(k), folded so no scaled copy is made
        y = ops.conv(ops.cast(pixels, "float32"), k / 127.5, strides=self.strides, padding="same")
        return ops.relu(y + (self.bias - ops.sum(k, axis=(0, 1, 2))))

    def compute_output_shape(self, input_shape: Any) -> tuple:
        def out(n: Any) -> Any:
            return None if n is None else -(-n // self.strides)
        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), self.filters)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


def _patchnet_body(inputs: Any, width: int, dropout: float, pool_early: bool = True) -> Any:
    """A small fully convolutional network for native-resolution crops, built to be cheap on CPU.

    :class:`HighpassStem` looks at pixels and their high-pass residual at half resolution; with ``pool_early``
    (crops of 64 px and more) max pooling then keeps the strongest local responses, and three separable
    convolutions (each followed by pooling but the last) work at 1/4, 1/8 and 1/16 resolution, where they cost
    little. Smaller crops skip that pooling, so the last feature map keeps at least 4 x 4 positions. Global
    average *and* max pooling make it indifferent to where a trace sits while letting one strong local trace
    count. Against ``patchnet-v1`` (the previous default: an extra full-resolution convolution, separables at
    1/2 to 1/8) it does about a quarter of the MACs per 128 px view; speed and quality side by side in
    docs/SCALING.md and docs/QUALITY.md.

    The separable convolutions start variance-preserving: Keras's default (Glorot) counts a depthwise kernel's
    channels as its fan-in, so each depthwise layer shrank the signal by about the channel count, and at the
    start the pooled features were ~3e-4 and the logits varied by ~1e-4 across lfw images: training sat at
    ln 2 for epochs (stalled starts, restarted by the stall guard). A 3x3 depthwise kernel with std 1/3 keeps
    the variance and the pointwise kernel uses He initialisation (it feeds a ReLU).
    """
    x = HighpassStem(width, name="stem")(inputs)
    if pool_early:
        x = layers.MaxPooling2D()(x)
    for mult in (2, 4, 8):
        x = layers.SeparableConv2D(width * mult, 3, padding="same", activation="relu",
                                   depthwise_initializer=keras.initializers.RandomNormal(stddev=1 / 3),
                                   pointwise_initializer=keras.initializers.HeNormal())(x)
        if mult != 8:
            x = layers.MaxPooling2D()(x)
    x = layers.Concatenate()([layers.GlobalAveragePooling2D()(x), layers.GlobalMaxPooling2D()(x)])
    x = layers.Dropout(dropout)(x)
    return x


def _patchnet_v1_body(inputs: Any, width: int, dropout: float) -> Any:
    """The previous default (``patchnet-v1``): a small fully convolutional network for native-resolution crops.

    A depthwise 3x3 layer initialised as a Laplacian high-pass filter (and trainable) exposes the noise
    residual, where resampling and blending traces live; its output is stacked with the pixels. Two full- and
    half-resolution convolutions, then separable convolutions keep it cheap on CPU. Global average *and* max
    pooling make it indifferent to where a trace sits while letting one strong local trace count. Measured on
    lfw_faceswap_2k (2,000 training crops, 5 epochs): validation AUC 0.94 with this front end, against 0.55
    after 8 epochs for the same body with batch normalisation and no high-pass layer.
    """
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    residual = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="highpass")(x)
    x = layers.Concatenate()([x, residual])
    x = layers.Conv2D(max(8, width // 2), 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")(x)
    for mult in (2, 4, 8):
        x = layers.SeparableConv2D(width * mult, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Concatenate()([layers.GlobalAveragePooling2D()(x), layers.GlobalMaxPooling2D()(x)])
    x = layers.Dropout(dropout)(x)
    return x


def _efficientnet_body(inputs: Any, dropout: float, weights_path: str = "") -> Any:
    """EfficientNet-B0 (keras.applications) on native-resolution crops, average-pooled.

    The backbone holds its own pixel scaling and normalisation (0..255 in). Without ``weights_path`` it
    starts from random weights: nothing is downloaded. A user-supplied ImageNet "notop" weights file makes
    it a fine-tuned pretrained model, usually the stronger choice on faces. Crops must be at least 32 px.
    """
    backbone = keras.applications.EfficientNetB0(
        include_top=False, weights=weights_path or None, input_shape=tuple(inputs.shape[1:]), pooling="avg")
    x = backbone(inputs)
    return layers.Dropout(dropout)(x)


def _init_highpass(model: keras.Model) -> None:
    """Start the ``highpass`` layer as a per-channel Laplacian (training may refine it)."""
    try:
        layer = model.get_layer("highpass")
    except ValueError:
        return
    kernel = np.zeros(layer.get_weights()[0].shape, dtype="float32")
    kernel[:, :, :, 0] = LAPLACIAN[:, :, None]
    layer.set_weights([kernel])


def library_versions() -> dict[str, str]:
    """Versions of what the model's behaviour depends on, for the metadata sidecar."""
    import numpy
    import PIL
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
    }


def save_model(model: keras.Model, metadata: dict[str, Any], folder: str | Path) -> Path:
    """Write ``model.keras`` and ``metadata.json`` into ``folder`` (each atomically)."""
    from dfd.storage import atomic_write_local

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".tmp-model.keras"
    model.save(tmp)
    os.replace(tmp, folder / MODEL_FILE)
    required = {"input_spec", "threshold", "class_names"}
    missing = required - set(metadata)
    if missing:
        raise ValueError(f"metadata is missing {sorted(missing)}")
    atomic_write_local(folder / METADATA_FILE, (json.dumps(metadata, indent=2, default=str) + "\n").encode())
    return folder


def load_model(folder: str | Path) -> tuple[keras.Model, dict[str, Any]]:
    """Load a saved model and its metadata sidecar together."""
    folder = Path(folder)
    meta_path, model_path = folder / METADATA_FILE, folder / MODEL_FILE
    if not model_path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"no saved model in {folder} (need {MODEL_FILE} and {METADATA_FILE})")
    metadata = json.loads(meta_path.read_text())
    model = keras.models.load_model(model_path, compile=False)
    return model, metadata
