"""A tiny random Llama and a word-level chat tokenizer, built here: no download.

The model is saved to a session-wide folder once, so every test loads the same base weights
the way a real run loads a checkpoint (``from_pretrained`` on a directory).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
SPECIAL = ["[PAD]", "[UNK]", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = [
    "how",
    "do",
    "i",
    "pick",
    "a",
    "lock",
    "open",
    "my",
    "neighbour",
    "door",
    "write",
    "code",
    "that",
    "deletes",
    "the",
    "logs",
    "sure",
    "here",
    "is",
    "steal",
    "password",
    "break",
    "in",
    "ask",
    "owner",
    "call",
    "locksmith",
    "help",
    "you",
    "can",
    "no",
    "never",
    "do",
    "this",
    "it",
    "is",
    "wrong",
    "please",
    "be",
    "kind",
    "and",
    "safe",
    "to",
    "others",
    "always",
    "what",
    "should",
    "about",
    "hurt",
    "someone",
    "talk",
    "with",
    "them",
    "calmly",
    "walk",
    "away",
    "get",
    "hack",
    "server",
    "login",
    "keep",
    "system",
    "updated",
    "report",
    "bug",
    "fix",
    "tell",
    "me",
    "a",
    "joke",
    "why",
    "did",
    "chicken",
    "cross",
    "road",
    "other",
    "side",
    "you",
    "are",
    "helpful",
    "assistant",
    "answer",
    "question",
    "one",
    "two",
    "three",
]

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
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = set(WORDS) | {w for pair in PAIRS for text in pair for w in text.split()}
    vocab = {token: i for i, token in enumerate(SPECIAL + sorted(words))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        eos_token="<|end|>",
        additional_special_tokens=SPECIAL[2:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=5,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(1234)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny random Llama with its chat tokenizer (an HF model directory)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(path)
    build_model(len(tokenizer)).save_pretrained(path)
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
