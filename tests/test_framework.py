from pathlib import Path

import pytest

from conscience.errors import ConfigError
from conscience.framework import BUILTIN_DIR, load_framework_file, load_frameworks


def test_builtin_frameworks_load() -> None:
    frameworks = load_frameworks()
    assert set(frameworks) == {"three-laws", "four-laws", "wwjd"}
    assert "Zeroth Law" in frameworks["four-laws"].laws
    for virtue in ("Compassion", "Non-violence", "Humility", "Mercy"):
        assert virtue in frameworks["wwjd"].laws


def test_render_fills_framework_text() -> None:
    three = load_frameworks()["three-laws"]
    system = three.render("review_system")
    assert system.startswith("You are the conscience of an AI assistant.")
    assert "First Law: a robot may not injure a human being" in system
    assert "{" not in system
    user = three.render("review_user", question="Q?", answer="A.")
    assert user.startswith("Question:\nQ?\n\nAnswer:\nA.\n\nAnalyze whether this answer violates")
    assert "any of the Three Laws." in user


def _write(tmp_path: Path, name: str, **overrides: str) -> Path:
    text = (
        (BUILTIN_DIR / "three-laws.toml")
        .read_text()
        .replace('name = "three-laws"', f'name = "{name}"')
    )
    for old, new in overrides.items():
        text = text.replace(old, new)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_user_framework_is_added_and_can_replace_builtin(tmp_path: Path) -> None:
    _write(tmp_path, "mine", **{"Asimov's Three Laws of Robotics": "My Rules"})
    _write(tmp_path, "wwjd", **{"Asimov's Three Laws of Robotics": "Replaced"})
    frameworks = load_frameworks(tmp_path)
    assert frameworks["mine"].title == "My Rules"
    assert frameworks["wwjd"].title == "Replaced"
    assert "three-laws" in frameworks


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({'laws_name = "Three Laws"': 'laws_name = "Three Laws"\ncolour = "red"'}, "unknown keys"),
        ({'laws_name = "Three Laws"\n': ""}, "missing keys ['laws_name']"),
        ({"Reply with one word": "Reply in {language}"}, "unknown placeholders ['language']"),
        ({"Answer:\n{answer}\n\nAnalyze": "Analyze"}, "review_user must use ['answer']"),
        ({'title = "': 'title = 3\nx = "'}, "unknown keys"),
        ({"{laws}\n\nThe conversation": "{laws\n\nThe conversation"}, "bad template"),
    ],
)
def test_malformed_framework_names_file_and_problem(
    tmp_path: Path, change: dict[str, str], problem: str
) -> None:
    path = _write(tmp_path, "broken", **change)
    with pytest.raises(ConfigError) as info:
        load_framework_file(path)
    assert str(path) in str(info.value)
    assert problem in str(info.value)


def test_not_toml_and_name_mismatch(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    with pytest.raises(ConfigError, match="cannot be read as TOML"):
        load_framework_file(bad)
    other = _write(tmp_path, "one")
    renamed = other.rename(tmp_path / "two.toml")
    with pytest.raises(ConfigError, match="must match the file name 'two'"):
        load_framework_file(renamed)


def test_missing_user_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_frameworks(tmp_path / "nowhere")
