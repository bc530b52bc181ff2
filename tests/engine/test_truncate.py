"""The probe's truncated GGUF (engine/truncate.py): the first k blocks of a model, cached.

The file is checked on SmolLM2 (30 blocks, Q4_1: its keys and tensors against the source's,
that llama.cpp loads it, the guard that refuses it as a generating model) and on a tiny random
f32 Qwen2 model of 4 blocks written twice, as a torch model and as a GGUF (tests/engine/
tiny_gguf.py): the truncated file's last-token state, from llama.cpp's ``/v1/embeddings``, is
transformers' state after block k passed through the model's final norm.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tiny_gguf  # tests/engine/tiny_gguf.py

from conscience.engine.embedded import EmbeddedEngine
from conscience.engine.truncate import (
    PROBE_ONLY_KEY,
    block_count,
    is_probe_only,
    refuse_probe_only,
    truncate_gguf,
    truncated_gguf,
)
from conscience.engine.weights import sha256_file
from conscience.errors import ModelError

gguf = pytest.importorskip("gguf")

K = 4  # of SmolLM2's 30 blocks
IDS = [5, 100, 2000, 40, 77, 9, 31000, 12, 640, 3]
# float32 weights on both sides: llama.cpp and torch differ only in the order of their sums.
# Measured: 1 - cosine 1.6e-7 to 1.8e-7 at k = 1, 2, 3; other layers' states are 0.18 to 0.88 away.
TOLERANCE = 1e-4  # on 1 - cosine


@pytest.fixture(scope="module")
def cut(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cut") / "first-4.gguf"
    truncate_gguf(smollm2, K, out)
    return out


def _block(name: str) -> int:
    return int(name.split(".")[1])


def _fields(reader: Any) -> dict[str, Any]:
    return {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}


def test_the_file_holds_every_key_and_only_the_first_k_blocks(smollm2: Path, cut: Path) -> None:
    full, part = gguf.GGUFReader(str(smollm2)), gguf.GGUFReader(str(cut))
    before, after = _fields(full), _fields(part)
    assert before["llama.block_count"] == 30 and after["llama.block_count"] == K
    assert after[PROBE_ONLY_KEY] is True and after["conscience.source_block_count"] == 30
    assert after["conscience.probe_blocks"] == K
    # the marks lead the header, where is_probe_only looks without parsing the vocabulary
    assert list(after)[:4] == [
        "general.architecture",
        PROBE_ONLY_KEY,
        "conscience.probe_blocks",
        "conscience.source_block_count",
    ]
    changed = {"llama.block_count"}
    assert {k: v for k, v in after.items() if k in before and k not in changed} == {
        k: v for k, v in before.items() if k not in changed
    }  # every other key copied unchanged (the vocabulary, the chat template, rope, ...)
    kept = {t.name: t for t in part.tensors}
    blocks = {_block(name) for name in kept if name.startswith("blk.")}
    assert blocks == set(range(K))
    expected = [t for t in full.tensors if not t.name.startswith("blk.") or _block(t.name) < K]
    assert list(kept) == [t.name for t in expected]
    assert {"token_embd.weight", "output_norm.weight"} <= set(kept)  # tied head: token_embd
    for t in expected:  # bytes and quantisation unchanged, not requantised
        assert kept[t.name].tensor_type == t.tensor_type
        assert np.array_equal(np.asarray(kept[t.name].data), np.asarray(t.data)), t.name
    assert block_count(cut) == K and is_probe_only(cut) and not is_probe_only(smollm2)


def test_per_block_arrays_are_cut_and_other_arrays_kept(tmp_path: Path) -> None:
    """A key with one entry per block (a per-layer head count, as OpenELM has) keeps the first
    k entries; an array of another length (the vocabulary) is copied whole."""
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    writer.add_block_count(3)
    writer.add_array("llama.attention.head_count", [4, 4, 2])
    writer.add_array("llama.other", [1, 2])
    writer.add_array("llama.rope.dimension_sections", [8, 8, 0])  # not per block, though 3 long
    writer.add_token_list(["a", "b", "c"])
    for name in ("token_embd.weight", "output_norm.weight", "blk.0.x", "blk.1.x", "blk.2.x"):
        writer.add_tensor(name, np.full((3, 8), len(name), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    truncate_gguf(tmp_path / "m.gguf", 2, tmp_path / "cut.gguf")
    cut = gguf.GGUFReader(str(tmp_path / "cut.gguf"))
    fields = _fields(cut)
    assert fields["llama.attention.head_count"] == [4, 4]
    assert fields["llama.rope.dimension_sections"] == [8, 8, 0]
    assert fields["llama.other"] == [1, 2] and fields["tokenizer.ggml.tokens"] == ["a", "b", "c"]
    assert [t.name for t in cut.tensors] == [
        "token_embd.weight",
        "output_norm.weight",
        "blk.0.x",
        "blk.1.x",
    ]


@pytest.mark.parametrize("k", [0, -1, 30, 31, True, 2.0])
def test_a_depth_outside_the_model_is_refused_and_nothing_is_written(
    smollm2: Path, tmp_path: Path, k: Any
) -> None:
    with pytest.raises(ModelError, match="k is 1 to 29"):
        truncate_gguf(smollm2, k, tmp_path / "out.gguf")
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_gguf_or_not_there_is_a_model_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n" * 100)
    with pytest.raises(ModelError, match="not a GGUF model file"):
        truncate_gguf(text, 2, tmp_path / "out" / "x.gguf")
    with pytest.raises(ModelError, match="no such model file"):
        truncate_gguf(tmp_path / "missing.gguf", 2, tmp_path / "out" / "x.gguf")
    with pytest.raises(ModelError, match="no such model file"):
        truncated_gguf(tmp_path / "missing.gguf", 2, tmp_path / "cache")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_truncated_file_is_not_cut_again(cut: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="already a truncated probe model"):
        truncate_gguf(cut, 2, tmp_path / "again.gguf")


def test_a_failure_mid_write_leaves_no_file(
    smollm2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fail(self: Any, tensor: Any, tensor_endianess: Any = None) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", fail)
    (tmp_path / "first-4.gguf").write_bytes(b"an older file, kept until a whole one replaces it")
    with pytest.raises(OSError, match="disk full"):
        truncate_gguf(smollm2, K, tmp_path / "first-4.gguf")
    assert [p.name for p in tmp_path.iterdir()] == ["first-4.gguf"]
    assert (tmp_path / "first-4.gguf").read_bytes().startswith(b"an older file")


def test_the_cached_file_is_verified_on_reuse_and_rebuilt_when_damaged(
    smollm2: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = truncated_gguf(smollm2, 2, tmp_path)
    source_sha = sha256_file(smollm2)
    assert path == tmp_path / "truncated" / source_sha / "first-2.gguf"
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert manifest["sha256"] == sha256_file(path) and manifest["source_sha256"] == source_sha
    assert manifest["blocks"] == 2 and manifest["source_blocks"] == 30
    assert gguf.GGUFReader(str(path)).fields["conscience.source_sha256"].contents() == source_sha
    assert sorted(p.name for p in path.parent.iterdir()) == ["first-2.gguf", "first-2.json"]

    written = path.stat().st_mtime_ns
    assert truncated_gguf(smollm2, 2, tmp_path) == path
    assert path.stat().st_mtime_ns == written  # reused, not written again

    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one byte of a tensor: same size, another hash
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        assert truncated_gguf(smollm2, 2, tmp_path) == path
    assert "wrong SHA-256" in caplog.text
    assert sha256_file(path) == manifest["sha256"]  # rebuilt: the same bytes as the first time

    path.with_suffix(".json").unlink()  # a file without its manifest is not trusted either
    assert truncated_gguf(smollm2, 2, tmp_path) == path
    assert path.with_suffix(".json").is_file()


def test_the_truncated_file_is_refused_as_a_generating_model(
    smollm2: Path, cut: Path, tmp_path: Path
) -> None:
    refuse_probe_only(smollm2)  # the full model passes
    with pytest.raises(ModelError, match=r"first 4 of 30 blocks .* does not write text"):
        refuse_probe_only(cut)
    (tmp_path / "text.gguf").write_text("not a model")  # not GGUF: not marked (the engine says)
    assert not is_probe_only(tmp_path / "text.gguf")
    refuse_probe_only(tmp_path / "text.gguf")


async def test_the_embedded_engine_will_not_serve_it(cut: Path) -> None:
    """Every generating engine starts through start_embedded: the file is refused there,
    before a child process is started."""
    from conscience.engine.connect import start_embedded
    from conscience.settings import Settings

    with pytest.raises(ModelError, match="for a probe: it does not write text"):
        await start_embedded(Settings(engine_threads=2, engine_parallel=1), gguf=cut)


@pytest.mark.integration
async def test_llama_cpp_loads_the_truncated_file(cut: Path) -> None:
    async with EmbeddedEngine(cut, threads=2, ctx_size=512) as engine:
        body = {"prompt": IDS, "n_predict": 1, "n_probs": 4, "temperature": 0}
        async with httpx.AsyncClient(timeout=60) as client:
            answer = (await client.post(f"{engine.url}/completion", json=body)).json()
    assert len(answer["completion_probabilities"][0]["top_logprobs"]) == 4
    assert answer["timings"]["prompt_n"] == len(IDS)


# -- the state: layer k of the full model, through the final norm ------------------------------

LAYERS, KEEP = 4, 2


@pytest.fixture(scope="module")
def tiny(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    """A tiny random f32 Qwen2 model of 4 blocks as a GGUF, and its torch twin."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("tiny") / "tiny-qwen2.gguf"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiny_gguf, "LAYERS", LAYERS)  # the helper's depth is read at call time
        model = tiny_gguf.write_tiny_gguf("qwen2", smollm2, out)
    assert block_count(out) == LAYERS
    yield out, model


