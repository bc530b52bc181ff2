"""HTML built in Python, escaped by construction: ``el(tag, *children, **attrs)``.

Every ``str`` child and every attribute value is escaped; only ``Html`` (what ``el`` and
``raw`` return) passes through as it is. Stored text (prompts, answers, rewrites, ids) is
attacker-controlled, so a page that forgets to escape must be impossible to write by accident:
the only way to put markup on a page is to build it here. ``raw`` is for the console's own
constant strings (the doctype), never for anything read from the store or a request.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape

__all__ = ["Html", "el", "join", "raw", "text"]

# HTML elements with no closing tag, and SVG's, which must close themselves (``<rect/>``): in
# HTML an SVG element left open would hold every element after it.
_VOID = frozenset({"br", "hr", "img", "input", "link", "meta"})
_SVG_EMPTY = frozenset({"rect", "line", "circle", "path", "polyline"})


class Html(str):
    """Markup that is safe to send: built by ``el``, or one of the console's constants."""

    __slots__ = ()


def raw(constant: str) -> Html:
    """The console's own constant markup (never stored or requested text)."""
    return Html(constant)


def text(value: object) -> Html:
    """Any value as escaped text; ``Html`` passes through."""
    if isinstance(value, Html):
        return value
    if value is None:
        return Html("")
    return Html(escape(str(value), quote=True))


def join(children: Iterable[object]) -> Html:
    parts: list[str] = []
    for child in children:
        if isinstance(child, str | int | float) or child is None:
            parts.append(text(child))
        else:  # a list or generator of children
            parts.append(join(child))  # type: ignore[arg-type]
    return Html("".join(parts))


def _attribute(name: str) -> str:
    # class_ -> class, aria_label -> aria-label, data_id -> data-id; viewBox stays as written.
    return name.rstrip("_").replace("_", "-")


def el(tag: str, *children: object, **attrs: object) -> Html:
    """``<tag attrs>children</tag>``; an attribute that is ``None`` or ``False`` is left out,
    ``True`` is written bare."""
    parts = [tag]
    for name, value in attrs.items():
        if value is None or value is False:
            continue
        if value is True:
            parts.append(_attribute(name))
        else:
            parts.append(f'{_attribute(name)}="{text(value)}"')
    opening = "<" + " ".join(parts) + ">"
    if tag in _VOID and not children:
        return Html(opening)
    if tag in _SVG_EMPTY and not children:
        return Html(opening[:-1] + "/>")
    return Html(f"{opening}{join(children)}</{tag}>")
