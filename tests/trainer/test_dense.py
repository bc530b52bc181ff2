"""A GGUF's dense checkpoint: built once, reused after verification, rebuilt when damaged.

The dequantization itself is transformers' (tested on a real GGUF in test_model.py, slow);
here it is replaced by a copy of the tiny model, so what is tested is the cache around it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conscience.trainer import dense  # noqa: E402
from conscience.trainer.config import TrainConfig  # noqa: E402
from conscience.trainer.model import cpu_has_fast_bf16, load_model  # noqa: E402


@pytest.fixture
def dequantized(tiny_model_dir, monkeypatch):
    """Every GGUF "dequantizes" to the tiny model; the list holds the GGUFs converted."""
    calls = []

    def fake(gguf, into):
        calls.append(gguf)
        for path in tiny_model_dir.iterdir():
            shutil.copy(path, into / path.name)

    monkeypatch.setattr(dense, "_dequantize", fake)
    new_process()
    yield calls
    new_process()


def new_process():
    """Forget what this process verified, as a new run would."""
    dense._resolve.cache_clear()
    dense._sha256.cache_clear()


@pytest.fixture
def gguf(tmp_path):
    path = tmp_path / "models" / "m.Q4_K_M.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    return path


def test_a_gguf_is_dequantized_once_then_reused(gguf, tmp_path, dequantized):
    cache = tmp_path / "cache"
    first = dense.source_of(str(gguf), cache)
    new_process()
    again = dense.source_of(str(gguf), cache)
    assert dequantized == [gguf] and first == again

    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    folder = cache / "dense" / sha
    assert first == str(folder)
    manifest = json.loads((folder / dense.MANIFEST).read_text())
    assert manifest["source_sha256"] == sha
    assert set(manifest["files"]) == {p.name for p in folder.iterdir()} - {dense.MANIFEST}
    weights = manifest["files"]["model.safetensors"]
    assert weights["size"] == (folder / "model.safetensors").stat().st_size
    assert (
        weights["sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    )
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".tmp")]

    # The trainer loads model and tokenizer from there, not from the GGUF.
    config = TrainConfig(model=str(gguf), out_dir=str(tmp_path / "out"), dense_cache=str(cache))
    model = load_model(config, torch.device("cpu"), torch.float32)
    assert model.get_base_model().name_or_path == str(folder)
    assert dequantized == [gguf]


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-10])


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(_truncate, id="truncated"),
        pytest.param(_flip_a_byte, id="same-size-altered"),
        pytest.param(lambda p: p.unlink(), id="file-missing"),
        pytest.param(lambda p: (p.parent / dense.MANIFEST).unlink(), id="no-manifest"),
    ],
)
def test_a_damaged_cache_is_rebuilt_with_a_log_line(gguf, tmp_path, dequantized, damage, caplog):
    folder = dense.dense_checkpoint(gguf, tmp_path)
    damage(folder / "model.safetensors")
    new_process()
    with caplog.at_level(logging.WARNING, logger=dense.__name__):
        assert dense.dense_checkpoint(gguf, tmp_path) == folder
    assert len(dequantized) == 2
    assert any("damaged" in r.getMessage() for r in caplog.records)
    new_process()
    assert dense._check(folder, folder.name) is None  # whole again
    dense.dense_checkpoint(gguf, tmp_path)
    assert len(dequantized) == 2


def test_another_gguf_gets_its_own_checkpoint(gguf, tmp_path, dequantized):
    first = dense.dense_checkpoint(gguf, tmp_path)
    gguf.write_bytes(gguf.read_bytes() + b"another version")
    second = dense.dense_checkpoint(gguf, tmp_path)
    assert first != second and len(dequantized) == 2
    assert json.loads((second / dense.MANIFEST).read_text())["source_sha256"] == second.name


def test_an_interrupted_build_leaves_nothing_behind(gguf, tmp_path, monkeypatch):
    def dies(gguf, into):
        (into / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(dense, "_dequantize", dies)
    new_process()
    with pytest.raises(KeyboardInterrupt):
        dense.dense_checkpoint(gguf, tmp_path)
    assert list((tmp_path / "dense").iterdir()) == []


def test_fast_bf16_is_read_from_the_cpu_flags(tmp_path):
    check = cpu_has_fast_bf16.__wrapped__  # the real one (conftest replaces it for the tests)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert check(cpuinfo) is False
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert check(cpuinfo) is torch.backends.mkldnn.is_available()
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu amx_bf16 amx_tile\n")
    assert check(cpuinfo) is torch.backends.mkldnn.is_available()
    assert check(tmp_path / "missing") is False
