"""The judge's hidden state read from its output layer, so that a probe reuses the prefix cache.

A probe (``conscience/probe.py``) reads the judge's last hidden state ``h`` at the verdict
position, after the model's final norm. llama.cpp returns that state from ``/v1/embeddings``,
but an embeddings request prefills its whole prompt every time: it never reuses the prefix
cache (measured: the same 774-token prompt took 12 s three times, where a completion of it
reused 773 tokens and took 0.06 s). A completion does reuse the cache, and the next-token
logits it computes are a linear function of the same state::

    logit_k = w_k · h                       (w_k: row k of the output matrix W; no bias)

llama.cpp reports probabilities, not logits: ``log p_k = logit_k - log Z``, with one unknown
``log Z`` a request. A one-token completion that asks for the probabilities of a fixed set S
of K > d tokens, each lifted by the same logit bias so that exactly they are the K most
probable (equal biases leave the differences between their logits unchanged), gives K linear
equations in the d + 1 unknowns ``(h, -log Z)``::

    log p_S = [W_S  1] · [h; c]     =>     [h; c] = pinv([W_S  1]) · log p_S

and the probe's input is ``h / ||h||``, as ``/v1/embeddings`` returns it (the L2 norm also
cancels any constant logit scale). ``W_S`` is read from the model's GGUF once, at start-up.

The state read so is the engine's own, with one difference from the embeddings route:
llama.cpp's CPU kernels multiply the quantised output matrix by an 8-bit copy of ``h``, so the
state recovered is that copy. Measured on the default model: cosine 0.9995 with the embeddings
route's vector (docs/benchmarks.md, "The probe through the prefix cache"); the probe is fitted
on states read the same way it reads them when serving (``run.json``'s ``read``).

Models whose logits are not ``W·h`` (a final logit soft-cap, as in Gemma 2; an output bias)
are refused; the engine then serves ``/v1/embeddings`` and the probe reads those
(``engine/connect.start_embedded``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from conscience.client import EngineClient
from conscience.errors import ConfigError, EngineError

__all__ = ["LogitsReader", "logits_reader"]

TOKENS = 2048  # K: more than the hidden size of the models a CPU serves (1536 for the default)
_BIAS = 100.0  # lifts S above every other token: logits span far less than this
_NORMAL_TOKEN = 1  # tokenizer.ggml.token_type of an ordinary token (not control, not padding)
# A word of ASCII letters, with the space marker of byte-level BPE (Ġ) or SentencePiece (▁). The
# completion samples one token of S; one that is part of a UTF-8 character is held back by
# llama.cpp until the character is complete, and with one token to predict its probabilities
# are then never reported (seen on the default model: "answered without ... probabilities").
_WORD_TOKEN = re.compile("[\u0120\u2581]?[A-Za-z]{2,}")
_MAX_CONDITION = 1e5  # beyond this the recovered state is noise, not the model's


@dataclass(frozen=True, eq=False)  # compared by identity: it holds an array
class LogitsReader:
    """Reads the judge's hidden state from a one-token completion's log-probabilities."""

    token_ids: tuple[int, ...]  # S, in the order of the inverse's columns
    inverse: np.ndarray  # pinv([W_S 1]): shape (d + 1, K)
    # The request's fixed part, built once: it is sent with every review.
    _asked: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        asked = {
            "n_predict": 1,
            "cache_prompt": True,
            "n_probs": len(self.token_ids),
            "post_sampling_probs": True,
            "logit_bias": [[t, _BIAS] for t in self.token_ids],
            "samplers": ["temperature"],
            "temperature": 1.0,
        }
        object.__setattr__(self, "_asked", asked)

    @classmethod
    def of_rows(cls, token_ids: list[int], rows: np.ndarray) -> LogitsReader:
        """The reader for the output rows ``rows`` (K x d) of ``token_ids``; refused when the
        equations cannot determine the state (K ≤ d, or rows nearly dependent)."""
        k, d = rows.shape
        if k != len(token_ids) or k <= d:
            raise ConfigError(f"{k} token rows cannot determine a {d}-dimensional state")
        system = np.hstack([rows.astype(np.float64), np.ones((k, 1))])
        u, singular, vt = np.linalg.svd(system, full_matrices=False)
        if singular[-1] <= 0 or singular[0] / singular[-1] > _MAX_CONDITION:
            raise ConfigError("the output rows of the chosen tokens are nearly dependent")
        inverse = (vt.T / singular) @ u.T  # the pseudo-inverse, from the same decomposition
        return cls(tuple(int(t) for t in token_ids), inverse)

    @property
    def size(self) -> int:
        """d: the length of the state it returns."""
        return self.inverse.shape[0] - 1

    def request(self, prompt: str) -> dict[str, Any]:
        """llama.cpp's ``/completion`` body: one token after ``prompt`` (its prefix from the
        cache), with the post-sampling probabilities of S, which the bias makes the top K.
        The temperature sampler alone turns logits into probabilities (no truncation)."""
        return {"prompt": prompt, **self._asked}

    def state(self, answer: dict[str, Any]) -> list[float]:
        """The unit-length hidden state from llama.cpp's answer to ``request``."""
        try:
            top = answer["completion_probabilities"][0]["top_probs"]
            probs = {int(entry["id"]): float(entry["prob"]) for entry in top}
            logs = [math.log(probs[t]) for t in self.token_ids]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise EngineError(
                f"engine answered without the asked token probabilities: {exc!r}"
            ) from exc
        h = (self.inverse @ np.asarray(logs))[:-1]
        norm = float(np.linalg.norm(h))
        if not math.isfinite(norm) or norm == 0.0:
            raise EngineError("the token probabilities give no hidden state")
        return (h / norm).tolist()

    async def read(self, client: EngineClient, prompt: str) -> list[float]:
        """The judge's hidden state at the end of ``prompt`` (text, already templated)."""
        return self.state(await client.llama_completion(self.request(prompt)))


