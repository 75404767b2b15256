"""A few training steps on real captions lower the loss of either decoder, and fit its image projection."""

from __future__ import annotations

import itertools
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from export.data import iter_captions, load_templates
from export.model import build_decoder, build_encoder
from export.tokenizer import Tokenizer, build_vocabulary, caption_text, write_vocabulary
from export.train import PRESETS, make_sequences


@pytest.mark.parametrize(
    ("preset", "projection"), [("tiny", "context_projection"), ("tiny-transformer", "feature_projection")]
)
def test_a_few_training_steps_lower_the_loss_and_train_the_image_projection(
    preset: str, projection: str, data_folder: Path, tmp_path: Path
) -> None:
    config, _ = PRESETS[preset]
    keras.utils.set_random_seed(config.seed)
    first_captions = list(itertools.islice(iter_captions(data_folder), 2000))
    template = next(t for t in load_templates(data_folder) if t.id == first_captions[0].template)
    captions = [c for c in first_captions if c.template == template.id][:32]
    texts = [caption_text(c.boxes) for c in captions]
    write_vocabulary(build_vocabulary(texts, 200, 1), str(tmp_path / "vocabulary.txt"))
    tokenizer = Tokenizer(str(tmp_path / "vocabulary.txt"), config.max_length - 1)
    inputs, targets = make_sequences(tokenizer, captions, config.max_length)

    encoder = build_encoder(config)
    features = tf.repeat(encoder(tf.constant([template.image_path.read_bytes()])), len(captions), axis=0)
    decoder = build_decoder(config, int(tokenizer.vocabulary().shape[0]), encoder.context_shape)
    decoder.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
    )
    decoder.train_on_batch((inputs, features), targets)  # builds every layer
    before = getattr(decoder, projection).kernel.numpy().copy()
    # Each step reports the loss before its update.
    losses = [decoder.train_on_batch((inputs, features), targets) for _ in range(10)]
    assert losses[-1] < losses[0] - 0.5, losses
    # The image reaches the words only through this projection: training must fit it.
    assert not np.allclose(getattr(decoder, projection).kernel.numpy(), before)
