"""The training page's section on the judge's probe: what judges now (its source, the human
labels it was fitted on, its figures on held labels and dev), every candidate a nightly refit
published or its gate refused with the gate's reason, and a rollback after a confirmation page
(``server/probe_admin.py``'s switch)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from conscience.probe_history import ProbeHistory, summary
from conscience.server.console.markup import Html, el, join
from conscience.server.console.pages import confirm_page, message_page
from conscience.server.console.routes import confirmed, html, session_of, to_login
from conscience.server.probe_admin import switch_back

__all__ = ["probe_section", "router"]

router = APIRouter(prefix="/ui", include_in_schema=False)
_COLUMNS = ("Time", "What", "Probe", "Gate")


def _figures(gate: dict[str, Any] | None) -> str:
    if not gate:
        return "—"
    return ("passed: " if gate.get("passed") else "refused: ") + str(gate.get("reason", ""))


def _fitted(fitted: dict[str, dict[str, Any]]) -> Html:
    items = []
    for key, about in fitted.items():
        labels = about.get("human_labels")
        said = f"threshold {about.get('threshold')}, {about.get('train_items')} items"
        said += f" ({labels} human labels)" if labels else ""
        items.append(el("li", el("code", key), " — ", said))
    return el("ul", items) if items else el("span", "—")


def probe_section(history: ProbeHistory | None) -> Html:
    """The section of the training page (nothing to switch where no probe judges)."""
    if history is None:
        return el(
            "section",
            el("h2", "The judge's probe"),
            el("p", "No probe judges on this proxy: there is nothing to refit or roll back."),
        )
    probes, source = history.active
    rows = [
        el(
            "tr",
            el("td", event.at),
            el("td", event.action),
            el("td", event.source),
            el("td", _figures(event.gate)),
        )
        for event in reversed(history.events)
        if event.action != "started"
    ]
    table: Html = el(
        "table",
        el(
            "thead", el("tr", [el("th", h, scope="col") for h in ("Time", "What", "Probe", "Gate")])
        ),
        el("tbody", rows),
        class_="judgements",
        id="probe-history",
    )
    if not rows:
        table = el("p", "No refit has been published to this proxy yet.")
    rollback = ""
    if history.can_roll_back:
        rollback = el("p", el("a", "Roll back the probe", href="/ui/training/probe/rollback"))
    return el(
        "section",
        el("h2", "The judge's probe"),
        el(
            "dl",
            el("dt", "judging with"),
            el("dd", source, id="probe-source"),
            el("dt", "fitted"),
            el("dd", _fitted(summary(probes))),
        ),
        rollback,
        el("h3", "Refits, newest first"),
        table,
    )


@router.get("/training/probe/rollback")
async def confirm_rollback(request: Request) -> Response:
    session = session_of(request)
    if session is None:
        return to_login()
    history: ProbeHistory | None = getattr(request.app.state, "probe_history", None)
    if history is None or not history.can_roll_back:
        return html(message_page("Nothing to roll back", "The configured probe judges."), 409)
    _, below = history.previous
    said = join(["From the next review on, the judge reads with ", el("strong", below), "."])
    page = confirm_page(
        "Roll back the probe?",
        session.csrf,
        "/ui/training/probe/rollback",
        said,
        "Roll back the probe",
    )
    return html(page)


@router.post("/training/probe/rollback")
async def roll_back(request: Request) -> Response:
    async def act(_: dict[str, str]) -> None:
        switch_back(request)

    return await confirmed(request, "Not rolled back", act)
