"""A rollout engine whose "model" is a Python function of the decoded context: scripted model text that goes through
the real episode loop (token ids → decode → parse → dispatch → verifier), for tests of multi-turn worlds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from epr_lightning.rollout.base import Rollout, RolloutEngine, SamplingParams
from epr_lightning.rollout.stops import cut_at_stop


class ScriptedPolicyEngine(RolloutEngine):
    """Each completion is ``policy(context)`` (``context``: the prompt decoded with its special tokens) encoded by
    the tokenizer, then the EOS token, cut at the first stop string of ``params.stop`` the way every engine cuts
    (so a turn that writes ``</tool_call>`` and more ends there) and at ``max_new_tokens``.

    Sampler log-probs are ``logprob`` for every token (the scripted text has no distribution).
    """

    def __init__(self, policy: Callable[[str], str], logprob: float = -0.5) -> None:
        self.policy, self.logprob = policy, logprob
        self.weight_version = 0
        self.contexts: list[str] = []

    def setup(self, model: torch.nn.Module, tokenizer: Any, *, rank: int = 0, world_size: int = 1) -> None:
        self.tokenizer = tokenizer

    def generate(
        self,
        prompt_ids: list[list[int]],
        params: SamplingParams,
        num_samples: int,
        *,
        model: torch.nn.Module | None = None,
    ) -> Rollout:
        prompts = [list(p) for p in prompt_ids for _ in range(num_samples)]
        completions, logprobs, finish = [], [], []
        for p in prompts:
            context = self.tokenizer.decode(p, skip_special_tokens=False)
            self.contexts.append(context)
            ids = list(self.tokenizer(self.policy(context), add_special_tokens=False)["input_ids"])
            ids.append(self.tokenizer.eos_token_id)
            ids, lps, _ = cut_at_stop(ids, [self.logprob] * len(ids), params.stop, self.tokenizer)
            completions.append(ids[: params.max_new_tokens])
            logprobs.append(lps[: params.max_new_tokens])
            finish.append("stop" if len(ids) <= params.max_new_tokens else "length")
        return Rollout(
            prompt_ids=prompts,
            completion_ids=completions,
            sampler_logprobs=logprobs,
            group_index=[g for g in range(len(prompt_ids)) for _ in range(num_samples)],
            finish_reason=finish,
            completion_text=self.tokenizer.batch_decode(completions, skip_special_tokens=True),
            prompt_text=[self.tokenizer.decode(p, skip_special_tokens=False) for p in prompts],
            weight_version=self.weight_version,
        )
