"""conscience.chunks against chunks written by hand (OpenAI's stream format, and llama.cpp's
native /completion stream)."""

from __future__ import annotations

from conscience.chunks import assemble, assemble_native

HEAD = {"id": "c1", "created": 7, "model": "m", "object": "chat.completion.chunk"}


def _chunk(delta: dict, finish: str | None = None, **extra: object) -> dict:
    return {**HEAD, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


def test_text_reasoning_and_logprobs_concatenate() -> None:
    step = {"token": "Hel", "logprob": -0.1, "top_logprobs": []}
    completion = assemble(
        [
            _chunk({"role": "assistant", "content": None}),
            _chunk({"reasoning_content": "think"}),
            {
                **_chunk({"content": "Hel"}),
                "choices": [
                    {"index": 0, "delta": {"content": "Hel"}, "logprobs": {"content": [step]}}
                ],
            },
            _chunk({"content": "lo"}),
            _chunk({}, "stop"),
            {**HEAD, "choices": [], "usage": {"completion_tokens": 2}},
        ]
    )
    assert completion["object"] == "chat.completion"
    assert (completion["id"], completion["created"], completion["model"]) == ("c1", 7, "m")
    (choice,) = completion["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": "Hello",
        "reasoning_content": "think",
    }
    assert choice["logprobs"] == {"content": [step]}
    assert choice["finish_reason"] == "stop"
    assert completion["usage"] == {"completion_tokens": 2}


def test_tool_calls_merge_by_index_and_content_stays_null() -> None:
    completion = assemble(
        [
            _chunk({"role": "assistant"}),
            _chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "a",
                            "type": "function",
                            "function": {"name": "get", "arguments": '{"ci'},
                        }
                    ]
                }
            ),
            _chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "put"}}]}),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": 1}'}}]}),
            _chunk({}, "tool_calls"),
        ]
    )
    message = completion["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {"type": "function", "id": "a", "function": {"name": "get", "arguments": '{"city": 1}'}},
        {"type": "function", "id": "b", "function": {"name": "put"}},
    ]
    assert completion["choices"][0]["finish_reason"] == "tool_calls"


def test_choices_are_kept_apart_by_index() -> None:
    chunks = [
        {**HEAD, "choices": [{"index": 1, "delta": {"content": "B"}}]},
        {**HEAD, "choices": [{"index": 0, "delta": {"content": "A"}}]},
        {**HEAD, "choices": [{"index": 1, "delta": {"content": "b"}, "finish_reason": "length"}]},
    ]
    choices = assemble(chunks)["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert [c["message"]["content"] for c in choices] == ["A", "Bb"]
    assert choices[1]["finish_reason"] == "length"


def test_a_legacy_completion_stream_becomes_a_text_completion() -> None:
    head = {"id": "t", "created": 1, "model": "m", "object": "text_completion"}
    completion = assemble(
        [
            {**head, "choices": [{"index": 0, "text": "Once", "logprobs": {"content": [1]}}]},
            {**head, "choices": [{"index": 0, "text": " upon", "logprobs": {"content": [2]}}]},
            {
                **head,
                "choices": [{"index": 0, "text": "", "finish_reason": "length"}],
                "usage": {"completion_tokens": 2},
            },
        ]
    )
    assert completion["object"] == "text_completion"
    assert completion["choices"] == [
        {
            "index": 0,
            "text": "Once upon",
            "logprobs": {"content": [1, 2]},
            "finish_reason": "length",
        }
    ]
    assert completion["usage"] == {"completion_tokens": 2}


def test_a_native_completion_stream_becomes_the_unary_answer() -> None:
    """llama.cpp's /completion stream: no [DONE]; the tokens' texts and probabilities in the
    chunks, the timings in the last one, which says stop."""
    first = {"id": 5, "token": "Yes", "prob": 0.6, "top_probs": [{"id": 5, "prob": 0.6}]}
    second = {"id": 9, "token": " no", "prob": 0.3, "top_probs": [{"id": 9, "prob": 0.3}]}
    answer = assemble_native(
        [
            {"content": "Yes", "stop": False, "completion_probabilities": [first]},
            {"content": " no", "stop": False, "completion_probabilities": [second]},
            {"content": "", "stop": True, "tokens_cached": 40, "timings": {"prompt_n": 3}},
        ]
    )
    assert answer == {
        "content": "Yes no",
        "stop": True,
        "tokens_cached": 40,
        "timings": {"prompt_n": 3},
        "completion_probabilities": [first, second],
    }
    assert "completion_probabilities" not in assemble_native([{"content": "", "stop": True}])
