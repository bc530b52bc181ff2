"""The operator's console at ``/ui/``: the judgements the conscience made, one judgement with
its conversation and word diff, human labels, the label queue, an overview, and the nightly
runs' adapters and the judge's refitted probe to publish or roll back. Server-rendered HTML with no
script (``routes.py`` for its safety rules), shipped in the wheel with its stylesheet.

``install(app)`` adds its routes and its sessions to an app."""

from __future__ import annotations

from fastapi import FastAPI

from conscience.server.console import probe, training
from conscience.server.console.routes import router
from conscience.server.console.session import Sessions

__all__ = ["install"]


def install(app: FastAPI) -> None:
    app.state.console_sessions = Sessions()
    app.include_router(router)
    app.include_router(training.router)
    app.include_router(probe.router)
