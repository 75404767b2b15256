"""Copy the generated TF Serving protos the gateway imports, so that its image needs no TensorFlow.

The gateway speaks to TF Serving through generated protobuf modules only (`*_pb2`, `*_pb2_grpc`): its
tensors (gateway/tensors.py) and its gRPC backend (gateway/backends/tfserving.py). They ship inside
`tensorflow-serving-api` and `tensorflow`, and the first requires the second: hundreds of megabytes for
a few hundred kilobytes of generated code.

`python -m gateway.protos DIR` finds every such module the gateway's source imports, follows their own
imports transitively (reading the files, never importing TensorFlow), and copies them into DIR with
empty `__init__.py` files for their packages. The Dockerfile runs it in a builder stage that has
`tensorflow-serving-api` installed and puts DIR on the final image's PYTHONPATH.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

GATEWAY_DIR = Path(__file__).resolve().parent
_GENERATED_SUFFIXES = ("_pb2", "_pb2_grpc")
_RUNTIME_PACKAGES = {"google"}
"""google.protobuf's own well-known types ship with the protobuf runtime the gateway installs anyway."""


def _is_generated(module: str) -> bool:
    return module.endswith(_GENERATED_SUFFIXES) and module.partition(".")[0] not in _RUNTIME_PACKAGES


def imported_protos(source: str) -> set[str]:
    """The generated modules (outside google.protobuf) one Python file imports, wherever in the file."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
            found.add(node.module)
    return {module for module in found if _is_generated(module)}


def module_file(module: str) -> Path:
    """Where `module` is installed, found without importing its packages (TensorFlow's __init__ is heavy)."""
    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)  # a top-level lookup runs nothing
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location, *rest.split(".")).with_suffix(".py")
        if candidate.is_file():
            return candidate
    raise ModuleNotFoundError(f"{module} is not installed here; install tensorflow-serving-api to copy it")


def proto_closure(roots: Iterable[str]) -> dict[str, Path]:
    """`roots` and every generated module they import, transitively, with their files."""
    files: dict[str, Path] = {}
    pending = sorted(set(roots))
    while pending:
        module = pending.pop()
        if module in files:
            continue
        files[module] = module_file(module)
        pending.extend(imported_protos(files[module].read_text(encoding="utf-8")) - set(files))
    return dict(sorted(files.items()))


def gateway_protos(source_dir: Path = GATEWAY_DIR) -> set[str]:
    """The generated modules the gateway's own source imports."""
    return {module for path in source_dir.rglob("*.py") for module in imported_protos(path.read_text("utf-8"))}


def copy_protos(destination: Path, roots: Iterable[str] | None = None) -> list[str]:
    """Copies the closure of `roots` (default: what the gateway imports) into `destination`; returns the modules."""
    modules = proto_closure(gateway_protos() if roots is None else roots)
    for module, source in modules.items():
        *packages, name = module.split(".")
        folder = destination.joinpath(*packages)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / f"{name}.py")
        for depth in range(1, len(packages) + 1):
            destination.joinpath(*packages[:depth], "__init__.py").touch()
    return list(modules)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.protos", description=__doc__.splitlines()[0])
    parser.add_argument("destination", type=Path, help="directory to copy the modules into (put it on PYTHONPATH)")
    args = parser.parse_args(argv)
    modules = copy_protos(args.destination)
    print(f"copied {len(modules)} generated modules into {args.destination}")


if __name__ == "__main__":
    main()
