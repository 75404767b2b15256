"""Schemathesis against the gateway's own OpenAPI document, in process, on the tiny model: no input,
valid or not, gets a 5xx."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans

from gateway.app import create_app
from tests.support import embedded_settings

EXAMPLES_PER_OPERATION = 20


@pytest.fixture
def gateway_schema(model_base_path: Path, tmp_path: Path) -> Iterator:
    """Function-scoped: schemathesis' pytest plugin ends ASGI lifespans when each test ends."""
    app = create_app(
        embedded_settings(
            model_base_path,
            tmp_path,
            request_timeout_seconds=10,
            beam_width=2,
            n_best=1,
            log_level="WARNING",
        )
    )
    yield schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the app's lifespan
    shutdown_lifespans()


def _fuzz(operation, mode: GenerationMode, sent: Counter[str]) -> None:
    """Hypothesis drives the operation's strategy directly: schemathesis' pytest plugin
    (schema.parametrize) does not run under pytest 9."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def no_server_error(case) -> None:
        case.call_and_validate(checks=[not_a_server_error], timeout=30)
        sent[f"{mode} {operation.label}"] += 1

    try:
        no_server_error()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE, operation.label  # nothing in it can be made invalid


def test_no_generated_request_gets_a_server_error(gateway_schema) -> None:
    sent: Counter[str] = Counter()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        for result in gateway_schema.get_all_operations():
            _fuzz(result.ok(), mode, sent)
    for mode in ("positive", "negative"):
        for label in ("POST /v1/memes", "POST /v1/templates/{template_id}/memes"):
            assert sent[f"{mode} {label}"] >= EXAMPLES_PER_OPERATION // 2, dict(sent)
