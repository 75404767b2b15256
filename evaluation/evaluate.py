"""Evaluate a trained bundle: does the image matter, are captions varied, new, and about their template?

Captions are generated through the product's own path (the exported SavedModel, the gateway's
`Captioner` on the embedded backend, the same sampling code), so the report measures what users get.
"""

from __future__ import annotations

import itertools
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
from export.model import CaptionModelConfig
from export.tokenizer import caption_text
from export.train import training_split
from gateway.backends.embedded import EmbeddedBackend
from gateway.captioner import ModelSession
from gateway.rerank import blank_image_jpeg
from gateway.search import SamplingSettings, SearchSettings
from gateway.settings import Settings
from memefly.contract import BOX_SEPARATOR_TEXT, SCORE, TOKENIZE


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
    decoding_templates: int = 40
    """Templates captioned (besides the skimage photos) to compare decoding rules."""
    automatic_templates: int = 50
    """Text to template is measured on held-out captions of this many templates, those with the most captions."""
    automatic_captions: int = 20
    """Held-out captions of each of them."""
    """Templates captioned (besides the skimage photos) to compare decoding rules."""


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


def evaluate(
    bundle_dir: Path, data_folder: Path, settings: EvaluationSettings | None = None, contact_sheet: Path | None = None
) -> dict:
    settings = settings or EvaluationSettings()
    model_config = CaptionModelConfig.from_file(bundle_dir / "config.json")
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

        automatic = _automatic_section(backend, captioner, data_folder, train_captions, validation_captions, settings)
        photos = _photo_section(
            captioner, backend, templates, image_bytes, train_captions, validation_captions, settings, contact_sheet
        )
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
        **automatic,
        **photos,
        "examples": {t: generated[t][:3] for t in list(generated)[:12]},
    }


def _photo_section(
    captioner,
    backend: EmbeddedBackend,
    templates: list,
    image_bytes: dict[str, bytes],
    train_captions: list[Caption],
    validation_captions: list[Caption],
    settings: EvaluationSettings,
    contact_sheet_path: Path | None,
) -> dict:
    """Default captions of the skimage photos and every template; style and topic adherence; perplexity
    with each validation caption's own topic words (evaluation/photo_evaluation.py)."""
    from evaluation import photo_evaluation as pe

    if not captioner.info.contract.conditioned:
        return {}
    skimage = {name: (_skimage_jpeg(name), known) for name, known in pe.SKIMAGE_PHOTOS.items()}
    template_photos = {t.id: (image_bytes[t.id], set()) for t in templates}
    section: dict = {}
    default = pe.default_request()
    # The default captions of every photo and template, made once: the photo metrics, the decoding
    # table's default row and the one-context row (each image's first style) all read them.
    captioned = {
        p.name: p for p in pe.caption_photos(captioner, {**skimage, **template_photos}, pe.default_search, default)
    }
    for part, photos in (("photos", skimage), ("templates", template_photos)):
        section |= {f"{part}_{key}": value for key, value in pe.photo_metrics([captioned[n] for n in photos]).items()}
    section["photo_examples"] = {
        name: {
            "concepts": [[w, round(v, 3)] for w, v in captioned[name].result.concepts],
            "captions": [f"{c.text} [{c.style}; {c.topic or 'no topic'}]" for c in captioned[name].result.captions],
        }
        for name in skimage
    }

    # Decoding that does not collapse: the same photos (and the first templates) under each candidate rule.
    sample = dict(itertools.islice(template_photos.items(), settings.decoding_templates))
    compared = {**skimage, **sample}
    width = default.style_beam_width
    variants = {
        f"one style a caption, beam {w}": (pe.default_search, pe.default_request(style_beam_width=w))
        for w in (1, 2, 4)
        if w != width
    }
    variants["one style a caption, sampling T=1, most specific of 4"] = (
        lambda c: SamplingSettings(n=3, rerank=settings.rerank, seed=settings.seed, max_length=c.max_length(None)),
        pe.default_request(seed=settings.seed),
    )
    rows = {f"one style a caption, beam {width} (default)": pe.photo_metrics([captioned[n] for n in compared])}
    for name, (make, request) in variants.items():
        rows[name] = pe.photo_metrics(pe.caption_photos(captioner, compared, make, request))
    one_context = [
        pe.caption_photos(
            captioner,
            {name: photo},
            pe.default_search,
            pe.default_request(style=captioned[name].result.captions[0].style),
        )[0]
        for name, photo in compared.items()
        if captioned[name].result.captions
    ]
    rows["one context, beam n-best (the rule before styles)"] = pe.photo_metrics(one_context)
    section["photo_decoding"] = rows

    retrieval_styles = [
        t
        for t in captioner.info.contract.styles
        if sum(c.template == t for c in train_captions) >= settings.retrieval_min_captions
    ]
    photo_bytes = {name: image for name, (image, _) in skimage.items()}
    made: dict[str, list[str]] = defaultdict(list)
    for name in photo_bytes:
        for style in retrieval_styles:
            result = captioner.caption(
                photo_bytes[name], pe.default_search(captioner), pe.default_request(captions=1, style=style)
            )
            made[style].append(result.captions[0].text.replace(" / ", " ") if result.captions else "")
    section["style_adherence"], section["style_adherence_captions"] = template_retrieval(
        train_captions, made, settings.retrieval_min_captions
    )
    section["topic_adherence"], section["topic_known_share"], topic_examples = pe.topic_adherence(
        captioner, photo_bytes
    )
    section["topic_examples"] = topic_examples
    section |= _topic_perplexity(backend, captioner.info, image_bytes, validation_captions, settings)
    if contact_sheet_path is not None:
        styles = retrieval_styles[: pe.CONTACT_SHEET_STYLES]
        pe.contact_sheet(captioner, photo_bytes, styles).save(contact_sheet_path)
        section["contact_sheet_styles"] = styles
    return section


