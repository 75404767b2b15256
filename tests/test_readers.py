"""The Memefly JSON and Flickr8k readers give the data set's records, and skip or refuse bad input clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from export.data import Caption, split_by_template
from export.readers import DataFormatError, read_flickr8k, read_memefly

FLICKR_IMAGES = ("1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg")


def _jpeg(path: Path, size: tuple[int, int], colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="JPEG")


def _memefly_entry(meme_id: int, name: str, texts: object, boxes: list[str] | None = None) -> dict:
    """An item as in Memefly's combined_data.json."""
    return {
        "meme_id": meme_id,
        "meme_name": name,
        "meme_bounding_box": boxes or [],
        "meme_url": f"https://memefly-datalake.s3.us-east-2.amazonaws.com/base-meme-images/{name}.jpg",
        "meme_text": texts,
    }


@pytest.fixture
def memefly_folder(tmp_path: Path) -> Path:
    _jpeg(tmp_path / "images" / "advice-dog.jpg", (488, 488))
    _jpeg(tmp_path / "images" / "success-kid.jpg", (500, 400), (20, 120, 20))
    entries = [
        _memefly_entry(
            0,
            "advice-dog",
            ["  save money eat own shit ", "press ctrl+w to block pop-ups"],
            [
                "left: 4px; top: 353px; width: 480px; height: 122px;",
                "left: 4px; top: 4px; width: 480px; height: 122px;",
            ],
        ),
        _memefly_entry(
            1,
            "success-kid",
            ["first try", "", None],
            ["background: none; left: 10px; top: 200px; width: 250px; height: 100px; transform: rotate(344deg);"],
        ),
        _memefly_entry(2, "lost-image", ["a caption whose template image was never downloaded"]),
        ["not", "a", "meme"],
        {"meme_text": ["no name"]},
        _memefly_entry(3, "advice-dog", "one string instead of a list"),
    ]
    (tmp_path / "combined_data.json").write_text(json.dumps(entries))
    return tmp_path


def test_memefly_json_gives_a_template_per_meme_and_a_one_box_caption_per_text(memefly_folder: Path) -> None:
    data = read_memefly(memefly_folder / "combined_data.json")
    assert [t.id for t in data.templates] == ["advice-dog", "success-kid"]
    dog, kid = data.templates
    assert dog.name == "Advice Dog"
    assert dog.image_path == memefly_folder / "images" / "advice-dog.jpg"
    assert (dog.width, dog.height, kid.width, kid.height) == (488, 488, 500, 400)
    assert dog.example == ("save money eat own shit",)
    assert data.captions == [
        Caption("advice-dog", ("save money eat own shit",)),
        Caption("advice-dog", ("press ctrl+w to block pop-ups",)),
        Caption("success-kid", ("first try",)),
    ]
    # Memefly lists the bottom box first; boxes come back top first, as fractions of the image.
    assert [box["anchor_y"] for box in dog.text_boxes] == [round(4 / 488, 4), round(353 / 488, 4)]
    assert kid.text_boxes == ({"anchor_x": 0.02, "anchor_y": 0.5, "scale_x": 0.5, "scale_y": 0.25, "angle": 16.0},)


def test_memefly_records_without_image_name_or_text_are_skipped_and_counted(memefly_folder: Path) -> None:
    data = read_memefly(memefly_folder / "combined_data.json")
    assert data.skipped_by_reason() == {
        "empty caption": 1,
        "caption is not a string": 1,
        "image not found": 1,
        "not a meme object": 1,
        "no meme_name": 1,
        "no meme_text list": 1,
    }
    assert [s.where for s in data.skipped if s.reason == "image not found"] == [
        "combined_data.json item 2 (lost-image)"
    ]
    assert data.summary() == (
        "2 images, 3 captions; skipped 6 (1 caption is not a string, 1 empty caption, 1 image not found, "
        "1 no meme_name, 1 no meme_text list, 1 not a meme object)"
    )


def test_memefly_strict_reading_stops_at_the_first_bad_record(memefly_folder: Path) -> None:
    with pytest.raises(
        DataFormatError, match=r"^combined_data.json item 1 \(success-kid\) meme_text 1: empty caption$"
    ):
        read_memefly(memefly_folder / "combined_data.json", strict=True)


