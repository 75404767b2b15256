"""The ways of making a meme that the benchmark compares, all on the same SavedModel and search settings.

1. `OriginalMemeflyMode`: the original Memefly algorithm, in-process. One model call per beam per step;
   each call re-runs the whole padded prefix through the model and returns the full softmax.
   `OriginalMemeflyRestMode`: the same calls as the seed deployed them, JSON over TF Serving's REST API.
2. `FullVocabularyStepMode`: the gateway's step loop (continuous batching) over gRPC, asking `decode_step`
   for k = vocabulary size: full-vocabulary log-probabilities cross the wire every step.
3. `StepLoopMode` on `CountingTfServingBackend`: the product path, in-graph top-k over gRPC.
4. `StepLoopMode` on the embedded backend: the same loop in-process.
5. `GenerateMode`: the in-graph `generate` signature, one call per meme, over gRPC.
6. `OfflineBatchedMode`: the same model in-process, large batches, no scheduler: the machine's limit.
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import httpx
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from bench.wire import CallLedger, CountingTfServingBackend
from bench.workload import SearchConfig
from gateway.backends.base import ModelBackend, ModelInfo
from gateway.backends.embedded import EmbeddedBackend
from gateway.captioner import ModelSession
from gateway.content_filter import ContentFilter
from gateway.meme_service import MemeService, decoding_settings
from gateway.metrics import Metrics
from gateway.model_router import ModelRouter
from gateway.schemas import MemeOptions
from gateway.search import BeamSearch, SearchSettings
from gateway.settings import Settings
from gateway.templates import TemplateStore
from gateway.tensors import array_to_proto, proto_to_array, strings_to_proto
from memefly import contract as contract_module
from memefly.contract import BOX_SEPARATOR_TEXT, DECODE_STEP, ENCODE, ModelContract
from memefly.text import ids_to_boxes

ORIGINAL_CALL = "full_prefix_softmax"
"""The signature name mode 1's model calls are counted under (and the seed replica's signature)."""
ENCODE_PIXELS = "encode_pixels"
"""The seed replica's encoder signature: decoded pixels, not JPEG bytes, as the seed's client sent them."""
RestExchange = tuple[str, bytes, bytes]
"""(signature name, request body, response body) of one REST `:predict` call."""
OFFLINE_ENCODE_CHUNK = 32
"""Images per `encode` call in mode 6: large enough to batch, small enough to keep activations in memory."""


@dataclass(frozen=True)
class MemeOutcome:
    caption: str
    """The best caption, boxes joined by " / " ("" if the search found none)."""
    model_calls: int
    """Model calls this meme took part in."""


class Mode(Protocol):
    number: int
    title: str
    transport: str
    ledger: CallLedger

    def meme(self, image: bytes) -> MemeOutcome: ...

    def close(self) -> None: ...


PRODUCT_SETTINGS = Settings.model_construct()
"""The gateway's defaults, whatever MEMEFLY_* this machine sets."""


def product_options(config: SearchConfig) -> MemeOptions:
    """The bench's search as a `POST /v1/memes` request asks for it."""
    return MemeOptions(
        n=config.n_best,
        beam_width=config.beam_width,
        max_length=config.max_length,
        length_penalty=config.length_penalty,
    )


def search_settings(config: SearchConfig, info: ModelInfo) -> SearchSettings:
    """The product's decoding rule (`decoding_settings`) for the bench's options."""
    settings = decoding_settings(product_options(config), PRODUCT_SETTINGS, info.contract.max_length)
    assert isinstance(settings, SearchSettings)
    return settings


def product_request_width() -> int:
    return PRODUCT_SETTINGS.style_beam_width


def _best_caption(search: BeamSearch, info: ModelInfo) -> str:
    for hypothesis in search.results():
        boxes = ids_to_boxes(hypothesis.ids, info.vocabulary, info.contract)
        if boxes:
            return " / ".join(boxes)
    return ""


def _new_search(
    settings: SearchSettings, info: ModelInfo, state_size: int | None = None, kind: type[BeamSearch] = BeamSearch
) -> BeamSearch:
    contract = info.contract
    return kind(
        settings,
        contract.start_id,
        contract.end_id,
        contract.sep_id,
        contract.state_size if state_size is None else state_size,
        contract.unk_id,
    )


