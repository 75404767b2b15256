"""The caption model: a frozen image encoder and a decoder that predicts the next word.

`CaptionModelConfig` names every setting; `build_encoder` and `build_decoder` turn it into Keras pieces that
training fits and `export/saved_model.py` wraps in the contract's signatures.

Two decoders share one interface, so the export and the gateway never ask which one they have:

- `gru`: Memefly's par-inject GRU over a pooled image vector; its `decode_step` state is the GRU state.
- `transformer`: a transformer encoder block over the spatial feature map and a causal transformer decoder
  with cross-attention, as in Keras' "image captioning with transformers" example. Its `decode_step`
  state is the token prefix, so the state stays small and the decoder re-reads the prefix every step.

Interface of both: `call((tokens, features))` → logits (training, on the frozen encoder's features),
`encode_context(features)` → the context `encode` returns, `decode(tokens, context)` → logits (teacher
forcing on that context, used by `score`), `step(tokens, state, context)` → (logits, state), and the
attributes `state_size` and `context_shape`.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import tensorflow as tf
from keras.src.utils import file_utils

from export.efficientnet_lite import (
    IMAGE_SIZE,
    NUM_CLASSES,
    POOLED_LAYER,
    RESIZE_SHORTER,
    build_efficientnet_lite0,
    decode_and_crop,
    feature_map_model,
    preprocess_batch,
)
from memefly.paths import DEFAULT_MODEL_NAME

DECODERS = ("gru", "transformer")


@dataclass(frozen=True)
class CaptionModelConfig:
    model_name: str = DEFAULT_MODEL_NAME
    encoder: str = "efficientnet_lite0"
    """efficientnet_lite0, tiny_cnn (tests), or a keras.applications model whose weights are cached."""
    decoder: str = "gru"
    vocab_size: int = 6000
    min_count: int = 2
    max_length: int = 24
    embed_dim: int = 128
    """GRU only: word and image embedding size."""
    state_size: int = 256
    """GRU only: its hidden size. The transformer's `decode_step` state is 1 + max_length wide."""
    dropout: float = 0.2
    context_noise: float = 0.1
    seed: int = 1234
    d_model: int = 128
    """Transformer only (as are the fields below): the width of every layer and of the context `encode` returns."""
    num_heads: int = 4
    num_layers: int = 2
    """Decoder blocks (causal self-attention, cross-attention, feed-forward)."""
    ff_dim: int = 512
    encoder_layers: int = 1
    """Encoder blocks (self-attention, feed-forward) over the projected feature map."""
    conditioned: bool = False
    """GRU only: topic and style conditioning folded into the context (export/conditioning.py). Bundles
    written before it existed load without it."""
    style_dim: int = 32
    """GRU only, conditioned: the size of each style's learned vector."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_file(cls, path: Path) -> CaptionModelConfig:
        return cls(**json.loads(path.read_text()))


# --------------------------------------------------------------------------------------------------
# Image encoders
# --------------------------------------------------------------------------------------------------


class ImageEncoder(tf.Module):
    """JPEG/PNG bytes [B] → features [B, C] (pooled) or [B, P, C] (P positions of the feature map).

    Preprocessing runs in-graph so serving matches training. `context_shape` is the features' shape
    without the batch; the decoder may turn the features into a smaller context (`encode_context`).
    """

    def __init__(
        self,
        backbone: keras.Model,
        image_size: int,
        preprocess: Callable[[tf.Tensor], tf.Tensor] = preprocess_batch,
        classifier: keras.layers.Layer | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.image_size = image_size
        self.preprocess = preprocess
        self.classifier = classifier
        self.context_shape: tuple[int, ...] = tuple(int(d) for d in backbone.output_shape[1:])

    def __call__(self, image_bytes: tf.Tensor) -> tf.Tensor:
        return self.backbone(self.preprocess(image_bytes), training=False)

    def class_probabilities(self, features: tf.Tensor) -> tf.Tensor | None:
        """ImageNet class probabilities [B, 1000] from the features, or None without a classifier.

        The classifier reads the pooled features; the mean over a feature map's positions is that pooling.
        """
        if self.classifier is None:
            return None
        pooled = tf.reduce_mean(features, axis=1) if features.shape.rank == 3 else features
        return tf.nn.softmax(self.classifier(pooled))


def _tiny_cnn(seed: int) -> keras.Model:
    """A small random-weight CNN for tests: distinct images give distinct, stable features."""
    init = keras.initializers.HeNormal(seed=seed)
    return keras.Sequential(
        [
            keras.Input((224, 224, 3)),
            keras.layers.AveragePooling2D(4),
            keras.layers.Conv2D(16, 3, strides=2, activation="relu", kernel_initializer=init),
            keras.layers.Conv2D(32, 3, strides=2, activation="relu", kernel_initializer=init),
            keras.layers.GlobalAveragePooling2D(),
        ],
        name="tiny_cnn",
    )


def _tiny_cnn_map(seed: int) -> keras.Model:
    """The tiny CNN's spatial variant: a [7, 7, 32] map, the same grid as EfficientNet-Lite0's."""
    init = keras.initializers.HeNormal(seed=seed)
    return keras.Sequential(
        [
            keras.Input((224, 224, 3)),
            keras.layers.AveragePooling2D(8),
            keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", kernel_initializer=init),
            keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", kernel_initializer=init),
        ],
        name="tiny_cnn_map",
    )


def _positions(feature_map: keras.Model) -> keras.Model:
    """[B, H, W, C] → [B, H·W, C]: the map as a sequence of positions for attention."""
    height, width, channels = (int(d) for d in feature_map.output_shape[1:])
    flat = keras.layers.Reshape((height * width, channels), name="positions")(feature_map.outputs[0])
    return keras.Model(feature_map.inputs, flat, name=f"{feature_map.name}_positions")


# --------------------------------------------------------------------------------------------------
# keras.applications backbones, used only from the local Keras cache
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KerasApplication:
    """A keras.applications model and its default input size; Keras itself names its ImageNet weights."""

    constructor: str
    """The function's name in `keras.applications`, e.g. InceptionV3."""
    image_size: int

    def build(self, feature_map: bool, weights_for: str | None = None) -> keras.Model:
        """The backbone without its classifier: pooled [B, C], or the final map [B, H, W, C]. With
        `weights_for` (the encoder's name, for messages), its ImageNet weights from the Keras cache."""
        make = getattr(keras.applications, self.constructor)
        shape = {"input_shape": (self.image_size, self.image_size, 3), "pooling": None if feature_map else "avg"}
        if weights_for is None:
            return make(include_top=False, weights=None, **shape)
        with _keras_cache_only(weights_for, self.constructor):
            return make(include_top=False, weights="imagenet", **shape)

    def preprocess(self) -> Callable[[tf.Tensor], tf.Tensor]:
        """[B] encoded images → the application's input: its size, then its own `preprocess_input`."""
        module = importlib.import_module(getattr(keras.applications, self.constructor).__module__)
        preprocess_input = module.preprocess_input
        size = self.image_size
        # The same crop fraction as EfficientNet-Lite0's 224 of 256, the usual ImageNet evaluation crop.
        resize_shorter = round(size * RESIZE_SHORTER / IMAGE_SIZE)

        def preprocess(image_bytes: tf.Tensor) -> tf.Tensor:
            images = tf.map_fn(
                lambda one: decode_and_crop(one, size, resize_shorter),
                image_bytes,
                fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
            )
            return preprocess_input(images)

        return preprocess


