"""LoRA adapters on the embedded engine: the GGUF export against peft, and the hot swap.

The export test writes a tiny random model twice — as a torch model and as an f32 GGUF — wraps
the torch one in a random peft adapter, exports the adapter, and compares llama.cpp's
log-probabilities of the next token (an engine without the adapter, one with it) with
transformers + peft on the same token ids. The swap test serves a random adapter for SmolLM2
under its own name beside the base model and checks that the name alone decides which weights
answer, that a new publish replaces the adapter's engine and a rollback stops it.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
import tiny_gguf  # tests/engine/tiny_gguf.py

from conscience.client import EngineClient
from conscience.engine.adapters import AdapterEngine, adapter_gguf
from conscience.engine.embedded import EmbeddedEngine
from conscience.engine.lora_gguf import LoraExportError, export_lora, gguf_adapter

torch = pytest.importorskip("torch")
pytest.importorskip("peft")


IDS = [5, 100, 2000, 40, 77, 9, 31000, 12]


@pytest.fixture(scope="module")
def tiny_base(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``tiny_base(arch)``: a tiny random model's f32 GGUF (written once per module) and a fresh
    torch copy of the same weights (the same seed)."""
    files: dict[str, Path] = {}

    def get(arch: str) -> tuple[Path, Any]:
        if arch not in files:
            files[arch] = tmp_path_factory.mktemp("tiny") / f"tiny-{arch}.gguf"
            tiny_gguf.write_tiny_gguf(arch, smollm2, files[arch])
        return files[arch], tiny_gguf.tiny_model(arch)

    return get


def _torch_logprobs(model: Any, adapter_on: bool) -> Any:
    with torch.no_grad():
        if adapter_on:
            return model(torch.tensor([IDS])).logits[0, -1].log_softmax(-1)
        with model.disable_adapter():
            return model(torch.tensor([IDS])).logits[0, -1].log_softmax(-1)


async def _engine_logprobs(engine: EmbeddedEngine) -> dict[int, float]:
    body = {"prompt": IDS, "n_predict": 1, "n_probs": 8, "temperature": 0}
    async with httpx.AsyncClient(timeout=60) as client:
        answer = (await client.post(f"{engine.url}/completion", json=body)).json()
    top = answer["completion_probabilities"][0]["top_logprobs"]
    return {t["id"]: t["logprob"] for t in top}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_exported_adapter_gives_pefts_logits_on_llama_cpp(
    arch: str, tiny_base: Any, tmp_path: Path
) -> None:
    base, model = tiny_base(arch)
    wrapped = tiny_gguf.random_adapter(model, tmp_path / "adapter")
    gguf = export_lora(tmp_path / "adapter", base)
    expected = {on: _torch_logprobs(wrapped, on) for on in (False, True)}
    shift = (expected[True] - expected[False]).abs().max().item()
    assert shift > 0.5  # the adapter matters, so agreeing with both sides means something

    async def run(adapters: list[Path]) -> dict[int, float]:
        async with EmbeddedEngine(base, threads=2, ctx_size=512, adapters=adapters) as engine:
            return await _engine_logprobs(engine)

    for on in (False, True):
        got = asyncio.run(run([gguf] if on else []))
        ranked = expected[on].topk(len(got)).indices.tolist()
        assert list(got) == ranked, f"adapter {'on' if on else 'off'}: another top-k"
        for token, logprob in got.items():
            assert logprob == pytest.approx(expected[on][token].item(), abs=2e-3)


def test_rslora_alpha_gives_llama_cpp_the_same_scale(tiny_base: Any, tmp_path: Path) -> None:
    base, model = tiny_base("qwen2")
    tiny_gguf.random_adapter(model, tmp_path / "plain", r=4)
    _, alpha, pairs = gguf_adapter(tmp_path / "plain", base)
    assert alpha == 8.0 and len(pairs) == tiny_gguf.LAYERS * len(tiny_gguf.TARGETS)
    model = tiny_gguf.tiny_model("qwen2")
    tiny_gguf.random_adapter(model, tmp_path / "rs", r=4, rslora=True)
    _, alpha, _ = gguf_adapter(tmp_path / "rs", base)
    assert alpha / 4 == pytest.approx(8 / math.sqrt(4))  # llama.cpp's alpha/r = peft's alpha/√r


