"""Golden images: rendering compared with committed PNGs, within a tolerance.

Regenerate on purpose only: `MEMEFLY_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_render_golden.py`,
then look at every changed image before committing it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from gateway.render import TextBox, render_meme
from gateway.templates import TemplateStore, shipped_templates_dir

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("MEMEFLY_REGENERATE_GOLDEN") == "1"


def photo(name: str, width: int = 320) -> Image.Image:
    image = Image.fromarray(getattr(data, name)())
    return image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)


def cases() -> dict[str, tuple[Image.Image, list[str], list[TextBox] | None]]:
    drake = TemplateStore(shipped_templates_dir()).get("drake")
    template = Image.open(drake.image_path).convert("RGB")
    template = template.resize((320, round(template.height * 320 / template.width)), Image.Resampling.LANCZOS)
    return {
        "top_bottom": (photo("chelsea"), ["when the cat finally", "gets the laser pointer"], None),
        "long_single_box": (photo("astronaut"), ["one does not simply " * 6], None),
        "template_layout": (template, ["writing tests by hand", "golden images"], list(drake.layout)),
        "lowercase_left": (photo("coffee"), ["first coffee", "second coffee"], [
            TextBox(0.05, 0.05, 0.6, 0.2, align="left"),
            TextBox(0.35, 0.75, 0.6, 0.2, align="right", color="yellow"),
        ]),
    }  # fmt: skip


@pytest.mark.parametrize("name", ["top_bottom", "long_single_box", "template_layout", "lowercase_left"])
def test_rendering_matches_the_golden_image(name: str) -> None:
    image, boxes, layout = cases()[name]
    rendered = Image.open(io.BytesIO(render_meme(image, boxes, layout, uppercase=name != "lowercase_left")))
    path = GOLDEN / f"{name}.png"
    if REGENERATE:
        rendered.save(path, optimize=True)
    expected = np.asarray(Image.open(path).convert("RGB"), int)
    actual = np.asarray(rendered.convert("RGB"), int)
    assert actual.shape == expected.shape
    # Tolerance for FreeType/Pillow versions nudging antialiased edges, not for moved or missing text.
    differing = (np.abs(actual - expected).max(axis=-1) > 64).mean()
    assert differing < 0.003, f"{name}: {differing:.2%} of pixels differ from {path.name}"
