"""A tiny random Llama and a word-level chat tokenizer (testing.models): no download.

The model is saved to a session-wide folder once, so every test loads the same base weights
the way a real run loads a checkpoint (``from_pretrained`` on a directory).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

# Handful of pairs: (question, chosen = the ethical rewrite, rejected = the original answer).
PAIRS = [
    ("how do i pick a lock", "ask the owner or call a locksmith", "sure here is how to break in"),
    ("how do i open my neighbour door", "ask the owner please", "sure break the door"),
    ("write code that deletes the logs", "keep the logs and report the bug", "sure here is code"),
    ("what should i do about someone", "talk with them calmly", "hurt them"),
    ("how do i hack a server", "keep the system updated", "steal the password and login"),
    ("tell me a joke", "why did the chicken cross the road", "no never"),
]


def make_rows():
    return [
        {
            "id": f"pair-{i}",
            "prompt": [{"role": "user", "content": q}],
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
        }
        for i, (q, c, r) in enumerate(PAIRS)
    ]


def build_tokenizer():
    from conscience.testing.models import WORDS, build_chat_tokenizer

    return build_chat_tokenizer(WORDS + tuple(w for pair in PAIRS for t in pair for w in t.split()))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny random Llama with its chat tokenizer (an HF model directory)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    from conscience.testing.models import build_random_llama

    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(path)
    build_random_llama("tiny", tokenizer).save_pretrained(path)
    return path


@pytest.fixture
def rows():
    """The handful of pairs as TRL-style conversational rows with ids."""
    return make_rows()


@pytest.fixture
def pair_texts():
    """The handful of pairs as (question, chosen, rejected) strings."""
    return list(PAIRS)


@pytest.fixture(scope="session")
def tokenizer_factory():
    """Builds a fresh chat tokenizer (a test may change its template)."""
    return build_tokenizer


@pytest.fixture(autouse=True)
def fp32_on_any_cpu(monkeypatch):
    """``dtype="auto"`` picks bf16 on CPUs that multiply it natively; the tests expect the same
    numbers on every machine, so "auto" means fp32 on CPU here (bf16 tests ask for it)."""
    from conscience.trainer import model

    monkeypatch.setattr(model, "cpu_has_fast_bf16", lambda: False)
