"""Counting model calls and the bytes they carry, by where the bytes go.

Over gRPC the bytes are the real serialized `PredictRequest` and `PredictResponse` messages, read by a
client interceptor (`ByteSize()` of the very messages sent and received; gRPC's 5-byte message prefix and
HTTP/2 frames and headers are not included). In-process there is no wire: the bytes are the raw tensor
bytes (`nbytes`) crossing the call, labelled as such in the report.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc

from gateway.backends.base import (
    Condition,
    DecodeStepResult,
    Encoding,
    ModelBackend,
    ModelInfo,
    default_conditions,
)
from gateway.backends.tfserving import TfServingBackend
from gateway.tensors import proto_to_array
from memefly.contract import DECODE_STEP, ENCODE
from serving.tensors import to_tensor_proto

CATEGORIES = ("image", "context", "state", "tokens", "results", "framing")
"""Where the bytes go: `tokens` holds tokens, context_index and k; `results` the top-k (or full softmax,
or generated captions); `framing` is the message around the tensors (model spec, map keys, shapes)."""

_TENSOR_CATEGORY = {
    "image_bytes": "image",
    "context": "context",
    "state": "state",
    "tokens": "tokens",
    "context_index": "tokens",
    "k": "tokens",
    "top_log_probs": "results",
    "top_ids": "results",
}


def tensor_category(name: str, is_output: bool) -> str:
    """The category of a named tensor; unknown outputs (metadata, `generate`'s) are results."""
    return _TENSOR_CATEGORY.get(name, "results" if is_output else "tokens")


@dataclass
class LedgerSnapshot:
    calls: Counter = field(default_factory=Counter)
    """Model calls by signature."""
    bytes_by_category: Counter = field(default_factory=Counter)
    request_bytes: int = 0
    response_bytes: int = 0
    decode_calls: int = 0
    decode_beams: int = 0
    accounting_seconds: float = 0.0
    """Time spent measuring bytes (ByteSize), inside the measured window."""

    def minus(self, earlier: LedgerSnapshot) -> LedgerSnapshot:
        return LedgerSnapshot(
            self.calls - earlier.calls,
            self.bytes_by_category - earlier.bytes_by_category,
            self.request_bytes - earlier.request_bytes,
            self.response_bytes - earlier.response_bytes,
            self.decode_calls - earlier.decode_calls,
            self.decode_beams - earlier.decode_beams,
            self.accounting_seconds - earlier.accounting_seconds,
        )

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def total_bytes(self) -> int:
        return self.request_bytes + self.response_bytes


class CallLedger:
    """Thread-safe running totals of one mode's model calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals = LedgerSnapshot()
        self.recording: list[tuple[predict_pb2.PredictRequest, predict_pb2.PredictResponse]] | None = None
        """When a list, every gRPC exchange is appended to it (for the wire-format proposals)."""

    def snapshot(self) -> LedgerSnapshot:
        with self._lock:
            t = self._totals
            return LedgerSnapshot(
                Counter(t.calls),
                Counter(t.bytes_by_category),
                t.request_bytes,
                t.response_bytes,
                t.decode_calls,
                t.decode_beams,
                t.accounting_seconds,
            )

    def record(
        self,
        signature: str,
        request_bytes: int,
        response_bytes: int,
        by_category: dict[str, int],
        decode_beams: int | None = None,
        accounting_seconds: float = 0.0,
    ) -> None:
        with self._lock:
            t = self._totals
            t.calls[signature] += 1
            t.request_bytes += request_bytes
            t.response_bytes += response_bytes
            t.bytes_by_category.update(by_category)
            if decode_beams is not None:
                t.decode_calls += 1
                t.decode_beams += decode_beams
            t.accounting_seconds += accounting_seconds


def message_breakdown(
    request: predict_pb2.PredictRequest, response: predict_pb2.PredictResponse | None
) -> tuple[int, int, dict[str, int]]:
    """(request bytes, response bytes, bytes by category) of one Predict exchange, as serialized."""
    by_category: Counter = Counter()
    request_bytes = request.ByteSize()
    tensors = 0
    for name, proto in request.inputs.items():
        size = proto.ByteSize()
        by_category[tensor_category(name, is_output=False)] += size
        tensors += size
    response_bytes = 0
    if response is not None:
        response_bytes = response.ByteSize()
        for name, proto in response.outputs.items():
            size = proto.ByteSize()
            by_category[tensor_category(name, is_output=True)] += size
            tensors += size
    by_category["framing"] += request_bytes + response_bytes - tensors
    return request_bytes, response_bytes, dict(by_category)


def _leading_dim(proto: tensor_pb2.TensorProto) -> int:
    return proto.tensor_shape.dim[0].size if proto.tensor_shape.dim else 1


class WireInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Counts every Predict call and the serialized size of its request and response."""

    def __init__(self, ledger: CallLedger) -> None:
        self.ledger = ledger

    def intercept_unary_unary(self, continuation, client_call_details, request):
        outcome = continuation(client_call_details, request)
        try:
            response = outcome.result()
        except grpc.RpcError:
            response = None
        started = time.perf_counter()
        if not isinstance(request, predict_pb2.PredictRequest):
            # ModelService calls (the session's version check): counted, all framing.
            sizes = request.ByteSize(), 0 if response is None else response.ByteSize()
            method = client_call_details.method
            name = (method.decode() if isinstance(method, bytes) else method).rsplit("/", 1)[-1]
            self.ledger.record(name, *sizes, {"framing": sum(sizes)}, None, time.perf_counter() - started)
            return outcome
        request_bytes, response_bytes, by_category = message_breakdown(request, response)
        signature = request.model_spec.signature_name
        beams = _leading_dim(request.inputs["tokens"]) if signature == DECODE_STEP else None
        self.ledger.record(signature, request_bytes, response_bytes, by_category, beams, time.perf_counter() - started)
        if self.ledger.recording is not None and response is not None:
            self.ledger.recording.append((request, response))
        return outcome


class CountingTfServingBackend(TfServingBackend):
    """The gateway's gRPC backend, unchanged, with the wire interceptor on its channel."""

    def __init__(self, target: str, model_name: str, timeout_seconds: float, ledger: CallLedger) -> None:
        super().__init__(target, model_name, timeout_seconds)
        self.ledger = ledger
        # The backend owns its channel and stubs; wrapping them is the one place to observe its calls.
        intercepted = grpc.intercept_channel(self._channel, WireInterceptor(ledger))
        self._stub = self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(intercepted)
        self._model_service = model_service_pb2_grpc.ModelServiceStub(intercepted)


def raw_bytes(arrays: Iterable[np.ndarray]) -> int:
    return int(sum(np.asarray(a).nbytes for a in arrays))


class CountingInProcessBackend:
    """Any backend, counting its calls and the raw tensor bytes crossing them (no wire in-process)."""

    def __init__(self, backend: ModelBackend, ledger: CallLedger) -> None:
        self.backend = backend
        self.ledger = ledger
        self.name = backend.name

    def load_metadata(self) -> ModelInfo:
        return self.backend.load_metadata()

    def available_version(self) -> int:
        return self.backend.available_version()

    def pinned(self, version: int) -> CountingInProcessBackend:
        return CountingInProcessBackend(self.backend.pinned(version), self.ledger)

    def tokenize(self, text: str) -> tuple[int, ...]:
        return self.backend.tokenize(text)

    def encode(self, image_bytes: list[bytes]) -> np.ndarray:
        return self.encode_rows(image_bytes, default_conditions(len(image_bytes))).contexts

    def encode_rows(self, image_bytes: list[bytes], conditions: list[Condition]) -> Encoding:
        encoding = self.backend.encode_rows(image_bytes, conditions)
        image = sum(len(b) for b in image_bytes)
        context = encoding.contexts.nbytes
        self.ledger.record(ENCODE, image, context, {"image": image, "context": context})
        return encoding

    def decode_step(
        self, tokens: np.ndarray, state: np.ndarray, context: np.ndarray, context_index: np.ndarray, k: int
    ) -> DecodeStepResult:
        step = self.backend.decode_step(tokens, state, context, context_index, k)
        token_bytes = raw_bytes([tokens, context_index, np.int32(k)])
        results = raw_bytes([step.top_log_probs, step.top_ids])
        by_category = {
            "tokens": token_bytes,
            "context": context.nbytes,
            "state": state.nbytes + step.state.nbytes,
            "results": results,
        }
        request = token_bytes + context.nbytes + state.nbytes
        self.ledger.record(DECODE_STEP, request, results + step.state.nbytes, by_category, len(tokens))
        return step

    def close(self) -> None:
        self.backend.close()


# ------------------------------------------------------------------------------------------------
# What a contract change would save, measured by re-serializing recorded decode_step exchanges
# ------------------------------------------------------------------------------------------------


def _exchange_bytes(request: predict_pb2.PredictRequest, response: predict_pb2.PredictResponse) -> int:
    return request.ByteSize() + response.ByteSize()


def wire_proposals(
    exchanges: list[tuple[predict_pb2.PredictRequest, predict_pb2.PredictResponse]], memes: int
) -> dict[str, object]:
    """Bytes per meme of the recorded exchanges as sent, and re-serialized under each proposed contract.

    Every variant rebuilds the real messages (same values) and measures `ByteSize()`; nothing is estimated.
    """
    variants = {
        "as_sent": lambda req, resp: (req, resp),
        "float32_state": lambda req, resp: _with(req, resp, state_dtype=np.float32),
        "float16_state_tensor_content": lambda req, resp: _with(req, resp, state_dtype=np.float16),
        "float16_state_typed_half_val": lambda req, resp: _with(req, resp, state_dtype=np.float16, content=False),
        "context_sent_once": lambda req, resp: _with(req, resp, drop_context=True),
        "state_half_width": lambda req, resp: _with(req, resp, narrow=True),
        "float16_state_and_context_once": lambda req, resp: _with(req, resp, state_dtype=np.float16, drop_context=True),
        "float16_state_context_once_half_width": lambda req, resp: _with(
            req, resp, state_dtype=np.float16, drop_context=True, narrow=True
        ),
    }
    per_meme: dict[str, float] = {}
    for name, variant in variants.items():
        total = 0
        for request, response in exchanges:
            if request.model_spec.signature_name == DECODE_STEP:
                request, response = variant(request, response)
            total += _exchange_bytes(request, response)
        per_meme[name] = total / max(memes, 1)
    baseline = per_meme["as_sent"]
    return {
        "memes": memes,
        "bytes_per_meme": per_meme,
        "saving_fraction": {name: 1 - value / baseline if baseline else 0.0 for name, value in per_meme.items()},
    }


def _with(
    request: predict_pb2.PredictRequest,
    response: predict_pb2.PredictResponse,
    state_dtype: type | None = None,
    content: bool = True,
    drop_context: bool = False,
    narrow: bool = False,
) -> tuple[predict_pb2.PredictRequest, predict_pb2.PredictResponse]:
    """The exchange re-serialized: the state in `state_dtype` (None: as sent) and cut to half its width if
    `narrow`, answered packed or, without `content`, in typed fields; the context left out if `drop_context`."""
    new_request, new_response = predict_pb2.PredictRequest(), predict_pb2.PredictResponse()
    new_request.CopyFrom(request)
    new_response.CopyFrom(response)
    for tensors, is_response in ((new_request.inputs, False), (new_response.outputs, True)):
        if "state" not in tensors:
            continue
        sent = tensors["state"]
        values = proto_to_array(sent)
        if narrow:
            values = values[:, : max(1, values.shape[1] // 2)]
        dtype = np.dtype(state_dtype) if state_dtype is not None else values.dtype
        # The gateway packs its requests; TF Serving answers in typed fields unless told otherwise.
        as_content = (content or not is_response) if state_dtype is not None else bool(sent.tensor_content)
        tensors["state"].CopyFrom(to_tensor_proto(values.astype(dtype, copy=False), as_content))
    if drop_context:
        del new_request.inputs["context"]
    return new_request, new_response
