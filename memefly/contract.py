"""The contract between the model tier and the gateway, written once and read by both.

Signature names, tensor names, dtypes and shapes of the exported SavedModel, the special tokens, and
the JSON document the `metadata` signature returns. Nothing here imports TensorFlow: the gateway reads
the same names without it, the export maps the dtype names to `tf.DType`s.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

ENCODE = "encode"
DECODE_STEP = "decode_step"
DECODE_STEP_REST = "decode_step_rest"
"""`decode_step` with a float32 state, exported when `decode_step`'s state is float16: TF Serving's REST
API (all a SageMaker endpoint offers) cannot turn JSON numbers into `half`."""
METADATA = "metadata"
METADATA_REST = "metadata_rest"
"""`metadata` with one ignored int32 scalar input `unused`: TF Serving's REST API (all a SageMaker
endpoint offers) cannot call a signature without inputs."""
TOKENIZE = "tokenize"
SCORE = "score"
GENERATE = "generate"
EXPLAIN = "explain"

PAD, START, END, UNK, SEP = "<pad>", "<start>", "<end>", "<unk>", "<sep>"
SPECIAL_TOKENS = (PAD, START, END, UNK, SEP)
"""Ids 0..4 in every vocabulary, in this order. `<sep>` separates a caption's text boxes."""