def test_memefly_file_that_is_not_a_list_of_memes_is_refused(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "memes.json").write_text(json.dumps({"memes": []}))
    with pytest.raises(
        DataFormatError, match="memes.json is not a Memefly JSON file: expected a list of memes, got dict"
    ):
        read_memefly(tmp_path / "memes.json")
    (tmp_path / "broken.json").write_text('[{"meme_name": ')
    with pytest.raises(DataFormatError, match="broken.json is not a Memefly JSON file"):
        read_memefly(tmp_path / "broken.json")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DataFormatError, match="Memefly images folder .*elsewhere not found"):
        read_memefly(tmp_path / "empty.json", images_dir=tmp_path / "elsewhere")


def test_flickr8k_original_layout_reads_five_captions_an_image_and_skips_bad_lines(tmp_path: Path) -> None:
    for i, name in enumerate(FLICKR_IMAGES):
        _jpeg(tmp_path / "Flicker8k_Dataset" / name, (500, 375 + i))
    (tmp_path / "Flicker8k_Dataset" / "3000000000_0000000000.jpg").write_bytes(b"not a jpeg")
    lines = [f"{FLICKR_IMAGES[0]}#{n}\tA child in a pink dress , number {n} ." for n in range(5)]
    lines += [
        f"{FLICKR_IMAGES[1]}#0\tA black dog and a spotted dog are fighting",
        f"{FLICKR_IMAGES[1]}#1 a line whose tab was lost",
        f"{FLICKR_IMAGES[1]}#2\t   ",
        "",
        # As in the real file: an image name that has no file.
        "2258277193_586949ec62.jpg.1#0\tPeople standing outside of a building .",
        "3000000000_0000000000.jpg#0\tA file that is not an image .",
    ]
    (tmp_path / "Flickr8k_text").mkdir()
    (tmp_path / "Flickr8k_text" / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")

    data = read_flickr8k(tmp_path)
    assert [t.id for t in data.templates] == ["1000268201_693b08cb0e", "1001773457_577c3a7d70"]
    assert data.templates[1].image_path == tmp_path / "Flicker8k_Dataset" / FLICKR_IMAGES[1]
    assert (data.templates[1].width, data.templates[1].height) == (500, 376)
    assert data.templates[0].example == ("A child in a pink dress , number 0 .",)
    assert [c.template for c in data.captions] == ["1000268201_693b08cb0e"] * 5 + ["1001773457_577c3a7d70"]
    assert data.captions[5].boxes == ("A black dog and a spotted dog are fighting",)
    assert [(s.where, s.reason) for s in data.skipped] == [
        ("Flickr8k.token.txt line 7", "malformed line"),
        ("Flickr8k.token.txt line 8", "empty caption"),
        ("Flickr8k.token.txt line 10", "image not found"),
        ("Flickr8k.token.txt line 11", "unreadable image"),
    ]
    train, validation = split_by_template(data.captions, 0.2, seed=1)
    assert len(train) + len(validation) == 6 and validation


def test_flickr8k_kaggle_layout_reads_the_csv_with_commas_in_captions(tmp_path: Path) -> None:
    for name in FLICKR_IMAGES:
        _jpeg(tmp_path / "Images" / name, (320, 240))
    (tmp_path / "captions.txt").write_text(
        "image,caption\n"
        f'{FLICKR_IMAGES[0]},"A girl going into a wooden building, smiling ."\n'
        f"{FLICKR_IMAGES[0]},A little girl climbing , into a playhouse .\n"
        f"{FLICKR_IMAGES[1]}\n"
        f"{FLICKR_IMAGES[1]},Two dogs on pavement moving toward each other .\n"
    )
    data = read_flickr8k(tmp_path)
    assert [c.boxes[0] for c in data.captions] == [
        "A girl going into a wooden building, smiling .",
        "A little girl climbing , into a playhouse .",
        "Two dogs on pavement moving toward each other .",
    ]
    assert [(s.where, s.reason) for s in data.skipped] == [("captions.txt line 4", "malformed line")]
    assert data.summary() == "2 images, 3 captions; skipped 1 (1 malformed line)"


def test_flickr8k_folder_without_its_files_or_with_an_unknown_captions_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no Flickr8k captions file in .*Flickr8k.token.txt"):
        read_flickr8k(tmp_path)
    (tmp_path / "captions.txt").write_text("filename;text\nx.jpg;a caption\n")
    with pytest.raises(
        DataFormatError, match="no Flickr8k images folder in .*Flicker8k_Dataset, Flickr8k_Dataset, Images"
    ):
        read_flickr8k(tmp_path)
    (tmp_path / "Images").mkdir()
    with pytest.raises(
        DataFormatError, match="captions.txt is neither Flickr8k.token.txt .* first line is 'filename;text'"
    ):
        read_flickr8k(tmp_path)
