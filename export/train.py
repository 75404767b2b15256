"""Train the caption decoder on the meme data set and export it as a versioned SavedModel.

Template images are encoded once by the frozen encoder (the same in-graph preprocessing the `encode`
signature runs), captions are tokenized by the exported tokenizer, and the decoder is fitted with
Keras' progress bars, early stopping on validation loss and a fixed seed.
"""

from __future__ import annotations

import io
import math
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps
from tqdm import tqdm

from export.conditioning import (
    MIN_STYLE_CAPTIONS,
    TOPIC_SLOTS,
    ConditioningData,
    build_style_pmi,
    content_word_mask,
    topic_candidates,
)
from export.data import Caption, DataMissingError, MemeTemplate, iter_captions, load_templates, split_by_template
from export.model import CaptionModelConfig, build_decoder, build_encoder
from export.saved_model import CaptionModule, caption_module, export_saved_model
from export.tokenizer import Tokenizer, build_vocabulary, caption_text, write_vocabulary
from memefly.contract import END, SPECIAL_TOKENS, START, ModelContract


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 2e-3
    validation_fraction: float = 0.05
    patience: int = 2
    max_templates: int | None = None
    """Keep only the templates with the most captions (a slice for quick builds)."""
    max_captions_per_template: int | None = None
    augmentations: int = 0
    """Augmented views (crop, flip, colour jitter) of each template encoded besides the original."""
    verbose: int = 2


PRESETS: dict[str, tuple[CaptionModelConfig, TrainConfig]] = {
    # Seconds on a 2-core CPU: for tests.
    "tiny": (
        CaptionModelConfig(
            encoder="tiny_cnn",
            vocab_size=400,
            min_count=2,
            max_length=16,
            embed_dim=32,
            state_size=64,
            conditioned=True,
            style_dim=8,
        ),
        TrainConfig(epochs=8, max_templates=8, max_captions_per_template=150, augmentations=1, verbose=0),
    ),
    # A couple of minutes: the end-to-end slice's default model until the full model is trained.
    "slice": (
        CaptionModelConfig(encoder="efficientnet_lite0", vocab_size=4000, max_length=24, conditioned=True),
        TrainConfig(epochs=6, max_captions_per_template=250),
    ),
    # The bundled default (`make train`): under 45 minutes on a 2-core CPU.
    "full": (
        CaptionModelConfig(
            encoder="efficientnet_lite0",
            vocab_size=6000,
            max_length=24,
            embed_dim=128,
            state_size=256,
            conditioned=True,
        ),
        TrainConfig(epochs=12, max_captions_per_template=2500, augmentations=7, patience=2),
    ),
    # Seconds: the transformer decoder over the tiny CNN's [7, 7, 32] map, for tests.
    "tiny-transformer": (
        CaptionModelConfig(
            encoder="tiny_cnn",
            decoder="transformer",
            vocab_size=400,
            min_count=2,
            max_length=16,
            d_model=32,
            num_heads=2,
            num_layers=1,
            ff_dim=64,
            encoder_layers=1,
            conditioned=True,
        ),
        TrainConfig(epochs=3, max_templates=8, max_captions_per_template=150, augmentations=1, verbose=0),
    ),
    # The full preset's transformer counterpart: EfficientNet-Lite0's [7, 7, 1280] map, a [49, 128] context.
    "transformer": (
        CaptionModelConfig(
            encoder="efficientnet_lite0",
            decoder="transformer",
            model_name="memefly-transformer",
            vocab_size=6000,
            max_length=24,
            d_model=128,
            num_heads=4,
            num_layers=2,
            ff_dim=512,
            encoder_layers=1,
            conditioned=True,
        ),
        TrainConfig(epochs=12, learning_rate=1e-3, max_captions_per_template=2500, augmentations=7, patience=2),
    ),
}


@dataclass
class TrainResult:
    module: CaptionModule
    contract: ModelContract
    history: dict[str, list[float]]
    vocabulary: list[str]
    model_config: CaptionModelConfig
    train_config: TrainConfig
    conditioning: ConditioningData | None = None
    epochs_trained: int = 0
    """Epochs the weights have seen, a warm start's included (the history may hold fewer)."""


@dataclass(frozen=True)
class WarmStart:
    """A finished run's weights and record, to train further from where it ended."""

    weights: list[np.ndarray]
    vocabulary: list[str]
    history: dict[str, list[float]]
    epochs_trained: int

    @property
    def best_val_loss(self) -> float | None:
        return min(self.history["val_loss"]) if self.history.get("val_loss") else None


