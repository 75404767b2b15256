"""The photo section of `make evaluate`: are default captions about the photo, and do topic and style work?

Captions come from the gateway's own `Captioner` with the API's defaults (`default_request`), on the
skimage photos and on every template image. Subjects are what the encoder's concepts say an image shows
(the words `encode` returns with at least `TOPIC_MIN_PROBABILITY`), widened by a few synonyms; for the
four skimage photos, whose subject is known, a person's label is added to the model's own.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from export.conditioning import TOPIC_MIN_PROBABILITY
from gateway.captioner import Captioner, CaptionRequest, CaptionResult
from gateway.meme_service import decoding_settings
from gateway.schemas import MemeOptions
from gateway.search import SamplingSettings, SearchSettings
from gateway.settings import Settings

SKIMAGE_PHOTOS = {
    "chelsea": {"cat"},
    "astronaut": {"astronaut", "space", "nasa", "guy", "woman"},
    "coffee": {"coffee", "cup", "espresso"},
    "rocket": {"rocket", "space", "launch", "nasa"},
}
"""The photos `make evaluate` captions besides the templates, with the subject a person sees in each."""

SYNONYMS = {
    "cat": {"cat", "cats", "kitty", "kitten", "kittens"},
    "dog": {"dog", "dogs", "puppy", "puppies", "doggo"},
    "guy": {"guy", "guys", "man", "men", "dude", "person", "people", "woman", "girl", "boy"},
    "coffee": {"coffee", "cup", "espresso", "caffeine"},
    "rocket": {"rocket", "rockets", "space", "launch"},
    "bear": {"bear", "bears"},
    "car": {"car", "cars", "drive", "driving"},
    "food": {"food", "eat", "eating"},
    "computer": {"computer", "pc", "laptop"},
    "phone": {"phone", "phones", "iphone"},
}

USER_TOPICS = (
    "mondays", "my cat", "the printer", "pizza", "homework", "my boss", "zombies", "the weekend", "exams", "beer",
)  # fmt: skip
"""Topics a user might type; topic adherence asks that the caption name the topic's content word."""

CONTACT_SHEET_STYLES = 5


def default_request(captions: int = 3, **changes) -> CaptionRequest:
    """What `POST /v1/memes` asks the captioner for by default."""
    defaults = Settings.model_fields
    request = CaptionRequest(captions=captions, style_beam_width=defaults["style_beam_width"].default)
    return replace(request, **changes)


def default_search(captioner: Captioner) -> SearchSettings | SamplingSettings:
    """What `POST /v1/memes` searches with by default (the gateway's defaults, not this machine's MEMEFLY_*)."""
    return decoding_settings(MemeOptions(), Settings.model_construct(), captioner.info.contract.max_length)


def words_of(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def subject_words(concepts: tuple[tuple[str, float], ...], known: set[str] = frozenset()) -> set[str]:
    """The words that name an image's subject: its likely concepts with their synonyms, and `known`."""
    named = {word for word, probability in concepts if probability >= TOPIC_MIN_PROBABILITY} | set(known)
    return set().union(*(SYNONYMS.get(word, {word, word + "s"}) for word in named)) if named else set()


def topic_words(topic: str) -> set[str]:
    """The forms a caption may use to name a user topic's content words ("my cat" → cat, cats)."""
    forms = set()
    for word in words_of(topic) - {"my", "the", "a", "an"}:
        stem = word[:-1] if word.endswith("s") else word
        forms |= {word, stem, stem + "s"} | SYNONYMS.get(stem, set())
    return forms


@dataclass(frozen=True)
class PhotoCaptions:
    name: str
    image: bytes
    result: CaptionResult
    subject: set[str]

    @property
    def best(self) -> str:
        return self.result.captions[0].text if self.result.captions else ""


def caption_photos(
    captioner: Captioner,
    photos: dict[str, tuple[bytes, set[str]]],
    settings: Callable[[Captioner], SearchSettings | SamplingSettings],
    request: CaptionRequest,
) -> list[PhotoCaptions]:
    out = []
    for name, (image, known) in photos.items():
        result = captioner.caption(image, settings(captioner), request)
        out.append(PhotoCaptions(name, image, result, subject_words(result.concepts, known)))
    return out


def _distinct_2(texts: list[str]) -> float:
    grams = [tuple(w[i : i + 2]) for w in (t.replace(" / ", " ").split() for t in texts) for i in range(len(w) - 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _near_duplicate_share(captions: list[str]) -> float:
    """Pairs of one image's captions that agree on all but their last two words."""
    pairs = list(itertools.combinations([c.replace(" / ", " ").split() for c in captions], 2))
    if not pairs:
        return 0.0
    return sum(a[: max(len(a) - 2, 1)] == b[: max(len(b) - 2, 1)] for a, b in pairs) / len(pairs)


def photo_metrics(captioned: list[PhotoCaptions]) -> dict[str, float]:
    """Subject share (all captions), identical best captions across photo pairs, variety across photos."""
    named = [bool(words_of(c.text) & p.subject) for p in captioned for c in p.result.captions]
    best = [p.best for p in captioned]
    pairs = list(itertools.combinations(best, 2))
    return {
        "subject_named_share": float(np.mean(named)) if named else float("nan"),
        "best_caption_shared_pairs": sum(a == b for a, b in pairs) / len(pairs) if pairs else float("nan"),
        "distinct_2_across_photos": _distinct_2(best),
        "near_duplicate_pairs_within_photo": float(
            np.mean([_near_duplicate_share([c.text for c in p.result.captions]) for p in captioned])
        ),
    }


def topic_adherence(
    captioner: Captioner, photos: dict[str, bytes], topics: tuple[str, ...] = USER_TOPICS
) -> tuple[float, float, dict[str, dict[str, str]]]:
    """Share of default captions made with a user topic that name it; share of topics the model knew."""
    settings = default_search(captioner)
    hits, total, known, made = 0, 0, 0, {}
    for name, image in photos.items():
        made[name] = {}
        for topic in topics:
            result = captioner.caption(image, settings, default_request(topic=topic))
            forms = topic_words(topic)
            known += any(c.topic and words_of(c.topic) & forms for c in result.captions[:1])
            for caption in result.captions:
                hits += bool(words_of(caption.text) & forms)
                total += 1
            made[name][topic] = result.captions[0].text if result.captions else ""
    return hits / max(total, 1), known / max(len(photos) * len(topics), 1), made


def contact_sheet(captioner: Captioner, photos: dict[str, bytes], styles: list[str], cell: int = 240) -> Image.Image:
    """Photos down, styles across, each cell the rendered meme (the default beam search in that style)."""
    from gateway.render import draw_caption

    settings = default_search(captioner)
    sheet = Image.new("RGB", (cell * len(styles), cell * len(photos)), "white")
    for row, image_bytes in enumerate(photos.values()):
        photo = Image.open(io.BytesIO(image_bytes)).convert("RGB")
        for column, style in enumerate(styles):
            result = captioner.caption(image_bytes, settings, default_request(captions=1, style=style))
            boxes = result.captions[0].boxes if result.captions else []
            meme = draw_caption(photo, boxes)
            meme.thumbnail((cell, cell))
            sheet.paste(meme, (column * cell + (cell - meme.width) // 2, row * cell + (cell - meme.height) // 2))
    return sheet
