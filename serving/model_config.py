"""Which models to serve: TF Serving's ModelServerConfig, from --model_config_file or from flags.

Validation and messages follow tensorflow_model_server (model_servers/server_core.cc): names must
be unique, the platform must be "tensorflow", and base paths must be absolute, because the server
never sets a root directory for relative ones (``model_config_list_root_dir``). Version policies
follow FileSystemStoragePathSource (sources/storage_path/file_system_storage_path_source.cc).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.errors import FailedPreconditionError, InvalidArgumentError, ServingError

TENSORFLOW_PLATFORM = "tensorflow"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionPolicy:
    """``model_version_policy``: ``latest`` (the default, one version), ``all`` or ``specific``."""

    kind: str = "latest"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    def select(self, model_name: str, on_disk: Iterable[int]) -> set[int]:
        """The versions to serve among those found on disk."""
        found = set(on_disk)
        if self.kind == "all":
            return found
        if self.kind == "specific":
            if not self.versions:
                log.warning("No specific versions requested for servable %s.", model_name)
            for missing in sorted(self.versions - found):
                log.warning(
                    "Version %d of servable %s, which was requested to be served as a 'specific' version "
                    "in the servable's version policy, was not found in the file system",
                    missing,
                    model_name,
                )
            return found & self.versions
        return set(sorted(found)[-max(self.num_versions, 1) :])


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: Path
    policy: VersionPolicy = VersionPolicy()
    labels: Mapping[str, int] = field(default_factory=dict)


def single_model_config(name: str, base_path: str | os.PathLike[str]) -> list[ModelConfig]:
    """What ``--model_name``/``--model_base_path`` stand for (BuildSingleModelConfig in server.cc)."""
    if not os.path.isabs(base_path):
        # tensorflow_model_server rejects this very path with the error below; the stand-in
        # resolves it against the working directory so `make serve-local` keeps working.
        log.warning(
            "Expected model %s to have an absolute path or URI; got base_path()=%s. "
            "tensorflow_model_server refuses to start with this; the stand-in resolves it to %s",
            name,
            base_path,
            Path(base_path).resolve(),
        )
    return [ModelConfig(name, Path(base_path).resolve())]


def parse_model_server_config(text: str, source: str = "<string>") -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        log.error("Parsing %s: %s", source, exc)
        raise InvalidArgumentError(f"Invalid protobuf file: '{source}'") from exc
    return config


def read_model_config_file(path: str | os.PathLike[str]) -> model_server_config_pb2.ModelServerConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ServingError(f"{path}; {exc.strerror}", "NOT_FOUND") from exc
    return parse_model_server_config(text, str(path))


def model_configs(config: model_server_config_pb2.ModelServerConfig) -> list[ModelConfig]:
    """The validated models of a ModelServerConfig, as ServerCore::ReloadConfig checks them."""
    choice = config.WhichOneof("config")
    if choice is None:
        return []  # TF Serving: "Taking no action for empty config."
    if choice != "model_config_list":
        raise InvalidArgumentError("ModelServer does not yet support custom model config.")
    models: list[ModelConfig] = []
    for entry in config.model_config_list.config:
        if entry.name in (m.name for m in models):
            raise InvalidArgumentError(f"Illegal to list model {entry.name} multiple times in config list")
        if not entry.model_platform:
            raise InvalidArgumentError(
                "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                f"ModelServerConfig::model_platform, model name is {entry.name}"
            )
        if not os.path.isabs(entry.base_path):
            raise InvalidArgumentError(
                f"Expected model {entry.name} to have an absolute path or URI; got base_path()={entry.base_path}"
            )
        if entry.model_platform != TENSORFLOW_PLATFORM:
            raise FailedPreconditionError(f"PlatformConfigMap has no entry for platform {entry.model_platform}")
        models.append(ModelConfig(entry.name, Path(entry.base_path), _policy(entry), dict(entry.version_labels)))
    return models


def _policy(entry: model_server_config_pb2.ModelConfig) -> VersionPolicy:
    policy = entry.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        return VersionPolicy("specific", versions=frozenset(policy.specific.versions))
    return VersionPolicy("latest", num_versions=max(policy.latest.num_versions, 1))