async def _last_state(path: Path) -> np.ndarray:
    engine = EmbeddedEngine(path, threads=2, ctx_size=512, embeddings=True)
    async with engine, httpx.AsyncClient(timeout=60) as client:
        answer = await client.post(f"{engine.base_url}/embeddings", json={"input": IDS})
    vector = np.asarray(answer.json()["data"][0]["embedding"], dtype=np.float64)
    return vector / np.linalg.norm(vector)


def _unit(x: Any) -> np.ndarray:
    v = x.detach().double().numpy()
    return v / np.linalg.norm(v)


@pytest.mark.integration
def test_the_truncated_models_state_is_layer_ks_through_the_final_norm(
    tiny: tuple[Path, Any], tmp_path: Path
) -> None:
    import torch

    full, model = tiny
    cut = tmp_path / "first-2.gguf"
    truncate_gguf(full, KEEP, cut)
    with torch.no_grad():
        hidden = model(torch.tensor([IDS]), output_hidden_states=True).hidden_states
    # hidden[i]: the residual stream after block i (hidden[0]: the embeddings); the last one
    # is already normed by transformers, the others are not: llama.cpp's final state is
    # output_norm(x_k), so the reference is norm(hidden[k]).
    expected = {i: _unit(model.model.norm(hidden[i])[0, -1]) for i in range(LAYERS)}
    expected[LAYERS] = _unit(hidden[LAYERS][0, -1])

    got = asyncio.run(_last_state(cut))
    assert 1 - float(got @ expected[KEEP]) < TOLERANCE
    for other in (KEEP - 1, KEEP + 1, LAYERS):  # the comparison can tell layers apart
        assert 1 - float(got @ expected[other]) > 100 * TOLERANCE, other
    whole = asyncio.run(_last_state(full))  # and the full file gives the last layer's
    assert 1 - float(whole @ expected[LAYERS]) < TOLERANCE