def _automatic_section(
    backend: EmbeddedBackend,
    captioner,
    data_folder: Path,
    train_captions: list[Caption],
    validation_captions: list[Caption],
    settings: EvaluationSettings,
) -> dict:
    """Text to template (`POST /v1/memes/automatic`): held-out human captions of the templates with the
    most captions, their template chosen by the model's `score` and, as the baseline, by TF-IDF."""
    from gateway.template_picker import TemplatePicker
    from gateway.templates import TemplateStore

    styles = captioner.info.contract.styles
    if not styles:
        return {}
    counts = defaultdict(int)
    for caption in train_captions:
        counts[caption.template] += 1
    chosen = sorted((t for t in styles if counts[t]), key=lambda t: -counts[t])[: settings.automatic_templates]
    held_out: list[Caption] = []
    for template in chosen:
        held_out += [c for c in validation_captions if c.template == template][: settings.automatic_captions]
    if not held_out:
        return {}
    picker = TemplatePicker(backend, TemplateStore(data_folder).all(), styles)
    texts = [caption_text(c.boxes) for c in held_out]
    scores = picker.scores(texts)
    # The alternative measured and rejected (gateway/template_picker.py): each template's mean advantage
    # on the templates' own example captions, subtracted.
    examples = [BOX_SEPARATOR_TEXT.join(t.example) for t in picker.templates if any(t.example)]
    corrected = scores - picker.scores(examples).mean(axis=0)[None, :]
    candidates = [t.id for t in picker.templates]
    truth = np.array([candidates.index(c.template) for c in held_out])
    model_rank = (scores > scores[np.arange(len(truth)), truth][:, None]).sum(axis=1)
    corrected_rank = (corrected > corrected[np.arange(len(truth)), truth][:, None]).sum(axis=1)
    tfidf_rank = _tfidf_ranks(train_captions, candidates, held_out)
    return {
        "automatic_templates": len(chosen),
        "automatic_captions": len(held_out),
        "automatic_candidates": len(candidates),
        "automatic_top1": float(np.mean(model_rank < 1)),
        "automatic_top5": float(np.mean(model_rank < 5)),
        "automatic_top1_with_bias_correction": float(np.mean(corrected_rank < 1)),
        "automatic_top5_with_bias_correction": float(np.mean(corrected_rank < 5)),
        "automatic_most_picked_share": float(np.bincount(scores.argmax(axis=1)).max() / len(texts)),
        "automatic_most_picked_share_with_bias_correction": float(
            np.bincount(corrected.argmax(axis=1)).max() / len(texts)
        ),
        "automatic_tfidf_top1": float(np.mean(tfidf_rank < 1)),
        "automatic_tfidf_top5": float(np.mean(tfidf_rank < 5)),
    }


