"""A scripted OpenAI-compatible engine on loopback, for tests and benchmarks.

It is a real HTTP server (FastAPI under uvicorn, in a thread) whose answers a test sets in
advance: what the generator says, what the judge's label and label probabilities are, what
the rewrite is, and which faults to inject. Requests are told apart by model name: the judge
model with ``logprobs`` asked is a review, the judge model without is a rewrite, any other
model is a generation. ``free_port`` and ``serve_in_thread`` are ``server/threaded.py``'s,
re-exported here for the tests and benchmarks that start a scripted engine.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from conscience.probe import Probe
from conscience.server.threaded import free_port, serve_in_thread

__all__ = [
    "SCRIPTED_OUTPUT_ROWS",
    "SCRIPTED_PROBE",
    "Fault",
    "ScriptedEngine",
    "free_port",
    "serve_in_thread",
]

Kind = Literal["generate", "review", "rewrite"]

# A probe for the engine's 8-dimensional embeddings (a hash of the prompt): its P(unethical)
# is a fixed function of the review prompt, so a test can compute the verdict it must give.
SCRIPTED_PROBE = Probe(
    model="judge",
    framework="three-laws",
    layout="paper",
    max_answer_chars=300,
    mean=(0.5,) * 8,
    sd=(0.25,) * 8,
    weights=(1.0, -0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 2.0),
    bias=-0.1,
    threshold=0.6,
)
_FIRST_TOKENS = {"ethical": "eth", "neutral": "neutral", "unethical": "un"}
# The output layer of the scripted judge: 32 tokens over its 8-dimensional state. llama.cpp's
# /completion answers with softmax(OUTPUT_ROWS · state + logit bias), so the probe's reader
# through the logits (engine/hidden_state.py) recovers the state of the embeddings, normalised.
SCRIPTED_OUTPUT_ROWS = tuple(
    tuple((b - 127.5) / 127.5 for b in hashlib.sha256(f"row {i}".encode()).digest()[:8])
    for i in range(32)
)


@dataclass
class Fault:
    """What to do instead of answering: an error status, a delay, or a broken body."""

    status: int = 500
    delay: float = 0.0  # seconds before answering (past a client's timeout: a timeout)
    body: bytes | None = None  # raw bytes instead of JSON (garbage)
    times: int | None = None  # how many requests it hits; None = every one


@dataclass
class ScriptedEngine:
    judge_model: str = "judge"
    owned_by: str = "vllm"  # what /v1/models says; the review client picks its constraint by it
    generation: str | list[str] = "Paris is the capital of France."
    verdict: str = "ethical"
    verdict_probs: dict[str, float] | None = None  # None: the verdict gets 0.9
    rewrite: str = "Here is a safe and helpful answer."
    tool_calls: list[dict[str, Any]] | None = None  # the generator calls tools instead
    # The generator's whole message, in any shape an OpenAI-style upstream answers (audio with
    # its transcript, custom tool calls, a legacy function_call, a refusal, ...), and fields
    # added to its choice; they take the place of ``generation`` and ``tool_calls``.
    message: dict[str, Any] | None = None
    choice_fields: dict[str, Any] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)  # on every answer and fault
    stream_delay: float = 0.0  # seconds per word of an answer, streamed or not
    latency: dict[Kind, float] = field(default_factory=dict)  # seconds before a request's answer
    faults: dict[Kind, Fault] = field(default_factory=dict)
    handler: Callable[[Kind, dict[str, Any]], dict[str, Any] | None] | None = None
    requests: list[tuple[Kind, dict[str, Any]]] = field(default_factory=list)
    headers: list[tuple[Kind, dict[str, str]]] = field(default_factory=list)  # of each request
    adapters: dict[str, str] = field(default_factory=dict)  # vLLM-style runtime LoRA: name → path
    hidden_states: bool = True  # False: embeddings and /apply-template answer 501 (no --embeddings)
    # The context of the judge model, in words (a word stands for a token): a prompt of the judge
    # over it is vLLM's 400 context_length_exceeded, on chat, embeddings and /completion alike.
    judge_context_words: int | None = None
    # When things happened (time.monotonic()): each embeddings request with its inputs, and the
    # end of each streamed completion — what a test of work done during a generation reads.
    embedding_requests: list[tuple[float, Any]] = field(default_factory=list)
    token_prob_requests: list[str] = field(default_factory=list)  # /completion's prompts
    # For each /completion: was it a stream that asked for the prompt's progress?
    token_prob_streamed: list[bool] = field(default_factory=list)
    streams_ended: list[float] = field(default_factory=list)

    def kind(self, body: dict[str, Any]) -> Kind:
        if body.get("model") != self.judge_model:
            return "generate"
        return "review" if body.get("logprobs") else "rewrite"

    def of_kind(self, kind: Kind) -> list[dict[str, Any]]:
        return [body for k, body in self.requests if k == kind]

    # --- answers
    def _label_logprobs(self) -> dict[str, Any]:
        probs = self.verdict_probs or {
            label: (0.9 if label == self.verdict else 0.05) for label in _FIRST_TOKENS
        }
        # Each label's mass is split over two surface forms, plus a token that is no label,
        # so a reader must sum forms and renormalise to get the probabilities back.
        top = [{"token": "The", "logprob": math.log(0.1)}]
        for label, p in probs.items():
            if p > 0:
                first = _FIRST_TOKENS[label]
                top.append({"token": first, "logprob": math.log(0.9 * 0.7 * p)})
                top.append({"token": " " + first.capitalize(), "logprob": math.log(0.9 * 0.3 * p)})
        token = _FIRST_TOKENS[self.verdict]
        return {"content": [{"token": token, "logprob": top[1]["logprob"], "top_logprobs": top}]}

    def _choices(self, kind: Kind, body: dict[str, Any]) -> list[dict[str, Any]]:
        if kind == "review":
            message = {"role": "assistant", "content": self.verdict}
            return [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": self._label_logprobs(),
                    "finish_reason": "stop",
                }
            ]
        if kind == "rewrite":
            message = {"role": "assistant", "content": self.rewrite}
            return [{"index": 0, "message": message, "finish_reason": "stop"}]
        n = int(body.get("n") or 1)
        texts = self.generation if isinstance(self.generation, list) else [self.generation] * n
        choices = []
        for index in range(n):
            message: dict[str, Any] = {"role": "assistant", "content": texts[index % len(texts)]}
            finish = "stop"
            if self.tool_calls is not None:
                message = {"role": "assistant", "content": None, "tool_calls": self.tool_calls}
                finish = "tool_calls"
            if self.message is not None:
                message = json.loads(json.dumps(self.message))  # a copy the proxy may change
                calls = message.get("tool_calls") or message.get("function_call")
                finish = "tool_calls" if calls else "stop"
            choice = {"index": index, "message": message, "finish_reason": finish}
            choices.append({**choice, **self.choice_fields})
        return choices

    def completion(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        custom = self.handler(kind, body) if self.handler else None
        if custom is not None:
            return custom
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex[:12],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": self._choices(kind, body),
            "usage": self._usage(kind, body),
        }

    def _usage(self, kind: Kind, body: dict[str, Any]) -> dict[str, int]:
        """A generation's and a review's: 10 + 5; a rewrite's: its words, prompt and reply."""
        if kind != "rewrite":
            return {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        prompt = len(json.dumps(body.get("messages"), ensure_ascii=False).split())
        reply = len(self.rewrite.split())
        return {"prompt_tokens": prompt, "completion_tokens": reply, "total_tokens": prompt + reply}

    async def _stream(
        self, completion: dict[str, Any], usage: bool, progress: bool = False
    ) -> AsyncIterator[bytes]:
        """The completion as an OpenAI stream: reasoning, tool calls, then the content word by
        word; with ``usage`` (``stream_options.include_usage``), a last chunk that carries it;
        with ``progress`` (llama.cpp's ``return_progress``), the prompt's prefill first, in
        two of llama.cpp's progress chunks."""
        base = {k: completion[k] for k in ("id", "created", "model")}
        base["object"] = "chat.completion.chunk"
        for processed in (0, 8) if progress else ():
            role = {"index": 0, "delta": {"role": "assistant", "content": None}}
            step = {"total": 8, "cache": 0, "processed": processed, "time_ms": processed}
            yield _sse(
                {**base, "choices": [{**role, "finish_reason": None}], "prompt_progress": step}
            )
        for choice in completion["choices"]:
            index, message = choice["index"], choice["message"]
            first = {"index": index, "delta": {"role": "assistant", "content": ""}}
            yield _sse({**base, "choices": [{**first, "finish_reason": None}]})
            # Every field but the text, each in a delta of its own (tool calls indexed).
            for name, value in message.items():
                if name in ("role", "content") or not value:
                    continue
                if name == "tool_calls":
                    value = [{"index": i, **c} for i, c in enumerate(value)]
                delta = {"index": index, "delta": {name: value}, "finish_reason": None}
                extra = {k: v for k, v in choice.items() if k not in _CHOICE_KEYS}
                yield _sse({**base, "choices": [{**delta, **extra}]})
            content = message.get("content") or ""
            if isinstance(content, list):  # content parts stream as their text
                content = "".join(p.get("text") or "" for p in content)
            # The choice's token log-probs, one a word, as the words stream.
            tokens = (choice.get("logprobs") or {}).get("content") or []
            for i, word in enumerate(_words(content)):
                await asyncio.sleep(self.stream_delay)
                delta = {"index": index, "delta": {"content": word}, "finish_reason": None}
                if i < len(tokens):
                    delta["logprobs"] = {"content": [tokens[i]]}
                yield _sse({**base, "choices": [delta]})
            end = {"index": index, "delta": {}, "finish_reason": choice["finish_reason"]}
            yield _sse({**base, "choices": [end]})
        self.streams_ended.append(time.monotonic())
        if usage and completion.get("usage") is not None:
            yield _sse({**base, "choices": [], "usage": completion["usage"]})
        yield b"data: [DONE]\n\n"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            ids = ["gen", self.judge_model, *self.adapters]
            data = [{"id": i, "object": "model", "owned_by": self.owned_by} for i in ids]
            return {"object": "list", "data": data}

        @app.post("/v1/load_lora_adapter")
        async def load_lora_adapter(request: Request) -> Response:
            body = await request.json()  # vLLM's payload: {"lora_name", "lora_path"}
            if body.get("lora_name") in self.adapters:
                return JSONResponse({"error": {"message": "already loaded"}}, status_code=400)
            self.adapters[body["lora_name"]] = body["lora_path"]
            return Response(f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            kind = self.kind(body)
            self.requests.append((kind, body))
            self.headers.append((kind, dict(request.headers)))
            faulted = await self._fault(kind)
            if faulted is not None:
                faulted.headers.update(self.response_headers)
                return faulted
            if kind != "generate" and (over := self._over_context(body.get("messages"))):
                return over
            completion = self.completion(kind, body)
            if self.latency.get(kind):  # before the first byte, streamed or not
                await asyncio.sleep(self.latency[kind])
            if self.stream_delay and not body.get("stream"):  # as long as streaming it would
                words = sum(
                    len(_words(c["message"].get("content") or "")) for c in completion["choices"]
                )
                await asyncio.sleep(words * self.stream_delay)
            if body.get("stream"):
                usage = bool((body.get("stream_options") or {}).get("include_usage"))
                progress = bool(body.get("return_progress"))
                return StreamingResponse(
                    self._stream(completion, usage, progress),
                    media_type="text/event-stream",
                    headers=self.response_headers,
                )
            return JSONResponse(completion, headers=self.response_headers)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            body = await request.json()  # a legacy completion: a generation, like a chat one
            self.requests.append(("generate", body))
            faulted = await self._fault("generate")
            return faulted or JSONResponse(self.text_completion(body))

        @app.post("/v1/embeddings")
        async def embeddings(request: Request) -> Response:
            if not self.hidden_states:
                return _not_supported()
            body = await request.json()
            self.embedding_requests.append((time.monotonic(), body.get("input")))
            return self._over_context(body.get("input")) or JSONResponse(_embeddings(body))

        @app.post("/completion")
        async def native_completion(request: Request) -> Response:
            """llama.cpp's own route, as the probe's reader uses it: one token, and the
            post-sampling probabilities of the ``n_probs`` most probable tokens."""
            body = await request.json()
            if over := self._over_context(body["prompt"]):
                return over
            self.token_prob_requests.append(body["prompt"])
            stream, progress = bool(body.get("stream")), bool(body.get("return_progress"))
            self.token_prob_streamed.append(stream and progress)
            answer = _token_probs(body)
            if stream:
                chunks = _native_chunks(answer, progress)
                return StreamingResponse(chunks, media_type="text/event-stream")
            return JSONResponse(answer)

        @app.post("/apply-template")
        async def apply_template(request: Request) -> Response:
            """llama.cpp's: the prompt its chat template makes of the messages (a plain one)."""
            if not self.hidden_states:
                return _not_supported()
            messages = (await request.json())["messages"]
            turns = "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages)
            return JSONResponse({"prompt": turns + "<assistant>\n"})

        return app

    def _over_context(self, prompt: Any) -> Response | None:
        """vLLM's answer to a judge prompt over ``judge_context_words``; None: it fits."""
        if self.judge_context_words is None:
            return None
        words = len(json.dumps(prompt, ensure_ascii=False).split())
        if words <= self.judge_context_words:
            return None
        message = (
            f"This model's maximum context length is {self.judge_context_words} tokens."
            f" However, your request has {words} input tokens."
        )
        error = {"message": message, "type": "BadRequestError", "param": None}
        return JSONResponse({"error": {**error, "code": "context_length_exceeded"}}, 400)

    async def _fault(self, kind: Kind) -> Response | None:
        """The response of the fault set for ``kind``, if one is due (None: answer normally)."""
        fault = self.faults.get(kind)
        if fault is None or (fault.times is not None and fault.times <= 0):
            return None
        if fault.times is not None:
            fault.times -= 1
        await asyncio.sleep(fault.delay)
        if fault.body is not None:
            return Response(fault.body, status_code=fault.status)
        if fault.status >= 400:
            error = {"message": f"scripted fault {fault.status}", "type": "error"}
            return JSONResponse({"error": {**error, "param": None, "code": None}}, fault.status)
        return None

    def text_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """A legacy completion: ``n`` choices per prompt, choice ``p * n + j`` for prompt ``p``;
        with ``echo``, each text starts with its prompt."""
        prompts = body.get("prompt", "")
        prompts = [prompts] if isinstance(prompts, str) else prompts
        n = int(body.get("n") or 1)
        texts = self.generation if isinstance(self.generation, list) else [self.generation]
        choices = []
        for p, prompt in enumerate(prompts):
            echoed = prompt if body.get("echo") and isinstance(prompt, str) else ""
            for j in range(n):
                text = echoed + texts[(p * n + j) % len(texts)]
                choice = {"index": p * n + j, "text": text, "logprobs": None}
                choices.append({**choice, "finish_reason": "stop"})
        return {
            "id": "cmpl-" + uuid.uuid4().hex[:12],
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": choices,
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }


def _not_supported() -> Response:
    """llama.cpp's answer when it was started without ``--embeddings``."""
    error = {
        "code": 501,
        "message": "start the server with --embeddings",
        "type": "not_supported_error",
    }
    return JSONResponse({"error": error}, status_code=501)


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
    """Deterministic 8-dimensional embeddings, one per input, as floats or as base64 (the
    openai client's default)."""
    inputs = body.get("input", "")
    inputs = inputs if isinstance(inputs, list) else [inputs]
    data = []
    for index, text in enumerate(inputs):
        digest = hashlib.sha256(json.dumps(text).encode()).digest()
        vector = [b / 255 for b in digest[:8]]
        packed = base64.b64encode(struct.pack("<8f", *vector)).decode()
        embedding = packed if body.get("encoding_format") == "base64" else vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    usage = {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}
    return {"object": "list", "data": data, "model": body.get("model"), "usage": usage}


def _token_probs(body: dict[str, Any]) -> dict[str, Any]:
    """The scripted judge's next-token probabilities after ``body["prompt"]`` (its state: the
    embedding of the prompt), each token's logit raised by ``logit_bias``, the top ones."""
    [state] = [d["embedding"] for d in _embeddings({"input": [body["prompt"]]})["data"]]
    bias = {int(t): float(b) for t, b in body.get("logit_bias", [])}
    logits = [
        sum(w * h for w, h in zip(row, state, strict=True)) + bias.get(i, 0.0)
        for i, row in enumerate(SCRIPTED_OUTPUT_ROWS)
    ]
    top = max(logits)
    z = sum(math.exp(v - top) for v in logits)
    ranked = sorted(range(len(logits)), key=logits.__getitem__, reverse=True)
    probs = [
        {"id": i, "token": f"t{i}", "bytes": [], "prob": math.exp(logits[i] - top) / z}
        for i in ranked[: int(body.get("n_probs", 0))]
    ]
    first = {"id": ranked[0], "token": f"t{ranked[0]}", "prob": probs[0]["prob"] if probs else 1}
    return {
        "content": f"t{ranked[0]}",
        "completion_probabilities": [{**first, "top_probs": probs}],
        "timings": {"cache_n": 0, "prompt_n": len(body["prompt"])},
    }


async def _native_chunks(answer: dict[str, Any], progress: bool) -> AsyncIterator[bytes]:
    """``answer`` as llama.cpp streams its native ``/completion``: the prompt's progress when
    asked, the token with its probabilities, then a last chunk that says ``stop`` (no
    ``[DONE]``)."""
    for processed in (0, 8) if progress else ():
        step = {"total": 8, "cache": 0, "processed": processed, "time_ms": processed}
        yield _sse({"content": "", "stop": False, "prompt_progress": step})
    token = {k: answer[k] for k in ("content", "completion_probabilities")}
    yield _sse({**token, "stop": False})
    yield _sse({"content": "", "stop": True, "timings": answer["timings"]})


_CHOICE_KEYS = {"index", "message", "finish_reason", "logprobs"}


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words) if w or i == 0]


def main() -> None:
    """``python -m conscience.testing.scripted --port N``: the scripted engine as a process."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--verdict", default="ethical", choices=list(_FIRST_TOKENS))
    parser.add_argument("--words", type=int, default=0, help="answer length (0: one sentence)")
    parser.add_argument("--stream-delay", type=float, default=0.0, help="seconds per word")
    parser.add_argument("--review-latency", type=float, default=0.0, help="seconds per review")
    args = parser.parse_args()
    engine = ScriptedEngine(
        verdict=args.verdict,
        stream_delay=args.stream_delay,
        latency={"review": args.review_latency},
    )
    if args.words:
        engine.generation = " ".join(f"word{i}" for i in range(args.words))
    uvicorn.run(
        engine.app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
