"""Evaluate a trained bundle: does the image matter, are captions varied, new, and about their template?

Captions are generated through the product's own path (the exported SavedModel, the gateway's
`Captioner` on the embedded backend, the same sampling code), so the report measures what users get.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import linear_kernel
from tqdm import tqdm

from export.bundle import assemble, load_train_config
from export.data import Caption
from export.model import ModelConfig
from export.tokenizer import caption_text
from export.train import training_split
from gateway.backends.embedded import EmbeddedBackend
from gateway.captioner import ModelSession
from gateway.rerank import blank_image_jpeg
from gateway.search import SamplingSettings, SearchSettings
from gateway.settings import Settings
from memefly.contract import SCORE, TOKENIZE


@dataclass(frozen=True)
class EvaluationSettings:
    samples_per_template: int = 10
    temperature: float = 1.0
    top_p: float = 0.9
    rerank: int = Settings.model_fields["sampling_rerank"].default
    """As the gateway samples by default: the most image-specific of `rerank` draws per caption."""
    seed: int = 2024
    max_validation_captions: int = 5000
    batch_size: int = 256
    sweep_temperatures: tuple[float, ...] = (0.7, 0.5)
    retrieval_min_captions: int = 1000
    """Template retrieval is scored over templates with at least this many captions."""


def perplexity(signatures, contexts: np.ndarray, texts: list[str], batch_size: int) -> float:
    """exp of the mean negative log-likelihood per token (`<end>` included), teacher-forced."""
    total_log_prob, total_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        scored = signatures[SCORE](
            context=tf.constant(contexts[start : start + batch_size]),
            text=tf.constant(texts[start : start + batch_size]),
        )
        total_log_prob += float(scored["log_prob"].numpy().sum())
        total_tokens += int(scored["num_tokens"].numpy().sum())
    return math.exp(-total_log_prob / total_tokens)


def distinct_n(captions: list[list[str]], n: int) -> float:
    """Distinct n-grams over all n-grams of a set of captions (word lists)."""
    grams = [tuple(words[i : i + n]) for words in captions for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def template_retrieval(
    train_captions: list[Caption], generated: dict[str, list[str]], min_captions: int
) -> tuple[float, int]:
    """Top-1 accuracy of assigning each generated caption to the template whose training captions are
    nearest by TF-IDF cosine similarity; over templates with at least `min_captions` captions."""
    documents: dict[str, list[str]] = defaultdict(list)
    for caption in train_captions:
        documents[caption.template].append(" ".join(caption.boxes))
    templates = sorted(t for t, texts in documents.items() if len(texts) >= min_captions)
    if not templates:
        return float("nan"), 0
    vectorizer = TfidfVectorizer(lowercase=True, sublinear_tf=True)
    template_vectors = vectorizer.fit_transform([" ".join(documents[t]) for t in templates])
    queries = [(t, text) for t in templates for text in generated.get(t, [])]
    if not queries:
        return float("nan"), 0
    similarity = linear_kernel(vectorizer.transform([text for _, text in queries]), template_vectors)
    hits = sum(templates[int(i)] == t for (t, _), i in zip(queries, similarity.argmax(axis=1), strict=True))
    return hits / len(queries), len(queries)


def evaluate(bundle_dir: Path, data_folder: Path, settings: EvaluationSettings | None = None) -> dict:
    settings = settings or EvaluationSettings()
    model_config = ModelConfig.from_file(bundle_dir / "config.json")
    train_config = load_train_config(bundle_dir)
    templates, train_captions, validation_captions = training_split(data_folder, model_config, train_config)
    rng = np.random.default_rng(settings.seed)
    if len(validation_captions) > settings.max_validation_captions:
        picked = rng.choice(len(validation_captions), settings.max_validation_captions, replace=False)
        validation_captions = [validation_captions[i] for i in sorted(picked)]

    with tempfile.TemporaryDirectory(prefix="memefly-eval-") as models:
        assemble(bundle_dir, Path(models), version=1)
        backend = EmbeddedBackend(Path(models), model_config.model_name)
        signatures = backend.signatures
        session = ModelSession(backend)
        captioner = session.captioner()

        image_bytes = {t.id: t.image_path.read_bytes() for t in templates}
        contexts = {t: backend.encode([b])[0] for t, b in image_bytes.items()}
        blank_context = backend.encode([blank_image_jpeg()])[0]
        texts = [caption_text(c.boxes) for c in validation_captions]
        with_image = np.stack([contexts[c.template] for c in validation_captions])
        blanked = np.repeat(blank_context[None], len(texts), axis=0)
        ppl_image = perplexity(signatures, with_image, texts, settings.batch_size)
        ppl_blank = perplexity(signatures, blanked, texts, settings.batch_size)

        seen = _training_id_sequences(signatures, train_captions)

        generated: dict[str, list[str]] = {}
        distinct1, distinct2, copies, total = [], [], 0, 0
        sampling = SamplingSettings(
            n=settings.samples_per_template,
            temperature=settings.temperature,
            top_p=settings.top_p,
            rerank=settings.rerank,
        )
        for index, template in enumerate(tqdm(templates, desc="sampling captions", unit="template")):
            seeded = SamplingSettings(**{**sampling.__dict__, "seed": settings.seed + index})
            captions, words = _captions_and_words(captioner, image_bytes[template.id], seeded)
            generated[template.id] = [" ".join(w) for w in words]
            distinct1.append(distinct_n(words, 1))
            distinct2.append(distinct_n(words, 2))
            sampled_ids = _id_sequences(signatures, [caption_text(c.boxes) for c in captions])
            copies += sum(ids in seen for ids in sampled_ids)
            total += len(sampled_ids)

        # How specificity trades against variety as decoding gets greedier (same images, same seeds).
        decodings = {
            f"sampling T={t}, no re-ranking": lambda i, t=t: SamplingSettings(
                **{**sampling.__dict__, "temperature": t, "rerank": 1, "seed": settings.seed + i}
            )
            for t in (settings.temperature, *settings.sweep_temperatures)
        }
        decodings["beam search, n-best"] = lambda i: SearchSettings(
            beam_width=settings.samples_per_template, n_best=settings.samples_per_template
        )
        by_decoding = {}
        for name, make in decodings.items():
            decoded: dict[str, list[str]] = {}
            variety = []
            for index, template in enumerate(templates):
                _, words = _captions_and_words(captioner, image_bytes[template.id], make(index))
                decoded[template.id] = [" ".join(w) for w in words]
                variety.append(distinct_n(words, 2))
            accuracy, _ = template_retrieval(train_captions, decoded, settings.retrieval_min_captions)
            by_decoding[name] = {"template_retrieval_top1": accuracy, "distinct_2": float(np.mean(variety))}

        session.close()

    retrieval, retrieval_queries = template_retrieval(train_captions, generated, settings.retrieval_min_captions)
    # The same measure on held-out human captions: how template-specific real captions are.
    held_out: dict[str, list[str]] = defaultdict(list)
    for caption in validation_captions:
        if len(held_out[caption.template]) < settings.samples_per_template:
            held_out[caption.template].append(" ".join(caption.boxes))
    human_retrieval, _ = template_retrieval(train_captions, held_out, settings.retrieval_min_captions)
    return {
        "model": model_config.model_name,
        "decoder": model_config.decoder,
        "encoder": model_config.encoder,
        "training_captions": len(train_captions),
        "validation_captions": len(validation_captions),
        "perplexity_with_image": ppl_image,
        "perplexity_image_blanked": ppl_blank,
        "perplexity_ratio": ppl_image / ppl_blank,
        "templates_sampled": len(templates),
        "samples_per_template": settings.samples_per_template,
        "sampling_temperature": settings.temperature,
        "sampling_rerank": settings.rerank,
        "distinct_1": float(np.mean(distinct1)),
        "distinct_2": float(np.mean(distinct2)),
        "verbatim_copy_share": copies / max(total, 1),
        "template_retrieval_top1": retrieval,
        "template_retrieval_captions": retrieval_queries,
        "template_retrieval_top1_human_captions": human_retrieval,
        "by_decoding": by_decoding,
        "examples": {t: generated[t][:3] for t in list(generated)[:12]},
    }


def _captions_and_words(captioner, image: bytes, decoding: SamplingSettings | SearchSettings) -> tuple[list, list]:
    """The captions for one image, and each as a list of words with the box boundaries dropped."""
    captions = captioner.caption(image, decoding).captions
    return captions, [caption.text.replace(" / ", " ").split() for caption in captions]


def _id_sequences(signatures, texts: list[str]) -> list[tuple[int, ...]]:
    outputs = signatures[TOKENIZE](text=tf.constant(texts))
    return [
        tuple(row[:length])
        for row, length in zip(outputs["ids"].numpy().tolist(), outputs["lengths"].numpy().tolist(), strict=True)
    ]


def _training_id_sequences(signatures, captions: list[Caption]) -> set[tuple[int, ...]]:
    texts = [caption_text(c.boxes) for c in captions]
    return {
        ids for start in range(0, len(texts), 4096) for ids in _id_sequences(signatures, texts[start : start + 4096])
    }


TARGETS = {
    "perplexity_ratio": ("≤", 0.8),
    "template_retrieval_top1": ("≥", 0.6),
    "distinct_2": ("≥", 0.6),
    "verbatim_copy_share": ("≤", 0.1),
}


def write_reports(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    lines = [
        f"# Evaluation of `{report['model']}` ({report['decoder']} decoder, {report['encoder']} encoder)",
        "",
        "| metric | value | target | met |",
        "| --- | --- | --- | --- |",
    ]
    for key, value in report.items():
        if isinstance(value, float):
            lines.append(metric_row(key, value))
        elif isinstance(value, int):
            lines.append(f"| {key} | {value} | | |")
    lines += decoding_table(report)
    lines += ["", "## Sampled captions", ""]
    for template, captions in report["examples"].items():
        lines.append(f"- `{template}`: " + "; ".join(f"“{c}”" for c in captions))
    (out_dir / "EVALUATION.md").write_text("\n".join(lines) + "\n")


def decoding_table(report: dict) -> list[str]:
    """Template retrieval against caption variety: the report's own decoding, then the alternatives."""
    rows = report.get("by_decoding", {})
    if not rows:
        return []
    lines = ["", "| decoding | template_retrieval_top1 | distinct_2 |", "| --- | --- | --- |"]
    lines.append(
        f"| sampling T={report['sampling_temperature']}, most specific of "
        f"{report.get('sampling_rerank', 1)} (above) | {report['template_retrieval_top1']:.3f} "
        f"| {report['distinct_2']:.3f} |"
    )
    lines += [f"| {n} | {r['template_retrieval_top1']:.3f} | {r['distinct_2']:.3f} |" for n, r in rows.items()]
    return lines


def metric_row(key: str, value: float) -> str:
    """A Markdown table row: the metric, its value, and its target and whether it is met, if it has one."""
    target = TARGETS.get(key)
    met = "" if target is None else ("yes" if _meets(value, *target) else "no")
    shown = "" if target is None else f"{target[0]} {target[1]}"
    return f"| {key} | {'n/a' if math.isnan(value) else f'{value:.3f}'} | {shown} | {met} |"


def _meets(value: float, relation: str, bound: float) -> bool:
    return value <= bound if relation == "≤" else value >= bound