def joined_history(earlier: dict[str, list[float]], later: dict[str, list[float]]) -> dict[str, list[float]]:
    names = [n for n in dict.fromkeys([*earlier, *later]) if n != "val_perplexity"]
    history = {name: [*earlier.get(name, []), *later.get(name, [])] for name in names}
    history["val_perplexity"] = [math.exp(v) for v in history.get("val_loss", [])]
    return history


def select_captions(
    captions: list[Caption], templates: list[MemeTemplate], config: TrainConfig
) -> tuple[list[MemeTemplate], list[Caption]]:
    by_template: dict[str, list[Caption]] = defaultdict(list)
    for caption in captions:
        by_template[caption.template].append(caption)
    kept = [t for t in templates if by_template.get(t.id)]
    kept.sort(key=lambda t: -len(by_template[t.id]))
    if config.max_templates is not None:
        kept = kept[: config.max_templates]
    selected = [c for t in kept for c in by_template[t.id][: config.max_captions_per_template]]
    return kept, selected


def augmented_views(image_bytes: bytes, count: int, rng: np.random.Generator) -> list[bytes]:
    """The template itself, then `count` random crops, flips and colour jitters of it, as JPEG."""
    original = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    views = [image_bytes]
    for _ in range(count):
        width, height = original.size
        scale = rng.uniform(0.75, 1.0)
        w, h = int(width * scale), int(height * scale)
        left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        view = original.crop((left, top, left + w, top + h))
        if rng.random() < 0.5:
            view = ImageOps.mirror(view)
        view = ImageEnhance.Brightness(view).enhance(rng.uniform(0.75, 1.25))
        view = ImageEnhance.Color(view).enhance(rng.uniform(0.6, 1.4))
        buffer = io.BytesIO()
        view.save(buffer, format="JPEG", quality=90)
        views.append(buffer.getvalue())
    return views


def encode_templates(encoder, templates: list[MemeTemplate], augmentations: int, seed: int) -> np.ndarray:
    """[templates, 1 + augmentations, C] contexts; view 0 is the unaltered template."""
    rng = np.random.default_rng(seed)
    rows = []
    for template in tqdm(templates, desc="encoding templates", unit="template", disable=len(templates) < 20):
        views = augmented_views(template.image_path.read_bytes(), augmentations, rng)
        rows.append(encoder(tf.constant(views)).numpy())
    return np.stack(rows)