# ------------------------------------------------------------------------------------------------
# 1. The original Memefly algorithm
# ------------------------------------------------------------------------------------------------


def full_prefix_softmax_function(
    decode_step: tf.types.experimental.ConcreteFunction, contract: ModelContract
) -> tf.types.experimental.GenericFunction:
    """(padded prefix [L], its length, context [1, ...]) → the full softmax [V] after the prefix's last token.

    Built from the SavedModel's own `decode_step` function, so it runs the trained weights of either
    decoder. Like a recurrent Keras model fed `pad_sequences(prefix, maxlen=L)`, it runs all L padded
    positions on every call, keeps nothing between calls, and returns every word's probability.
    """
    length_limit, vocab_size, state_size = contract.max_length, contract.vocab_size, contract.state_size
    # The state is carried in whatever dtype `decode_step` takes it (float16 for newer GRU exports).
    state_dtype = decode_step.structured_input_signature[1]["state"].dtype

    @tf.function(
        input_signature=[
            tf.TensorSpec([length_limit], tf.int32),
            tf.TensorSpec([], tf.int32),
            tf.TensorSpec([1, *contract.context_shape], tf.float32),
        ]
    )
    def full_prefix_softmax(prefix: tf.Tensor, length: tf.Tensor, context: tf.Tensor) -> tf.Tensor:
        index = tf.zeros([1], tf.int32)
        state = tf.zeros([1, state_size], state_dtype)
        before_last = state
        for position in tf.range(length_limit):
            before_last = tf.where(position == length - 1, state, before_last)
            state = decode_step(
                tokens=prefix[position : position + 1], state=state, context=context, context_index=index, k=1
            )["state"]
        last = decode_step(
            tokens=prefix[length - 1 : length], state=before_last, context=context, context_index=index, k=vocab_size
        )
        # decode_step answers sorted top-k; with k = V that is every word, put back in id order.
        ids, log_probs = last["top_ids"][0], last["top_log_probs"][0]
        return tf.scatter_nd(ids[:, None], tf.exp(log_probs), [vocab_size])

    return full_prefix_softmax


def original_memefly_search(
    settings: SearchSettings, info: ModelInfo, softmax_after: Callable[[np.ndarray, int], np.ndarray]
) -> tuple[BeamSearch, int]:
    """The beam search of mode 1, driven by `softmax_after(padded prefix [L], length)` → softmax [V], which
    is called once per live beam per step. Returns the finished search and the number of those calls."""
    search = _new_search(settings, info, state_size=0)
    start_id, length_limit, k = info.contract.start_id, info.contract.max_length, settings.k
    calls = 0
    while not search.done:
        top_log_probs = np.empty((search.num_live, k), np.float32)
        top_ids = np.empty((search.num_live, k), np.int32)
        for beam, sequence in enumerate(search.sequences):
            prefix = np.zeros(length_limit, np.int32)
            prefix[0] = start_id
            prefix[1 : 1 + len(sequence)] = sequence
            probs = softmax_after(prefix, 1 + len(sequence))
            calls += 1
            # As Memefly did: the client ranks the whole vocabulary itself.
            with np.errstate(divide="ignore"):
                log_probs = np.log(probs)
            best = np.argsort(-log_probs, kind="stable")[:k]
            top_ids[beam], top_log_probs[beam] = best, log_probs[best]
        search.advance(top_log_probs, top_ids, np.zeros((search.num_live, 0), np.float32))
    return search, calls