# Input sizes as keras.applications (Keras 3.15) builds them by default; the weight files are Keras' own.
KERAS_APPLICATIONS: dict[str, KerasApplication] = {
    app.constructor: app
    for app in (
        *(KerasApplication(f"ConvNeXt{size}", 224) for size in ("Tiny", "Small", "Base", "Large", "XLarge")),
        *(KerasApplication(f"DenseNet{depth}", 224) for depth in (121, 169, 201)),
        *(
            KerasApplication(f"EfficientNetB{i}", size)
            for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))
        ),
        *(
            KerasApplication(f"EfficientNetV2{v}", size)
            for v, size in (("B0", 224), ("B1", 240), ("B2", 260), ("B3", 300), ("S", 384), ("M", 480), ("L", 480))
        ),
        KerasApplication("InceptionResNetV2", 299),
        KerasApplication("InceptionV3", 299),
        KerasApplication("MobileNet", 224),
        KerasApplication("MobileNetV2", 224),
        KerasApplication("MobileNetV3Large", 224),
        KerasApplication("MobileNetV3Small", 224),
        KerasApplication("NASNetLarge", 331),
        KerasApplication("NASNetMobile", 224),
        *(KerasApplication(f"ResNet{depth}", 224) for depth in (50, 101, 152)),
        *(KerasApplication(f"ResNet{depth}V2", 224) for depth in (50, 101, 152)),
        KerasApplication("VGG16", 224),
        KerasApplication("VGG19", 224),
        KerasApplication("Xception", 299),
    )
}


