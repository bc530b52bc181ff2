"""The console's routes under ``/ui``: sign in and out, the judgements, one judgement and its
human label, the overview, and the stylesheet.

Every answer carries a Content-Security-Policy that allows no script at all and only the
console's own stylesheet; pages are not cached and cannot be framed. A page asked for without a
session redirects to the sign-in form; a form posted without one, or without its CSRF token, is
refused (403). Only the admin key signs in: a client key is refused like any wrong key.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from conscience.errors import NotFound
from conscience.labels import Action, Verdict
from conscience.server.console.overview import agreement, bars_svg, buckets, percentile
from conscience.server.console.pages import (
    PAGE_SIZE,
    detail_page,
    login_page,
    message_page,
    overview_page,
    p_unethical,
    queue_page,
    table_page,
)
from conscience.server.console.session import (
    LOGIN_COOKIE,
    LOGIN_SECONDS,
    SESSION_COOKIE,
    Session,
    Sessions,
    clear_cookie,
    same_token,
    set_cookie,
)
from conscience.server.errors import ApiError
from conscience.server.pipeline import REFUSAL
from conscience.store.base import UnreadableRow
from conscience.store.search import Search

__all__ = [
    "SECURITY_HEADERS",
    "checked_form",
    "forbidden",
    "html",
    "router",
    "session_of",
    "to_login",
]

log = logging.getLogger("conscience.server.console")
router = APIRouter(prefix="/ui", include_in_schema=False)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer a browser posts forms with "Origin: null".
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
OVERVIEW_ROWS = 20_000  # the most judgements the overview reads for one window
QUEUE_ROWS = 5_000  # the newest unlabelled judgements the label queue orders
_FORM_BYTES = 64 * 1024  # a console form is a few fields


def _sessions(request: Request) -> Sessions:
    return request.app.state.console_sessions


def html(page: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(page, status_code=status, headers=SECURITY_HEADERS)


def to_login() -> RedirectResponse:
    return RedirectResponse("/ui/login", status_code=303, headers=SECURITY_HEADERS)


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the last value of each)."""
    body = await request.body()
    if len(body) > _FORM_BYTES:
        return {}
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: v[-1] for k, v in fields.items()}


def _admin_key(request: Request) -> str | None:
    key = request.app.state.settings.admin_key
    return None if key is None else key.get_secret_value()


def _same_origin(request: Request) -> bool:
    """A posted form must come from the console's own origin when the browser says where from."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def session_of(request: Request) -> Session | None:
    return _sessions(request).find(request)


async def checked_form(request: Request) -> tuple[Session, dict[str, str]] | None:
    """The session and the form of a state-changing request, or None: no session, another
    origin, or a missing or wrong CSRF token."""
    session = session_of(request)
    if session is None or not _same_origin(request):
        return None
    form = await _form(request)
    if not same_token(form.get("csrf"), session.csrf):
        return None
    return session, form


async def confirmed(
    request: Request,
    refused: str,
    act: Callable[[dict[str, str]], Awaitable[Response | None]],
    back: str = "/ui/training",
) -> Response:
    """A confirmation page's POST: the session, origin and CSRF token checked (403 otherwise),
    then ``act`` on the form. An ``ApiError`` it raises is a page titled ``refused`` with the
    error's reason and status; a response it returns is sent; else back to ``back``."""
    checked = await checked_form(request)
    if checked is None:
        return forbidden()
    try:
        answer = await act(checked[1])
    except ApiError as exc:
        return html(message_page(refused, exc.message), exc.status)
    return answer or RedirectResponse(back, status_code=303, headers=SECURITY_HEADERS)


def forbidden() -> HTMLResponse:
    return html(
        message_page("Refused", "Sign in again: this form's session or token is not valid."),
        403,
    )


@router.get("/static/console.css")
async def stylesheet() -> Response:
    css = resources.files("conscience.server.console").joinpath("static/console.css").read_text()
    headers = {**SECURITY_HEADERS, "Cache-Control": "max-age=3600"}
    return Response(css, media_type="text/css", headers=headers)


@router.get("/")
async def home(request: Request) -> Response:
    if session_of(request) is None:
        return to_login()
    return RedirectResponse("/ui/judgements", status_code=303, headers=SECURITY_HEADERS)