def _tfidf_ranks(train_captions: list[Caption], candidates: list[str], queries: list[Caption]) -> np.ndarray:
    """Rank of each query's own template among `candidates` by TF-IDF cosine to their training captions."""
    documents: dict[str, list[str]] = defaultdict(list)
    for caption in train_captions:
        if caption.template in candidates:
            documents[caption.template].append(" ".join(caption.boxes))
    vectorizer = TfidfVectorizer(lowercase=True, sublinear_tf=True)
    vectors = vectorizer.fit_transform([" ".join(documents[t]) for t in candidates])
    similarity = linear_kernel(vectorizer.transform([" ".join(c.boxes) for c in queries]), vectors)
    truth = np.array([candidates.index(c.template) for c in queries])
    return (similarity > similarity[np.arange(len(truth)), truth][:, None]).sum(axis=1)


def _skimage_jpeg(name: str) -> bytes:
    import io

    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(getattr(data, name)()).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _topic_perplexity(
    backend: EmbeddedBackend,
    info,
    image_bytes: dict[str, bytes],
    captions: list[Caption],
    settings: EvaluationSettings,
) -> dict[str, float]:
    """Validation perplexity with each caption's own topic words (as training drew them) and without."""
    from export.conditioning import TOPIC_SLOTS, content_word_mask, topic_candidates
    from gateway.backends import Condition

    vocabulary = list(info.vocabulary)
    texts = [caption_text(c.boxes) for c in captions]
    sequences = [
        ids for i in range(0, len(texts), 4096) for ids in _id_sequences(backend.signatures, texts[i : i + 4096])
    ]
    ids = np.zeros((len(texts), max(map(len, sequences), default=0)), np.int32)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = sequence
    candidates = topic_candidates(ids, [c.template for c in captions], content_word_mask(vocabulary))
    topics = [" ".join(vocabulary[i] for i in row[:TOPIC_SLOTS] if i) for row in candidates]
    by_template: dict[str, list[int]] = defaultdict(list)
    for index, caption in enumerate(captions):
        by_template[caption.template].append(index)
    own = np.zeros((len(captions), *info.contract.context_shape), np.float32)
    none = np.zeros_like(own)
    for template, rows in by_template.items():
        conditions = [Condition(0, topics[i]) for i in rows] + [Condition(0, "")]
        contexts = backend.encode_rows([image_bytes[template]], conditions).contexts
        own[rows], none[rows] = contexts[:-1], contexts[-1]
    with_topic = perplexity(backend.signatures, own, texts, settings.batch_size)
    without = perplexity(backend.signatures, none, texts, settings.batch_size)
    return {
        "perplexity_with_own_topic_words": with_topic,
        "perplexity_without_topic_words": without,
        "captions_with_topic_words": float(np.mean([bool(t) for t in topics])),
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
    "automatic_top5": ("≥", 0.8),
    "photos_subject_named_share": ("≥", 0.6),
    "templates_subject_named_share": ("≥", 0.6),
    "photos_best_caption_shared_pairs": ("≤", 0.0),
    "templates_best_caption_shared_pairs": ("≤", 0.0),
    "photos_distinct_2_across_photos": ("≥", 0.6),
    "templates_distinct_2_across_photos": ("≥", 0.6),
    "style_adherence": ("≥", 0.6),
    "topic_adherence": ("≥", 0.8),
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
    lines += photo_report(report)
    lines += ["", "## Sampled captions", ""]
    for template, captions in report["examples"].items():
        lines.append(f"- `{template}`: " + "; ".join(f"“{c}”" for c in captions))
    (out_dir / "EVALUATION.md").write_text("\n".join(lines) + "\n")


def photo_report(report: dict) -> list[str]:
    """The photo section: decoding rules compared on photos, and what the photos got."""
    if "photo_decoding" not in report:
        return []
    keys = next(iter(report["photo_decoding"].values())).keys()
    lines = [
        "",
        "## Photos",
        "",
        f"| decoding (photos and {len(report['photo_decoding'])} rules) | " + " | ".join(keys) + " |",
    ]
    lines[-1] = "| decoding | " + " | ".join(keys) + " |"
    lines.append("| --- |" + " --- |" * len(keys))
    for name, row in report["photo_decoding"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")
    lines += ["", "Default captions (caption [style; topic]):", ""]
    for name, example in report.get("photo_examples", {}).items():
        concepts = ", ".join(f"{w} {p:.2f}" for w, p in example["concepts"])
        lines.append(f"- `{name}` (concepts: {concepts}): " + "; ".join(f"“{c}”" for c in example["captions"]))
    topics = report.get("topic_examples", {})
    if topics:
        lines += ["", "With a user topic (best caption):", ""]
        for name, by_topic in topics.items():
            lines.append(f"- `{name}`: " + "; ".join(f"{t}: “{c}”" for t, c in by_topic.items()))
    return lines


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
