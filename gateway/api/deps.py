"""Dependencies the routes receive: what the lifespan put on the app, never module globals."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.captioner import ModelSession
from gateway.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> ModelSession:
    return request.app.state.session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[ModelSession, Depends(get_session)]
