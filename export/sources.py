"""`make data`: the meme data set (templates.json, templates/, captions.jsonl.gz; see export/data.py), from
`../shared/data/memes` when it is there, else built from its public sources.

The sources are pinned in `export/sources.json`: for each, a GitHub repository, a commit, and every file
used with its SHA-256; and for each shipped template (gateway/meme_templates), which ImgFlip575K template
and which Memefly meme name hold its captions (those whose name is one of the template's aliases).

- memegen (`templates/<id>/config.yml` and `default.*`): names, text-box layouts, example captions, images;
- ImgFlip575K (`dataset/memes/<Name>.json`): captions with their imgflip votes and views;
- Memefly (`memefly-de/data/combined_data.json`): captions, one string a meme.

Files are downloaded into `data/sources/<source>/<path>` with a progress bar and checked against their
SHA-256; a file already there with the right checksum is not downloaded again. Offline, the command
lists what is missing and where to put it, and builds nothing. The build itself reads only those files, so
its output depends only on the pinned sources (gzip without a timestamp, templates in id order).

    python -m export.sources            # what `make data` runs
    python -m export.sources pin --mirror memegen=DIR --mirror imgflip575k=DIR --mirror memefly=DIR
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from export.data import CAPTIONS_FILE, DataMissingError, configured_data_dir, missing_data
from export.ship_templates import shipped_image
from memefly.paths import REPO_ROOT

MANIFEST = Path(__file__).resolve().parent / "sources.json"
SOURCES_DIR = REPO_ROOT / "data" / "sources"
RAW_URL = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
"""Where a pinned file is downloaded from; $MEMEFLY_SOURCES_URL overrides it (same placeholders)."""
REPOS = {
    "memegen": "jacebrowning/memegen",
    "imgflip575k": "schesa/ImgFlip575K_Dataset",
    "memefly": "BloomTech-Labs/memefly-ds",
}
IMAGE_SUFFIXES = (".jpg", ".png", ".gif", ".webp")
BOX_FIELDS = ("anchor_x", "anchor_y", "scale_x", "scale_y", "align", "style", "color", "angle")


@dataclass(frozen=True)
class SourceFile:
    source: str
    repo: str
    commit: str
    path: str
    git_blob: str
    """The file's git object id in the pinned commit's tree (SHA-1 of "blob <size>\\0" + content)."""
    sha256: str | None
    """None where the file's content could not be read when it was pinned (the git blob id still checks it)."""

    def matches(self, data: bytes) -> bool:
        if self.sha256 is not None and hashlib.sha256(data).hexdigest() != self.sha256:
            return False
        return git_blob_id(data) == self.git_blob

    def local(self, root: Path) -> Path:
        return root / self.source / self.path

    def url(self, template: str) -> str:
        return template.format(repo=self.repo, commit=self.commit, path=self.path)


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def load_manifest(path: Path = MANIFEST) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source_files(manifest: dict) -> list[SourceFile]:
    return [
        SourceFile(name, source["repo"], source["commit"], path, digests["git_blob"], digests.get("sha256"))
        for name, source in manifest["sources"].items()
        for path, digests in sorted(source["files"].items())
    ]


def fetch_sources(files: list[SourceFile], root: Path, url_template: str, timeout: float = 30.0) -> list[str]:
    """Download every file not already present with its checksum; returns one line per file still missing."""
    problems: list[str] = []
    todo = [f for f in files if not (f.local(root).is_file() and f.matches(f.local(root).read_bytes()))]
    unreachable = False
    for file in tqdm(todo, desc="downloading sources", unit=" files", disable=not todo):
        target = file.local(root)
        url = file.url(url_template)
        if unreachable:
            problems.append(f"{target}  <- {url}")
            continue
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
        except (urllib.error.URLError, OSError) as error:
            # One failed connection means offline: the rest are listed, not each tried for `timeout` seconds.
            unreachable = not isinstance(error, urllib.error.HTTPError)
            problems.append(f"{target}  <- {url}  ({error})")
            continue
        if not file.matches(data):
            problems.append(f"{target}  <- {url}  (checksum mismatch: not the pinned file)")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        partial.write_bytes(data)
        partial.replace(target)
    return problems


def _number(value: object) -> int | None:
    digits = re.sub(r"[^0-9]", "", str(value)) if value is not None else ""
    return int(digits) if digits else None


def _memegen_template(root: Path, template_id: str) -> tuple[dict, Path]:
    import yaml

    folder = root / "memegen" / "templates" / template_id
    config = yaml.safe_load((folder / "config.yml").read_text(encoding="utf-8"))
    image = next(folder / f"default{s}" for s in IMAGE_SUFFIXES if (folder / f"default{s}").is_file())
    return config, image


