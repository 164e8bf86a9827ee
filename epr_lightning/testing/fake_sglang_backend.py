"""The model behind both SGLang fakes: samples from a real tiny HF causal LM and reports results the way
SGLang does (``output_ids`` with the stop token, ``(logprob, token_id, None)`` triples, ``finish_reason``
dicts, ``weight_version``), and loads HF-named weights from tensors or a safetensors folder.

Used by ``FakeSGLangServer`` (``fake_sglang.py``, HTTP) and ``fake_sglang_module`` (``fake_sglang_module.py``,
in-process).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch


class TinyBackend:
    """Samples from an HF causal LM one request at a time, the way SGLang reports results."""

    def __init__(self, model: torch.nn.Module, eos_token_id: int | None) -> None:
        self.model = model.eval()
        self.eos_token_id = eos_token_id
        self.weight_version = "default"
        self.lock = threading.Lock()
        self._requests = 0

    @torch.no_grad()
    def generate_one(self, input_ids: list[int], sp: dict[str, Any], return_logprob: bool) -> dict[str, Any]:
        temperature = float(sp.get("temperature", 1.0))
        top_p = float(sp.get("top_p", 1.0))
        max_new = int(sp.get("max_new_tokens", 128))
        stops = set(sp.get("stop_token_ids") or [])
        if self.eos_token_id is not None and not sp.get("ignore_eos", False):
            stops.add(self.eos_token_id)
        with self.lock:
            self._requests += 1
            seed = sp.get("sampling_seed")
            gen = torch.Generator().manual_seed(int(seed) if seed is not None else 1_000_003 * self._requests)
            ids, out, lps, finish = list(input_ids), [], [], None
            for _ in range(max_new):
                logits = self.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
                if temperature == 0:  # greedy: SGLang returns unscaled log-probs
                    logp = torch.log_softmax(logits, -1)
                    tok = int(torch.argmax(logits))
                else:
                    logp = torch.log_softmax(logits / temperature, -1)
                    probs = logp.exp()
                    if top_p < 1.0:  # truncation changes sampling, not the reported log-prob
                        sorted_p, order = probs.sort(descending=True)
                        keep = sorted_p.cumsum(0) - sorted_p < top_p
                        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
                    tok = int(torch.multinomial(probs, 1, generator=gen))
                out.append(tok)
                lps.append(float(logp[tok]))
                ids.append(tok)
                if tok in stops:
                    finish = {"type": "stop", "matched": tok}
                    break
            if finish is None:
                finish = {"type": "length", "length": len(out)}
            meta = {
                "id": f"req-{self._requests}",
                "prompt_tokens": len(input_ids),
                "completion_tokens": len(out),
                "cached_tokens": 0,
                "weight_version": self.weight_version,
                "finish_reason": finish,
            }
            if return_logprob:
                meta["output_token_logprobs"] = [(lp, t, None) for lp, t in zip(lps, out, strict=True)]
            return {"output_ids": out, "meta_info": meta}

    def generate(self, input_ids: Any, sampling_params: Any, return_logprob: bool) -> Any:
        single = bool(input_ids) and isinstance(input_ids[0], int)
        batch = [input_ids] if single else list(input_ids)
        sps = sampling_params if isinstance(sampling_params, list) else [sampling_params or {}] * len(batch)
        if len(sps) != len(batch):
            raise ValueError(f"{len(sps)} sampling_params for {len(batch)} inputs")
        results = [self.generate_one(ids, sp, return_logprob) for ids, sp in zip(batch, sps, strict=True)]
        return results[0] if single else results

    def load_named_tensors(self, named: list[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into the model (unknown names are an error, like in SGLang's loaders)."""
        params = self.model.state_dict()
        with self.lock, torch.no_grad():
            for name, tensor in named:
                if name not in params:
                    raise KeyError(f"unknown weight name {name!r}")
                if tuple(params[name].shape) != tuple(tensor.shape):
                    raise ValueError(f"{name}: shape {tuple(tensor.shape)} != {tuple(params[name].shape)}")
                params[name].copy_(tensor.to(params[name].dtype))

    def load_dir(self, path: str) -> None:
        from safetensors.torch import load_file

        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors in {path}")
        named = [item for f in files for item in load_file(str(f)).items()]
        self.load_named_tensors(named)

    def get_weights_by_name(self, name: str, truncate_size: int = 100) -> list:
        return self.model.state_dict()[name][:truncate_size].float().tolist()


def backend_from(model_dir: str | Path | None, model: Any, tokenizer: Any) -> TinyBackend:
    """A backend for ``model`` (used as is), or for the HF model and tokenizer loaded from ``model_dir``."""
    if model_dir is not None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if model is None:
        raise ValueError("FakeSGLang needs model_dir or (model, tokenizer)")
    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    return TinyBackend(model, eos)
