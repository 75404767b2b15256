"""A version switch that lands between handing a captioner out and leasing it must not lose the request."""

from __future__ import annotations

from pathlib import Path

from gateway.backends.embedded import EmbeddedBackend
from gateway.captioner import Captioner, ModelSession
from gateway.search import SearchSettings
from tests.support import MODEL_NAME, photo_jpeg


class _SwitchesRightAfterHandingOut(ModelSession):
    """Switches version once, just after `captioner()` has chosen one and before the request leases it:
    the interleaving a concurrent version check can produce."""

    switched = False
    handed_out: list[Captioner]

    def captioner(self) -> Captioner:
        captioner = super().captioner()
        self.handed_out = [*getattr(self, "handed_out", []), captioner]
        if not self.switched:
            self.switched = True
            with self._lock:
                self._switch()  # the captioner just handed out has no lease: its scheduler closes now
        return captioner


def test_a_switch_between_choosing_and_leasing_a_captioner_loses_no_request(model_base_path: Path) -> None:
    session = _SwitchesRightAfterHandingOut(EmbeddedBackend(model_base_path, MODEL_NAME))
    try:
        session.captioner()  # the first version, before the request
        session.switched = False
        result = session.caption(photo_jpeg("chelsea"), lambda _: SearchSettings(beam_width=2, n_best=1))
        assert result.captions
        first, *_ = session.handed_out[1:]
        assert first is not session.captioner(), "the request met the switch"
    finally:
        session.close()