class OriginalMemeflyMode:
    number = 1
    title = "original Memefly: a call per beam per step, full prefix, full softmax"
    transport = "in-process"

    def __init__(self, backend: EmbeddedBackend, info: ModelInfo, config: SearchConfig) -> None:
        self.backend = backend
        self.info = info
        self.settings = search_settings(config, info)
        self.ledger = CallLedger()
        self._softmax = full_prefix_softmax_function(backend.signatures[DECODE_STEP], info.contract)

    def meme(self, image: bytes) -> MemeOutcome:
        context = self.backend.encode([image])
        self.ledger.record(ENCODE, len(image), context.nbytes, {"image": len(image), "context": context.nbytes})
        context_tensor = tf.constant(context)

        def softmax_after(prefix: np.ndarray, length: int) -> np.ndarray:
            probs = self._softmax(tf.constant(prefix), tf.constant(length, tf.int32), context_tensor).numpy()
            self.ledger.record(
                ORIGINAL_CALL,
                prefix.nbytes + 4 + context.nbytes,
                probs.nbytes,
                {"tokens": prefix.nbytes + 4, "context": context.nbytes, "results": probs.nbytes},
                decode_beams=1,
            )
            return probs

        search, calls = original_memefly_search(self.settings, self.info, softmax_after)
        return MemeOutcome(_best_caption(search, self.info), 1 + calls)

    def traces(self) -> int:
        """How often the full-prefix function was traced: 1 means no retracing during the run."""
        return self._softmax.experimental_get_tracing_count()

    def close(self) -> None:
        pass


class OriginalMemeflyRestMode:
    """Mode 1 deployed as the issue describes the seed: every model call a `:predict` POST in JSON to TF
    Serving's REST API, here to the local stand-in serving the seed replica (`bench.seed_replica`).

    Per meme, one call to `encode_pixels` carrying the image as a JSON float array (the client decodes and
    crops it itself), then one call to `full_prefix_softmax` per live beam per step, answered with the full
    softmax as JSON. Requests use the row format (`{"instances": [...]}`), as Memefly's image-embedding
    client did; the answers are TF Serving's `{"predictions": [...]}`.
    """

    number = 1
    title = "original Memefly over TF Serving's REST JSON API"
    transport = "REST JSON"

    def __init__(
        self,
        rest_url: str,
        model_name: str,
        info: ModelInfo,
        config: SearchConfig,
        image_pixels: Callable[[bytes], np.ndarray],
        timeout_seconds: float,
    ) -> None:
        self.predict_url = f"{rest_url}/v1/models/{model_name}:predict"
        self.info = info
        self.settings = search_settings(config, info)
        self.ledger = CallLedger()
        self.image_pixels = image_pixels
        self.timeout_seconds = timeout_seconds
        self.recording: list[RestExchange] | None = None
        """When a list, every exchange is appended to it."""
        self._thread_clients = threading.local()
        self._clients: list[httpx.Client] = []
        self._clients_lock = threading.Lock()

    def _client(self) -> httpx.Client:
        """This load thread's own keep-alive connection."""
        client = getattr(self._thread_clients, "client", None)
        if client is None:
            client = self._thread_clients.client = httpx.Client(timeout=self.timeout_seconds)
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _predict(
        self, signature: str, instances_json: str, bytes_by_input: dict[str, int], result_category: str
    ) -> np.ndarray:
        """One `:predict` call; returns the answer's `predictions` as float32 and records its body sizes."""
        body = f'{{"signature_name": "{signature}", "instances": {instances_json}}}'.encode()
        response = self._client().post(self.predict_url, content=body, headers={"Content-Type": "application/json"})
        answer = response.content
        if response.status_code != 200:
            raise RuntimeError(f"{signature}: HTTP {response.status_code}: {answer[:300]!r}")
        values = np.asarray(json.loads(answer)["predictions"], np.float32)
        # The one output's value is everything from its first bracket to its last; the rest is framing.
        result_bytes = answer.rindex(b"]") + 1 - answer.index(b"[")
        framing = len(body) - sum(bytes_by_input.values()) + len(answer) - result_bytes
        self.ledger.record(
            signature,
            len(body),
            len(answer),
            {**bytes_by_input, result_category: result_bytes, "framing": framing},
            decode_beams=1 if signature == ORIGINAL_CALL else None,
        )
        if self.recording is not None:
            self.recording.append((signature, body, answer))
        return values

    def meme(self, image: bytes) -> MemeOutcome:
        pixels_json = json.dumps(self.image_pixels(image).tolist())
        context = self._predict(ENCODE_PIXELS, pixels_json, {"image": len(pixels_json)}, "context")
        # Serialized once per meme: the cheapest a client can send the same context with every call.
        context_json = json.dumps(context[0].tolist())

        def softmax_after(prefix: np.ndarray, length: int) -> np.ndarray:
            prefix_json = json.dumps(prefix.tolist())
            instance = f'[{{"prefix": {prefix_json}, "length": {length}, "context": {context_json}}}]'
            bytes_by_input = {"tokens": len(prefix_json) + len(str(length)), "context": len(context_json)}
            return self._predict(ORIGINAL_CALL, instance, bytes_by_input, "results")[0]

        search, calls = original_memefly_search(self.settings, self.info, softmax_after)
        return MemeOutcome(_best_caption(search, self.info), 1 + calls)

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()


