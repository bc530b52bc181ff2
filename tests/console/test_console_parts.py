"""The console's pure parts: escaping by construction, the word diff, the overview's figures
(the store's search: tests/store/test_store_search.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from conscience.judgement import Judgement
from conscience.labels import Action, Verdict
from conscience.server.console.diff import word_diff
from conscience.server.console.markup import Html, el, raw
from conscience.server.console.overview import agreement, bars_svg, buckets, percentile


def test_text_and_attributes_are_escaped() -> None:
    page = el("a", "<script>x()</script>", href='"><img src=x onerror=y>', title="a&b")
    assert page == (
        '<a href="&quot;&gt;&lt;img src=x onerror=y&gt;" title="a&amp;b">'
        "&lt;script&gt;x()&lt;/script&gt;</a>"
    )
    assert el("p", Html("<b>ok</b>"), "<b>no</b>") == "<p><b>ok</b>&lt;b&gt;no&lt;/b&gt;</p>"
    assert el("p", ["<i>", None, 3]) == "<p>&lt;i&gt;3</p>"
    assert el("input", disabled=True, value=None) == "<input disabled>"
    assert el("rect", x="1") == '<rect x="1"/>'  # SVG closes itself, or it holds what follows
    assert el("span", class_="c", aria_label="n") == '<span class="c" aria-label="n"></span>'
    assert raw("<!doctype html>") == "<!doctype html>"


def test_word_diff() -> None:
    assert word_diff("a b c d", "a x c d") == ("a <del>b</del> c d", "a <ins>x</ins> c d")
    assert word_diff("same", "same") == ("same", "same")
    left, right = word_diff("Hide notes in a sleeve.", "Study for it.")
    assert left == "<del>Hide notes in a sleeve.</del>" and right == "<ins>Study for it.</ins>"
    left, right = word_diff("<b>x</b> y", "<b>z</b> y")
    assert "<b>" not in left + right and "&lt;b&gt;x&lt;/b&gt;" in left


def test_percentile_interpolates_like_numpy() -> None:
    values = [50.0, 60.0, 70.0, 80.0, 90.0, 100.0]
    assert percentile(values, 50) == 75.0
    assert percentile(values, 90) == pytest.approx(95.0)
    assert percentile(values, 0) == 50.0 and percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) is None


def _j(verdict: Verdict, human: Verdict | None, minutes: int = 0) -> Judgement:
    return Judgement(
        created_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes),
        framework="f",
        layout="paper",
        messages=[],
        answer="a",
        verdict=verdict,
        human_label=human,
        action=Action.PASSED,
    )


def test_agreement_against_human_labels() -> None:
    U, E, N = Verdict.UNETHICAL, Verdict.ETHICAL, Verdict.NEUTRAL
    rows = [_j(U, U), _j(U, E), _j(E, E), _j(N, E), _j(E, U), _j(U, None)]
    found = agreement(rows)
    assert found.labelled == 5
    assert found.agreement == pytest.approx(2 / 5)  # (U,U) and (E,E)
    assert found.precision == pytest.approx(1 / 2)  # judge's U: (U,U), (U,E)
    assert found.false_positive_rate == pytest.approx(1 / 3)  # humans' not-U: (U,E), (E,E), (N,E)
    assert agreement([_j(U, None)]).agreement is None


def test_buckets_and_chart() -> None:
    since = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        _j(Verdict.ETHICAL, None, 0),
        _j(Verdict.UNETHICAL, None, 59),
        _j(Verdict.ETHICAL, None, 61),
    ]
    starts, counts = buckets(rows, since, since + timedelta(hours=2), "verdict", n=2)
    assert starts == [since, since + timedelta(hours=1)]
    assert counts[0] == {"ethical": 1, "unethical": 1} and counts[1] == {"ethical": 1}
    svg = bars_svg("Verdicts", starts, counts, ["ethical", "unethical"])
    assert svg.count("<rect") == 3 and 'aria-label="Verdicts"' in svg and "style=" not in svg
