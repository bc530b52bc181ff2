"""The console's pages, each a function from what it shows to escaped HTML (``markup.el``).

No page carries a script, an inline style or an event handler, and no stored text ever becomes
an attribute that a browser follows (a link, a source): it is only ever text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from conscience.judgement import Judgement
from conscience.labels import Action, Verdict
from conscience.server.console.diff import word_diff
from conscience.server.console.markup import Html, el, join, raw

__all__ = [
    "detail_page",
    "layout",
    "login_page",
    "message_page",
    "overview_page",
    "queue_page",
    "served_text",
    "table_page",
]

PAGE_SIZE = 50


def _csrf(token: str) -> Html:
    return el("input", type="hidden", name="csrf", value=token)


def layout(title: str, body: Html, *, csrf: str | None = None, current: str = "") -> Html:
    """The page around ``body``; with a session (``csrf``), the navigation and sign-out."""
    nav = ""
    if csrf is not None:
        links = [
            el("a", name, href=href, aria_current="page" if key == current else None)
            for key, name, href in (
                ("judgements", "Judgements", "/ui/judgements"),
                ("queue", "Label queue", "/ui/queue"),
                ("overview", "Overview", "/ui/overview"),
                ("training", "Training", "/ui/training"),
            )
        ]
        signout = el(
            "form",
            _csrf(csrf),
            el("button", "Sign out", type="submit"),
            method="post",
            action="/ui/logout",
            class_="signout",
        )
        nav = el("nav", el("strong", "conscience"), links, signout, aria_label="console")
    head = el(
        "head",
        el("meta", charset="utf-8"),
        el("meta", name="viewport", content="width=device-width, initial-scale=1"),
        el("meta", name="referrer", content="same-origin"),
        el("title", f"{title} · conscience"),
        el("link", rel="stylesheet", href="/ui/static/console.css"),
    )
    return raw("<!doctype html>") + el(
        "html", head, el("body", nav, el("main", el("h1", title), body)), lang="en"
    )


def message_page(title: str, message: str) -> Html:
    return layout(title, el("p", message))


def confirm_page(
    title: str,
    csrf: str,
    action: str,
    said: Html,
    button: str,
    fields: dict[str, str] | None = None,
    back: str = "/ui/training",
) -> Html:
    """A confirmation: what will happen (``said``), the button that does it (a POST to
    ``action`` with the session's CSRF token and ``fields``), and Cancel back to ``back``."""
    hidden = [el("input", type="hidden", name=k, value=v) for k, v in (fields or {}).items()]
    form = el(
        "form",
        el("input", type="hidden", name="csrf", value=csrf),
        hidden,
        el("p", said),
        el("button", button, type="submit"),
        " ",
        el("a", "Cancel", href=back),
        method="post",
        action=action,
    )
    return layout(title, form, csrf=csrf, current="training")


def login_page(token: str, error: str | None = None) -> Html:
    form = el(
        "form",
        _csrf(token),
        el("label", "Admin key", for_="key"),
        el(
            "input",
            id="key",
            name="key",
            type="password",
            autocomplete="current-password",
            required=True,
            autofocus=True,
        ),
        el("button", "Sign in", type="submit"),
        method="post",
        action="/ui/login",
        class_="login",
    )
    alert = el("p", error, role="alert", class_="error") if error else ""
    intro = el("p", "Sign in with the proxy's admin key (CONSCIENCE_ADMIN_KEY).")
    return layout("Sign in", el("div", intro, alert, form))


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def p_unethical(judgement: Judgement) -> float | None:
    probs = judgement.label_probs or {}
    value = probs.get(Verdict.UNETHICAL.value)
    return float(value) if value is not None else None


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _select(name: str, label: str, options: Sequence[str], chosen: str | None) -> Html:
    return el(
        "label",
        label,
        el(
            "select",
            el("option", "any", value=""),
            [el("option", o, value=o, selected=o == chosen) for o in options],
            name=name,
        ),
    )


def _field(name: str, label: str, value: str | None, kind: str = "text") -> Html:
    return el("label", label, el("input", name=name, type=kind, value=value or ""))


def _badge(value: str | None) -> Html:
    return el("span", value or "—", class_=f"badge badge-{value or 'none'}")


def table_page(
    csrf: str,
    rows: Sequence[Judgement],
    unreadable: Sequence[tuple[str | None, str]],
    total: int,
    page: int,
    query: dict[str, str],
) -> Html:
    """The judgements, newest first, with the filter form and the pager."""
    filters = el(
        "form",
        _select("verdict", "Verdict", [v.value for v in Verdict], query.get("verdict")),
        _select("action", "Action", [a.value for a in Action], query.get("action")),
        _field("framework", "Framework", query.get("framework")),
        _field("model", "Model", query.get("model")),
        _field("key", "Client key id", query.get("key")),
        _select("origin", "Origin", ["completion", "review-only"], query.get("origin")),
        _field("since", "From", query.get("since"), "datetime-local"),
        _field("until", "To", query.get("until"), "datetime-local"),
        _field("q", "Text", query.get("q"), "search"),
        el("button", "Filter", type="submit"),
        method="get",
        action="/ui/judgements",
        class_="filters",
        role="search",
    )
    header, body = _rows(rows)
    broken = [
        el("tr", el("td", f"judgement {jid} cannot be read ({reason})", colspan="9"))
        for jid, reason in unreadable
    ]
    table = el(
        "table",
        el("caption", f"{total} judgements"),
        el("thead", header),
        el("tbody", body, broken),
        class_="judgements",
    )
    if not rows and not unreadable:
        table = el("p", "No judgement matches.", class_="empty")
    return layout(
        "Judgements",
        el("div", filters, table, _pager(page, total, query)),
        csrf=csrf,
        current="judgements",
    )


_HEADINGS = (
    "Time (UTC)",
    "Verdict",
    "Action",
    "P(unethical)",
    "Method",
    "Screen",
    "Human",
    "Model",
    "Prompt",
)


def _rows(rows: Sequence[Judgement], extra: Sequence[str] | None = None) -> tuple[Html, Html]:
    """The table's header row and its rows; ``extra``, one more cell a row, is last."""
    headings = [*_HEADINGS, "Distance to threshold"] if extra is not None else list(_HEADINGS)
    header = el("tr", [el("th", h, scope="col") for h in headings])
    body = [
        el(
            "tr",
            el("td", el("a", _time(r.created_at), href=f"/ui/judgements/{r.id}")),
            el("td", _badge(r.verdict.value)),
            el("td", _badge(r.action.value if r.action else None)),
            el("td", _p(p_unethical(r)), class_="num"),
            el("td", _method(r)),
            el("td", ", ".join(r.screen or []) or "—"),
            el("td", r.human_label.value if r.human_label else "—"),
            el("td", r.model or "—"),
            el("td", _snippet(r), class_="snippet"),
            el("td", extra[i], class_="num") if extra is not None else "",
        )
        for i, r in enumerate(rows)
    ]
    return header, join(body)


def queue_page(
    csrf: str, rows: Sequence[Judgement], distances: Sequence[str], waiting: int, read: int
) -> Html:
    """The judgements without a human label, those the judge was least sure of first."""
    note = el(
        "p",
        f"{waiting} judgements have no human label; the {len(rows)} the judge was least sure of"
        " (P(unethical) nearest the threshold it decides by) come first, the newest first among"
        " equals, then those the screen decided.",
        class_="note",
    )
    if read < waiting:
        note = join([note, el("p", f"Ordered among the newest {read} of them.", class_="note")])
    header, body = _rows(rows, distances)
    table = el("table", el("thead", header), el("tbody", body), class_="judgements")
    if not rows:
        table = el("p", "Every judgement has a human label.", class_="empty")
    return layout("Label queue", join([note, table]), csrf=csrf, current="queue")


def _pager(page: int, total: int, query: dict[str, str]) -> Html:
    pages = max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1)
    kept = {k: v for k, v in query.items() if v and k != "page"}

    def link(to: int, name: str, rel: str) -> Html:
        return el("a", name, href="/ui/judgements?" + urlencode({**kept, "page": to}), rel=rel)

    return el(
        "nav",
        link(page - 1, "Newer", "prev") if page > 1 else "",
        el("span", f"page {page} of {pages}"),
        link(page + 1, "Older", "next") if page < pages else "",
        aria_label="pages",
        class_="pager",
    )