# ------------------------------------------------------------------------------------------------
# 2–4. The gateway's step loop
# ------------------------------------------------------------------------------------------------


class _FullVocabularyBeamSearch(BeamSearch):
    """The gateway's beam search, asking every step for the whole vocabulary instead of its top 2·width."""

    vocab_size = 0
    """Set per instance to the model's vocabulary size."""

    @property
    def k(self) -> int:
        return self.vocab_size


class StepLoopMode:
    """The product path: `MemeService.caption`, as the API route calls it (continuous batching)."""

    def __init__(
        self, number: int, title: str, transport: str, backend: ModelBackend, ledger: CallLedger, config: SearchConfig
    ) -> None:
        self.number = number
        self.title = title
        self.transport = transport
        self.ledger = ledger
        self.config = config
        self.session = ModelSession(backend)
        self.info = self.session.captioner().info
        self.settings = search_settings(config, self.info)
        self.options = product_options(config)
        content_filter = ContentFilter.from_settings(
            PRODUCT_SETTINGS.content_filter, PRODUCT_SETTINGS.blocked_words_file
        )
        models = ModelRouter.single(self.info.name, self.session)
        self.memes = MemeService(PRODUCT_SETTINGS, models, TemplateStore(None), None, content_filter, Metrics())

    def meme(self, image: bytes) -> MemeOutcome:
        deadline = time.monotonic() + PRODUCT_SETTINGS.request_timeout_seconds
        result = self.memes.caption(image, self.options, deadline)
        return MemeOutcome(result.captions[0].text if result.captions else "", result.model_calls)

    def close(self) -> None:
        self.session.close()


class FullVocabularyStepMode(StepLoopMode):
    """Mode 2: the same scheduler and search, but `decode_step` returns all V log-probabilities."""

    def meme(self, image: bytes) -> MemeOutcome:
        scheduler = self.session.scheduler
        deadline = time.monotonic() + 600
        context = scheduler.encode(image, deadline)
        search = _new_search(self.settings, self.info, kind=_FullVocabularyBeamSearch)
        search.vocab_size = self.info.contract.vocab_size
        calls = 1 + scheduler.decode(search, context, deadline)
        return MemeOutcome(_best_caption(search, self.info), calls)


# ------------------------------------------------------------------------------------------------
# 5. The in-graph `generate` signature
# ------------------------------------------------------------------------------------------------


def generate_unavailable_reason(model_signatures: set[str]) -> str | None:
    """None when mode 5 can run; else why not."""
    name = getattr(contract_module, "GENERATE", None)
    if name is None:
        return "not available: memefly/contract.py defines no GENERATE signature yet"
    if name not in model_signatures:
        return f"not available: the exported model has no `{name}` signature"
    return None


class GenerateMode:
    """Mode 5: one `generate` Predict call per meme; the whole beam search runs in the serving tier."""

    number = 5
    title = "in-graph generate, one call per meme"
    transport = "gRPC"

    def __init__(self, backend: CountingTfServingBackend, info: ModelInfo, config: SearchConfig) -> None:
        self.backend = backend
        self.ledger = backend.ledger
        self.info = info
        self.settings = search_settings(config, info)

    def meme(self, image: bytes) -> MemeOutcome:
        settings = self.settings
        if self.info.contract.conditioned:  # the product's rule, as mode 3 runs it: one style a caption
            width = product_request_width()
            settings = replace(settings, beam_width=width, n_best=1)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.backend.model_name
        request.model_spec.signature_name = contract_module.GENERATE
        request.model_spec.version.value = self.info.version
        inputs = {
            "image_bytes": strings_to_proto([image]),
            "prefix": strings_to_proto([b""]),
            "beam_width": array_to_proto(np.int32(settings.beam_width)),
            "n_best": array_to_proto(np.int32(self.settings.n_best)),
            "max_length": array_to_proto(np.int32(settings.max_length)),
            "length_penalty": array_to_proto(np.float32(settings.length_penalty)),
            "no_repeat_ngram_size": array_to_proto(np.int32(settings.no_repeat_ngram_size)),
        }
        for name, proto in inputs.items():
            request.inputs[name].CopyFrom(proto)
        response = self.backend.predict_stub.Predict(request, timeout=self.backend.timeout_seconds)
        texts = proto_to_array(response.outputs["text"])
        best = texts[0][0].decode("utf-8") if texts.size else ""
        return MemeOutcome(" / ".join(box for box in best.split(BOX_SEPARATOR_TEXT) if box), 1)

    def close(self) -> None:
        self.backend.close()


