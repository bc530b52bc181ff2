"""Pairs to tokens: the chat template, the answer mask, batching, and bad rows counted."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from conscience.trainer.data import SKIP_REASONS, collate, encode_pairs, read_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer(tokenizer_factory):
    return tokenizer_factory()


def _row(prompt="how do i pick a lock", chosen="ask the owner", rejected="sure break in", **extra):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def _words(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(list(ids))


def test_conversational_row_uses_the_chat_template(tokenizer, rows):
    pairs, report = encode_pairs(rows[:1], tokenizer, max_length=64)
    assert report == {"rows": 1, "kept": 1, "skipped": {}, "skipped_ids": []}
    pair = pairs[0]
    assert pair.id == "pair-0"
    # The prompt is the template's rendering with the generation prompt; the answer the rest.
    prompt = ["<|user|>", "how", "do", "i", "pick", "a", "lock", "<|end|>", "<|assistant|>"]
    assert _words(tokenizer, pair.chosen_ids[: pair.prompt_len]) == prompt
    assert _words(tokenizer, pair.chosen_ids[pair.prompt_len :]) == [
        *["ask", "the", "owner", "or", "call", "a", "locksmith"],
        "<|end|>",
    ]
    assert _words(tokenizer, pair.rejected_ids[pair.prompt_len :]) == [
        *["sure", "here", "is", "how", "to", "break", "in"],
        "<|end|>",
    ]


def test_plain_strings_become_a_user_turn_and_an_answer(tokenizer, rows):
    plain, _ = encode_pairs([_row("how do i pick a lock", "ask the owner", "sure")], tokenizer, 64)
    chat, _ = encode_pairs(
        [
            _row(
                [{"role": "user", "content": "how do i pick a lock"}],
                [{"role": "assistant", "content": "ask the owner"}],
                [{"role": "assistant", "content": "sure"}],
            )
        ],
        tokenizer,
        64,
    )
    assert plain == chat


def test_system_and_multi_turn_prompts_are_kept(tokenizer):
    prompt = [
        {"role": "system", "content": "you are a helpful assistant"},
        {"role": "user", "content": "tell me a joke"},
        {"role": "assistant", "content": "why did the chicken cross the road"},
        {"role": "user", "content": "why"},
    ]
    pairs, report = encode_pairs([_row(prompt, "other side", "no")], tokenizer, 64)
    assert report["kept"] == 1
    assert _words(tokenizer, pairs[0].chosen_ids[:2]) == ["<|system|>", "you"]
    assert _words(tokenizer, pairs[0].chosen_ids[pairs[0].prompt_len - 1 :]) == [
        "<|assistant|>",
        "other",
        "side",
        "<|end|>",
    ]


def test_bad_rows_are_counted_never_raised(tokenizer, rows):
    long_answer = " ".join(["one two three"] * 30)
    bad = [
        None,  # a JSONL line that was not JSON
        "a string",
        {"prompt": "how", "chosen": "yes"},  # no rejected
        _row(chosen="   "),
        _row(rejected=""),
        _row(chosen="same answer", rejected="same answer"),
        _row(chosen=long_answer),
        _row(prompt=[{"role": "wizard", "content": "how"}]),
        _row(prompt=[{"role": "user", "content": [{"type": "text", "text": "how"}]}]),
        _row(prompt=[{"role": "assistant", "content": None}]),
        _row(prompt=[]),
        _row(chosen=[{"role": "user", "content": "ask the owner"}]),  # the answer must be assistant
        _row(chosen=[{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]),
        _row(prompt=42, id="x-13"),
    ]
    pairs, report = encode_pairs([*bad, *rows], tokenizer, max_length=40)
    assert len(pairs) == len(rows)
    assert report["rows"] == len(bad) + len(rows)
    assert report["kept"] == len(rows)
    assert report["skipped"] == {
        "malformed": 7,
        "empty_answer": 2,
        "identical": 1,
        "too_long": 1,
        "unknown_role": 1,
        "non_string_content": 2,
    }
    assert set(report["skipped"]) <= set(SKIP_REASONS)
    assert report["skipped_ids"] == ["x-13"]


def test_template_that_does_not_prefix_the_prompt_is_skipped(tokenizer_factory):
    odd = tokenizer_factory()
    # A template that writes the generation prompt differently from the assistant turn.
    odd.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<|system|> {% endif %}"
    )
    pairs, report = encode_pairs([_row()], odd, 64)
    assert pairs == []
    assert report["skipped"] == {"template_mismatch": 1}


def test_no_chat_template_concatenates_plain_text(tokenizer_factory):
    base = tokenizer_factory()
    base.chat_template = None
    pairs, report = encode_pairs([_row(chosen="ask the owner")], base, 64)
    assert report["kept"] == 1
    assert _words(base, pairs[0].chosen_ids) == [
        *["how", "do", "i", "pick", "a", "lock", "ask", "the", "owner"],
        "<|end|>",
    ]
    assert pairs[0].prompt_len == 6
    # Conversational rows need a template to be rendered at all.
    _, report = encode_pairs(
        [_row([{"role": "system", "content": "be kind"}, {"role": "user", "content": "how"}])],
        base,
        64,
    )
    assert report["skipped"] == {"template_mismatch": 1}


def test_collate_puts_chosen_then_rejected_with_answer_masks(tokenizer, rows):
    pairs, _ = encode_pairs(rows[:3], tokenizer, 64)
    batch = collate(pairs, pad_id=tokenizer.pad_token_id)
    assert batch.n_pairs == 3
    assert batch.input_ids.shape[0] == 6
    width = max(len(ids) for p in pairs for ids in (p.chosen_ids, p.rejected_ids))
    assert batch.input_ids.shape[1] == width
    halves = [(p.chosen_ids, i) for i, p in enumerate(pairs)]
    halves += [(p.rejected_ids, 3 + i) for i, p in enumerate(pairs)]
    for ids, row in halves:
        pair = pairs[row % 3]
        n = len(ids)
        assert batch.input_ids[row, :n].tolist() == list(ids)
        assert (batch.input_ids[row, n:] == tokenizer.pad_token_id).all()
        assert batch.attention_mask[row].tolist() == [1] * n + [0] * (width - n)
        # loss only on the answer: after the prompt, before the padding
        expected = [0] * pair.prompt_len + [1] * (n - pair.prompt_len) + [0] * (width - n)
        assert batch.loss_mask[row].tolist() == expected


def test_read_jsonl_marks_broken_lines(tmp_path, rows):
    path = tmp_path / "pairs.jsonl"
    lines = [json.dumps(rows[0]), "{not json", "", json.dumps(rows[1])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_jsonl(path) == [rows[0], None, rows[1]]