def test_an_adapter_for_another_model_is_refused_by_name(tiny_base: Any, tmp_path: Path) -> None:
    base, _ = tiny_base("qwen2")
    wider = tiny_gguf.tiny_model("qwen2", hidden_size=128, intermediate_size=256)
    tiny_gguf.random_adapter(wider, tmp_path / "other")
    with pytest.raises(LoraExportError, match="trained on another model"):
        export_lora(tmp_path / "other", base)
    assert not (tmp_path / "other" / "adapter.gguf").exists()  # nothing half-written


def test_an_adapter_on_the_embeddings_cannot_be_exported(tiny_base: Any, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    base, model = tiny_base("llama")
    get_peft_model(model, LoraConfig(r=2, target_modules=["lm_head"])).save_pretrained(
        tmp_path / "head"
    )
    with pytest.raises(LoraExportError, match="only the projections"):
        export_lora(tmp_path / "head", base)


def test_a_directory_without_peft_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LoraExportError, match="not a peft adapter"):
        export_lora(tmp_path, tmp_path / "base.gguf")


# -- the hot swap on SmolLM2 --------------------------------------------------------------------

SMOL = "smollm2-135m-instruct"


async def _say(client: EngineClient, model: str) -> str:
    answer = await client.chat(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Name three colours."}],
            "max_tokens": 12,
            "temperature": 0,
        }
    )
    return answer["choices"][0]["message"]["content"]


def test_a_published_adapter_is_served_by_its_name_and_the_base_by_any_other(
    smollm2: Path, tmp_path: Path
) -> None:
    adapters = tmp_path / "adapters"
    tiny_gguf.smollm2_adapter(adapters / "night-1")

    async def run() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        engine = EmbeddedEngine(smollm2, model_alias=SMOL, threads=2, ctx_size=1024)
        async with engine, EngineClient(engine.base_url) as client:
            published = AdapterEngine(engine, client, drain_s=30)
            seen["base"] = await _say(client, SMOL)
            await published.serve("night-1", adapters)
            first = published.engine
            assert first is not None
            seen["adapter"] = await _say(client, "night-1")
            seen["judge"] = await _say(client, SMOL)  # the judge's name: the base model
            seen["listed"] = [m["id"] for m in (await client.models())["data"]]
            await published.serve("night-1", adapters)  # again: a new engine replaces it
            seen["replaced"] = await _gone(first.url) and published.engine is not first
            seen["again"] = await _say(client, "night-1")
            second = published.engine
            assert second is not None
            await published.clear()  # the rollback
            seen["cleared"] = (client.routes, await _gone(second.url), engine.alive())
            await published.stop()
        return seen

    seen = asyncio.run(run())
    assert seen["judge"] == seen["base"]
    assert seen["adapter"] != seen["base"]
    assert seen["again"] == seen["adapter"]
    assert "night-1" in seen["listed"] and SMOL in seen["listed"]
    assert seen["replaced"]
    assert seen["cleared"] == ({}, True, True)


async def _gone(url: str, wait_s: float = 20.0) -> bool:
    """Whether the engine at ``url`` stops answering within ``wait_s`` (a drained engine)."""
    for _ in range(int(wait_s * 10)):
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                await client.get(f"{url}/health")
        except httpx.TransportError:
            return True
        await asyncio.sleep(0.1)
    return False


def test_the_gguf_is_exported_once_and_again_when_the_adapter_changes(
    tiny_base: Any, tmp_path: Path
) -> None:
    base, model = tiny_base("llama")
    tiny_gguf.random_adapter(model, tmp_path / "a")
    first = adapter_gguf(tmp_path / "a", base)
    stamp = first.stat().st_mtime_ns
    assert adapter_gguf(tmp_path / "a", base).stat().st_mtime_ns == stamp  # reused
    weights = tmp_path / "a" / "adapter_model.safetensors"
    later = stamp + 10**9
    import os

    os.utime(weights, ns=(later, later))
    assert adapter_gguf(tmp_path / "a", base).stat().st_mtime_ns != stamp  # re-exported
    assert json.loads((tmp_path / "a" / ".adapter.gguf.base").read_text())["base"] == base.name