def _method(r: Judgement) -> str:
    if r.screen:
        return "screen"
    if r.readings:
        return f"{r.layout} + second opinion" if len(r.readings) > 1 else r.layout
    return r.layout


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: their text, the rest as JSON
        return "\n".join(
            p["text"] if isinstance(p, dict) and isinstance(p.get("text"), str) else json.dumps(p)
            for p in content
        )
    return json.dumps({k: v for k, v in message.items() if k != "role"}, ensure_ascii=False)


def _snippet(r: Judgement, chars: int = 80) -> str:
    users = [m for m in r.messages if isinstance(m, dict) and m.get("role") == "user"]
    said = _content(users[-1]) if users else ""
    return said if len(said) <= chars else said[: chars - 1] + "…"


def served_text(r: Judgement, refusal: str) -> str:
    """What the client received: the rewrite, the refusal, or the answer as written."""
    if r.action is Action.REWRITTEN and r.rewrite is not None:
        return r.rewrite
    if r.action is Action.BLOCKED:
        return refusal
    return r.answer


def _definitions(items: Sequence[tuple[str, object]]) -> Html:
    return el("dl", [(el("dt", k), el("dd", "—" if v is None else str(v))) for k, v in items])


def detail_page(csrf: str, r: Judgement, refusal: str, threshold: float | None) -> Html:
    conversation = el(
        "ol",
        [
            el(
                "li",
                el("span", str(m.get("role", "?")), class_="role"),
                el("pre", _content(m)),
                class_="turn",
            )
            for m in r.messages
            if isinstance(m, dict)
        ],
        class_="conversation",
    )
    original, served = word_diff(r.answer, served_text(r, refusal))
    diff = el(
        "div",
        el("section", el("h3", "The model wrote"), el("pre", original), class_="side"),
        el(
            "section",
            el("h3", f"The client received ({_action(r)})"),
            el("pre", served),
            class_="side",
        ),
        class_="diff",
    )
    reading = _definitions(
        [
            ("verdict", r.verdict.value),
            ("P(unethical)", _p(p_unethical(r))),
            ("confidence", _p(r.confidence)),
            ("threshold (served now)", _p(threshold)),
            ("method", _method(r)),
            ("layout", r.layout),
            ("framework", r.framework),
            ("screen rules", ", ".join(r.screen or []) or None),
            (
                "readings by layout",
                ", ".join(f"{k} {v:.3f}" for k, v in (r.readings or {}).items()) or None,
            ),
            (
                "label probabilities",
                ", ".join(f"{k} {v:.3f}" for k, v in (r.label_probs or {}).items()) or None,
            ),
        ]
    )
    latency = _definitions(
        [
            ("upstream (ms)", _ms(r.upstream_ms)),
            ("review (ms)", _ms(r.review_ms)),
            ("rewrite (ms)", _ms(r.rewrite_ms)),
        ]
    )
    ids = _definitions(
        [
            ("judgement", r.id),
            ("request", r.request_id),
            ("trace", r.trace_id),
            ("client key id", r.client_key_id),
            ("origin", "review only (nothing generated)" if r.review_only else "completion"),
            ("time (UTC)", _time(r.created_at)),
            ("model", r.model),
            ("judge", r.judge_model),
            ("consumed by", r.consumed_by),
        ]
    )
    human = r.human_label.value if r.human_label else "none"
    label_form = el(
        "form",
        _csrf(csrf),
        el("p", "Human label: ", el("strong", human, id="human-label")),
        el(
            "button",
            "ethical",
            type="submit",
            name="label",
            value="ethical",
            aria_pressed="true" if r.human_label is Verdict.ETHICAL else "false",
        ),
        el(
            "button",
            "unethical",
            type="submit",
            name="label",
            value="unethical",
            aria_pressed="true" if r.human_label is Verdict.UNETHICAL else "false",
        ),
        el(
            "button",
            "clear label",
            type="submit",
            name="label",
            value="clear",
            disabled=r.human_label is None,
        ),
        method="post",
        action=f"/ui/judgements/{r.id}/label",
        class_="label",
    )
    reasoning = (
        el("section", el("h2", "The model's reasoning"), el("pre", r.reasoning))
        if r.reasoning
        else ""
    )
    body = el(
        "div",
        el("section", el("h2", "Label"), label_form),
        el("section", el("h2", "Conversation"), conversation),
        reasoning,
        el("section", el("h2", "Answer"), diff),
        el(
            "div",
            el("section", el("h2", "The judge's reading"), reading),
            el("section", el("h2", "Latency"), latency),
            el("section", el("h2", "Ids"), ids),
            class_="facts",
        ),
    )
    return layout("Judgement", body, csrf=csrf, current="judgements")


