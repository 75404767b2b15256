"""Dependencies the routes receive: what the lifespan built, never module globals."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.captioner import ModelSession
from gateway.draining import Drain
from gateway.meme_service import MemeService
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.templates import TemplateStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> ModelSession:
    return request.app.state.session


def get_memes(request: Request) -> MemeService:
    return request.app.state.memes


def get_templates(request: Request) -> TemplateStore:
    return request.app.state.memes.templates


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_drain(request: Request) -> Drain:
    return request.app.state.drain


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[ModelSession, Depends(get_session)]
MemesDep = Annotated[MemeService, Depends(get_memes)]
TemplatesDep = Annotated[TemplateStore, Depends(get_templates)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
DrainDep = Annotated[Drain, Depends(get_drain)]
