"""Tiny, offline building blocks: a character-level tokenizer with a chat template and a small random
Llama/Qwen2 model built from a config. Used by tests, CPU smoke runs and the GPU throughput check; nothing
here touches the network.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
CHARS = list(string.ascii_letters + string.digits + string.punctuation + " \n")

# ChatML, the same layout as SmolLM2/Qwen, so tiny runs exercise the real prompt path.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer (vocab ≈ 100) with ChatML specials; EOS = ``<|im_end|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token=None,
        unk_token="<unk>",
        padding_side="left",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_causal_lm(
    vocab_size: int,
    *,
    arch: str = "llama",
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> Any:
    """A randomly initialised causal LM of the given shape (fp32, eval mode off)."""
    from transformers import LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}.get(arch)
    if cls is None:
        raise ValueError(f"tiny model arch must be 'llama' or 'qwen2', got {arch!r}")
    config = cls(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model


def save_tiny(path: str | Path, **model_kwargs: Any) -> Path:
    """Write a tiny model + char tokenizer as an HF folder (for engines/tests that load from a path)."""
    path = Path(path)
    tok = char_tokenizer()
    model = tiny_causal_lm(
        len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **model_kwargs
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