def _name_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def keras_application(name: str) -> KerasApplication | None:
    """The keras.applications model an encoder name means: inception_v3, efficientnet_b0, InceptionV3, ..."""
    key = _name_key(name)
    return next((app for constructor, app in KERAS_APPLICATIONS.items() if _name_key(constructor) == key), None)


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded model weights: $KERAS_HOME/models, else ~/.keras/models."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


class MissingWeightsError(FileNotFoundError):
    pass


@contextmanager
def _keras_cache_only(encoder: str, constructor: str) -> Iterator[None]:
    """While a keras.applications model is built with weights="imagenet", its `get_file(name, url, ...)`
    call answers from the Keras cache and never downloads: a missing file is a `MissingWeightsError`
    naming the file and URL Keras asked for. (Keras' own `get_file` would download it, or a file whose
    hash differs.) Export builds one model at a time, so swapping the function is safe here."""

    def from_cache(fname: str, origin: str, *args: object, **kwargs: object) -> str:
        path = keras_cache_dir() / fname
        if not path.is_file():
            raise MissingWeightsError(
                f"encoder {encoder!r} needs the ImageNet weights of keras.applications.{constructor}, and {path} "
                f"is missing. They are never downloaded here: on a machine with internet access, download "
                f"{origin} and copy it into {path.parent}/ (the Keras cache: $KERAS_HOME/models, by default "
                f"~/.keras/models)."
            )
        return str(path)

    keras_get_file = file_utils.get_file
    file_utils.get_file = from_cache
    try:
        yield
    finally:
        file_utils.get_file = keras_get_file


def build_encoder(config: CaptionModelConfig, pretrained: bool = True) -> ImageEncoder:
    """The frozen encoder `config` names: pooled features for the GRU, the feature map for the transformer.

    `pretrained=False` builds the same structure with random weights (structure checks; no weights read).
    """
    _check_decoder(config)
    feature_map = config.decoder == "transformer"
    classifier: keras.layers.Layer | None = None
    if config.encoder == "efficientnet_lite0":
        with_top = build_efficientnet_lite0(include_top=True, weights=pretrained)
        classifier = with_top.get_layer("predictions")
        backbone = keras.Model(with_top.inputs, with_top.get_layer(POOLED_LAYER).output, name="efficientnet_lite0")
        if feature_map:
            backbone = feature_map_model(backbone)
        encoder_args: tuple = (IMAGE_SIZE, preprocess_batch)
    elif config.encoder == "tiny_cnn":
        backbone = _tiny_cnn_map(config.seed) if feature_map else _tiny_cnn(config.seed)
        encoder_args = (IMAGE_SIZE, preprocess_batch)
        # Random weights, as the tiny CNN's: distinct images still get distinct, stable concepts.
        classifier = keras.layers.Dense(
            NUM_CLASSES, kernel_initializer=keras.initializers.HeNormal(seed=config.seed), name="predictions"
        )
        classifier.build((None, int(backbone.output_shape[-1])))
    elif (app := keras_application(config.encoder)) is not None:
        backbone = app.build(feature_map, config.encoder if pretrained else None)
        encoder_args = (app.image_size, app.preprocess())
    else:
        raise ValueError(
            f"unknown encoder {config.encoder!r}; choose efficientnet_lite0, tiny_cnn or a keras.applications "
            f"model ({', '.join(sorted(KERAS_APPLICATIONS))}, e.g. inception_v3 or efficientnet_b0)"
        )
    if feature_map:
        backbone = _positions(backbone)
    backbone.trainable = False
    if classifier is not None:
        classifier.trainable = False
    return ImageEncoder(backbone, *encoder_args, classifier=classifier)


