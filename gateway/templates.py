"""Known meme templates: blank images with their text-box layouts, read from a folder in the data
set's format (`templates.json` + `templates/<id>.jpg`). The product ships one such folder as package data
(`gateway/meme_templates/`, made by `python -m export.ship_templates`)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from PIL import Image

from gateway.render import TextBox

SHIPPED_TEMPLATES_SOURCE = Path(__file__).resolve().parent / "meme_templates"
"""Where the shipped templates live in a checkout (what `export.ship_templates` writes)."""


@functools.cache
def shipped_templates_dir() -> Path:
    """The shipped templates folder, found through the installed package (importlib.resources): the package
    folder itself in a checkout or a normal install, a temporary copy kept until exit for a zipped one."""
    stack = contextlib.ExitStack()
    atexit.register(stack.close)
    return stack.enter_context(resources.as_file(resources.files("gateway").joinpath("meme_templates")))


@dataclass(frozen=True)
class Template:
    id: str
    name: str
    aliases: tuple[str, ...]
    image_path: Path
    width: int
    height: int
    layout: tuple[TextBox, ...]
    example: tuple[str, ...]


class TemplateStore:
    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._templates: dict[str, Template] = {}
        self._aliases: dict[str, str] = {}
        if folder is not None and (folder / "templates.json").is_file():
            for entry in json.loads((folder / "templates.json").read_text(encoding="utf-8")):
                template = Template(
                    id=entry["id"],
                    name=entry["name"],
                    aliases=tuple(entry.get("aliases") or ()),
                    image_path=folder / entry["image"],
                    width=entry["width"],
                    height=entry["height"],
                    layout=tuple(TextBox.from_dict(box) for box in entry.get("text_boxes") or ()),
                    example=tuple(entry.get("example") or ()),
                )
                self._templates[template.id] = template
                self._aliases.update({alias: template.id for alias in template.aliases})

    def all(self) -> list[Template]:
        return sorted(self._templates.values(), key=lambda t: t.id)

    def get(self, template_id: str) -> Template | None:
        return self._templates.get(template_id) or self._templates.get(self._aliases.get(template_id, ""))


THUMBNAIL_SIDE = 192
"""The gallery's thumbnails: the longest side, in pixels (sharp at 96 CSS px on a 2× screen)."""


@functools.lru_cache(maxsize=512)
def thumbnail_jpeg(image_path: Path, max_side: int = THUMBNAIL_SIDE) -> bytes:
    """The template image scaled down for the gallery, made once per template."""
    with Image.open(image_path) as source:
        image = source.convert("RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85, optimize=True)
    return buffer.getvalue()
