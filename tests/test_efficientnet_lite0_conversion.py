"""EfficientNet-Lite0: the torch-free legacy reader, the converted Keras model and its preprocessing."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import keras
import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image

from export.efficientnet_lite import (
    FEATURE_MAP_LAYER,
    IMAGE_SIZE,
    POOLED_LAYER,
    build_efficientnet_lite0,
    feature_map_model,
    load_torch_legacy_state_dict,
    preprocess_batch,
    preprocess_image_bytes,
)

# --------------------------------------------------------------------------------------------------
# A legacy torch.save file written by hand, opcode by opcode, because torch is not installed.
# --------------------------------------------------------------------------------------------------


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _ordered_dict() -> bytes:
    return _global("collections", "OrderedDict") + b")R"


def _tensor(storage_type: str, key: str, numel: int, offset: int, size: tuple, stride: tuple) -> bytes:
    persistent_id = _tuple([_str("storage"), _global("torch", storage_type), _str(key), _str("cpu"), _int(numel), b"N"])
    args = _tuple(
        [
            persistent_id + b"Q",
            _int(offset),
            _tuple([_int(n) for n in size]),
            _tuple([_int(s) for s in stride]),
            b"\x89",  # requires_grad=False
            _ordered_dict(),  # backward_hooks
        ]
    )
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _state_dict_pickle(entries: list[tuple[str, bytes]]) -> bytes:
    body = b"".join(_str(name) + tensor for name, tensor in entries)
    return b"\x80\x02" + _ordered_dict() + b"(" + body + b"u."


def _write_legacy(path: Path, entries: list[tuple[str, bytes]], storages: list[tuple[str, bytes, int]]) -> None:
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        # "long": 4 as on the machine that saved the real checkpoint; LongStorage is still 8 bytes.
        sys_info = {
            "protocol_version": 1001,
            "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4},
        }
        pickle.dump(sys_info, f, protocol=2)
        f.write(_state_dict_pickle(entries))
        pickle.dump([key for key, _, _ in storages], f, protocol=2)
        for _key, raw, numel in storages:
            f.write(struct.pack("<q", numel))
            f.write(raw)


def test_legacy_reader_rebuilds_strided_and_shared_tensors_and_skips_int64(tmp_path: Path) -> None:
    floats = np.arange(12, dtype="<f4") * 0.5 - 1.0
    weight = np.array([[1.5, -2.0, 3.25], [0.0, 7.0, -0.125]], dtype="<f4")
    entries = [
        ("bn.num_batches_tracked", _tensor("LongStorage", "7", 1, 0, (), ())),
        ("conv.weight", _tensor("FloatStorage", "3", 6, 0, (2, 3), (3, 1))),
        ("view.transposed", _tensor("FloatStorage", "5", 12, 2, (3, 2), (1, 3))),
        ("view.head", _tensor("FloatStorage", "5", 12, 0, (4,), (1,))),
    ]
    # The int64 storage comes first: reading it as 4-byte elements would misalign every later one.
    storages = [
        ("7", struct.pack("<q", 123456789), 1),
        ("3", weight.tobytes(), 6),
        ("5", floats.tobytes(), 12),
    ]
    path = tmp_path / "tiny.pth"
    _write_legacy(path, entries, storages)

    state = load_torch_legacy_state_dict(path)

    assert list(state) == ["conv.weight", "view.transposed", "view.head"]
    np.testing.assert_array_equal(state["conv.weight"], weight)
    np.testing.assert_array_equal(state["view.transposed"], floats[2:8].reshape(2, 3).T)
    np.testing.assert_array_equal(state["view.head"], floats[:4])
    assert all(v.dtype == np.float32 for v in state.values())


def test_legacy_reader_refuses_arbitrary_globals(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(b"\x80\x02" + _global("os", "system") + _tuple([_str("true")]) + b"R.")
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        load_torch_legacy_state_dict(path)


# --------------------------------------------------------------------------------------------------
# The converted model
# --------------------------------------------------------------------------------------------------


def _encode(array: np.ndarray, fmt: str = "JPEG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def model():
    return build_efficientnet_lite0(include_top=True, weights=True)


@pytest.fixture(scope="module")
def sample_batch() -> tf.Tensor:
    images = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    return preprocess_batch(tf.constant([_encode(image, quality=95) for image in images]))


def test_imagenet_top5_on_skimage_photos(model, sample_batch: tf.Tensor) -> None:
    logits = model(sample_batch, training=False).numpy()
    assert logits.shape == (3, 1000)
    chelsea, coffee, rocket = (set(np.argsort(-row)[:5].tolist()) for row in logits)
    assert chelsea & set(range(281, 286)), chelsea  # tabby / tiger cat / Persian / Siamese / Egyptian
    assert coffee & {967, 968}, coffee  # espresso / cup
    assert rocket & {657, 744}, rocket  # missile / projectile


def test_pooled_embedding_is_mean_of_feature_map(model, sample_batch: tf.Tensor) -> None:
    feature_map = feature_map_model(model)(sample_batch).numpy()
    assert feature_map.shape == (3, 7, 7, 1280)
    assert model.get_layer(FEATURE_MAP_LAYER).output.shape[1:] == (7, 7, 1280)
    pooled = keras.Model(model.inputs, model.get_layer(POOLED_LAYER).output)(sample_batch).numpy()
    np.testing.assert_allclose(pooled, feature_map.mean(axis=(1, 2)), rtol=1e-5, atol=1e-5)
    assert feature_map.min() >= 0.0 and feature_map.max() <= 6.0  # the head's ReLU6

    headless = build_efficientnet_lite0(include_top=False, weights=False)
    assert headless.output_shape == (None, 1280)
    assert headless.layers[-1].name == POOLED_LAYER


# --------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((320, 240), Image.BICUBIC))


def test_preprocess_geometry_and_range(photo: np.ndarray) -> None:
    out = preprocess_image_bytes(tf.constant(_encode(photo, "PNG"))).numpy()
    assert out.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and out.dtype == np.float32
    assert out.min() >= (0 - 127) / 128 and out.max() <= (255 - 127) / 128
    # 320x240 -> 341x256 -> centre 224: the crop's centre pixel is the photo's centre pixel.
    centre = (photo[119:121, 159:161].astype(np.float32).mean(axis=(0, 1)) - 127) / 128
    np.testing.assert_allclose(out[111:113, 111:113].mean(axis=(0, 1)), centre, atol=0.05)


def test_preprocess_normalises_channel_layouts_and_animations(photo: np.ndarray) -> None:
    gray = photo.mean(axis=2).astype(np.uint8)
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    flipped = Image.fromarray(photo[::-1].copy())

    def animation(fmt: str, **kwargs: object) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(photo).save(buf, format=fmt, save_all=True, append_images=[flipped], **kwargs)
        return buf.getvalue()

    encoded = {
        "png": _encode(photo, "PNG"),
        "rgba_png": _encode(rgba, "PNG"),
        "gray_png": _encode(gray, "PNG"),
        "bmp": _encode(photo, "BMP"),
        "webp": _encode(photo, "WEBP", lossless=True),
        "gif_animation": animation("GIF"),
        # Opaque animated WebP: without the alpha-flag fix TF's DecodeImage overruns its buffer
        # (garbage pixels or a heap-corruption abort of the whole test process).
        "webp_animation": animation("WEBP", quality=95),
    }
    names = list(encoded)
    out = dict(zip(names, preprocess_batch(tf.constant(list(encoded.values()))).numpy(), strict=True))

    for name in ("rgba_png", "bmp", "webp"):
        np.testing.assert_allclose(out[name], out["png"], atol=1e-6, err_msg=name)
    np.testing.assert_allclose(out["gray_png"][..., 0], out["gray_png"][..., 2])
    for name in ("gif_animation", "webp_animation"):
        # First frame, up to palette / lossy error; the flipped second frame is far away.
        assert np.abs(out[name] - out["png"]).mean() < 0.05, name
