"""The seed's deployment rebuilt on the product's weights: a bench-only SavedModel for TF Serving's REST API.

The issue describes the seed's design as "a JSON array of image floats to the encoder, then a full softmax
per beam per step", both over TF Serving's REST API. (Memefly's public image-embedding client prepared the
image itself, decoded, resized and normalised, and posted `{"instances": img.tolist()}`.) The replica
written here offers those two calls, cut and wrapped from the product SavedModel's own graphs, so it runs
the same trained weights:

- `encode_pixels`: pixels [N, H, W, 3] → `context`. The product's `encode` graph from the point where the
  decoded images enter the backbone: the output of the `map_fn` that decodes, resizes and crops each image
  (for EfficientNet-Lite0 and the tiny CNN that map also normalises; other backbones normalise in-graph
  after it). `image_pixels_function` is the other half of that cut: what the client runs on a JPEG.
- `full_prefix_softmax`: padded prefix [1, L], its length [1], context [1, ...] → `softmax` [1, V], the
  same function the in-process mode 1 runs (`bench.modes.full_prefix_softmax_function`).

It is written to a temporary directory for one run and never into the repository.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from bench.modes import ENCODE_PIXELS, ORIGINAL_CALL, RestExchange, full_prefix_softmax_function
from memefly.contract import DECODE_STEP, ModelContract

SEED_MODEL_NAME = "memefly_seed"
SEED_VERSION = 1
SIGNATURE_INPUTS: dict[str, dict[str, tf.DType]] = {
    ENCODE_PIXELS: {"pixels": tf.float32},
    ORIGINAL_CALL: {"prefix": tf.int32, "length": tf.int32, "context": tf.float32},
}
SIGNATURE_OUTPUT = {ENCODE_PIXELS: "context", ORIGINAL_CALL: "softmax"}
"""Each replica signature's one output (the REST API's row format then answers with its bare value)."""


@dataclass(frozen=True)
class EncodeGraphCut:
    """The product's `encode` graph, and the tensor where decoded images enter the backbone."""

    graph_def: graph_pb2.GraphDef
    image_bytes: str
    """The graph's JPEG input tensor."""
    pixels: str
    """The cut: the `map_fn` output, [N, H, W, 3] float32."""
    pixels_shape: tf.TensorShape
    context: str
    """The graph's output tensor."""
    captures: dict[str, tf.Tensor]
    """Placeholder node name → the variable handle the product's function captures there."""
    row_inputs: dict[str, str] = field(default_factory=dict)
    """A conditioned `encode`'s row inputs (name → tensor): the seed had none, so the replica feeds one
    row an image with the model's own topic and style."""


def cut_encode_graph(product: tf.Module) -> EncodeGraphCut:
    """Finds the cut in the loaded product SavedModel's `encode` function."""
    functions = getattr(getattr(product, "encode", None), "concrete_functions", ())
    if len(functions) != 1:
        raise ValueError(f"the product SavedModel has {len(functions)} `encode` functions; the seed replica needs one")
    [encode] = functions
    graph = encode.graph
    # map_fn collects its per-image results with TensorListStack; the backbone reads that stack.
    stacks = [op for op in graph.get_operations() if op.type == "TensorListStack"]
    shape = stacks[0].outputs[0].shape if len(stacks) == 1 else None
    if shape is None or shape.rank != 4 or shape[-1] != 3:
        raise ValueError(
            "cannot find where decoded images enter the backbone in the product's `encode` graph "
            f"(TensorListStack ops: {[(op.name, str(op.outputs[0].shape)) for op in stacks]})"
        )
    inputs = {spec.name: tensor.name for spec, tensor in zip(_input_specs(encode), encode.inputs, strict=False)}
    outputs = encode.structured_outputs
    # `outputs` flattens in sorted-key order, as `encode.outputs` lists the graph's tensors.
    context = encode.outputs[sorted(outputs).index("context") if isinstance(outputs, dict) else 0].name
    return EncodeGraphCut(
        graph_def=graph.as_graph_def(),
        image_bytes=inputs.get("image_bytes", encode.inputs[0].name),
        pixels=stacks[0].outputs[0].name,
        pixels_shape=shape,
        context=context,
        row_inputs={name: tensor for name, tensor in inputs.items() if name != "image_bytes"},
        captures={
            internal.op.name: external
            for external, internal in zip(encode.captured_inputs, graph.internal_captures, strict=True)
        },
    )


def _input_specs(function) -> list[tf.TensorSpec]:
    args, kwargs = function.structured_input_signature
    return [*args, *kwargs.values()]


def _default_rows(cut: EncodeGraphCut, value: tf.Tensor) -> dict[str, tf.Tensor]:
    """One row an image with the model's own topic and style, for a conditioned `encode`."""
    images = tf.shape(value)[0]
    defaults = {
        "image_index": tf.range(images),
        "topic": tf.fill([images], ""),
        "style": tf.fill([images], ""),
        "style_rank": tf.zeros([images], tf.int32),
    }
    return {tensor: defaults[name] for name, tensor in cut.row_inputs.items()}


def _node_name(tensor_or_input: str) -> str:
    return tensor_or_input.lstrip("^").split(":")[0]


