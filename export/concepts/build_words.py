"""Build `imagenet_words.tsv`: each ImageNet class → the everyday word captions use for it, or nothing.

    python -m export.concepts.build_words [--data-dir ../shared/data/memes]

For each class the candidates are its lemmas and their head nouns (the last word: "space shuttle" →
"shuttle"); the one the caption corpus uses most wins, unless a rule below names the word (every dog
breed is a dog; clothing people wear is a person). A class whose best word is rarer than `MIN_COUNT` in
the captions gets no word: no caption could be about it. The output was checked by eye and is
committed; re-run the script after changing a rule and read the diff.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from tqdm import tqdm

HERE = Path(__file__).parent
CLASSES_FILE = HERE / "imagenet_classes.tsv"
WORDS_FILE = HERE / "imagenet_words.tsv"
MIN_COUNT = 20

PERSON_WORD = "guy"
"""ImageNet has no person class. A photo of a person shows clothing ImageNet knows (suits, ties,
uniforms, jerseys, lab coats...); those classes mean a person, and "guy" is how captions say one."""

PERSON_CLASSES = {
    "suit", "Windsor tie", "bow tie", "bolo tie", "lab coat", "trench coat", "military uniform", "jersey",
    "sweatshirt", "cardigan", "academic gown", "abaya", "kimono", "sarong", "fur coat", "poncho", "cowboy hat",
    "sombrero", "wig", "mortarboard", "bulletproof vest", "pajama", "swimming trunks", "bikini", "maillot",
    "miniskirt", "hoopskirt", "overskirt", "jean", "stole", "vestment", "cloak", "brassiere", "apron",
    "football helmet", "crash helmet", "ski mask", "gasmask", "mask", "sunglasses", "sunglass", "hair spray",
    "lipstick", "face powder", "neck brace", "groom", "scuba diver", "ballplayer", "bathing cap", "shower cap",
}  # fmt: skip

# Classes whose word no lemma gives, or whose commonest lemma is not what a caption would say.
OVERRIDES = {
    "espresso": "coffee", "cup": "coffee", "coffee mug": "coffee", "coffeepot": "coffee", "espresso maker": "coffee",
    "space shuttle": "rocket", "missile": "rocket", "projectile": "rocket", "tabby": "cat", "tiger cat": "cat",
    "Persian cat": "cat", "Siamese cat": "cat", "Egyptian cat": "cat", "notebook": "laptop", "laptop": "laptop",
    "desktop computer": "computer", "monitor": "computer", "screen": "computer", "cellular telephone": "phone",
    "dial telephone": "phone", "pay-phone": "phone", "iPod": "phone", "television": "tv", "beer bottle": "beer",
    "beer glass": "beer", "wine bottle": "wine", "red wine": "wine", "pizza": "pizza", "cheeseburger": "burger",
    "French loaf": "bread", "bagel": "bread", "pretzel": "pretzel", "ice cream": "ice",
    "chocolate sauce": "chocolate", "racer": "car", "sports car": "car", "convertible": "car", "cab": "car",
    "beach wagon": "car", "limousine": "car", "minivan": "car", "jeep": "car", "police van": "police",
    "school bus": "bus", "trolleybus": "bus", "passenger car": "train", "electric locomotive": "train",
    "steam locomotive": "train", "bullet train": "train", "airliner": "plane", "warplane": "plane",
    "airship": "plane", "wing": "plane", "pirate": "pirate", "slot": "casino", "prison": "prison",
    "church": "church", "mosque": "church", "stupa": "temple", "barbershop": "hair", "toilet seat": "toilet",
    "toilet tissue": "toilet", "washbasin": "bathroom", "tub": "bath", "bathtub": "bath", "shower curtain": "shower",
    "refrigerator": "fridge", "microwave": "microwave", "dishwasher": "dishes", "plate": "food", "tray": "food",
    "restaurant": "restaurant", "grocery store": "store", "shoe shop": "shoes", "toyshop": "toys",
    "bookshop": "books", "library": "books", "comic book": "", "book jacket": "book", "envelope": "mail",
    "mailbox": "mail", "packet": "package", "carton": "box", "crate": "box", "running shoe": "shoes",
    "sandal": "shoes", "cowboy boot": "boots", "Christmas stocking": "christmas", "teddy": "teddy",
    "volleyball": "volleyball", "basketball": "basketball", "soccer ball": "soccer", "football helmet": "football",
    "rugby ball": "rugby", "tennis ball": "tennis", "golf ball": "golf", "golfcart": "golf", "ping-pong ball": "",
    "rocking chair": "chair", "folding chair": "chair", "barber chair": "chair", "throne": "king",
    "crown": "king", "web site": "internet", "joystick": "game", "jigsaw puzzle": "puzzle", "slot machine": "casino",
    "photocopier": "printer", "printer": "printer", "desk": "desk", "home theater": "tv", "drum": "drums",
    "electric guitar": "guitar", "acoustic guitar": "guitar", "grand piano": "piano", "upright": "piano",
    "syringe": "vaccine", "pill bottle": "pills", "stethoscope": "doctor", "ambulance": "ambulance",
    "fire engine": "fire", "tank": "tank", "rifle": "gun", "assault rifle": "gun", "revolver": "gun",
    "cannon": "cannon", "seashore": "beach", "sandbar": "beach", "lakeside": "lake", "valley": "mountain",
    "alp": "mountain", "volcano": "volcano", "cliff": "cliff", "geyser": "geyser", "coral reef": "ocean",
    "teapot": "tea", "wok": "cooking", "frying pan": "cooking", "Dutch oven": "cooking", "broccoli": "broccoli",
    "banana": "banana", "Granny Smith": "apple", "strawberry": "strawberry", "lemon": "lemon", "orange": "orange",
    "mushroom": "mushroom", "sushi": "sushi", "burrito": "burrito", "meat loaf": "meat", "potpie": "pie",
    "trifle": "cake", "chain saw": "chainsaw", "lawn mower": "lawn", "traffic light": "traffic",
    "street sign": "sign", "parking meter": "parking", "scoreboard": "score", "digital clock": "clock",
    "wall clock": "clock", "analog clock": "clock", "alarm clock": "alarm", "hourglass": "time",
    "spider web": "spider", "lighter": "lighter", "candle": "candle", "Band Aid": "bandaid",
    "sea lion": "seal", "dragonfly": "bug", "killer whale": "whale", "African grey": "parrot",
    "hippopotamus": "hippo", "three-toed sloth": "sloth", "lesser panda": "panda", "giant panda": "panda",
    "hotdog": "food", "ocarina": "", "bobsled": "sled", "dogsled": "sled", "go-kart": "kart",
    "barbell": "gym", "dumbbell": "gym", "balance beam": "gym", "parallel bars": "gym", "horizontal bar": "gym",
}  # fmt: skip

NOT_A_CONCEPT = {
    "trump", "round", "puppy", "ai", "two", "t", "v", "jack", "killer", "grey", "beauty", "doctor", "head", "hip",
    "ear", "woods", "comfort", "press", "mike", "system", "center", "spot", "poster", "star", "monster", "drake",
    "rule", "scope", "brake", "switch", "pick", "slide", "control", "rubber", "hot", "mail", "chest", "safe",
    "platform", "cover", "file", "pole", "player", "machine", "kit", "can", "track", "pack", "screw", "pump",
    "tablet", "bar", "net", "rack", "pipe", "filter", "dish", "nail", "hook", "iron", "horn", "screen", "ray",
    "jay", "fly", "shell", "dam", "bank", "time", "menu", "potato", "ping", "kart", "light",
}  # fmt: skip
"""Head nouns that would name something else in a caption ("cornet, trumpet, trump" is not about Trump)."""

DOG_RANGE = range(151, 269)
"""ImageNet-1k's dog breeds, indices 151-268 (WordNet's domestic dog subtree)."""
CAT_RANGE = range(281, 286)
"""Domestic cats, 281-285."""


def read_classes(path: Path = CLASSES_FILE) -> list[tuple[int, str, list[str]]]:
    """(index, WordNet id, lemmas) of the 1000 classes, in the classifier's order."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        index, wnid, lemmas = line.split("\t")
        rows.append((int(index), wnid, [lemma.strip() for lemma in lemmas.split(",") if lemma.strip()]))
    return rows