def _action(r: Judgement) -> str:
    return r.action.value if r.action else "no action recorded"


def _ms(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f}"


def overview_page(
    csrf: str,
    *,
    since: datetime,
    until: datetime,
    shown: int,
    capped: bool,
    verdicts: Html,
    actions: Html,
    rates: Sequence[tuple[str, object]],
    latency: Sequence[tuple[str, object]],
    judge: Sequence[tuple[str, object]] | None,
    query: dict[str, str],
) -> Html:
    window = el(
        "form",
        _field("since", "From", query.get("since"), "datetime-local"),
        _field("until", "To", query.get("until"), "datetime-local"),
        el("button", "Show", type="submit"),
        method="get",
        action="/ui/overview",
        class_="filters",
    )
    note = f"{shown} judgements from {_time(since)} to {_time(until)} UTC"
    if capped:
        note += f" (the newest {shown} only: narrow the window to see all)"
    human = (
        _definitions(judge)
        if judge is not None
        else el("p", "No judgement in this window has a human label yet.")
    )
    body = el(
        "div",
        window,
        el("p", note, class_="note"),
        el("div", verdicts, actions, class_="charts"),
        el(
            "div",
            el("section", el("h2", "Actions"), _definitions(rates)),
            el("section", el("h2", "Review latency"), _definitions(latency)),
            el("section", el("h2", "The judge against human labels"), human),
            class_="facts",
        ),
    )
    return layout("Overview", body, csrf=csrf, current="overview")
