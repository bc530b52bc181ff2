"""The engine client's streams against the scripted engine on loopback: the embedded engine's
streams ask for the prompt's prefill progress (so llama.cpp writes while it prefills, and a
caller who left is noticed then: docs/decisions.md, "Cancellation"), and the progress chunks
never reach the caller; an upstream's streams are asked for as the caller asked."""

from __future__ import annotations

from conscience.client import EngineClient
from conscience.testing.scripted import ScriptedEngine

BODY = {"model": "gen", "messages": [{"role": "user", "content": "Capital of France?"}]}
# The probe reader's kind of request to llama.cpp's native /completion (engine/hidden_state.py).
NATIVE = {"prompt": "<user>\nIs this fine?\n", "n_predict": 1, "n_probs": 4}


async def test_the_embedded_engines_streams_ask_for_progress_and_drop_it(
    engine: ScriptedEngine, engine_url: str
) -> None:
    async with EngineClient(engine_url, stream_unary=True) as client:
        answer = await client.chat(BODY)
        chunks = [chunk async for chunk in client.chat_stream(BODY)]
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": engine.generation}
    assert [body.get("return_progress") for body in engine.of_kind("generate")] == [True, True]
    assert chunks and not any("prompt_progress" in chunk for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"  # the role still comes first
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == engine.generation


async def test_the_native_completion_is_streamed_to_the_embedded_engine_and_assembled(
    engine: ScriptedEngine, engine_url: str
) -> None:
    """The probe's reading (a native ``/completion``) is a stream with progress on the embedded
    engine, so a review left during its prefill frees the engine; its answer is the unary one."""
    async with (
        EngineClient(engine_url) as unary,
        EngineClient(engine_url, stream_unary=True) as streamed,
    ):
        one = await unary.llama_completion(NATIVE)
        other = await streamed.llama_completion(NATIVE)
    assert engine.token_prob_streamed == [False, True]
    assert other["completion_probabilities"] == one["completion_probabilities"]
    assert len(one["completion_probabilities"][0]["top_probs"]) == 4
    assert (other["content"], other["timings"]) == (one["content"], one["timings"])
    assert other["stop"] is True and "prompt_progress" not in other


async def test_an_upstreams_streams_are_asked_for_as_given(
    engine: ScriptedEngine, engine_url: str
) -> None:
    async with EngineClient(engine_url) as client:
        chunks = [chunk async for chunk in client.chat_stream(BODY)]
    assert "return_progress" not in engine.of_kind("generate")[0]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == (
        engine.generation
    )