def _subgraph(cut: EncodeGraphCut, fetch: str, feed: str) -> graph_pb2.GraphDef:
    """The nodes `fetch` depends on, stopping at `feed`, which becomes a float32 placeholder if it is not one."""
    nodes = {node.name: node for node in cut.graph_def.node}
    feed_node = _node_name(feed)
    kept: set[str] = set()
    pending = [_node_name(fetch)]
    while pending:
        name = pending.pop()
        if name in kept:
            continue
        kept.add(name)
        if name != feed_node:
            pending.extend(_node_name(item) for item in nodes[name].input)
    subgraph = graph_pb2.GraphDef()
    subgraph.versions.CopyFrom(cut.graph_def.versions)
    subgraph.library.CopyFrom(cut.graph_def.library)
    for node in cut.graph_def.node:
        if node.name not in kept:
            continue
        if node.name == feed_node and node.op != "Placeholder":
            placeholder = node_def_pb2.NodeDef(name=node.name, op="Placeholder")
            placeholder.attr["dtype"].type = tf.float32.as_datatype_enum
            placeholder.attr["shape"].shape.CopyFrom(cut.pixels_shape.as_proto())
            subgraph.node.append(placeholder)
        else:
            subgraph.node.append(node)
    return subgraph


def _graph_slice(cut: EncodeGraphCut, feed: str, fetch: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """`feed` → `fetch` of the cut graph, to be called while tracing a `tf.function`."""
    subgraph = _subgraph(cut, fetch, feed)
    kept = {node.name for node in subgraph.node}
    captures = {name: handle for name, handle in cut.captures.items() if name in kept}

    def run(value: tf.Tensor) -> tf.Tensor:
        graph = tf.compat.v1.get_default_graph()
        # The variables stay the loaded product's: the tracing function captures their handles.
        input_map = {feed: value, **{f"{name}:0": graph.capture(handle) for name, handle in captures.items()}}
        rows = {tensor: row for tensor, row in _default_rows(cut, value).items() if _node_name(tensor) in kept}
        input_map |= rows
        [output] = tf.graph_util.import_graph_def(subgraph, input_map=input_map, return_elements=[fetch], name="cut")
        return output

    return run


def image_pixels_function(cut: EncodeGraphCut) -> Callable[[bytes], np.ndarray]:
    """The client's half of the cut encoder: JPEG bytes → pixels [1, H, W, 3], as `encode_pixels` takes them."""
    to_pixels = tf.function(
        _graph_slice(cut, cut.image_bytes, cut.pixels), input_signature=[tf.TensorSpec([None], tf.string)]
    )

    def image_pixels(image: bytes) -> np.ndarray:
        return to_pixels(tf.constant([image])).numpy()

    return image_pixels


class SeedReplica(tf.Module):
    """The seed's two model calls over the loaded product SavedModel, with its variables."""

    def __init__(self, product: tf.Module, cut: EncodeGraphCut, contract: ModelContract) -> None:
        super().__init__()
        self.product = product
        backbone = _graph_slice(cut, cut.pixels, cut.context)
        softmax = full_prefix_softmax_function(product.signatures[DECODE_STEP], contract)

        def encode_pixels(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"context": backbone(pixels)}

        def full_prefix_softmax(prefix: tf.Tensor, length: tf.Tensor, context: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"softmax": softmax(prefix[0], length[0], context)[None]}

        self.encode_pixels = tf.function(
            encode_pixels, input_signature=[tf.TensorSpec(cut.pixels_shape, tf.float32, name="pixels")]
        )
        self.full_prefix_softmax = tf.function(
            full_prefix_softmax,
            input_signature=[
                tf.TensorSpec([1, contract.max_length], tf.int32, name="prefix"),
                tf.TensorSpec([1], tf.int32, name="length"),
                tf.TensorSpec([1, *contract.context_shape], tf.float32, name="context"),
            ],
        )


def write_seed_replica(product: tf.Module, cut: EncodeGraphCut, contract: ModelContract, base_path: Path) -> Path:
    """Writes the replica as `<base_path>/memefly_seed/1/` (TF Serving's layout); returns that directory."""
    replica = SeedReplica(product, cut, contract)
    target = base_path / SEED_MODEL_NAME / str(SEED_VERSION)
    target.parent.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(
        replica,
        str(target),
        signatures={ENCODE_PIXELS: replica.encode_pixels, ORIGINAL_CALL: replica.full_prefix_softmax},
    )
    return target


def stand_in_json_cpu_seconds(exchanges: list[RestExchange]) -> float:
    """CPU seconds the local stand-in's Python JSON code takes on these exchanges: parsing each request
    body and writing each response body again, as its REST handler does (tensorflow_model_server does
    both in C++)."""
    from serving.json_tensor import ROW, parse_predict_request, predict_response

    total = 0.0
    for signature, request_body, response_body in exchanges:
        infos = {
            name: meta_graph_pb2.TensorInfo(dtype=dtype.as_datatype_enum)
            for name, dtype in SIGNATURE_INPUTS[signature].items()
        }
        outputs = {SIGNATURE_OUTPUT[signature]: np.asarray(json.loads(response_body)["predictions"], np.float32)}
        started = time.thread_time()
        parse_predict_request(request_body, lambda _signature, infos=infos: infos)
        predict_response(outputs, ROW)
        total += time.thread_time() - started
    return total