def _output_matrix(reader: Any) -> Any:
    tensors = {t.name: t for t in reader.tensors}
    if "output.bias" in tensors:  # logits W·h + b: the bias would be read as part of the state
        raise ConfigError("an output layer with a bias is not read (logits are not W·h)")
    # Models with tied embeddings have no output.weight: the token embeddings are the head.
    found = tensors.get("output.weight") or tensors.get("token_embd.weight")
    if found is None:
        raise ConfigError("the GGUF has neither output.weight nor token_embd.weight")
    return found


def _word_tokens(fields: Any, n_rows: int) -> np.ndarray:
    """The ids of the ordinary tokens that are whole ASCII words (``_WORD_TOKEN``); a file
    without the vocabulary's texts: the ordinary ones."""
    types_field = fields.get("tokenizer.ggml.token_type")
    types = np.asarray(types_field.contents()) if types_field is not None else np.ones(n_rows)
    types = np.pad(types[:n_rows], (0, n_rows - min(len(types), n_rows)))  # missing: not ordinary
    ordinary = types == _NORMAL_TOKEN
    texts_field = fields.get("tokenizer.ggml.tokens")
    if texts_field is not None:
        texts = texts_field.contents()[:n_rows]
        words = np.array([_WORD_TOKEN.fullmatch(t) is not None for t in texts])
        ordinary &= np.pad(words, (0, n_rows - len(words)))
    return np.flatnonzero(ordinary)


def logits_reader(gguf_path: Path, tokens: int = TOKENS, seed: int = 0) -> LogitsReader:
    """The reader for the model in ``gguf_path``: ``tokens`` ordinary word tokens (at least a
    quarter more than the hidden size) chosen with ``seed`` (the same every start), their
    output rows dequantised from the file."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    fields = reader.fields
    arch_field = fields.get("general.architecture")
    arch = arch_field.contents() if arch_field is not None else ""
    if f"{arch}.final_logit_softcapping" in fields:
        raise ConfigError(f"{gguf_path.name}: soft-capped logits are not linear in the state")
    matrix = _output_matrix(reader)
    n_rows, hidden = int(matrix.data.shape[0]), int(matrix.shape[0])
    tokens = max(tokens, hidden + hidden // 4)
    words = _word_tokens(fields, n_rows)
    if len(words) < tokens:
        raise ConfigError(f"{gguf_path.name}: {len(words)} ordinary word tokens, {tokens} needed")
    chosen = np.sort(np.random.default_rng(seed).choice(words, tokens, replace=False))
    rows = gguf.quants.dequantize(np.asarray(matrix.data[chosen]), matrix.tensor_type)
    return LogitsReader.of_rows(chosen.tolist(), np.asarray(rows, dtype=np.float64))
