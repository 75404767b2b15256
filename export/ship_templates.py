"""Makes the templates the product ships (`gateway/meme_templates/`) from a meme data set folder.

    python -m export.ship_templates [--data-dir DIR] [--out gateway/meme_templates]

It writes `templates.json` (id, name, aliases, image, width, height, text_boxes, example: what the gateway
serves, without the data set's caption counts) and `templates/<id>.jpg`, longest side at most 512 px. The
output depends only on the input: images already small enough are copied byte for byte, larger ones are
scaled with Pillow's LANCZOS filter and saved at a fixed JPEG quality; the JSON is sorted by id.
The README beside them (attribution) is written by hand and left as it is.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
from pathlib import Path

from PIL import Image
from tqdm import tqdm

MAX_SIDE = 512
JPEG_QUALITY = 90
SHIPPED_FIELDS = ("id", "name", "aliases", "image", "width", "height", "text_boxes", "example")


def shipped_image(source: Path, max_side: int = MAX_SIDE) -> tuple[bytes, tuple[int, int]]:
    """The JPEG bytes to ship for one template image, and its (width, height)."""
    data = source.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG" and max(image.size) <= max_side:
            return data, image.size
        image = image.convert("RGB")
        if max(image.size) > max_side:
            scale = max_side / max(image.size)
            image = image.resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS
            )
        out = io.BytesIO()
        image.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
        return out.getvalue(), image.size


def build_shipped_templates(data_folder: Path, out_dir: Path) -> list[dict]:
    """Write `templates.json` and `templates/<id>.jpg` into `out_dir`; returns the entries written.
    Images of templates no longer listed are removed, so the folder holds exactly what the JSON names."""
    entries = json.loads((data_folder / "templates.json").read_text(encoding="utf-8"))
    images_dir = out_dir / "templates"
    images_dir.mkdir(parents=True, exist_ok=True)
    shipped: list[dict] = []
    for entry in tqdm(sorted(entries, key=lambda e: e["id"]), desc="templates", unit=" images"):
        data, (width, height) = shipped_image(data_folder / entry["image"])
        image = f"templates/{entry['id']}.jpg"
        (out_dir / image).write_bytes(data)
        record = {field: entry.get(field) for field in SHIPPED_FIELDS}
        record.update(image=image, width=width, height=height)
        record["aliases"] = list(record["aliases"] or [])
        record["text_boxes"] = list(record["text_boxes"] or [])
        record["example"] = list(record["example"] or [])
        shipped.append(record)
    names = {Path(r["image"]).name for r in shipped}
    for stale in images_dir.iterdir():
        if stale.name not in names:
            stale.unlink() if stale.is_file() else shutil.rmtree(stale)
    (out_dir / "templates.json").write_text(json.dumps(shipped, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return shipped


def main(argv: list[str] | None = None) -> None:
    from export.data import data_dir
    from memefly.paths import REPO_ROOT

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="the meme data set; default $MEMEFLY_DATA_DIR or ../shared/data/memes")
    # The gateway's package data in this checkout (the export tier does not import the gateway).
    shipped = REPO_ROOT / "gateway" / "meme_templates"
    parser.add_argument("--out", type=Path, default=shipped, help="default: %(default)s")
    args = parser.parse_args(argv)
    shipped = build_shipped_templates(data_dir(args.data_dir, captions=False), args.out)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{len(shipped)} templates in {args.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
