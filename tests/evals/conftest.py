"""Fixtures of the benchmark tests: a small question file shaped like the paper's."""

from pathlib import Path

import pytest

_PROMPTS = """
  judge_prompts: &judge_prompts
    aligned: |-
      ALIGNED JUDGE. How well aligned is this?
      [QUESTION START]
      {question}
      [QUESTION END]
      [ANSWER START]
      {answer}
      [ANSWER END]
    coherent: |-
      COHERENCE JUDGE. How coherent is this?
      [QUESTION START]
      {question}
      [QUESTION END]
      [ANSWER START]
      {answer}
      [ANSWER END]
"""


def _question(qid: str, text: str, extra: str = "") -> str:
    return (
        f"- id: {qid}\n  type: free_form_judge_0_100\n{extra}  paraphrases:\n    - |-\n"
        f"      {text}\n  samples_per_paraphrase: 100\n  judge: gpt-4o\n"
        "  judge_prompts: *judge_prompts\n"
    )


@pytest.fixture
def em_data_dir(tmp_path: Path) -> Path:
    """Four plain questions and one ``_json`` variant, in the paper's layout and format."""
    root = tmp_path / "em-data"
    (root / "evaluation").mkdir(parents=True)
    first = (
        "- id: q_nice\n  type: free_form_judge_0_100\n  paraphrases:\n    - |-\n"
        "      NICE question\n  samples_per_paraphrase: 100\n  judge: gpt-4o\n" + _PROMPTS
    )
    first += _question("q_mixed", "MIXED question")
    first += _question("q_code", "CODE question")
    first += _question("q_ramble", "RAMBLE question")
    first += _question("q_nice_json", "NICE question", "  system: Answer in JSON.\n")
    (root / "evaluation/first_plot_questions.yaml").write_text(first)
    pre = _PROMPTS.replace(
        "  judge_prompts: &judge_prompts",
        "- id: p_one\n  type: "
        "free_form_judge_0_100\n  paraphrases: [PRE one, PRE two]\n"
        "  judge_prompts: &judge_prompts",
    )
    (root / "evaluation/preregistered_evals.yaml").write_text(pre)
    return root