# ------------------------------------------------------------------------------------------------
# 6. Offline batched throughput
# ------------------------------------------------------------------------------------------------


class OfflineBatchedMode:
    """All memes of a batch at once, in one thread: batched `encode`, then one `decode_step` per step
    carrying every live beam of every meme. No scheduler, no hand-offs, no deadlines."""

    number = 6
    title = "offline batched, in-process (machine limit)"
    transport = "in-process"

    def __init__(self, backend: ModelBackend, info: ModelInfo, ledger: CallLedger, config: SearchConfig) -> None:
        self.backend = backend
        self.info = info
        self.ledger = ledger
        self.settings = search_settings(config, info)

    def batch(self, images: list[bytes]) -> list[MemeOutcome]:
        contexts = np.concatenate(
            [
                self.backend.encode(images[start : start + OFFLINE_ENCODE_CHUNK])
                for start in range(0, len(images), OFFLINE_ENCODE_CHUNK)
            ]
        )
        searches = [_new_search(self.settings, self.info) for _ in images]
        calls = [1] * len(images)  # each meme's own encode call
        live = list(range(len(images)))
        while live:
            tokens = np.concatenate([searches[i].tokens for i in live])
            state = np.concatenate([searches[i].state for i in live])
            context_index = np.repeat(np.arange(len(live), dtype=np.int32), [searches[i].num_live for i in live])
            step = self.backend.decode_step(tokens, state, contexts[live], context_index, self.settings.k)
            start = 0
            for i in live:
                rows = slice(start, start + searches[i].num_live)
                start = rows.stop
                searches[i].advance(step.top_log_probs[rows], step.top_ids[rows], step.state[rows])
                calls[i] += 1
            live = [i for i in live if not searches[i].done]
        return [MemeOutcome(_best_caption(s, self.info), c) for s, c in zip(searches, calls, strict=True)]

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------
# 7. Text to template (`POST /v1/memes/automatic`)
# ------------------------------------------------------------------------------------------------


class AutomaticMode:
    """A caption someone wrote, scored under every styled template in `score` calls (`TemplatePicker`).

    Each image of the workload stands for one text: the templates' own example captions, in turn. The
    templates' contexts and biases are computed once per model version (the warm-up pays for them)."""

    number = 7
    title = "text to template (automatic), gRPC"
    transport = "gRPC"

    def __init__(self, backend: CountingTfServingBackend, info: ModelInfo, templates: list) -> None:
        from gateway.template_picker import TemplatePicker

        self.backend = backend
        self.ledger = backend.ledger
        self.info = info
        backend.load_metadata()  # the backend learns the contract (conditioned `encode`) from the model
        self.picker = TemplatePicker(backend.pinned(info.version), templates, info.contract.styles)
        self.texts = [BOX_SEPARATOR_TEXT.join(t.example) for t in templates if any(t.example)] or ["memes everywhere"]

    def meme(self, image: bytes) -> MemeOutcome:
        from gateway.template_picker import SCORE_ROWS_PER_CALL

        text = self.texts[zlib.crc32(image) % len(self.texts)]
        best = self.picker.pick(text, top=1)[0]
        # One text scored under every template: the rows go in calls of at most SCORE_ROWS_PER_CALL.
        return MemeOutcome(best.template, -(-len(self.picker.templates) // SCORE_ROWS_PER_CALL))

    def close(self) -> None:
        self.backend.close()
