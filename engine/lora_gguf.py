"""A peft LoRA adapter as llama.cpp's GGUF LoRA file, checked against the base model it adapts.

The trainer writes adapters in peft's format (``adapter_config.json`` +
``adapter_model.safetensors``); vLLM serves that format, llama.cpp does not. llama.cpp loads a
GGUF file of ``general.type = "adapter"``, ``adapter.type = "lora"``, with two tensors for each
adapted weight ``W`` (named as in the base model's GGUF): ``<W>.lora_a`` and ``<W>.lora_b``. With
peft's ``lora_A`` (r x in) and ``lora_B`` (out x r) the adapted layer computes

    y = W·x + s · B·(A·x),   s = lora_alpha / r          (peft; rsLoRA: lora_alpha / √r)

and llama.cpp computes ``s = scale · adapter.lora.alpha / r`` (``scale`` = the request's, 1).
The matrices are written as they are (llama.cpp wants A as r x in and B as out x r in torch's
row-major order) and ``adapter.lora.alpha`` is chosen so that both scales agree: ``lora_alpha``,
or ``lora_alpha·√r`` for rsLoRA.

One difference of layout: llama.cpp's ``llama`` architecture (Llama, SmolLM, Mistral) stores the
rows of the query and key projections permuted for its rotary embedding (convert_hf_to_gguf's
``permute``), so the B matrices of ``q_proj`` and ``k_proj`` get the same row permutation; A acts
on the input and keeps its order. ``qwen2`` stores them unpermuted.

Only the projections inside the transformer blocks can be exported (what the trainer adapts:
attention, and the MLP with ``all-linear``); an adapter on the embeddings or the output head, or
for another architecture, is refused by name. Every pair is checked against the base GGUF's
tensor of the same name before the file is written, so a adapter trained on another model is a
clear error here rather than a failed engine start.

    python -m conscience.engine.lora_gguf ADAPTER_DIR BASE.gguf [OUT.gguf]
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from conscience.errors import ConscienceError

__all__ = ["ADAPTER_FILE", "LoraExportError", "export_lora", "gguf_adapter", "read_safetensors"]

ADAPTER_FILE = "adapter.gguf"  # written beside the peft files of an adapter directory

# peft's module name → llama.cpp's tensor name in block i (gguf's own name map says the same;
# spelled out here so the set of exportable modules is one readable table).
_BLOCK_TENSORS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_PERMUTED = {"llama": {"attn_q": "head_count", "attn_k": "head_count_kv"}, "qwen2": {}}
# base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
_PEFT_KEY = re.compile(r"(?:.*\.)?layers\.(\d+)\.(\w+\.\w+)\.lora_([AB])(?:\.default)?\.weight")
_DTYPES = {"F32": np.float32, "F16": np.float16}


class LoraExportError(ConscienceError):
    """An adapter that cannot be exported for this base model; the message says why."""


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as float32 (F32, F16 or BF16 stored), without torch.

    The format: an 8-byte little-endian header length, a JSON header ``{name: {dtype, shape,
    data_offsets}}``, then the raw little-endian data.
    """
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = memoryview(data)[8 + length :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = body[start:end]
        if info["dtype"] == "BF16":  # bf16 is the top half of a float32
            array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] in _DTYPES:
            array = np.frombuffer(raw, np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<"))
        else:
            raise LoraExportError(f"{path}: tensor {name} has dtype {info['dtype']}")
        tensors[name] = array.astype(np.float32).reshape(info["shape"])
    return tensors


def _permute_rows(b: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's rotary permutation of a projection's output rows."""
    rows = b.shape[0]
    return b.reshape(n_head, 2, rows // n_head // 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


def _base_metadata(base: Path) -> tuple[str, dict[str, Any], dict[str, tuple[int, ...]]]:
    """The base GGUF's architecture, its scalar fields, and each tensor's (in, out) shape."""
    import gguf

    reader = gguf.GGUFReader(base)
    fields = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            continue
        try:
            fields[key] = field.contents()
        except (ValueError, TypeError, IndexError):  # fields of types we never read
            continue
    arch = fields.get("general.architecture")
    if not isinstance(arch, str):
        raise LoraExportError(f"{base} names no general.architecture")
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    return arch, fields, shapes


def _pairs(
    tensors: Mapping[str, np.ndarray],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"blk.i.attn_q.weight": (A, B)}`` from peft's tensor names."""
    halves: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        match = _PEFT_KEY.fullmatch(key)
        if match is None or match.group(2) not in _BLOCK_TENSORS:
            raise LoraExportError(
                f"cannot export adapter tensor {key!r}: only the projections of the "
                f"transformer blocks ({', '.join(sorted(_BLOCK_TENSORS))}) can be"
            )
        name = f"blk.{int(match.group(1))}.{_BLOCK_TENSORS[match.group(2)]}.weight"
        halves.setdefault(name, {})[match.group(3)] = value
    pairs = {}
    for name, half in halves.items():
        if set(half) != {"A", "B"}:
            raise LoraExportError(f"adapter has lora_A or lora_B alone for {name}")
        pairs[name] = (half["A"], half["B"])
    return pairs


def gguf_adapter(
    adapter_dir: Path, base: Path
) -> tuple[str, float, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``(architecture, adapter.lora.alpha, {tensor: (A, B)})``: the peft adapter in llama.cpp's
    terms for ``base``, checked against the base's shapes (nothing is written)."""
    config_path = adapter_dir / "adapter_config.json"
    weights_path = adapter_dir / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise LoraExportError(
            f"{adapter_dir} is not a peft adapter (adapter_config.json and "
            "adapter_model.safetensors are needed)"
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise LoraExportError(f"{adapter_dir} is a {config.get('peft_type')} adapter, not LoRA")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    if config.get("use_dora"):
        raise LoraExportError(f"{adapter_dir} is a DoRA adapter; llama.cpp serves plain LoRA")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise LoraExportError(f"{adapter_dir} has per-module ranks; one rank is exported")
    arch, fields, shapes = _base_metadata(base)
    if arch not in _PERMUTED:
        raise LoraExportError(
            f"{base} is a {arch!r} model; LoRA export supports {', '.join(sorted(_PERMUTED))}"
        )
    pairs = _pairs(read_safetensors(weights_path))
    if not pairs:
        raise LoraExportError(f"{adapter_dir} holds no LoRA tensors")
    for name, (a, b) in sorted(pairs.items()):
        if name not in shapes:
            raise LoraExportError(f"the base model {base.name} has no tensor {name}")
        n_in, n_out = shapes[name][:2]
        if a.shape != (r, n_in) or b.shape != (n_out, r):
            raise LoraExportError(
                f"{name}: adapter A {a.shape} / B {b.shape} do not fit the base's weight "
                f"({n_out} x {n_in}) at rank {r}: the adapter was trained on another model"
            )
        permuted = _PERMUTED[arch].get(name.split(".")[2])
        if permuted is not None:
            pairs[name] = (a, _permute_rows(b, int(fields[f"{arch}.attention.{permuted}"])))
    # llama.cpp scales by alpha / r; rsLoRA's alpha / √r is alpha·√r / r.
    gguf_alpha = alpha * math.sqrt(r) if config.get("use_rslora") else alpha
    return arch, gguf_alpha, pairs


def export_lora(adapter_dir: Path, base: Path, out: Path | None = None) -> Path:
    """Write ``adapter_dir``'s peft adapter as a GGUF LoRA for ``base`` (default path:
    ``adapter_dir/adapter.gguf``), atomically: a file at ``out`` is always whole."""
    import gguf

    adapter_dir, base = Path(adapter_dir), Path(base)
    out = Path(out) if out is not None else adapter_dir / ADAPTER_FILE
    arch, alpha, pairs = gguf_adapter(adapter_dir, base)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_string("general.name", adapter_dir.name)
        for name, (a, b) in sorted(pairs.items()):
            writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a, np.float32))
            writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b, np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    try:
        out = export_lora(Path(args[0]), Path(args[1]), Path(args[2]) if len(args) == 3 else None)
    except (LoraExportError, OSError) as exc:
        print(f"lora_gguf: error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
