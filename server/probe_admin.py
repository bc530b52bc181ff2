"""The admin API of the judge's probe, behind the admin key: what judges now and what judged
before (``GET /admin/probe``), the file itself (``GET /admin/probe/file``, what a refit is
gated against), publishing a refitted one (``POST /admin/probe``), and rolling back
(``POST /admin/probe/rollback``) — each switch without a restart (``Conscience.use_probes``).

A candidate is served only where the gate its fit measured passed; a refused one is recorded
(409 ``gate_failed``) so the console shows it with its figures (conscience/probe_history.py).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from conscience.errors import ConfigError
from conscience.probe import Probe, parse_probes
from conscience.probe_history import ProbeEvent, ProbeHistory, summary
from conscience.server.auth import require_admin
from conscience.server.errors import ApiError

__all__ = ["router", "switch_back"]

router = APIRouter(prefix="/admin/probe", dependencies=[Depends(require_admin)])
log = logging.getLogger("conscience.server.probe_admin")


class PublishBody(BaseModel):
    probes: list[dict[str, Any]]  # a probe file's entries (conscience/probe.py)
    gate: dict[str, Any]  # the fit's gate: ``passed``, and the figures that decided it


def _history(request: Request) -> ProbeHistory:
    history: ProbeHistory | None = getattr(request.app.state, "probe_history", None)
    if history is None:
        raise ApiError(
            409,
            "no probe judges on this proxy (CONSCIENCE_JUDGE_METHOD=single, or an engine"
            " without hidden states)",
            code="no_probe",
        )
    return history


def state(history: ProbeHistory) -> dict[str, Any]:
    """What ``GET /admin/probe`` answers: the active probes' source and what they were fitted
    on, whether a rollback is possible, and the history, newest first."""
    probes, source = history.active
    return {
        "source": source,
        "persisted": history.directory is not None,
        "can_roll_back": history.can_roll_back,
        "fitted": summary(probes),
        "history": [event.as_dict() for event in reversed(history.events)],
    }


@router.get("")
async def current_probe(request: Request) -> dict[str, Any]:
    return state(_history(request))


@router.get("/file")
async def probe_file(request: Request) -> list[dict[str, Any]]:
    """The active probe file's entries, as ``conscience fit probe`` writes them."""
    from dataclasses import asdict

    probes, _ = _history(request).active
    return [asdict(probe) for probe in probes.values()]


def _switch(request: Request, probes: dict[tuple[str, str, str], Probe], source: str) -> None:
    conscience = request.app.state.pipeline.conscience
    try:
        conscience.use_probes(dict(probes), source)
    except ConfigError as exc:
        raise ApiError(422, str(exc), param="probes", code="probe_not_usable") from exc


def _said(event: ProbeEvent) -> dict[str, Any]:
    return {"event": event.as_dict(), "source": event.source}


@router.post("")
async def publish_probe(request: Request, body: PublishBody) -> dict[str, Any]:
    """Serve a refitted probe file if its gate passed; record it either way."""
    history = _history(request)
    try:
        probes = parse_probes(body.probes, "the published probe file")
    except ConfigError as exc:
        raise ApiError(400, str(exc), param="probes", code="invalid_probe") from exc
    judge = request.app.state.pipeline.conscience.judge_model
    if not any(model == judge for model, _, _ in probes):
        models = ", ".join(sorted({model for model, _, _ in probes}))
        raise ApiError(
            422,
            f"the probe file holds probes of {models}, and the judge is {judge!r}",
            param="probes",
            code="probe_not_usable",
        )
    if body.gate.get("passed") is not True:
        history.publish(probes, body.gate)
        log.warning("probe: a candidate was refused by its gate: %s", body.gate.get("reason"))
        raise ApiError(
            409,
            f"the candidate probe did not pass its gate: {body.gate.get('reason', 'not passed')}",
            param="gate",
            code="gate_failed",
        )
    # Checked on the conscience first, so that a probe it cannot use is never recorded served.
    _switch(request, probes, history.next_source)
    event = history.publish(probes, body.gate)
    log.info("probe: %s now judges (%s)", event.source, event.fitted)
    return _said(event)


def switch_back(request: Request) -> ProbeEvent:
    """Serve the probes below the top of the history again (the console's rollback too)."""
    history = _history(request)
    if not history.can_roll_back:
        raise ApiError(
            409, "nothing to roll back to: the configured probe is being served", code="no_rollback"
        )
    below, source = history.previous
    _switch(request, below, source)
    event = history.roll_back()
    log.info("probe: rolled back to %s", event.source)
    return event


@router.post("/rollback")
async def roll_back_probe(request: Request) -> dict[str, Any]:
    return _said(switch_back(request))
