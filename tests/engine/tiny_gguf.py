"""A tiny random transformers model written as an f32 GGUF that llama.cpp serves.

The adapter-export test needs the same weights on both sides: a torch model (transformers +
peft) and a GGUF file (llama.cpp). Real small models come only quantized (the packaged SmolLM2
is Q4_1), so this writes a random Llama or Qwen2 model of a few layers in float32, with
SmolLM2's tokenizer tables copied over (llama.cpp refuses a model without a vocabulary; the
test feeds token ids, so the tokenizer's quality does not matter, only its size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Big enough for llama.cpp's CPU kernels (head_dim 64), small enough to write in a second.
HIDDEN, HEADS, KV_HEADS, LAYERS, FFN = 256, 4, 2, 2, 512
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]  # what random_adapter adapts


VOCAB = 49152  # SmolLM2's, whose tokenizer tables the GGUF borrows


def tiny_model(arch: str, vocab: int = VOCAB, seed: int = 0, **shape: int) -> Any:
    """A random ``llama`` (LlamaForCausalLM) or ``qwen2`` (Qwen2ForCausalLM) model in float32:
    the same weights for the same seed; ``shape`` overrides config fields (another model)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    )
    common.update(shape)
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    return model.float().eval()


def _copy_tokenizer(writer: Any, source: Path) -> int:
    """SmolLM2's tokenizer fields into ``writer``; returns the vocabulary size."""
    import gguf

    reader = gguf.GGUFReader(source)
    f = reader.fields
    tokens = f["tokenizer.ggml.tokens"].contents()
    writer.add_tokenizer_model(f["tokenizer.ggml.model"].contents())
    writer.add_tokenizer_pre(f["tokenizer.ggml.pre"].contents())
    writer.add_token_list(tokens)
    writer.add_token_types(f["tokenizer.ggml.token_type"].contents())
    writer.add_token_merges(f["tokenizer.ggml.merges"].contents())
    writer.add_bos_token_id(f["tokenizer.ggml.bos_token_id"].contents())
    writer.add_eos_token_id(f["tokenizer.ggml.eos_token_id"].contents())
    writer.add_add_bos_token(False)
    return len(tokens)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_tiny_gguf(arch: str, tokenizer_source: Path, out: Path, seed: int = 0) -> Any:
    """Write a random ``arch`` model to ``out`` as an f32 GGUF; returns the torch model."""
    import gguf

    writer = gguf.GGUFWriter(out, arch)
    vocab = _copy_tokenizer(writer, tokenizer_source)
    model = tiny_model(arch, vocab, seed)
    writer.add_name(f"tiny-{arch}")
    writer.add_context_length(512)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    names = gguf.get_tensor_name_map(
        gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.QWEN2, LAYERS
    )
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight":  # tied to the embeddings: llama.cpp reuses token_embd
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        assert name is not None, key
        w = tensor.detach().numpy().astype(np.float32)
        if arch == "llama" and name.startswith("blk.") and ".attn_q." in name:
            w = _permute(w, HEADS)
        elif arch == "llama" and name.startswith("blk.") and ".attn_k." in name:
            w = _permute(w, KV_HEADS)
        writer.add_tensor(name, np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


def random_adapter(model: Any, out: Path, *, r: int = 4, rslora: bool = False) -> Any:
    """A peft adapter on ``model`` whose B matrices are not zero (peft starts them at zero)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    config = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=TARGETS, use_rslora=rslora, init_lora_weights=False
    )
    wrapped = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    wrapped.save_pretrained(out)
    return wrapped


def smollm2_adapter(out: Path) -> None:
    """A random adapter with SmolLM2-135M's shapes (the base weights need not be SmolLM2's:
    only the adapter is saved)."""
    shape = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30)
    model = tiny_model("llama", num_attention_heads=9, num_key_value_heads=3, **shape)
    random_adapter(model, out, r=8)
