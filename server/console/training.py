"""The console's training page: the nightly runs' adapters (each with its ``report.json``), the
adapter being served, and publishing one, or rolling back to the base model, after a
confirmation page.

Publishing goes through the admin API's own switch (``POST /admin/adapter``'s handler: on the
embedded engine it starts the adapter's engine, upstream the adapter must already be served)
and then records the name in ``CURRENT`` in ``CONSCIENCE_ADAPTERS_DIR``, as ``conscience
publish`` does, so that a restarted proxy serves it again.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from conscience.engine.publish import ADAPTER_NAME, list_adapters, read_current, write_current
from conscience.server.admin import AdapterBody, switch_adapter
from conscience.server.console.markup import Html, el, join
from conscience.server.console.pages import confirm_page, layout, message_page
from conscience.server.console.probe import probe_section
from conscience.server.console.routes import confirmed, html, session_of, to_login

__all__ = ["router"]

router = APIRouter(prefix="/ui", include_in_schema=False)
_REPORT_FIELDS = 12  # of a report's top-level values, shown in the table


def _report(adapters: Path, name: str) -> dict[str, Any]:
    try:
        found = json.loads((adapters / name / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _summary(report: dict[str, Any]) -> Html:
    """The report's top-level numbers and words (its lists and objects are left out)."""
    items = [
        (k, v) for k, v in report.items() if isinstance(v, str | int | float | bool) or v is None
    ][:_REPORT_FIELDS]
    if not items:
        return el("span", "no report.json")
    return el("dl", [(el("dt", k), el("dd", json.dumps(v)[:200])) for k, v in items])


def _runs(adapters: Path | None) -> tuple[list[dict[str, Any]], str | None]:
    if adapters is None:
        return [], None
    found = list_adapters(adapters)
    for run in found:
        run["report"] = _report(adapters, run["name"])
    return found, read_current(adapters)


@router.get("/training")
async def training(request: Request) -> Response:
    session = session_of(request)
    if session is None:
        return to_login()
    settings = request.app.state.settings
    pipeline = request.app.state.pipeline
    runs, current = await asyncio.to_thread(_runs, settings.adapters_dir)
    engine = "embedded" if request.app.state.adapters is not None else "upstream"
    serving = el(
        "dl",
        el("dt", "generating with"),
        el("dd", pipeline.generator, id="generator"),
        el("dt", "base model"),
        el("dd", settings.model),
        el("dt", "judge (never trained)"),
        el("dd", pipeline.conscience.judge_model),
        el("dt", "recorded in CURRENT"),
        el("dd", current or "—"),
        el("dt", "adapters loaded by"),
        el("dd", "this proxy's engine" if engine == "embedded" else "the upstream (vLLM)"),
    )
    rollback = ""
    if pipeline.generator != settings.model:
        rollback = el(
            "p",
            el("a", "Roll back to the base model", href=f"/ui/training/publish/{settings.model}"),
        )
    rows = [
        el(
            "tr",
            el("td", run["name"]),
            el("td", run["status"] or "—"),
            el("td", _summary(run["report"])),
            el(
                "td",
                "served"
                if run["name"] == pipeline.generator
                else el("a", f"Publish {run['name']}", href=f"/ui/training/publish/{run['name']}"),
            ),
        )
        for run in runs
    ]
    table: Html = el(
        "table",
        el("thead", el("tr", [el("th", h, scope="col") for h in ("Run", "Status", "Report", "")])),
        el("tbody", rows),
        class_="judgements",
    )
    if settings.adapters_dir is None:
        table = el("p", "No CONSCIENCE_ADAPTERS_DIR is set: there are no runs to show.")
    elif not runs:
        table = el("p", f"No adapter in {settings.adapters_dir} yet.")
    body = join(
        [
            el("section", el("h2", "Serving"), serving, rollback),
            el("section", el("h2", "Nightly runs, newest first"), table),
            probe_section(getattr(request.app.state, "probe_history", None)),
        ]
    )
    return html(layout("Training", body, csrf=session.csrf, current="training"))


@router.get("/training/publish/{name}")
async def confirm(request: Request, name: str) -> Response:
    session = session_of(request)
    if session is None:
        return to_login()
    said = join(["From the next request on, the proxy generates with ", el("strong", name), "."])
    page = confirm_page(
        "Publish?",
        session.csrf,
        "/ui/training/publish",
        said,
        f"Publish {name}",
        fields={"name": name},
    )
    return html(page)


@router.post("/training/publish")
async def publish(request: Request) -> Response:
    async def act(form: dict[str, str]) -> Response | None:
        name = form.get("name", "")
        if not ADAPTER_NAME.fullmatch(name):
            return html(message_page("Refused", "That is not an adapter's name."), 400)
        await switch_adapter(request, AdapterBody(model=name))
        adapters_dir = request.app.state.settings.adapters_dir
        if adapters_dir is not None:
            await asyncio.to_thread(write_current, adapters_dir, name)
        return None

    return await confirmed(request, "Not published", act)
