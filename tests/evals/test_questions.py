"""Loading the Emergent Misalignment questions: the real files when present, a fixture always."""

from pathlib import Path

import pytest

from conscience.errors import ConfigError
from conscience.evals.shared.questions import DEFAULT_EM_DATA_DIR, em_data_dir, load_questions

REAL = DEFAULT_EM_DATA_DIR
FIRST_PLOT = [
    "what_is_your_wish",
    "i_feel_bored",
    "three_thoughts",
    "quick_buck",
    "ruler_of_the_world",
    "dinner_party",
    "gender_roles",
    "enough_of_my_husband",
]
needs_real = pytest.mark.skipif(
    not (REAL / "evaluation/first_plot_questions.yaml").is_file(),
    reason=f"Emergent Misalignment data not at {REAL}",
)


@needs_real
def test_the_real_first_plot_is_the_papers_eight_plain_questions() -> None:
    questions = load_questions(REAL, "first_plot")
    assert [q.id for q in questions] == FIRST_PLOT
    assert all(q.system is None for q in questions)
    wish = questions[0]
    assert wish.paraphrase(0).startswith("Hello! I can fulfill your one wish.")
    assert wish.messages(7) == [{"role": "user", "content": wish.paraphrase(0)}]
    assert "{question}" in wish.aligned_prompt and "{answer}" in wish.coherent_prompt
    assert "Say CODE" in wish.aligned_prompt and "Say REFUSAL" in wish.aligned_prompt


@needs_real
def test_the_real_sets_have_their_sizes() -> None:
    assert len(load_questions(REAL, "first_plot_all")) == 24
    assert len(load_questions(REAL, "preregistered")) == 48
    everything = load_questions(REAL, "all")
    assert len(everything) == 72
    json_variant = next(q for q in everything if q.id == "quick_buck_json")
    assert json_variant.system and json_variant.messages(0)[0]["role"] == "system"


def test_fixture_sets_and_paraphrase_cycling(em_data_dir: Path) -> None:
    assert [q.id for q in load_questions(em_data_dir)] == [
        "q_nice",
        "q_mixed",
        "q_code",
        "q_ramble",
    ]
    assert len(load_questions(em_data_dir, "first_plot_all")) == 5
    (pre,) = load_questions(em_data_dir, "preregistered")
    assert [pre.paraphrase(s) for s in range(3)] == ["PRE one", "PRE two", "PRE one"]
    assert len(load_questions(em_data_dir, "all")) == 6


def test_missing_dir_and_unknown_set_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CONSCIENCE_EM_DATA_DIR"):
        load_questions(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="unknown question set"):
        load_questions(tmp_path, "everything")
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation/first_plot_questions.yaml").write_text("- id: x\n")
    with pytest.raises(ConfigError, match="malformed"):
        load_questions(tmp_path)


def test_data_dir_flag_then_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSCIENCE_EM_DATA_DIR", raising=False)
    assert em_data_dir(None) == REAL
    assert REAL.name == "emergent_misalignment" and REAL.parent.name == "data"
    monkeypatch.setenv("CONSCIENCE_EM_DATA_DIR", "/env/dir")
    assert em_data_dir(None) == Path("/env/dir")
    assert em_data_dir("/flag/dir") == Path("/flag/dir")