@router.get("/login")
async def login_form(request: Request) -> Response:
    if _admin_key(request) is None:
        return html(
            message_page("Console disabled", "The console is disabled: set CONSCIENCE_ADMIN_KEY."),
            403,
        )
    token = secrets.token_urlsafe(32)
    response = html(login_page(token))
    set_cookie(response, request, LOGIN_COOKIE, token, LOGIN_SECONDS)
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    admin_key = _admin_key(request)
    if admin_key is None:
        return html(message_page("Console disabled", "Set CONSCIENCE_ADMIN_KEY."), 403)
    form = await _form(request)
    expected = request.cookies.get(LOGIN_COOKIE)
    if not _same_origin(request) or expected is None or not same_token(form.get("csrf"), expected):
        return forbidden()
    if not same_token(form.get("key") or None, admin_key):
        log.warning("console: a sign-in with a wrong key was refused")
        token = secrets.token_urlsafe(32)
        response = html(login_page(token, "That is not the admin key."), 401)
        set_cookie(response, request, LOGIN_COOKIE, token, LOGIN_SECONDS)
        return response
    session_id, _ = _sessions(request).open()
    response = RedirectResponse("/ui/judgements", status_code=303, headers=SECURITY_HEADERS)
    set_cookie(response, request, SESSION_COOKIE, session_id, int(_sessions(request).lifetime_s))
    clear_cookie(response, LOGIN_COOKIE)
    log.info("console: signed in")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    if await checked_form(request) is None:
        return forbidden()
    _sessions(request).close(request)
    response = to_login()
    clear_cookie(response, SESSION_COOKIE)
    return response