BOX_SEPARATOR_TEXT = "\n"
"""How boxes are separated in caption text given to the tokenizer: one line a box."""


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a signature. `shape` uses None for a free dimension; `()` is a scalar."""

    name: str
    dtype: str  # "string", "int32", "float32" or "float16"
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class SignatureSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        return next(spec for spec in self.inputs if spec.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(spec for spec in self.outputs if spec.name == name)


def encode_signature(context_shape: tuple[int, ...]) -> SignatureSpec:
    """`image_bytes` (JPEG/PNG bytes, decoded and resized in-graph) → `context`: a model without conditioning."""
    return SignatureSpec(
        ENCODE,
        inputs=(TensorSpec("image_bytes", "string", (None,)),),
        outputs=(TensorSpec("context", "float32", (None, *context_shape)),),
    )


def conditioned_encode_signature(context_shape: tuple[int, ...], concepts_per_image: int) -> SignatureSpec:
    """N images and M conditioning rows → M contexts, each an image with a topic and a style folded in.

    Row m conditions image `image_index[m]` on `topic[m]` (free text; "" for the image's own concept
    words) and `style[m]` (a style name from the contract's `styles`; "" for the `style_rank[m]`-th style
    that best fits the row's topic and image). The outputs say which topic words and style each row used,
    and each image's `concepts_per_image` concept words with their probabilities ("" and 0 past the last).
    One image captioned in several styles is sent, and encoded, once.
    """
    return SignatureSpec(
        ENCODE,
        inputs=(
            TensorSpec("image_bytes", "string", (None,)),
            TensorSpec("image_index", "int32", (None,)),
            TensorSpec("topic", "string", (None,)),
            TensorSpec("style", "string", (None,)),
            TensorSpec("style_rank", "int32", (None,)),
        ),
        outputs=(
            TensorSpec("context", "float32", (None, *context_shape)),
            TensorSpec("topic", "string", (None,)),
            TensorSpec("style", "string", (None,)),
            TensorSpec("concepts", "string", (None, concepts_per_image)),
            TensorSpec("concept_probs", "float32", (None, concepts_per_image)),
        ),
    )


def decode_step_signature(
    context_shape: tuple[int, ...], state_size: int, state_dtype: str = "float32", name: str = DECODE_STEP
) -> SignatureSpec:
    """One step for N beams of R requests.

    `context_index[i]` is the row of `context` beam i belongs to, gathered in-graph, so a request's
    context crosses the wire once per step rather than once per beam. Top-k is taken in-graph, so no
    full-vocabulary logits cross the wire. The state crosses twice per step, so it travels as
    `state_dtype` (float16 for the GRU: half the bytes); the model rounds it so on every step, whichever
    way it is called, so every transport and `generate` see the same numbers.
    """
    return SignatureSpec(
        name,
        inputs=(
            TensorSpec("tokens", "int32", (None,)),
            TensorSpec("state", state_dtype, (None, state_size)),
            TensorSpec("context", "float32", (None, *context_shape)),
            TensorSpec("context_index", "int32", (None,)),
            TensorSpec("k", "int32", ()),
        ),
        outputs=(
            TensorSpec("top_log_probs", "float32", (None, None)),
            TensorSpec("top_ids", "int32", (None, None)),
            TensorSpec("state", state_dtype, (None, state_size)),
        ),
    )


TOKENIZE_SIGNATURE = SignatureSpec(
    TOKENIZE,
    inputs=(TensorSpec("text", "string", (None,)),),
    outputs=(TensorSpec("ids", "int32", (None, None)), TensorSpec("lengths", "int32", (None,))),
)
"""Caption text (one line a box) → token ids padded with `<pad>`; no `<start>` or `<end>`."""


def score_signature(context_shape: tuple[int, ...]) -> SignatureSpec:
    """Teacher-forced log-probability of each caption given its context, `<end>` included."""
    return SignatureSpec(
        SCORE,
        inputs=(TensorSpec("context", "float32", (None, *context_shape)), TensorSpec("text", "string", (None,))),
        outputs=(TensorSpec("log_prob", "float32", (None,)), TensorSpec("num_tokens", "int32", (None,))),
    )


def explain_signature(context_shape: tuple[int, ...], grid: tuple[int, ...]) -> SignatureSpec:
    """Where the decoder looked while it wrote each word of each caption: its cross-attention over the
    image's grid positions (rows of `grid`, row-major), averaged over heads, for each of the caption's
    `words` (its tokens as the model reads them; the one after the last, at `num_words`, is `<end>`).
    Models whose decoder attends over a grid export it; only a request that asks for it calls it."""
    positions = math.prod(grid)
    return SignatureSpec(
        EXPLAIN,
        inputs=(TensorSpec("context", "float32", (None, *context_shape)), TensorSpec("text", "string", (None,))),
        outputs=(
            TensorSpec("attention", "float32", (None, None, positions)),
            TensorSpec("words", "string", (None, None)),
            TensorSpec("num_words", "int32", (None,)),
        ),
    )


GENERATE_MAX_BEAM_WIDTH = 32
"""The widest beam `generate` accepts: a bound on the work one call can ask for."""

GENERATE_SIGNATURE = SignatureSpec(
    GENERATE,
    inputs=(
        TensorSpec("image_bytes", "string", (None,)),
        TensorSpec("prefix", "string", (None,)),
        TensorSpec("beam_width", "int32", ()),
        TensorSpec("n_best", "int32", ()),
        TensorSpec("max_length", "int32", ()),
        TensorSpec("length_penalty", "float32", ()),
        TensorSpec("no_repeat_ngram_size", "int32", ()),
    ),
    outputs=(
        TensorSpec("ids", "int32", (None, None, None)),
        TensorSpec("lengths", "int32", (None, None)),
        TensorSpec("log_probs", "float32", (None, None)),
        TensorSpec("scores", "float32", (None, None)),
        TensorSpec("text", "string", (None, None)),
    ),
)
"""The whole beam search in-graph, with the gateway's rules (gateway/search.py), for N images in one call.

`prefix[i]` is image i's caption beginning as text ("" for none), tokenized in-graph. The settings are
the gateway's `SearchSettings`; `max_length` is capped at the model's. Outputs hold the `n_best`
captions of each image, best first: `ids` [N, n_best, max_length] padded with `<pad>`, `text` with one
line a box (`BOX_SEPARATOR_TEXT`). A slot with no caption has length 0, text "" and score -inf.
Scalar settings make it columnar-only over REST (`{"inputs": ...}`), as `decode_step` is.

A `conditioned` model follows the gateway's rule for a photo without a given style: `n_best` is how many
captions, each in its own style (the best fitting first) with the photo's concepts as topic, each the
best of its own beam of `beam_width`; they come in style order.
"""

METADATA_SIGNATURE = SignatureSpec(
    METADATA,
    inputs=(),
    outputs=(TensorSpec("vocabulary", "string", (None,)), TensorSpec("contract", "string", ())),
)


@dataclass(frozen=True)
class ModelContract:
    """What a client must know about one exported model; served as JSON by the `metadata` signature."""

    model_name: str
    decoder: str
    encoder: str
    vocab_size: int
    max_length: int
    image_size: int
    state_size: int
    context_shape: tuple[int, ...]
    state_dtype: str = "float32"
    """How `decode_step`'s state travels; models exported before it existed send float32."""
    conditioned: bool = False
    """`encode` takes topics and styles (`conditioned_encode_signature`); models exported before it
    existed take images alone."""
    styles: tuple[str, ...] = ()
    """The template ids whose voice the model learned, in style-id order."""
    concept_words: tuple[str, ...] = ()
    """Every word `encode` may name as a concept."""
    concepts_per_image: int = 0
    attention_grid: tuple[int, ...] = ()
    """The image grid the decoder attends over ((7, 7)), when it exports `explain`; () for none."""
    special_tokens: dict[str, int] = field(default_factory=lambda: {token: i for i, token in enumerate(SPECIAL_TOKENS)})

    @property
    def pad_id(self) -> int:
        return self.special_tokens[PAD]

    @property
    def start_id(self) -> int:
        return self.special_tokens[START]

    @property
    def end_id(self) -> int:
        return self.special_tokens[END]

    @property
    def sep_id(self) -> int:
        return self.special_tokens[SEP]

    @property
    def unk_id(self) -> int:
        return self.special_tokens[UNK]

    @property
    def encode(self) -> SignatureSpec:
        if self.conditioned:
            return conditioned_encode_signature(self.context_shape, self.concepts_per_image)
        return encode_signature(self.context_shape)

    @property
    def decode_step(self) -> SignatureSpec:
        return decode_step_signature(self.context_shape, self.state_size, self.state_dtype)

    @property
    def decode_step_rest(self) -> SignatureSpec:
        """The step signature a JSON client calls: `decode_step` itself when its state is float32."""
        if self.state_dtype == "float32":
            return self.decode_step
        return decode_step_signature(self.context_shape, self.state_size, "float32", DECODE_STEP_REST)

    @property
    def score(self) -> SignatureSpec:
        return score_signature(self.context_shape)

    @property
    def explain(self) -> SignatureSpec | None:
        return explain_signature(self.context_shape, self.attention_grid) if self.attention_grid else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelContract:
        fields = json.loads(text)
        for name in ("context_shape", "styles", "concept_words", "attention_grid"):
            if name in fields:
                fields[name] = tuple(fields[name])
        return cls(**fields)


METADATA_REST_SIGNATURE = SignatureSpec(
    METADATA_REST, inputs=(TensorSpec("unused", "int32", ()),), outputs=METADATA_SIGNATURE.outputs
)


def signatures(contract: ModelContract) -> tuple[SignatureSpec, ...]:
    """Every signature a model of this contract exports."""
    rest_twin = (contract.decode_step_rest,) if contract.decode_step_rest.name != DECODE_STEP else ()
    return (
        contract.encode,
        contract.decode_step,
        *rest_twin,
        METADATA_SIGNATURE,
        METADATA_REST_SIGNATURE,
        TOKENIZE_SIGNATURE,
        contract.score,
        GENERATE_SIGNATURE,
        *((contract.explain,) if contract.explain else ()),
    )
