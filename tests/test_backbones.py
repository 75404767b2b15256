"""keras.applications backbones: used only from the Keras cache, with each application's own preprocessing."""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from export.efficientnet_lite import preprocess_image_bytes
from export.model import (
    KERAS_APPLICATIONS,
    CaptionModelConfig,
    MissingWeightsError,
    build_encoder,
    decode_and_crop,
    keras_application,
)

INCEPTION_V3_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
    "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
)


@pytest.fixture
def keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Keras cache: whatever ~/.keras holds, nothing is cached here."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras"


def _solid_png(colour: tuple[int, int, int], size: tuple[int, int] = (300, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_uncached_backbone_fails_naming_the_missing_file_and_how_to_get_it(keras_home: Path) -> None:
    cache = keras_home / "models"
    missing = cache / "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with pytest.raises(MissingWeightsError) as error:
        build_encoder(CaptionModelConfig(encoder="inception_v3"))
    assert str(error.value) == (
        f"encoder 'inception_v3' needs the ImageNet weights of keras.applications.InceptionV3, and {missing} is "
        f"missing. They are never downloaded here: on a machine with internet access, download {INCEPTION_V3_URL} "
        f"and copy it into {cache}/ (the Keras cache: $KERAS_HOME/models, by default ~/.keras/models)."
    )
    assert not cache.exists() or not any(cache.iterdir()), "nothing was downloaded"


# Keras' legacy HDF5 writer hands h5py variables through np.array(x), which numpy 2 warns about.
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_cached_weights_are_loaded_from_the_keras_cache(keras_home: Path) -> None:
    app = keras_application("mobilenet_v3_small")
    assert app is not None
    keras.utils.set_random_seed(7)
    original = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(224, 224, 3))
    (keras_home / "models").mkdir(parents=True)
    # The cache holds Keras' legacy HDF5 weight files; Keras 3 writes that format only through this module.
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    # The file name keras.applications.MobileNetV3Small asks its `get_file` for.
    with h5py.File(keras_home / "models" / "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", "w") as f:
        save_weights_to_hdf5_group(f, original)

    encoder = build_encoder(CaptionModelConfig(encoder="mobilenet_v3_small", decoder="transformer"))
    assert encoder.context_shape == (49, 576)
    loaded = encoder.backbone.get_weights()
    assert len(loaded) == len(original.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(loaded, original.get_weights(), strict=True))


def test_encoder_names_are_keras_application_names_in_any_spelling() -> None:
    assert keras_application("inception_v3").constructor == "InceptionV3"
    assert keras_application("InceptionV3").constructor == "InceptionV3"
    assert keras_application("efficientnet_b0").constructor == "EfficientNetB0"
    assert keras_application("efficientnet-v2-s").constructor == "EfficientNetV2S"
    assert keras_application("resnet50").constructor == "ResNet50"
    assert keras_application("efficientnet_lite0") is None
    for constructor, app in KERAS_APPLICATIONS.items():
        assert callable(getattr(keras.applications, constructor)) and app.constructor == constructor


def test_an_unknown_encoder_is_refused_with_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"unknown encoder 'resnet9000'; choose efficientnet_lite0, tiny_cnn or .*Xception"
    ):
        build_encoder(CaptionModelConfig(encoder="resnet9000"))


def test_inception_v3_builds_pooled_for_the_gru_and_as_a_feature_map_for_the_transformer(chelsea_jpeg: bytes) -> None:
    pooled = build_encoder(CaptionModelConfig(encoder="inception_v3"), pretrained=False)
    assert (pooled.image_size, pooled.context_shape) == (299, (2048,))
    spatial = build_encoder(CaptionModelConfig(encoder="inception_v3", decoder="transformer"), pretrained=False)
    assert spatial.context_shape == (64, 2048)
    features = tf.function(spatial)(tf.constant([chelsea_jpeg]))
    assert features.shape == (1, 64, 2048)


@pytest.mark.parametrize(
    ("encoder", "size", "expected"),
    [
        # "tf" mode: x / 127.5 - 1.
        ("inception_v3", 299, [200 / 127.5 - 1, 30 / 127.5 - 1, 90 / 127.5 - 1]),
        # "caffe" mode: RGB to BGR, minus the ImageNet mean.
        ("resnet50", 224, [90 - 103.939, 30 - 116.779, 200 - 123.68]),
        # "torch" mode: x / 255, minus the mean, over the standard deviation.
        ("densenet121", 224, [(200 / 255 - 0.485) / 0.229, (30 / 255 - 0.456) / 0.224, (90 / 255 - 0.406) / 0.225]),
        # Normalised inside the model: the input stays 0..255.
        ("efficientnet_b0", 224, [200.0, 30.0, 90.0]),
    ],
)
def test_each_backbone_gets_its_own_preprocessing_and_input_size_in_graph(
    encoder: str, size: int, expected: list[float]
) -> None:
    app = keras_application(encoder)
    assert app is not None and app.image_size == size
    images = tf.function(app.preprocess())(tf.constant([_solid_png((200, 30, 90))]))
    assert images.shape == (1, size, size, 3)
    np.testing.assert_allclose(images.numpy()[0, size // 2, size // 2], expected, atol=1e-3)


def test_the_shared_decode_and_crop_is_efficientnet_lite0s_pipeline(chelsea_jpeg: bytes) -> None:
    cropped = decode_and_crop(tf.constant(chelsea_jpeg), 224, 256)
    np.testing.assert_allclose((cropped - 127.0) / 128.0, preprocess_image_bytes(tf.constant(chelsea_jpeg)), atol=1e-6)
