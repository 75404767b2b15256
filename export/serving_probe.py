"""Loads a SavedModel version as TF Serving does, with whatever TensorFlow runs this, and calls every signature.

`python -m export.serving_probe --saved-model DIR --out FILE (--photo FILE ... | --inputs FILE)`. Run by
`export.serving_check` in a virtual environment holding a target's TensorFlow release; imports nothing of
the project but the contract, so it runs in an environment with TensorFlow alone.

- Ops: every op of the exported graphs, those inside functions included, is looked up in this release's
  op registry, with its attributes (a NodeDef attribute the release's OpDef lacks fails to load too).
  Python-function ops are refused: TF Serving has no Python.
- Load: `tf.compat.v1.saved_model.loader.load` into a session, TF Serving's way (restore op, init op,
  then signatures by their SignatureDefs' tensor names). `tf.saved_model.load` restores through the object
  graph instead, and hides variables that only the object graph restores.
- Calls: with `--photo`, each signature is called on inputs built here from the photos, later calls
  reading earlier answers (decode_step steps from encode's context; tokenize and score take generate's
  captions); with `--inputs`, on exactly the inputs of an earlier result. Inputs and answers are written
  as base64 `TensorProto`s, which every release reads.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections import Counter
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

from memefly.contract import (
    DECODE_STEP,
    DECODE_STEP_REST,
    ENCODE,
    EXPLAIN,
    GENERATE,
    METADATA,
    METADATA_REST,
    SCORE,
    TOKENIZE,
    ModelContract,
)

SERVE_TAG = "serve"
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})
"""Registered in every pip release, but they call back into Python, which tensorflow_model_server has not."""
TOPIC = "monday morning meetings"
Call = tuple[str, str, dict[str, np.ndarray]]
"""(call name, signature name, inputs)."""


def encode_tensor(value: np.ndarray) -> str:
    return base64.b64encode(tf.make_tensor_proto(value).SerializeToString()).decode()


def decode_tensor(text: str) -> np.ndarray:
    proto = tf.make_tensor_proto(0)
    proto.ParseFromString(base64.b64decode(text))
    return tf.make_ndarray(proto)


def op_report(saved_model_dir: Path) -> dict[str, Any]:
    """Every op of every meta graph and graph function, and those this release does not register."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((saved_model_dir / "saved_model.pb").read_bytes())
    uses: Counter[str] = Counter()
    unknown_attrs: set[str] = set()
    functions = 0
    writers = set()
    for meta_graph in saved_model.meta_graphs:
        writers.add(meta_graph.meta_info_def.tensorflow_version)
        library = meta_graph.graph_def.library
        function_names = {function.signature.name for function in library.function}
        functions += len(function_names)
        nodes = [*meta_graph.graph_def.node, *(node for function in library.function for node in function.node_def)]
        for node in nodes:
            if node.op in function_names:
                continue  # a call of a function of the library, itself walked
            uses[node.op] += 1
            op_def = op_def_registry.get(node.op)
            if op_def is None:
                continue
            known = {attr.name for attr in op_def.attr}
            unknown_attrs.update(
                f"{node.op}.{name}" for name in node.attr if not name.startswith("_") and name not in known
            )
    return {
        "written_by": sorted(writers),
        "ops": dict(sorted(uses.items())),
        "functions": functions,
        "unregistered": sorted(op for op in uses if op_def_registry.get(op) is None),
        "unknown_attrs": sorted(unknown_attrs),
        "python_ops": sorted(PYTHON_OPS & set(uses)),
    }


class SessionModel:
    """A SavedModel loaded into a TF1 session from its MetaGraphDef, as tensorflow_model_server loads it."""

    def __init__(self, saved_model_dir: Path) -> None:
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        meta_graph = tf.compat.v1.saved_model.loader.load(self.session, [SERVE_TAG], str(saved_model_dir))
        self.signatures = {
            name: signature
            for name, signature in meta_graph.signature_def.items()
            if not name.startswith("__")  # __saved_model_init_op
        }

    def __call__(self, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        signature = self.signatures[name]
        if set(inputs) != set(signature.inputs):
            raise ValueError(f"{name}: inputs {sorted(inputs)} are not the signature's {sorted(signature.inputs)}")
        feed = {signature.inputs[key].name: value for key, value in inputs.items()}
        fetches = {key: tensor.name for key, tensor in signature.outputs.items()}
        return self.session.run(fetches, feed)


def _strings(values: list[bytes] | list[str]) -> np.ndarray:
    return np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=object)


