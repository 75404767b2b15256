"""What every mode is asked to do: the same fixed images, beam width 5, max length 24."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from gateway.images import model_input, open_upload
from gateway.templates import shipped_templates_dir

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")
"""skimage.data photos: real pictures no template was drawn from."""
TEMPLATES = ("buzz", "wonka", "ds", "drake")
"""Meme templates of the data set (`<data dir>/templates/<id>.jpg`)."""
MODEL_INPUT_MAX_SIDE = 512
"""The gateway's default `MEMEFLY_MODEL_INPUT_MAX_SIDE`: uploads are scaled to this and sent as JPEG."""


@dataclass(frozen=True)
class SearchConfig:
    beam_width: int = 5
    n_best: int = 3
    max_length: int = 24
    """Capped by the model's own maximum length (the tiny test model's is 16)."""
    length_penalty: float = 1.0


@dataclass(frozen=True)
class BenchImage:
    name: str
    jpeg: bytes
    """What the gateway sends to `encode`: the upload scaled to 512 px and re-encoded as JPEG."""


def _photo_png(name: str) -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(getattr(data, name)()).save(buffer, format="PNG")
    return buffer.getvalue()


def load_images(data_dir: Path | None = None) -> list[BenchImage]:
    """The fixed image set, prepared exactly as the gateway prepares an upload; the template images from
    `data_dir` (a folder in the data set's format), by default the shipped templates."""
    data_dir = data_dir or shipped_templates_dir()
    uploads = [(name, _photo_png(name)) for name in PHOTOS]
    uploads += [(name, (data_dir / "templates" / f"{name}.jpg").read_bytes()) for name in TEMPLATES]
    return [BenchImage(name, model_input(open_upload(raw), MODEL_INPUT_MAX_SIDE)) for name, raw in uploads]