def read_words(path: Path = WORDS_FILE) -> list[str]:
    """The word of each class in the classifier's order ("" for a class with none)."""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        words.append(line.split("\t")[2] if line.count("\t") >= 2 else "")
    return words


def caption_word_counts(data_folder: Path) -> Counter[str]:
    from export.data import iter_captions

    counts: Counter[str] = Counter()
    for caption in tqdm(iter_captions(data_folder), desc="counting caption words", unit=" captions"):
        counts.update(re.findall(r"[a-z]+", " ".join(caption.boxes).lower()))
    return counts


def class_word(index: int, lemmas: list[str], counts: Counter[str]) -> str:
    name = lemmas[0]
    if index in DOG_RANGE:
        return "dog"
    if index in CAT_RANGE:
        return "cat"
    if name in PERSON_CLASSES:
        return PERSON_WORD
    if name in OVERRIDES:
        return OVERRIDES[name]
    candidates = set()
    for lemma in lemmas:
        words = re.findall(r"[a-z]+", lemma.lower())
        if words:
            candidates.add(words[-1])
            if len(words) == 1:
                candidates.add(words[0])
    candidates -= NOT_A_CONCEPT
    best = max(sorted(candidates), key=lambda w: counts[w], default="")
    return best if counts[best] >= MIN_COUNT else ""


def main() -> None:
    from export.data import data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    counts = caption_word_counts(data_dir(args.data_dir))
    lines = [
        "# ImageNet class index, class name, the everyday word captions use for it ('' for none).",
        "# Made by `python -m export.concepts.build_words` from imagenet_classes.tsv and the caption corpus's",
        f"# word counts (a word used fewer than {MIN_COUNT} times is none); checked by eye.",
    ]
    for index, _wnid, lemmas in read_classes():
        word = class_word(index, lemmas, counts)
        if word and counts[word] < MIN_COUNT and word != PERSON_WORD:
            word = ""
        lines.append(f"{index}\t{lemmas[0]}\t{word}")
    WORDS_FILE.write_text("\n".join(lines) + "\n", encoding="utf-8")
    named = sum(1 for line in lines if not line.startswith("#") and line.split("\t")[2])
    print(f"wrote {WORDS_FILE}: {named} of 1000 classes have a word")


if __name__ == "__main__":
    main()