def planned_calls(photos: list[bytes]) -> Generator[Call, dict[str, np.ndarray] | None, None]:
    """(call name, signature, inputs from earlier answers) in order: a generator fed each call's answers."""
    metadata = yield METADATA, METADATA, {}
    contract = ModelContract.from_json(np.asarray(metadata["contract"]).item())
    yield METADATA_REST, METADATA_REST, {"unused": np.int32(0)}

    images = _strings(photos)
    encode_inputs: dict[str, np.ndarray] = {"image_bytes": images}
    if contract.conditioned:
        # Per image: its own topic and best style, then a given topic with the second-best style.
        style = contract.styles[0] if contract.styles else ""
        rows = len(photos) * 2
        encode_inputs |= {
            "image_index": np.repeat(np.arange(len(photos), dtype=np.int32), 2),
            "topic": _strings(["", TOPIC] * len(photos)),
            "style": _strings([style if i == rows - 1 else "" for i in range(rows)]),
            "style_rank": np.tile(np.array([0, 1], np.int32), len(photos)),
        }
    encoded = yield ENCODE, ENCODE, encode_inputs
    context = encoded["context"]
    beams = 3
    rows = context.shape[0]

    def first_step(state_dtype: str) -> dict[str, np.ndarray]:
        return {
            "tokens": np.full(rows * beams, contract.start_id, np.int32),
            "state": np.zeros((rows * beams, contract.state_size), state_dtype),
            "context": context,
            "context_index": np.repeat(np.arange(rows, dtype=np.int32), beams),
            "k": np.int32(2 * beams),
        }

    step = yield DECODE_STEP, DECODE_STEP, first_step(contract.state_dtype)
    # The second step continues each beam with a different one of the first step's candidates.
    choice = np.tile(np.arange(beams), rows)
    tokens = step["top_ids"][np.arange(rows * beams), choice].astype(np.int32)
    yield f"{DECODE_STEP}.2", DECODE_STEP, first_step(contract.state_dtype) | {"tokens": tokens, "state": step["state"]}
    if contract.decode_step_rest.name == DECODE_STEP_REST:
        yield DECODE_STEP_REST, DECODE_STEP_REST, first_step("float32")

    n_best = min(3, len(contract.styles)) if contract.conditioned and contract.styles else 3
    generated = yield (
        GENERATE,
        GENERATE,
        {
            "image_bytes": images,
            "prefix": _strings([""] * len(photos)),
            "beam_width": np.int32(4),
            "n_best": np.int32(n_best),
            "max_length": np.int32(contract.max_length),
            "length_penalty": np.float32(1.0),
            "no_repeat_ngram_size": np.int32(3),
        },
    )
    captions, owners = [], []
    for image, texts in enumerate(generated["text"]):
        for text in texts:
            if text:
                captions.append(text)
                owners.append(image)
    if not captions:
        raise RuntimeError("generate answered no caption for any photo")
    yield TOKENIZE, TOKENIZE, {"text": _strings(captions)}
    # Each caption scored on its image's context (the image's first conditioning row).
    first_row = np.searchsorted(encode_inputs.get("image_index", np.arange(len(photos))), owners)
    yield SCORE, SCORE, {"context": context[first_row], "text": _strings(captions)}
    if contract.explain is not None:
        yield EXPLAIN, EXPLAIN, {"context": context[first_row], "text": _strings(captions)}


def probe(saved_model_dir: Path, photos: list[bytes] | None, replay: dict[str, Any] | None) -> dict[str, Any]:
    result: dict[str, Any] = {"tensorflow": tf.__version__, "ops": op_report(saved_model_dir), "calls": {}}
    started = time.perf_counter()
    try:
        model = SessionModel(saved_model_dir)
    except Exception as error:  # noqa: BLE001 - any failure to load is the answer
        result["load_error"] = f"{type(error).__name__}: {error}"
        return result
    result["load_seconds"] = round(time.perf_counter() - started, 3)
    result["signatures"] = sorted(model.signatures)

    def call(name: str, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        began = time.perf_counter()
        outputs = model(signature, inputs)
        result["calls"][name] = {
            "signature": signature,
            "seconds": round(time.perf_counter() - began, 3),
            "inputs": {key: encode_tensor(np.asarray(value)) for key, value in inputs.items()},
            "outputs": {key: encode_tensor(np.asarray(value)) for key, value in outputs.items()},
        }
        return outputs

    try:
        if replay is not None:
            for name, entry in replay["calls"].items():
                call(name, entry["signature"], {key: decode_tensor(value) for key, value in entry["inputs"].items()})
        else:
            plan = planned_calls(photos or [])
            answer = None
            while True:
                try:
                    name, signature, inputs = plan.send(answer)
                except StopIteration:
                    break
                answer = call(name, signature, inputs)
    except Exception as error:  # noqa: BLE001 - the failing call and its message are the answer
        result["call_error"] = f"{type(error).__name__}: {error}"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saved-model", type=Path, required=True, help="a version directory")
    parser.add_argument("--out", type=Path, required=True, help="where to write the result (JSON)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--photo", type=Path, action="append", help="a photo (JPEG or PNG) to caption; repeatable")
    source.add_argument("--inputs", type=Path, help="an earlier result whose calls to repeat with their inputs")
    args = parser.parse_args(argv)
    photos = [path.read_bytes() for path in args.photo] if args.photo else None
    replay = json.loads(args.inputs.read_text()) if args.inputs else None
    result = probe(args.saved_model, photos, replay)
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
