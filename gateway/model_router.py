"""Several models served side by side (a GRU and a transformer, say), one session each, so each has its own
batches; a request names one, or the traffic split picks one (A/B)."""

from __future__ import annotations

import random
from collections.abc import Mapping

from gateway.backends import ModelUnavailableError
from gateway.captioner import ModelSession

MODEL_HEADER = "X-Memefly-Model"
"""A request header that names the model, for clients that cannot change the body (an A/B test's arm)."""


class UnknownModelError(LookupError):
    """The request named a model this gateway does not serve."""


class ModelRouter:
    """The served models by name, and which one each request gets.

    A request may name a model by its name (`memefly-transformer`) or by its decoder (`transformer`, from the
    model's own contract). One that names none gets a model drawn by `traffic` (weights by model name; the
    models it leaves out get none), or the default.
    """

    def __init__(
        self,
        sessions: Mapping[str, ModelSession],
        default: str,
        traffic: Mapping[str, float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if default not in sessions:
            raise ValueError(f"the default model {default!r} is not among the served {sorted(sessions)}")
        unknown = set(traffic or {}) - set(sessions)
        if unknown:
            raise ValueError(f"the traffic split names models not served: {sorted(unknown)}")
        self.sessions = dict(sessions)
        self.default = default
        self.traffic = {name: weight for name, weight in (traffic or {}).items() if weight > 0}
        self._rng = rng or random.Random()

    @classmethod
    def single(cls, name: str, session: ModelSession) -> ModelRouter:
        return cls({name: session}, name)

    @property
    def default_session(self) -> ModelSession:
        return self.sessions[self.default]

    def pick(self, requested: str | None = None) -> tuple[str, ModelSession]:
        """The model a request gets: the one it names, else one drawn by the traffic split, else the default.

        Raises `UnknownModelError` for a name or decoder no served model has, and `ModelUnavailableError` when
        a decoder name must be looked up in a model that is not loaded yet."""
        if requested:
            return self._named(requested.strip())
        if self.traffic:
            names = list(self.traffic)
            name = self._rng.choices(names, weights=[self.traffic[n] for n in names])[0]
            return name, self.sessions[name]
        return self.default, self.default_session

    def _named(self, requested: str) -> tuple[str, ModelSession]:
        if requested in self.sessions:
            return requested, self.sessions[requested]
        unavailable = None
        for name, session in self.sessions.items():
            try:
                if session.captioner().info.contract.decoder == requested:
                    return name, session
            except ModelUnavailableError as error:
                unavailable = error
        if unavailable is not None:
            raise unavailable
        served = ", ".join(sorted(self.sessions))
        raise UnknownModelError(
            f"no model {requested!r}; this gateway serves {served} (or name a decoder: gru, transformer)"
        )

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()
