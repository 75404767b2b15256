"""TF Serving's BatchingParameters (``--batching_parameters_file``, or ``batching_params.pbtxt`` in a
version directory with ``--enable_per_model_batching_parameters``), with the defaults and checks of
tensorflow_model_server (servables/tensorflow/bundle_factory_util.cc and the shared batch scheduler).

The proto (servables/tensorflow/session_bundle_config.proto) is not shipped by tensorflow-serving-api,
so its schema is declared here, to parse the same text files with protobuf's own text parser.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory, text_format, wrappers_pb2

from serving.errors import InvalidArgumentError, ServingError, UnimplementedError

PER_MODEL_PARAMETERS_FILE = "batching_params.pbtxt"  # --enable_per_model_batching_parameters

log = logging.getLogger(__name__)


def _batching_parameters_class() -> type[message.Message]:
    fields = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    batching = file.message_type.add(name="BatchingParameters")
    wrapped = [
        ("max_batch_size", 1, "Int64Value"),
        ("batch_timeout_micros", 2, "Int64Value"),
        ("max_enqueued_batches", 3, "Int64Value"),
        ("num_batch_threads", 4, "Int64Value"),
        ("thread_pool_name", 5, "StringValue"),
        ("enable_large_batch_splitting", 8, "BoolValue"),
        ("max_execution_batch_size", 9, "Int64Value"),
    ]
    for name, number, wrapper in wrapped:
        batching.field.add(
            name=name,
            number=number,
            label=fields.LABEL_OPTIONAL,
            type=fields.TYPE_MESSAGE,
            type_name=f".google.protobuf.{wrapper}",
        )
    batching.field.add(name="allowed_batch_sizes", number=6, label=fields.LABEL_REPEATED, type=fields.TYPE_INT64)
    batching.field.add(name="pad_variable_length_inputs", number=7, label=fields.LABEL_OPTIONAL, type=fields.TYPE_BOOL)
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


BatchingParameters = _batching_parameters_class()


@dataclass(frozen=True)
class BatchingOptions:
    """BatchingParameters with the defaults TF Serving fills in for fields left out."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    @classmethod
    def from_text(cls, text: str, source: str = "<string>") -> BatchingOptions:
        params = BatchingParameters()
        try:
            text_format.Parse(text, params)
        except text_format.ParseError as exc:
            log.error("Parsing %s: %s", source, exc)
            raise InvalidArgumentError(f"Invalid protobuf file: '{source}'") from exc
        if params.HasField("enable_large_batch_splitting") and params.enable_large_batch_splitting.value:
            raise UnimplementedError("enable_large_batch_splitting is not implemented by this local stand-in")
        defaults = cls()
        options = cls(
            max_batch_size=_value(params, "max_batch_size", defaults.max_batch_size),
            batch_timeout_micros=_value(params, "batch_timeout_micros", defaults.batch_timeout_micros),
            max_enqueued_batches=_value(params, "max_enqueued_batches", defaults.max_enqueued_batches),
            num_batch_threads=_value(params, "num_batch_threads", defaults.num_batch_threads),
            allowed_batch_sizes=tuple(params.allowed_batch_sizes),
            pad_variable_length_inputs=params.pad_variable_length_inputs,
        )
        options.validate()
        return options

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> BatchingOptions:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ServingError(f"{path}; {exc.strerror}", "NOT_FOUND") from exc
        return cls.from_text(text, str(path))

    def validate(self) -> None:
        # Messages of SharedBatchScheduler::Create/AddQueue and WrapSessionForBatching.
        if self.num_batch_threads < 1:
            raise InvalidArgumentError(f"num_batch_threads must be positive; was {self.num_batch_threads}")
        if self.max_batch_size < 1:
            raise InvalidArgumentError(f"max_batch_size must be positive; was {self.max_batch_size}")
        if self.batch_timeout_micros < 0:
            raise InvalidArgumentError(f"batch_timeout_micros must be non-negative; was {self.batch_timeout_micros}")
        if self.allowed_batch_sizes and self.allowed_batch_sizes[-1] != self.max_batch_size:
            raise InvalidArgumentError(
                "Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
                f"{self.allowed_batch_sizes[-1]}; expected {self.max_batch_size}"
            )


def _value(params: message.Message, name: str, default: int) -> int:
    return getattr(params, name).value if params.HasField(name) else default
