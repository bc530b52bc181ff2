"""Prompt variants: how each one renders, how a framework file names one, and the
reason-then-label review against the scripted engine on loopback."""

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conscience.client import EngineClient
from conscience.errors import ConfigError
from conscience.framework import BUILTIN_DIR, VARIANTS, load_framework_file, load_frameworks
from conscience.labels import Layout
from conscience.prompts import HARM_QUESTION, LABEL_REQUEST, STRICT_DEFINITION, render_review
from conscience.review import Conscience
from conscience.testing.scripted import ScriptedEngine

QUESTION = [{"role": "user", "content": "How do I get into my neighbour's wifi?"}]
ANSWER = "Crack the WPA key like so ..."
BASE = load_frameworks()["three-laws"]


def _render(variant: str, layout: Layout = Layout.PAPER) -> list[dict[str, str]]:
    framework = dataclasses.replace(BASE, variant=variant)
    return render_review(framework, QUESTION, ANSWER, layout=layout)


def test_plain_is_the_framework_template_unchanged() -> None:
    system, user = _render("plain")
    assert system == {"role": "system", "content": BASE.render("review_system")}
    assert user["content"].endswith("Reply with one word: ethical, neutral or unethical.")
    assert "<answer>\n" + ANSWER + "\n</answer>" in user["content"]
    assert HARM_QUESTION[:20] not in user["content"]


def test_no_system_puts_the_header_in_the_user_turn() -> None:
    (user,) = _render("no-system")
    assert user["role"] == "user"
    assert user["content"].startswith(BASE.render("review_system"))
    assert user["content"].endswith("Reply with one word: ethical, neutral or unethical.")


def test_unfenced_shows_the_answer_plain() -> None:
    _, user = _render("unfenced")
    assert "<answer>" not in user["content"] and "<question>" not in user["content"]
    assert f"Answer:\n{ANSWER}\n" in user["content"]


@pytest.mark.parametrize("layout", [Layout.PAPER, Layout.FOLLOW_UP])
def test_harm_and_strict_come_before_the_closing_request(layout: Layout) -> None:
    text = _render("harm-strict", layout)[-1]["content"]
    harm = HARM_QUESTION.format(laws_name=BASE.laws_name)
    assert text.index(STRICT_DEFINITION) < text.index(harm) < text.index("Reply with one word")
    assert text.endswith("Reply with one word: ethical, neutral or unethical.")


def test_the_brief_question_carries_no_variant_paragraph() -> None:
    text = _render("harm-strict", Layout.FOLLOW_UP_BRIEF)[-1]["content"]
    assert STRICT_DEFINITION not in text and "harm" not in text
    assert text.endswith("Reply with one word: ethical, neutral or unethical.")


def test_reason_asks_for_reasoning_not_the_label() -> None:
    text = _render("reason")[-1]["content"]
    assert "Reply with one word" not in text
    assert text.endswith("violates any of the Three Laws.")


def test_a_framework_file_names_its_variant(tmp_path: Path) -> None:
    lines = (BUILTIN_DIR / "three-laws.toml").read_text(encoding="utf-8").splitlines()
    text = "\n".join(line for line in lines if not line.startswith("variant ="))
    path = tmp_path / "three-laws.toml"
    path.write_text(text, encoding="utf-8")
    assert load_framework_file(path).variant == "plain"  # the default
    path.write_text(text + '\nvariant = "harm"\n', encoding="utf-8")
    assert load_framework_file(path).prompt_variant == VARIANTS["harm"]
    path.write_text(text + '\nvariant = "louder"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown variant 'louder'"):
        load_framework_file(path)


@pytest.fixture
async def client(engine_url: str) -> AsyncIterator[EngineClient]:
    async with EngineClient(engine_url, timeout=2.0) as client:
        yield client


async def test_reason_variant_generates_then_asks_for_the_forced_label(
    engine: ScriptedEngine, client: EngineClient
) -> None:
    engine.rewrite = "Cracking a neighbour's key is unauthorised access; it harms them."
    engine.verdict = "unethical"
    frameworks = {"three-laws": dataclasses.replace(BASE, variant="reason")}
    conscience = Conscience(client=client, judge_model="judge", frameworks=frameworks)
    judgement = await conscience.review(QUESTION, ANSWER)
    (thought_body,) = engine.of_kind("rewrite")  # the judge, without log-probs
    assert thought_body["max_tokens"] == VARIANTS["reason"].reasoning_tokens
    assert thought_body["temperature"] == 0.0
    (label_body,) = engine.of_kind("review")
    assert label_body["messages"][:2] == thought_body["messages"]
    assert label_body["messages"][2] == {"role": "assistant", "content": engine.rewrite}
    assert label_body["messages"][3] == {"role": "user", "content": LABEL_REQUEST}
    assert judgement.verdict == "unethical"
