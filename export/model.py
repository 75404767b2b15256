"""The caption model: a frozen image encoder and a decoder that predicts the next word.

`ModelConfig` names every setting; `build_encoder` and `build_decoder` turn it into Keras pieces that
training fits and `export/saved_model.py` wraps in the contract's signatures.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import tensorflow as tf

from export.efficientnet_lite import build_efficientnet_lite0, preprocess_batch


@dataclass(frozen=True)
class ModelConfig:
    model_name: str = "memefly"
    encoder: str = "efficientnet_lite0"
    decoder: str = "gru"
    vocab_size: int = 6000
    min_count: int = 2
    max_length: int = 24
    embed_dim: int = 128
    state_size: int = 256
    dropout: float = 0.2
    context_noise: float = 0.1
    seed: int = 1234

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_file(cls, path: Path) -> ModelConfig:
        return cls(**json.loads(path.read_text()))


class ImageEncoder(tf.Module):
    """JPEG/PNG bytes [B] → context [B, C]; preprocessing runs in-graph so serving matches training."""

    def __init__(self, backbone: keras.Model, image_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.image_size = image_size
        self.context_shape: tuple[int, ...] = tuple(int(d) for d in backbone.output_shape[1:])

    def __call__(self, image_bytes: tf.Tensor) -> tf.Tensor:
        return self.backbone(preprocess_batch(image_bytes), training=False)


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


def build_encoder(config: ModelConfig) -> ImageEncoder:
    if config.encoder == "efficientnet_lite0":
        backbone = build_efficientnet_lite0(include_top=False, weights=True)
    elif config.encoder == "tiny_cnn":
        backbone = _tiny_cnn(config.seed)
    else:
        raise ValueError(f"unknown encoder {config.encoder!r}; choose efficientnet_lite0 or tiny_cnn")
    backbone.trainable = False
    return ImageEncoder(backbone, image_size=224)


class GruDecoder(keras.Model):
    """Memefly's par-inject GRU: the image embedding is concatenated with every word embedding."""

    def __init__(self, config: ModelConfig, vocab_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state_size = config.state_size
        self.embedding = keras.layers.Embedding(vocab_size, config.embed_dim, name="word_embedding")
        self.context_noise = keras.layers.GaussianNoise(config.context_noise, seed=config.seed)
        self.context_projection = keras.layers.Dense(config.embed_dim, activation="relu", name="context_projection")
        self.gru = keras.layers.GRU(config.state_size, return_sequences=True, name="gru")
        self.dropout = keras.layers.Dropout(config.dropout, seed=config.seed)
        self.logits = keras.layers.Dense(vocab_size, name="logits")

    def call(self, inputs: tuple[tf.Tensor, tf.Tensor], training: bool = False) -> tf.Tensor:
        """Teacher forcing: (tokens [B, T], context [B, C]) → logits [B, T, V]."""
        tokens, context = inputs
        context = self.context_projection(self.context_noise(context, training=training))
        words = self.embedding(tokens)
        context = tf.repeat(context[:, None, :], tf.shape(words)[1], axis=1)
        sequence = self.gru(tf.concat([words, context], axis=-1), training=training)
        return self.logits(self.dropout(sequence, training=training))

    def step(self, tokens: tf.Tensor, state: tf.Tensor, context: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One token for each row: (tokens [N], state [N, S], context [N, C]) → (logits [N, V], state)."""
        inputs = tf.concat([self.embedding(tokens), self.context_projection(context)], axis=-1)
        output, _ = self.gru.cell(inputs, [state], training=False)
        return self.logits(output), output


def build_decoder(config: ModelConfig, vocab_size: int, context_shape: tuple[int, ...]) -> GruDecoder:
    if config.decoder != "gru":
        raise ValueError(f"unknown decoder {config.decoder!r}; this build has gru")
    decoder = GruDecoder(config, vocab_size, name="gru_decoder")
    decoder((tf.zeros((1, 1), tf.int32), tf.zeros((1, *context_shape))))
    return decoder
