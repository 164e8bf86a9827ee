"""TRL-style reward functions: fn(prompts, completions, **columns) -> list[float].

Each dataset column other than the prompt arrives as a keyword argument holding one value per completion
(here `n_words` from data.jsonl); take **kwargs for the rest. Return None for a completion a function does
not apply to. epr-lightning calls each function once per rollout batch and sums them with the config's
weights (see config.yaml).
"""

import re

WORD = re.compile(r"[A-Za-z0-9']+")


def word_count(prompts, completions, n_words, **kwargs):
    """1.0 for exactly the asked number of words, falling linearly to 0.0 at a difference of n words."""
    rewards = []
    for completion, n in zip(completions, n_words, strict=True):
        n = int(n)
        words = len(WORD.findall(completion))
        rewards.append(max(0.0, 1.0 - abs(words - n) / n))
    return rewards


def ends_with_period(prompts, completions, **kwargs):
    """1.0 when the answer is one finished sentence (ends with a period), else 0.0."""
    return [1.0 if completion.strip().endswith(".") else 0.0 for completion in completions]