def build_data_set(manifest: dict, root: Path, out_dir: Path) -> dict[str, int]:
    """Write templates.json, templates/ and captions.jsonl.gz into `out_dir` from the downloaded sources;
    returns the caption count of each source."""
    templates: list[dict] = []
    captions: list[dict] = []
    (out_dir / "templates").mkdir(parents=True, exist_ok=True)
    memefly_texts: dict[str, list[str]] = {}
    memefly_file = manifest["sources"]["memefly"]["captions_file"]
    for entry in json.loads((root / "memefly" / memefly_file).read_text(encoding="utf-8")):
        texts = [t.strip() for t in entry.get("meme_text") or [] if isinstance(t, str) and t.strip()]
        memefly_texts.setdefault(entry.get("meme_name", ""), []).extend(texts)
    imgflip_folder = manifest["sources"]["imgflip575k"]["memes_folder"]
    for template_id, links in tqdm(sorted(manifest["templates"].items()), desc="building", unit=" templates"):
        config, image_file = _memegen_template(root, template_id)
        data, (width, height) = shipped_image(image_file)
        (out_dir / "templates" / f"{template_id}.jpg").write_bytes(data)
        rows: list[dict] = []
        for name in links.get("imgflip575k", []):
            memes = json.loads((root / "imgflip575k" / imgflip_folder / f"{name}.json").read_text(encoding="utf-8"))
            for meme in memes:
                boxes = [b for b in meme.get("boxes") or [] if isinstance(b, str) and b.strip()]
                metadata = meme.get("metadata") or {}
                if boxes:
                    votes, views = _number(metadata.get("img-votes")), _number(metadata.get("views"))
                    rows.append({"boxes": boxes, "source": "imgflip575k", "votes": votes, "views": views})
        for name in links.get("memefly", []):
            rows += [{"boxes": [t], "source": "memefly", "votes": None, "views": None} for t in memefly_texts[name]]
        example = [str(e) for e in config.get("example") or [] if str(e).strip()]
        if example:
            rows.append({"boxes": example, "source": "memegen-example", "votes": None, "views": None})
        captions += [{"template": template_id, **row} for row in rows]
        templates.append(
            {
                "id": template_id,
                "name": config.get("name") or template_id,
                "source": "memegen",
                "aliases": links.get("aliases", []),
                "text_boxes": [{f: box[f] for f in BOX_FIELDS if f in box} for box in config.get("text") or []],
                "example": example,
                "image": f"templates/{template_id}.jpg",
                "width": width,
                "height": height,
                "captions": len(rows),
            }
        )
    (out_dir / "templates.json").write_text(json.dumps(templates, indent=1, ensure_ascii=False), encoding="utf-8")
    partial = out_dir / (CAPTIONS_FILE + ".part")
    with open(partial, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        with io.TextIOWrapper(gz, encoding="utf-8") as text:
            for caption in captions:
                text.write(json.dumps(caption, ensure_ascii=False) + "\n")
    partial.replace(out_dir / CAPTIONS_FILE)
    counts: dict[str, int] = {}
    for caption in captions:
        counts[caption["source"]] = counts.get(caption["source"], 0) + 1
    return counts


def prepare_data(
    data_dir: Path | None = None,
    sources_dir: Path = SOURCES_DIR,
    url_template: str | None = None,
    manifest_path: Path = MANIFEST,
) -> Path:
    """The data set folder, built first when it is missing; `DataMissingError` (what is missing, where to
    put it) when a source file can be neither found nor downloaded."""
    folder = configured_data_dir(data_dir)
    if not missing_data(folder):
        print(f"meme data set present at {folder}: nothing to build")
        return folder
    manifest = load_manifest(manifest_path)
    files = source_files(manifest)
    url_template = url_template or os.environ.get("MEMEFLY_SOURCES_URL") or RAW_URL
    print(
        f"no meme data set at {folder} (no {' or '.join(missing_data(folder))}); building it from {len(files)} pinned "
        f"source files in {sources_dir}"
    )
    problems = fetch_sources(files, sources_dir, url_template)
    if problems:
        by_source = {f.source: f for f in files}
        lines = [
            f"cannot build the meme data set: {len(problems)} of {len(files)} source files are missing.",
            "Put each file at the path on its left (the checksums are in export/sources.json), or download "
            "them on a machine that is online and copy data/sources/ here, then run `make data` again:",
            *(f"  {line}" for line in problems[:20]),
        ]
        if len(problems) > 20:
            lines.append(
                f"  ... and {len(problems) - 20} more; all of them are listed in {sources_dir / 'MISSING.txt'}"
            )
        lines += [f"  ({name}: github.com/{f.repo} at commit {f.commit})" for name, f in sorted(by_source.items())]
        lines.append("Or set MEMEFLY_DATA_DIR to a folder that holds templates.json and captions.jsonl.gz.")
        sources_dir.mkdir(parents=True, exist_ok=True)
        (sources_dir / "MISSING.txt").write_text("\n".join(problems) + "\n", encoding="utf-8")
        raise DataMissingError("\n".join(lines))
    counts = build_data_set(manifest, sources_dir, folder)
    print(f"built {folder}: {len(manifest['templates'])} templates, captions {counts}")
    return folder


def pin(mirrors: dict[str, Path], templates_json: Path, out: Path = MANIFEST) -> dict:
    """Write the manifest from local git clones of the three sources (their checked-out HEAD): the files the
    shipped templates need, with their SHA-256, and each template's caption sources (by its aliases)."""

    def git(name: str, *args: str) -> bytes:
        return subprocess.run(["git", "-C", str(mirrors[name]), *args], capture_output=True, check=True).stdout

    def norm(text: str) -> str:
        return re.sub(r"[^a-z0-9]", "", text.lower())

    commits = {name: git(name, "rev-parse", "HEAD").decode().strip() for name in mirrors}
    files: dict[str, dict[str, dict]] = {name: {} for name in mirrors}

    def add(name: str, path: str) -> bytes | None:
        """Pins one file: its git blob id from the tree, and its SHA-256 when the clone has its content."""
        blob = git(name, "rev-parse", f"{commits[name]}:{path}").decode().strip()
        try:
            data = git(name, "cat-file", "blob", blob)
        except subprocess.CalledProcessError:
            data = None  # a partial clone without this blob: pinned by its git id alone
        files[name][path] = {"git_blob": blob, "sha256": hashlib.sha256(data).hexdigest() if data is not None else None}
        return data

    def has_content(name: str, path: str) -> bool:
        check = ["git", "-C", str(mirrors[name]), "cat-file", "-e", f"{commits[name]}:{path}"]
        return subprocess.run(check, capture_output=True).returncode == 0

    imgflip_names = [
        p.rsplit("/", 1)[-1].removesuffix(".json")
        for p in git("imgflip575k", "ls-tree", "--name-only", commits["imgflip575k"], "dataset/memes/").decode().split()
    ]
    titles = {
        n: json.loads(git("imgflip575k", "show", f"{commits['imgflip575k']}:dataset/templates/{n}.json"))["title"]
        for n in imgflip_names
    }
    memefly_file = "memefly-de/data/combined_data.json"
    memefly_names = sorted({e["meme_name"] for e in json.loads(add("memefly", memefly_file) or b"[]")})
    links: dict[str, dict] = {}
    for entry in json.loads(templates_json.read_text(encoding="utf-8")):
        folder = f"templates/{entry['id']}"
        listing = git("memegen", "ls-tree", "--name-only", commits["memegen"], folder + "/").decode().split()
        add("memegen", f"{folder}/config.yml")
        add("memegen", next(f"{folder}/default{s}" for s in IMAGE_SUFFIXES if f"{folder}/default{s}" in listing))
        aliases = {norm(a) for a in entry.get("aliases") or []}
        imgflip = [
            n for n in imgflip_names if norm(n) in aliases or norm(titles[n].removesuffix(" Meme Template")) in aliases
        ]
        memefly = [n for n in memefly_names if norm(n) in aliases]
        # Only caption files whose content is in the clone, so pinned by SHA-256 as well, are linked.
        imgflip = [n for n in imgflip if has_content("imgflip575k", f"dataset/memes/{n}.json")]
        for name in imgflip:
            add("imgflip575k", f"dataset/memes/{name}.json")
        links[entry["id"]] = {"aliases": list(entry.get("aliases") or []), "imgflip575k": imgflip, "memefly": memefly}
    manifest = {
        "sources": {
            name: {"repo": REPOS[name], "commit": commits[name], "files": dict(sorted(files[name].items()))}
            for name in sorted(mirrors)
        },
        "templates": links,
    }
    manifest["sources"]["imgflip575k"]["memes_folder"] = "dataset/memes"
    manifest["sources"]["memefly"]["captions_file"] = memefly_file
    out.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    pinning = commands.add_parser("pin", help="write export/sources.json from local git clones of the sources")
    pinning.add_argument("--mirror", action="append", default=[], help="NAME=DIR (memegen, imgflip575k, memefly)")
    pinning.add_argument("--templates", type=Path, default=REPO_ROOT / "gateway" / "meme_templates" / "templates.json")
    parser.add_argument("--data-dir", type=Path, help="default $MEMEFLY_DATA_DIR, ../shared/data/memes or data/memes")
    args = parser.parse_args(argv)
    if args.command == "pin":
        mirrors = {name: Path(path) for name, path in (m.split("=", 1) for m in args.mirror)}
        manifest = pin(mirrors, args.templates)
        print(f"pinned {sum(len(s['files']) for s in manifest['sources'].values())} files in {MANIFEST}")
        return 0
    try:
        prepare_data(args.data_dir)
    except DataMissingError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