def _moment(value: str | None) -> datetime | None:
    """A ``datetime-local`` field (or ISO 8601) as UTC; None when empty or not a time."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _enum(kind: Any, value: str | None) -> Any:
    try:
        return kind(value) if value else None
    except ValueError:
        return None


def _search(query: dict[str, str]) -> Search:
    return Search(
        verdict=_enum(Verdict, query.get("verdict")),
        action=_enum(Action, query.get("action")),
        framework=query.get("framework") or None,
        model=query.get("model") or None,
        since=_moment(query.get("since")),
        until=_moment(query.get("until")),
        text=query.get("q") or None,
        client_key_id=query.get("key") or None,
        review_only={"review-only": True, "completion": False}.get(query.get("origin", "")),
    )


def _store(request: Request) -> Any:
    return request.app.state.pipeline.store


@router.get("/judgements")
async def judgements(request: Request) -> Response:
    session = session_of(request)
    if session is None:
        return to_login()
    query = {k: v for k, v in request.query_params.items() if v}
    try:
        page = max(int(query.get("page", "1")), 1)
    except ValueError:
        page = 1
    search = _search(query)
    store = _store(request)
    total = await store.search_count(search)
    found = await store.search(search, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    unreadable = [(row.judgement_id, row.reason) for row in found.unreadable]
    shown = table_page(session.csrf, found.judgements, unreadable, total, page, query)
    return html(shown)


def _threshold(request: Request, framework: str) -> float | None:
    """The threshold the served probe decides this framework by, if one does."""
    conscience = request.app.state.pipeline.conscience
    probe_for = getattr(conscience, "probe_for", None)
    probe = probe_for(framework) if probe_for is not None else None
    return getattr(probe, "threshold", None)


def _deciding_threshold(request: Request, framework: str) -> float:
    """Where the judge's doubt is greatest for a framework: the served probe's threshold, else
    CONSCIENCE_UNETHICAL_THRESHOLD, else one half."""
    found = _threshold(request, framework)
    if found is None:
        found = request.app.state.settings.unethical_threshold
    return 0.5 if found is None else float(found)


@router.get("/queue")
async def queue(request: Request) -> Response:
    """The judgements no human labelled, those the judge was least sure of first."""
    session = session_of(request)
    if session is None:
        return to_login()
    store = _store(request)
    waiting = Search(labelled=False)
    total = await store.search_count(waiting)
    found = (await store.search(waiting, limit=QUEUE_ROWS)).judgements
    thresholds = {f: _deciding_threshold(request, f) for f in {r.framework for r in found}}

    def doubt(item: tuple[int, Any]) -> tuple[float, int]:
        newest_first, row = item
        p = p_unethical(row)
        if p is None or row.screen:  # a rule decided: no doubt to resolve
            return (2.0, newest_first)
        return (round(abs(p - thresholds[row.framework]), 9), newest_first)

    ordered = [row for _, row in sorted(enumerate(found), key=doubt)][:PAGE_SIZE]
    distances = []
    for row in ordered:
        p = p_unethical(row)
        distances.append("—" if p is None else f"{abs(p - thresholds[row.framework]):.3f}")
    return html(queue_page(session.csrf, ordered, distances, total, len(found)))


@router.get("/judgements/{judgement_id}")
async def judgement(request: Request, judgement_id: str) -> Response:
    session = session_of(request)
    if session is None:
        return to_login()
    try:
        found = await _store(request).get(judgement_id)
    except NotFound:
        return html(message_page("Not found", "No judgement has this id."), 404)
    except UnreadableRow as exc:
        return html(message_page("Unreadable", f"The store cannot read it: {exc.reason}"), 500)
    shown = detail_page(session.csrf, found, REFUSAL, _threshold(request, found.framework))
    return html(shown)


@router.post("/judgements/{judgement_id}/label")
async def label(request: Request, judgement_id: str) -> Response:
    """Set or clear the human label, as ``POST /admin/judgements/{id}/label`` does."""
    checked = await checked_form(request)
    if checked is None:
        return forbidden()
    _, form = checked
    choice = form.get("label")
    if choice not in ("ethical", "unethical", "clear"):
        return html(message_page("Refused", "A label is ethical, unethical or clear."), 400)
    value = None if choice == "clear" else Verdict(choice)
    try:
        await _store(request).set_human_label(judgement_id, value)
    except NotFound:
        return html(message_page("Not found", "No judgement has this id."), 404)
    except UnreadableRow:
        pass  # stored; the page says the row is unreadable
    log.info("console: judgement %s labelled %s", judgement_id, choice)
    return RedirectResponse(
        f"/ui/judgements/{judgement_id}", status_code=303, headers=SECURITY_HEADERS
    )


@router.get("/overview")
async def overview_route(request: Request) -> Response:
    session = session_of(request)
    if session is None:
        return to_login()
    query = {k: v for k, v in request.query_params.items() if v}
    until = _moment(query.get("until")) or datetime.now(UTC)
    since = _moment(query.get("since"))
    if since is None or since >= until:
        since = until - timedelta(days=7)
        found = await _store(request).search(Search(since=since, until=until), limit=OVERVIEW_ROWS)
        if found.judgements:  # by default, the last week's from its first judgement on
            first = min(r.created_at for r in found.judgements)
            since = max(since, min(first, until - timedelta(hours=1)))
    else:
        found = await _store(request).search(Search(since=since, until=until), limit=OVERVIEW_ROWS)
    rows = found.judgements
    total = len(rows)
    starts, by_verdict = buckets(rows, since, until, "verdict")
    _, by_action = buckets(rows, since, until, "action")
    actions = {a.value: sum(r.action is a for r in rows) for a in Action}

    def rate(n: int) -> str:
        return "—" if not total else f"{n / total:.1%} ({n})"

    latencies = [r.review_ms for r in rows if r.review_ms is not None]
    judged = agreement(rows)
    judge = None
    if judged.labelled:
        judge = [
            ("human labels", judged.labelled),
            ("agreement", _share(judged.agreement)),
            ("precision (unethical)", _share(judged.precision)),
            ("false-positive rate", _share(judged.false_positive_rate)),
        ]
    shown = overview_page(
        session.csrf,
        since=since,
        until=until,
        shown=total,
        capped=total >= OVERVIEW_ROWS,
        verdicts=bars_svg("Verdicts over time", starts, by_verdict, [v.value for v in Verdict]),
        actions=bars_svg(
            "Actions over time", starts, by_action, [*(a.value for a in Action), "none"]
        ),
        rates=[
            ("judgements", total),
            ("rewritten", rate(actions["rewritten"])),
            ("blocked", rate(actions["blocked"])),
            ("flagged", rate(actions["flagged"])),
            ("unreviewed", rate(actions["unreviewed"])),
        ],
        latency=[(f"p{q}", _ms(percentile(latencies, q))) for q in (50, 90, 99)],
        judge=judge,
        query=query,
    )
    return html(shown)


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms"