# --------------------------------------------------------------------------------------------------
# Decoders
# --------------------------------------------------------------------------------------------------


class GruDecoder(keras.Model):
    """Memefly's par-inject GRU: the image embedding is concatenated with every word embedding."""

    state_dtype = "float16"
    """The GRU state crosses the wire twice a step; float16 halves that, at a rounding far below the
    model's own noise."""

    def __init__(self, config: CaptionModelConfig, vocab_size: int, num_styles: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state_size = config.state_size
        self.conditioned = config.conditioned
        self.embedding = keras.layers.Embedding(vocab_size, config.embed_dim, name="word_embedding")
        self.context_noise = keras.layers.GaussianNoise(config.context_noise, seed=config.seed)
        if config.conditioned:
            # A ReLU projection fitted to the template images gave ordinary photos an all-zero context;
            # normalised features and tanh keep every photo's image part alive.
            self.feature_norm = keras.layers.LayerNormalization(name="feature_norm")
            self.context_projection = keras.layers.Dense(config.embed_dim, activation="tanh", name="image_projection")
            self.topic_projection = keras.layers.Dense(config.embed_dim, activation="tanh", name="topic_projection")
            self.style_embedding = keras.layers.Embedding(num_styles + 1, config.style_dim, name="style_embedding")
            self.context_mix = keras.layers.Dense(config.embed_dim, activation="tanh", name="context_mix")
        else:
            self.context_projection = keras.layers.Dense(config.embed_dim, activation="relu", name="context_projection")
        self.gru = keras.layers.GRU(config.state_size, return_sequences=True, name="gru")
        self.dropout = keras.layers.Dropout(config.dropout, seed=config.seed)
        self.logits = keras.layers.Dense(vocab_size, name="logits")

    @property
    def context_shape(self) -> tuple[int, ...]:
        """The context `encode` returns: image (and topic and style) folded into `embed_dim` floats."""
        return (int(self.context_projection.units),)

    def call(self, inputs: tuple[tf.Tensor, ...], training: bool = False) -> tf.Tensor:
        """Teacher forcing on image features: (tokens [B, T], features [B, F][, topic ids [B, K], style
        ids [B]]) → logits [B, T, V]."""
        tokens, features, *conditions = inputs
        features = self.context_noise(features, training=training)
        return self._teacher_forced(tokens, self.encode_context(features, *conditions), training)

    def encode_context(
        self, features: tf.Tensor, topic_ids: tf.Tensor | None = None, style_ids: tf.Tensor | None = None
    ) -> tf.Tensor:
        # Projected once here rather than in every decode step: the context then crosses the wire at
        # `embed_dim` floats (128) instead of the backbone's 1280, on every `decode_step` call.
        if not self.conditioned:
            return self.context_projection(features)
        rows = tf.shape(features)[0]
        if topic_ids is None:
            topic_ids = tf.zeros([rows, 2], tf.int32)
        if style_ids is None:
            style_ids = tf.zeros([rows], tf.int32)
        image = self.context_projection(self.feature_norm(features))
        present = tf.cast(topic_ids > 0, tf.float32)[..., None]
        count = tf.reduce_sum(present, axis=1)
        words = tf.reduce_sum(self.embedding(topic_ids) * present, axis=1) / tf.maximum(count, 1.0)
        topic = self.topic_projection(words) * tf.cast(count > 0, tf.float32)
        style = self.style_embedding(style_ids)
        return self.context_mix(tf.concat([image, topic, style], axis=-1))

    def _teacher_forced(self, tokens: tf.Tensor, context: tf.Tensor, training: bool) -> tf.Tensor:
        words = self.embedding(tokens)
        context = tf.repeat(context[:, None, :], tf.shape(words)[1], axis=1)
        sequence = self.gru(tf.concat([words, context], axis=-1), training=training)
        return self.logits(self.dropout(sequence, training=training))

    def decode(self, tokens: tf.Tensor, context: tf.Tensor) -> tf.Tensor:
        """Teacher forcing on an encoded context: (tokens [B, T], context [B, C]) → logits [B, T, V]."""
        return self._teacher_forced(tokens, context, training=False)

    def step(self, tokens: tf.Tensor, state: tf.Tensor, context: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One token for each row: (tokens [N], state [N, S], context [N, C]) → (logits [N, V], state)."""
        inputs = tf.concat([self.embedding(tokens), context], axis=-1)
        output, _ = self.gru.cell(inputs, [state], training=False)
        return self.logits(output), output


def _feed_forward(config: CaptionModelConfig, name: str) -> keras.Sequential:
    return keras.Sequential(
        [keras.layers.Dense(config.ff_dim, activation="relu"), keras.layers.Dense(config.d_model)], name=name
    )


def _attention(config: CaptionModelConfig, name: str) -> keras.layers.MultiHeadAttention:
    return keras.layers.MultiHeadAttention(config.num_heads, key_dim=config.d_model // config.num_heads, name=name)


class TransformerEncoderBlock(keras.layers.Layer):
    """Self-attention over the image positions, then a feed-forward layer; post-norm residuals."""

    def __init__(self, config: CaptionModelConfig, **kwargs) -> None:
        super().__init__(**kwargs)
        self.attention = _attention(config, "self_attention")
        self.feed_forward = _feed_forward(config, "feed_forward")
        self.attention_norm = keras.layers.LayerNormalization(name="attention_norm")
        self.feed_forward_norm = keras.layers.LayerNormalization(name="feed_forward_norm")
        self.dropout = keras.layers.Dropout(config.dropout, seed=config.seed)

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        attended = self.attention(x, x, training=training)
        x = self.attention_norm(x + self.dropout(attended, training=training))
        return self.feed_forward_norm(x + self.dropout(self.feed_forward(x), training=training))


class TransformerDecoderBlock(keras.layers.Layer):
    """Causal self-attention over the words so far, cross-attention over the image, feed-forward."""

    def __init__(self, config: CaptionModelConfig, **kwargs) -> None:
        super().__init__(**kwargs)
        self.self_attention = _attention(config, "self_attention")
        self.cross_attention = _attention(config, "cross_attention")
        self.feed_forward = _feed_forward(config, "feed_forward")
        self.self_attention_norm = keras.layers.LayerNormalization(name="self_attention_norm")
        self.cross_attention_norm = keras.layers.LayerNormalization(name="cross_attention_norm")
        self.feed_forward_norm = keras.layers.LayerNormalization(name="feed_forward_norm")
        self.dropout = keras.layers.Dropout(config.dropout, seed=config.seed)

    def call(self, x: tf.Tensor, context: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.attend(x, context, training)[0]

    def attend(self, x: tf.Tensor, context: tf.Tensor, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """The block's output, and its cross-attention weights [B, T, S] averaged over heads."""
        attended = self.self_attention(x, x, use_causal_mask=True, training=training)
        x = self.self_attention_norm(x + self.dropout(attended, training=training))
        attended, weights = self.cross_attention(x, context, return_attention_scores=True, training=training)
        x = self.cross_attention_norm(x + self.dropout(attended, training=training))
        output = self.feed_forward_norm(x + self.dropout(self.feed_forward(x), training=training))
        return output, tf.reduce_mean(weights, axis=1)


class TransformerDecoder(keras.Model):
    """Transformer encoder over the feature map, then a causal transformer decoder with cross-attention.

    `encode` returns the encoder block's output ([P, d_model]), so `decode_step` runs only the decoder
    and a request's context on the wire is P·d_model floats rather than the backbone's P·C.

    `decode_step` state, one row per beam, S = 1 + max_length floats: [position, token_0, ..., token_{L-1}],
    the number of tokens fed so far, then those tokens (ids as floats, zero-padded). The all-zero
    state is the empty prefix. Each step writes the new token at `position`, re-runs the decoder over
    the prefix (causal masking makes the zero padding after it irrelevant) and returns the logits at
    `position`: the same numbers teacher forcing gives there.
    """

    state_dtype = "float32"
    """Its state holds token ids, which float16 holds exactly only up to 2048."""

    def __init__(
        self, config: CaptionModelConfig, vocab_size: int, feature_shape: tuple[int, ...], num_styles: int = 0, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if config.d_model % config.num_heads:
            raise ValueError(f"d_model {config.d_model} is not a multiple of num_heads {config.num_heads}")
        if len(feature_shape) != 2:
            raise ValueError(f"the transformer attends over [positions, channels] features, got {feature_shape}")
        self.max_length = config.max_length
        self.state_size = 1 + config.max_length
        self.positions = int(feature_shape[0])
        self.conditioned = config.conditioned
        # Conditioned, the context holds two more rows after the image's positions: the topic and the style,
        # so cross-attention reads them as it reads image regions.
        self.context_shape: tuple[int, ...] = (self.positions + 2 * config.conditioned, config.d_model)
        self.embedding_scale = math.sqrt(config.d_model)
        self.feature_noise = keras.layers.GaussianNoise(config.context_noise, seed=config.seed)
        self.feature_norm = keras.layers.LayerNormalization(name="feature_norm")
        self.feature_projection = keras.layers.Dense(config.d_model, activation="relu", name="feature_projection")
        self.encoder_blocks = [
            TransformerEncoderBlock(config, name=f"encoder_{i}") for i in range(config.encoder_layers)
        ]
        self.token_embedding = keras.layers.Embedding(vocab_size, config.d_model, name="token_embedding")
        if config.conditioned:
            self.topic_projection = keras.layers.Dense(config.d_model, activation="tanh", name="topic_projection")
            self.style_embedding = keras.layers.Embedding(num_styles + 1, config.d_model, name="style_embedding")
            self.condition_type = keras.layers.Embedding(3, config.d_model, name="condition_type")
        self.position_embedding = keras.layers.Embedding(config.max_length, config.d_model, name="position_embedding")
        self.embedding_dropout = keras.layers.Dropout(config.dropout, seed=config.seed)
        self.decoder_blocks = [TransformerDecoderBlock(config, name=f"decoder_{i}") for i in range(config.num_layers)]
        self.dropout = keras.layers.Dropout(config.dropout, seed=config.seed)
        self.logits = keras.layers.Dense(vocab_size, name="logits")

    def encode_context(
        self,
        features: tf.Tensor,
        topic_ids: tf.Tensor | None = None,
        style_ids: tf.Tensor | None = None,
        training: bool = False,
    ) -> tf.Tensor:
        """Backbone features [B, P, C] (and topic ids [B, K], style ids [B]) → context [B, P(+2), d_model]."""
        x = self.feature_norm(self.feature_noise(features, training=training))
        x = self.feature_projection(x)
        if self.conditioned:
            rows = tf.shape(features)[0]
            if topic_ids is None:
                topic_ids = tf.zeros([rows, 2], tf.int32)
            if style_ids is None:
                style_ids = tf.zeros([rows], tf.int32)
            present = tf.cast(topic_ids > 0, tf.float32)[..., None]
            count = tf.reduce_sum(present, axis=1)
            words = tf.reduce_sum(self.token_embedding(topic_ids) * present, axis=1) / tf.maximum(count, 1.0)
            topic = self.topic_projection(words) * tf.cast(count > 0, tf.float32)
            style = self.style_embedding(style_ids)
            # A learned type vector each (image, topic, style), so attention can tell the rows apart.
            kinds = self.condition_type(tf.constant([0, 1, 2]))
            x = tf.concat([x + kinds[0], (topic + kinds[1])[:, None], (style + kinds[2])[:, None]], axis=1)
        for block in self.encoder_blocks:
            x = block(x, training=training)
        return x

    def _hidden(self, tokens: tf.Tensor, context: tf.Tensor, training: bool) -> tf.Tensor:
        positions = tf.range(tf.shape(tokens)[1])
        x = self.token_embedding(tokens) * self.embedding_scale + self.position_embedding(positions)[None]
        x = self.embedding_dropout(x, training=training)
        for block in self.decoder_blocks:
            x = block(x, context, training=training)
        return self.dropout(x, training=training)

    def attention_maps(self, tokens: tf.Tensor, context: tf.Tensor) -> tf.Tensor:
        """Teacher forcing on an encoded context: the last block's cross-attention [B, T, P] over the image's
        P positions (renormalised, leaving out the topic and style rows), for the word written at each
        position."""
        positions = tf.range(tf.shape(tokens)[1])
        x = self.token_embedding(tokens) * self.embedding_scale + self.position_embedding(positions)[None]
        weights = None
        for block in self.decoder_blocks:
            x, weights = block.attend(x, context)
        image = weights[:, :, : self.positions]
        return image / tf.maximum(tf.reduce_sum(image, axis=-1, keepdims=True), 1e-9)

    def call(self, inputs: tuple[tf.Tensor, ...], training: bool = False) -> tf.Tensor:
        """Teacher forcing on backbone features: (tokens [B, T], features [B, P, C][, topic ids [B, K], style
        ids [B]]) → logits [B, T, V]."""
        tokens, features, *conditions = inputs
        context = self.encode_context(features, *conditions, training=training)
        return self.logits(self._hidden(tokens, context, training))

    def decode(self, tokens: tf.Tensor, context: tf.Tensor) -> tf.Tensor:
        """Teacher forcing on an encoded context: (tokens [B, T], context [B, P, d_model]) → logits [B, T, V]."""
        return self.logits(self._hidden(tokens, context, training=False))

    def step(self, tokens: tf.Tensor, state: tf.Tensor, context: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One token for each row: (tokens [N], state [N, S], context [N, P, d_model]) → (logits [N, V], state)."""
        # Past the last position (the gateway stops before) the last slot is overwritten, never out of range.
        position = tf.minimum(tf.cast(tf.round(state[:, 0]), tf.int32), self.max_length - 1)
        here = tf.one_hot(position, self.max_length, on_value=True, off_value=False, dtype=tf.bool)
        prefix = tf.where(here, tokens[:, None], tf.cast(tf.round(state[:, 1:]), tf.int32))
        hidden = tf.gather(self._hidden(prefix, context, training=False), position, batch_dims=1)
        new_state = tf.concat([tf.cast(position + 1, tf.float32)[:, None], tf.cast(prefix, tf.float32)], axis=1)
        return self.logits(hidden), new_state


Decoder = GruDecoder | TransformerDecoder


def _check_decoder(config: CaptionModelConfig) -> None:
    if config.decoder not in DECODERS:
        raise ValueError(f"unknown decoder {config.decoder!r}; choose {' or '.join(DECODERS)}")


def build_decoder(
    config: CaptionModelConfig, vocab_size: int, context_shape: tuple[int, ...], num_styles: int = 0
) -> Decoder:
    """The decoder `config` names, built for features of `context_shape` (the image encoder's output)."""
    _check_decoder(config)
    conditions = (tf.zeros((1, 2), tf.int32), tf.zeros((1,), tf.int32)) if config.conditioned else ()
    if config.decoder == "transformer":
        decoder: Decoder = TransformerDecoder(config, vocab_size, context_shape, num_styles, name="transformer_decoder")
    else:
        decoder = GruDecoder(config, vocab_size, num_styles, name="gru_decoder")
    decoder((tf.zeros((1, 1), tf.int32), tf.zeros((1, *context_shape)), *conditions))
    return decoder
