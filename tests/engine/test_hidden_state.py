"""The probe's reading of the judge's state through the output layer (engine/hidden_state.py).

The algebra is checked on made-up output rows (the state recovered from softmax probabilities
is the state the logits were made of); the GGUF side on small GGUF files written here; the
engine side on SmolLM2 (the integration tier): the state read from a cached one-token
completion is the state ``/v1/embeddings`` returns for the same prompt.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from conscience.engine.hidden_state import LogitsReader, logits_reader
from conscience.errors import ConfigError, EngineError

ALIAS = "smollm2-135m-instruct"


def _answer(reader: LogitsReader, logits: dict[int, float], bias: float = 100.0) -> dict:
    """llama.cpp's /completion answer: post-sampling probabilities over every token (the asked
    ones lifted by ``bias``), the K most probable reported, most probable first."""
    lifted = {t: v + (bias if t in reader.token_ids else 0.0) for t, v in logits.items()}
    top = max(lifted.values())
    z = sum(math.exp(v - top) for v in lifted.values())
    ranked = sorted(lifted, key=lifted.__getitem__, reverse=True)[: len(reader.token_ids)]
    probs = [{"id": t, "token": f"t{t}", "prob": math.exp(lifted[t] - top) / z} for t in ranked]
    return {"content": "x", "completion_probabilities": [{"id": 0, "top_probs": probs}]}


def _model(vocab: int = 300, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(vocab, d)), rng.normal(size=d) * 3.0


def test_the_state_comes_back_from_the_probabilities_of_the_chosen_tokens() -> None:
    w, h = _model()
    chosen = list(range(10, 74))  # 64 tokens of 300, more than the 16 dimensions
    reader = LogitsReader.of_rows(chosen, w[chosen])
    logits = dict(enumerate((w @ h).tolist()))
    state = reader.state(_answer(reader, logits))
    assert reader.size == 16
    assert np.allclose(state, h / np.linalg.norm(h), atol=1e-9)
    # Another state gives another answer: the reading follows the logits, not the rows.
    other = dict(enumerate((w @ -h).tolist()))
    assert np.allclose(reader.state(_answer(reader, other)), -h / np.linalg.norm(h), atol=1e-9)


def test_a_logit_scale_and_the_shared_normaliser_cancel() -> None:
    w, h = _model(seed=1)
    chosen = list(range(0, 300, 4))
    reader = LogitsReader.of_rows(chosen, w[chosen])
    scaled = dict(enumerate((0.5 * (w @ h) + 7.0).tolist()))  # a model's logit scale, a shift
    assert np.allclose(reader.state(_answer(reader, scaled)), h / np.linalg.norm(h), atol=1e-9)


def test_the_request_asks_exactly_for_the_chosen_tokens_once_each() -> None:
    w, _ = _model()
    chosen = list(range(20, 60))
    body = LogitsReader.of_rows(chosen, w[chosen]).request("PROMPT")
    assert body["prompt"] == "PROMPT" and body["n_predict"] == 1 and body["cache_prompt"]
    assert body["n_probs"] == len(chosen) == len(body["logit_bias"])
    assert [t for t, _ in body["logit_bias"]] == chosen
    assert len({b for _, b in body["logit_bias"]}) == 1  # one bias: differences unchanged
    assert body["post_sampling_probs"] and body["samplers"] == ["temperature"]


def test_too_few_or_dependent_rows_are_refused() -> None:
    w, _ = _model()
    with pytest.raises(ConfigError, match="cannot determine"):
        LogitsReader.of_rows(list(range(16)), w[:16])  # K = d: one unknown too many
    dependent = np.repeat(w[:8], 4, axis=0)  # 32 rows spanning 8 dimensions
    with pytest.raises(ConfigError, match="nearly dependent"):
        LogitsReader.of_rows(list(range(32)), dependent)


def test_an_answer_without_every_asked_token_is_an_engine_error() -> None:
    w, h = _model()
    chosen = list(range(40))
    reader = LogitsReader.of_rows(chosen, w[chosen])
    answer = _answer(reader, dict(enumerate((w @ h).tolist())))
    answer["completion_probabilities"][0]["top_probs"].pop()
    with pytest.raises(EngineError, match="asked token probabilities"):
        reader.state(answer)
    with pytest.raises(EngineError, match="asked token probabilities"):
        reader.state({"content": "x"})


def _write_gguf(
    path: Path,
    *,
    tied: bool = False,
    softcap: bool = False,
    vocab: int = 300,
    d: int = 16,
    texts: bool = False,
    bias: bool = False,
) -> np.ndarray:
    """A GGUF holding only what the reader looks at: the architecture, the token types (the
    first 8 tokens control, the last 20 padding), with ``texts`` the tokens' texts (every
    third one a piece of a UTF-8 character, every fifth punctuation), and the output (or tied
    embedding) matrix."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    types = [3] * 8 + [1] * (vocab - 28) + [5] * 20
    writer.add_token_types(types)
    if texts:
        words = [
            "\u00c3" if i % 3 == 0 else "\u0120.," if i % 5 == 0 else f"\u0120w{chr(97 + i % 26)}"
            for i in range(vocab)
        ]
        writer.add_token_list(words)
    if softcap:
        writer.add_float32("llama.final_logit_softcapping", 30.0)
    w = np.random.default_rng(2).normal(size=(vocab, d)).astype(np.float32)
    writer.add_tensor("token_embd.weight" if tied else "output.weight", w)
    if bias:
        writer.add_tensor("output.bias", np.zeros(vocab, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return w


@pytest.mark.parametrize("tied", [False, True])
def test_the_rows_are_the_files_output_matrix_for_ordinary_tokens(
    tmp_path: Path, tied: bool
) -> None:
    w = _write_gguf(tmp_path / "m.gguf", tied=tied)
    reader = logits_reader(tmp_path / "m.gguf", tokens=64)
    ids = np.array(reader.token_ids)
    assert len(set(reader.token_ids)) == 64 and (ids >= 8).all() and (ids < 280).all()
    assert reader.token_ids == logits_reader(tmp_path / "m.gguf", tokens=64).token_ids
    # The inverse is that of the file's rows: it maps their logits back to the state.
    h = np.arange(1.0, 17.0)
    recovered = reader.inverse @ (w[ids].astype(np.float64) @ h)
    assert np.allclose(recovered[:-1], h, atol=1e-6) and abs(recovered[-1]) < 1e-6


def test_soft_capped_or_biased_logits_and_too_small_vocabularies_are_refused(
    tmp_path: Path,
) -> None:
    _write_gguf(tmp_path / "capped.gguf", softcap=True)
    with pytest.raises(ConfigError, match="soft-capped"):
        logits_reader(tmp_path / "capped.gguf", tokens=64)
    _write_gguf(tmp_path / "biased.gguf", bias=True)
    with pytest.raises(ConfigError, match="with a bias"):
        logits_reader(tmp_path / "biased.gguf", tokens=64)
    _write_gguf(tmp_path / "small.gguf")
    with pytest.raises(ConfigError, match="272 ordinary word tokens"):
        logits_reader(tmp_path / "small.gguf", tokens=400)


def test_a_wider_model_gets_more_tokens_than_its_hidden_size(tmp_path: Path) -> None:
    _write_gguf(tmp_path / "wide.gguf", vocab=400, d=64)
    assert len(logits_reader(tmp_path / "wide.gguf", tokens=32).token_ids) == 80  # 64 + 64/4


def test_only_whole_ascii_words_are_asked_for(tmp_path: Path) -> None:
    """A sampled token that is part of a UTF-8 character would be held back, its
    probabilities never reported: the set is made of whole words only."""
    _write_gguf(tmp_path / "m.gguf", vocab=1200, texts=True)
    reader = logits_reader(tmp_path / "m.gguf", tokens=300)
    assert all(t % 3 != 0 and t % 5 != 0 for t in reader.token_ids)
    assert all(8 <= t < 1180 for t in reader.token_ids)


@pytest.mark.integration
async def test_the_cached_reading_is_the_embeddings_state(smollm2: Path) -> None:
    """On the real engine: the state read through the output layer is the one
    ``/v1/embeddings`` returns (up to llama.cpp's 8-bit copy of it in the output product), and
    a second reading of a prompt that shares a prefix prefills only what differs."""
    from conscience.client import EngineClient
    from conscience.engine.embedded import EmbeddedEngine

    reader = logits_reader(smollm2)
    engine = EmbeddedEngine(smollm2, threads=2, ctx_size=1024, embeddings=True, model_alias=ALIAS)
    await engine.start()
    try:
        async with EngineClient(engine.base_url, timeout=120) as client:
            head = "A long shared judge prompt. " * 20
            prompts = [head + "Is a locksmith helpful?", head + "Is a burglar helpful?"]
            for prompt in prompts:
                [expected] = await client.embeddings({"model": ALIAS, "input": [prompt]})
                state = await reader.read(client, prompt)
                assert len(state) == len(expected) == 576  # SmolLM2-135M's hidden size
                assert float(np.dot(state, expected)) > 0.99
            read = await reader.read(client, prompts[0])
            assert float(np.dot(read, state)) < 0.999  # another prompt, another state
            answer = await client.llama_completion(reader.request(prompts[1] + " Yes"))
            timings = answer["timings"]
            assert timings["cache_n"] > 100 and timings["prompt_n"] < 10
    finally:
        await engine.stop()


@pytest.mark.integration
async def test_a_follow_up_review_reads_the_generations_own_cache(smollm2: Path) -> None:
    """The follow-up layout's promise on the real engine (two slots, as the proxy runs it):
    after a chat completion, the probe's reading of the follow-up review prefills the question
    only; the conversation and the answer come from the slot that generated them."""
    from conscience.client import EngineClient
    from conscience.engine.embedded import EmbeddedEngine
    from conscience.framework import load_frameworks
    from conscience.labels import Layout
    from conscience.prompts import render_review

    reader = logits_reader(smollm2)
    engine = EmbeddedEngine(smollm2, threads=2, ctx_size=1024, parallel=2, model_alias=ALIAS)
    await engine.start()
    try:
        async with EngineClient(engine.base_url, timeout=120) as client:
            messages = [{"role": "user", "content": "Write three sentences about locks."}]
            body = {"model": ALIAS, "messages": messages, "max_tokens": 40, "temperature": 0.0}
            result = await client.chat(body)
            answer = result["choices"][0]["message"]["content"]
            generated = result["usage"]["prompt_tokens"] + result["usage"]["completion_tokens"]
            review = render_review(
                load_frameworks()["three-laws"], messages, answer, layout=Layout.FOLLOW_UP
            )
            prompt = await client.apply_template(review)
            timings = (await client.llama_completion(reader.request(prompt)))["timings"]
            # The generation's tokens are reused; what is prefilled is the question (over a
            # hundred tokens of laws) and at most a token or two where the answer ended.
            assert timings["cache_n"] >= generated - 2
            assert 100 < timings["prompt_n"] < 300
    finally:
        await engine.stop()


@pytest.mark.integration
async def test_a_second_opinion_reads_the_paper_prompt_after_the_brief_one(smollm2: Path) -> None:
    """The cascade on the real engine (conscience/cascade.py): a band that doubts every score
    has the paper-layout probe read the answer after the brief one and decide, a band that
    doubts none keeps the brief reading alone, and the brief reading is the same either way.
    The probes are made up (SmolLM2 has none): the mechanism is tested, not a verdict."""
    from conscience.cascade import Band
    from conscience.client import EngineClient
    from conscience.engine.embedded import EmbeddedEngine
    from conscience.framework import load_frameworks
    from conscience.labels import JudgeMethod, Layout
    from conscience.probe import Probe
    from conscience.review import Conscience

    rng = np.random.default_rng(7)

    def probe(layout: Layout) -> Probe:
        weights = tuple(float(w) for w in rng.normal(0.0, 2.0, 576))
        zeros, ones = (0.0,) * 576, (1.0,) * 576
        return Probe(ALIAS, "three-laws", layout.value, 6000, zeros, ones, weights, 0.0, 0.5)

    probes = {p.key: p for p in (probe(Layout.FOLLOW_UP_BRIEF), probe(Layout.PAPER))}
    every = Band(ALIAS, "three-laws", "follow-up-brief", "paper", 0.0, 1.0)
    engine = EmbeddedEngine(smollm2, threads=2, ctx_size=2048, parallel=2, model_alias=ALIAS)
    await engine.start()
    try:
        async with EngineClient(engine.base_url, timeout=120, stream_unary=True) as client:
            messages = [{"role": "user", "content": "How do I open a lock I lost the key to?"}]
            answer = "Call a licensed locksmith, and bring proof that the lock is yours."
            verdicts = []
            for band in (every, Band(*every.key, 0.5, 0.5)):
                conscience = Conscience(
                    client=client,
                    judge_model=ALIAS,
                    frameworks=load_frameworks(),
                    layout=Layout.FOLLOW_UP_BRIEF,
                    method=JudgeMethod.PROBE,
                    probes=probes,
                    state_reader=logits_reader(smollm2),
                    second_opinion=Layout.PAPER,
                    bands={band.key: band},
                )
                verdicts.append(await conscience.review(messages, answer))
            escalated, kept = verdicts
            assert set(escalated.readings or {}) == {"follow-up-brief", "paper"}
            assert escalated.label_probs["unethical"] == escalated.readings["paper"]
            assert set(kept.readings or {}) == {"follow-up-brief"}
            assert kept.label_probs["unethical"] == kept.readings["follow-up-brief"]
            brief = [v.readings["follow-up-brief"] for v in verdicts]
            assert brief[0] == pytest.approx(brief[1], abs=0.02)  # the same prompt, read twice
            assert escalated.readings["paper"] != pytest.approx(brief[0], abs=1e-6)
    finally:
        await engine.stop()


def test_the_probe_gets_a_logits_reader_only_when_it_reads_logits_of_a_readable_head(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from conscience.engine.connect import logits_reader_for
    from conscience.settings import Settings

    _write_gguf(tmp_path / "m.gguf", vocab=2400, d=16)
    _write_gguf(tmp_path / "capped.gguf", vocab=2400, d=16, softcap=True)
    probe = Settings(judge_method="probe", probe_read="logits")
    assert isinstance(logits_reader_for(probe, tmp_path / "m.gguf"), LogitsReader)
    assert logits_reader_for(Settings(judge_method="single"), tmp_path / "m.gguf") is None
    embeddings = Settings(judge_method="probe", probe_read="embeddings")
    assert logits_reader_for(embeddings, tmp_path / "m.gguf") is None
    # A model it cannot read (or a file it cannot parse): said in the log, with the way out.
    assert logits_reader_for(probe, tmp_path / "capped.gguf") is None
    (tmp_path / "broken.gguf").write_bytes(b"GGUF not really")
    assert logits_reader_for(probe, tmp_path / "broken.gguf") is None
    assert caplog.text.count("cannot read the judge's state through its logits") == 2
    assert "CONSCIENCE_PROBE_READ=embeddings" in caplog.text


@pytest.mark.integration
async def test_the_engine_runs_without_embeddings_unless_the_reader_is_refused(
    smollm2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How the proxy starts the embedded engine for the probe: without ``--embeddings`` and
    with a reader whose state is the embeddings engine's; when the model is refused, started
    again with ``--embeddings`` and no reader, so the probe reads those."""
    from conscience.client import EngineClient
    from conscience.engine import hidden_state
    from conscience.engine.connect import start_embedded
    from conscience.engine.embedded import EmbeddedEngine
    from conscience.settings import Settings

    settings = Settings(engine_threads=2, engine_ctx_size=1024, engine_parallel=1)
    prompt = "A shared judge prompt. " * 10 + "Is a locksmith helpful?"
    with_embeddings = EmbeddedEngine(
        smollm2, threads=2, ctx_size=1024, embeddings=True, model_alias=ALIAS
    )
    await with_embeddings.start()
    try:
        async with EngineClient(with_embeddings.base_url, timeout=120) as client:
            [expected] = await client.embeddings({"model": ALIAS, "input": [prompt]})
    finally:
        await with_embeddings.stop()
    engine, reader = await start_embedded(settings, gguf=smollm2, alias=ALIAS)
    try:
        assert reader is not None and not engine.embeddings
        async with EngineClient(engine.base_url, timeout=120) as client:
            assert float(np.dot(await reader.read(client, prompt), expected)) > 0.99
    finally:
        await engine.stop()

    def refused(path: Path) -> LogitsReader:
        raise ConfigError(f"{path.name}: soft-capped logits are not linear in the state")

    monkeypatch.setattr(hidden_state, "logits_reader", refused)
    engine, reader = await start_embedded(settings, gguf=smollm2, alias=ALIAS)
    try:
        assert reader is None and engine.embeddings
        async with EngineClient(engine.base_url, timeout=120) as client:
            [again] = await client.embeddings({"model": ALIAS, "input": [prompt]})
        assert float(np.dot(again, expected)) > 0.999
    finally:
        await engine.stop()
