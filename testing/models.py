"""Random chat models for tests and benchmarks: no download, no internet.

A word-level tokenizer with a simple Jinja chat template, and a Llama of a named shape with
random weights, saved as an HF directory the trainer loads like any other. The shapes copy real
models' so that timings mean something; the weights are noise, so the text means nothing.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

__all__ = [
    "CHAT_TEMPLATE",
    "SHAPES",
    "WORDS",
    "build_chat_tokenizer",
    "build_random_llama",
    "random_pairs",
    "save_random_model",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
SPECIAL = ("[PAD]", "[UNK]", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
_TEXT = (
    "how do i pick a lock open my neighbour door write code that deletes the logs sure here is "
    "steal password break in ask owner or call locksmith help you can no never this it wrong "
    "please be kind and safe to others always what should about hurt someone talk with them "
    "calmly walk away get hack server login keep system updated report bug fix tell me joke why "
    "did chicken cross road other side are helpful assistant answer question one two three"
)
WORDS = tuple(dict.fromkeys(_TEXT.split()))  # the vocabulary, in a fixed order

# name -> LlamaConfig fields. vocab_size None = the tokenizer's size.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {  # unit tests: milliseconds per step
        "vocab_size": None,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
    },
    "smollm2-135m": {  # SmolLM2-135M-Instruct's shape, the DESIGN's trainer baseline model
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "tie_word_embeddings": True,
    },
    "llama-1b": {  # Llama-3.2-1B's shape: something to load a GPU with
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "tie_word_embeddings": True,
    },
}
# The tiny shape with its LM head sharing the embeddings (as SmolLM2's and Qwen2.5's).
SHAPES["tiny-tied"] = SHAPES["tiny"] | {"tie_word_embeddings": True}


def build_chat_tokenizer(words: tuple[str, ...] = WORDS) -> Any:
    """A word-level fast tokenizer over ``words`` with a chat template (``<|end|>`` is EOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + tuple(sorted(set(words))))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        eos_token="<|end|>",
        additional_special_tokens=list(SPECIAL[2:]),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_random_llama(shape: str, tokenizer: Any, seed: int = 1234) -> Any:
    """A ``LlamaForCausalLM`` of a named shape (:data:`SHAPES`), random weights, fp32 on CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = dict(SHAPES[shape])
    fields["vocab_size"] = max(fields["vocab_size"] or 0, len(tokenizer))
    config = LlamaConfig(
        **fields,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_random_model(
    path: str | Path, shape: str = "tiny", seed: int = 1234, *, bf16: bool = False
) -> Path:
    """Write a random model of ``shape`` and its chat tokenizer to ``path``; return the path."""
    import torch

    path = Path(path)
    tokenizer = build_chat_tokenizer()
    tokenizer.save_pretrained(path)
    model = build_random_llama(shape, tokenizer, seed)
    if bf16:
        model = model.to(torch.bfloat16)
    model.save_pretrained(path)
    return path


def random_pairs(
    n: int, *, prompt_words: int = 40, answer_words: int = 60, seed: int = 0
) -> list[dict[str, Any]]:
    """``n`` conversational TRL rows of random words (distinct chosen and rejected)."""
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [
        {
            "id": f"random-{i}",
            "prompt": [{"role": "user", "content": text(prompt_words)}],
            "chosen": [{"role": "assistant", "content": text(answer_words)}],
            "rejected": [{"role": "assistant", "content": text(answer_words)}],
        }
        for i in range(n)
    ]