def make_sequences(tokenizer: Tokenizer, captions: list[Caption], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forcing pairs: inputs `<start> w1..wn`, targets `w1..wn <end>`, zero-padded."""
    ids, lengths = tokenizer(tf.constant([caption_text(c.boxes) for c in captions]))
    ids, lengths = ids.numpy(), lengths.numpy()
    inputs = np.zeros((len(captions), max_length), np.int32)
    targets = np.zeros((len(captions), max_length), np.int32)
    inputs[:, 0] = SPECIAL_TOKENS.index(START)
    width = min(ids.shape[1], max_length - 1)
    inputs[:, 1 : width + 1] = ids[:, :width]
    targets[:, :width] = ids[:, :width]
    targets[np.arange(len(captions)), np.minimum(lengths, max_length - 1)] = SPECIAL_TOKENS.index(END)
    return inputs, targets


def _dataset(
    template_rows: np.ndarray,
    inputs: np.ndarray,
    targets: np.ndarray,
    contexts: np.ndarray,
    batch_size: int,
    shuffle_seed: int | None,
    conditioning: TrainingConditions | None = None,
) -> tf.data.Dataset:
    """Training draws a random view of each caption's template; validation sees the template itself.

    Conditioned, training also draws each caption's topic (0 to `TOPIC_SLOTS` of its own content words)
    and keeps its template's style half the time; a caption given its style is shown another template's
    image half the time, so that a style, not the picture, decides the voice.
    """
    contexts = tf.constant(contexts)
    views, templates = contexts.shape[1], contexts.shape[0]
    candidates = conditioning.topic_candidates if conditioning else np.zeros((len(inputs), 1), np.int32)
    ds = tf.data.Dataset.from_tensor_slices((template_rows, inputs, targets, candidates))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(inputs), seed=shuffle_seed, reshuffle_each_iteration=True)
    style_of_template = tf.constant(conditioning.style_of_template if conditioning else [0])

    def attach_context(row: tf.Tensor, x: tf.Tensor, y: tf.Tensor, candidates: tf.Tensor):
        if shuffle_seed is None:
            view = tf.zeros_like(row)
        else:
            view = tf.random.uniform(tf.shape(row), 0, views, dtype=tf.int32, seed=shuffle_seed)
        if conditioning is None:
            return (x, tf.gather_nd(contexts, tf.stack([row, view], axis=1))), y
        rows = tf.shape(row)[0]
        if shuffle_seed is None:
            # Validation measures the image alone, as the unconditioned model was measured.
            topic = tf.zeros([rows, TOPIC_SLOTS], tf.int32)
            style = tf.zeros_like(row)
            image_row = row
        else:
            style = tf.gather(style_of_template, row)
            style = tf.where(tf.random.uniform([rows]) < 0.5, style, 0)
            swap = (style > 0) & (tf.random.uniform([rows]) < 0.5)
            image_row = tf.where(swap, tf.random.uniform([rows], 0, templates, dtype=tf.int32), row)
            wanted = tf.random.categorical(tf.math.log([[0.3, 0.4, 0.3]]), rows, dtype=tf.int32)[0]
            keys = tf.where(candidates > 0, tf.random.uniform(tf.shape(candidates)), -1.0)
            picked = tf.gather(candidates, tf.argsort(keys, axis=1, direction="DESCENDING"), batch_dims=1)
            picked = picked[:, :TOPIC_SLOTS]
            slots = tf.range(TOPIC_SLOTS)[None, :] < wanted[:, None]
            topic = tf.where(slots & (picked > 0), picked, 0)
        features = tf.gather_nd(contexts, tf.stack([image_row, view], axis=1))
        return (x, features, topic, style), y

    return ds.batch(batch_size).map(attach_context, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


@dataclass
class TrainingConditions:
    topic_candidates: np.ndarray
    """[captions, 8] each caption's own content words."""
    style_of_template: np.ndarray
    """[templates] each template row's style id (0: too few captions for a style)."""


def build_conditioning(
    templates: list[MemeTemplate],
    captions: list[Caption],
    targets: np.ndarray,
    vocabulary: list[str],
    contexts: np.ndarray,
) -> tuple[ConditioningData, TrainingConditions]:
    """Styles (templates with enough captions), their PMI with every word and their image features, and
    each training caption's topic candidates."""
    counts = Counter(c.template for c in captions)
    styles = [t.id for t in templates if counts[t.id] >= MIN_STYLE_CAPTIONS]
    style_id = {template: i + 1 for i, template in enumerate(styles)}
    style_of_template = np.array([style_id.get(t.id, 0) for t in templates], np.int32)
    words = np.where(targets >= len(SPECIAL_TOKENS), targets, 0)
    names = [c.template for c in captions]
    data = ConditioningData(
        styles,
        build_style_pmi(words, np.array([style_id.get(n, 0) for n in names]), len(styles), len(vocabulary)),
        # Likeness compares pooled features; a feature map's mean over its positions is that pooling.
        np.stack([_pooled(contexts[i, 0]) for i, t in enumerate(templates) if t.id in style_id])
        if styles
        else np.zeros((0, contexts.shape[-1]), np.float32),
    )
    candidates = topic_candidates(words, names, content_word_mask(vocabulary))
    return data, TrainingConditions(candidates, style_of_template)


def _pooled(features: np.ndarray) -> np.ndarray:
    return features.mean(axis=0) if features.ndim == 2 else features


def training_split(
    data_folder: Path, model_config: CaptionModelConfig, train_config: TrainConfig
) -> tuple[list[MemeTemplate], list[Caption], list[Caption]]:
    """The templates, training captions and validation captions a training run uses."""
    templates, captions = select_captions(list(iter_captions(data_folder)), load_templates(data_folder), train_config)
    if not captions:
        raise DataMissingError(f"no captions to train on in {data_folder}: its caption corpus is empty")
    train_captions, validation_captions = split_by_template(
        captions, train_config.validation_fraction, model_config.seed
    )
    return templates, train_captions, validation_captions


def train(
    model_config: CaptionModelConfig,
    train_config: TrainConfig,
    data_folder: Path,
    work_dir: Path,
    warm_start: WarmStart | None = None,
) -> TrainResult:
    """Fit the decoder; with `warm_start`, from its weights and on to `train_config.epochs` in all."""
    keras.utils.set_random_seed(model_config.seed)
    templates, train_captions, validation_captions = training_split(data_folder, model_config, train_config)
    vocabulary = build_vocabulary(
        [caption_text(c.boxes) for c in train_captions], model_config.vocab_size, model_config.min_count
    )
    if warm_start is not None and warm_start.vocabulary != vocabulary:
        raise ValueError("the warm start's vocabulary differs from this run's: it was trained on other captions")
    work_dir.mkdir(parents=True, exist_ok=True)
    vocabulary_file = work_dir / "vocabulary.txt"
    write_vocabulary(vocabulary, str(vocabulary_file))
    tokenizer = Tokenizer(str(vocabulary_file), max_length=model_config.max_length - 1)

    encoder = build_encoder(model_config)
    contexts = encode_templates(encoder, templates, train_config.augmentations, model_config.seed)
    row_of = {t.id: i for i, t in enumerate(templates)}
    train_inputs, train_targets = make_sequences(tokenizer, train_captions, model_config.max_length)
    conditioning_data, conditions = None, None
    if model_config.conditioned:
        conditioning_data, conditions = build_conditioning(
            templates, train_captions, train_targets, vocabulary, contexts
        )
    num_styles = len(conditioning_data.styles) if conditioning_data else 0
    decoder = build_decoder(model_config, len(vocabulary), encoder.context_shape, num_styles)
    if warm_start is not None:
        if [w.shape for w in warm_start.weights] != [tuple(w.shape) for w in decoder.weights]:
            raise ValueError("the warm start's weights do not fit this preset's decoder")
        decoder.set_weights(warm_start.weights)
    initial_epoch = warm_start.epochs_trained if warm_start else 0
    best_so_far = warm_start.best_val_loss if warm_start else None
    decoder.compile(
        optimizer=keras.optimizers.Adam(train_config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
    )

    def rows(part: list[Caption]) -> np.ndarray:
        return np.array([row_of[c.template] for c in part], np.int32)

    train_ds = _dataset(
        rows(train_captions),
        train_inputs,
        train_targets,
        contexts,
        train_config.batch_size,
        model_config.seed,
        conditions,
    )
    val_inputs, val_targets = make_sequences(tokenizer, validation_captions, model_config.max_length)
    val_conditions = (
        TrainingConditions(np.zeros((len(val_inputs), 8), np.int32), conditions.style_of_template)
        if conditions
        else None
    )
    val_ds = _dataset(
        rows(validation_captions), val_inputs, val_targets, contexts, train_config.batch_size, None, val_conditions
    )

    fit = decoder.fit(
        train_ds,
        validation_data=val_ds,
        epochs=train_config.epochs,
        initial_epoch=initial_epoch,
        callbacks=[
            # Saved every epoch and removed when fit ends: an interrupted run resumes where it stopped.
            keras.callbacks.BackupAndRestore(str(work_dir / "backup")),
            keras.callbacks.ModelCheckpoint(
                str(work_dir / "best.weights.h5"),
                monitor="val_loss",
                save_best_only=True,
                save_weights_only=True,
                initial_value_threshold=best_so_far,
            ),
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=train_config.patience, restore_best_weights=True
            ),
        ],
        verbose=train_config.verbose,
    )
    history = {name: [float(v) for v in values] for name, values in fit.history.items()}
    if warm_start is not None and best_so_far is not None and min(history.get("val_loss", [math.inf])) >= best_so_far:
        decoder.set_weights(warm_start.weights)  # no epoch beat the weights it started from
    history = joined_history(warm_start.history if warm_start else {}, history)
    module = caption_module(model_config, encoder, decoder, tokenizer, vocabulary, conditioning_data)
    return TrainResult(
        module,
        module.contract,
        history,
        vocabulary,
        model_config,
        train_config,
        conditioning_data,
        epochs_trained=initial_epoch + len(fit.history.get("loss", [])),
    )


def build_model(preset: str, data_folder: Path, model_base_path: Path, version: int | None = None, **overrides) -> Path:
    """Train a preset and export it under `<model_base_path>/<model_name>/<version>/`."""
    model_config, train_config = PRESETS[preset]
    model_config = replace(model_config, **{k: v for k, v in overrides.items() if hasattr(model_config, k)})
    train_config = replace(train_config, **{k: v for k, v in overrides.items() if hasattr(train_config, k)})
    with tempfile.TemporaryDirectory(prefix="memefly-train-") as work_dir:
        result = train(model_config, train_config, data_folder, Path(work_dir))
        return export_saved_model(result.module, model_base_path / model_config.model_name, version)
