"""Demonstrations for the warm-start SFT stage: chat-message JSON Lines, tokenized exactly as RL episodes are.

One conversation per line: ``{"messages": [{"role": ..., "content": ...}, ...], "tools": [...]}`` (``tools``
optional: JSON-schema specs passed to chat templates that take them). Roles are ``system``, ``user``,
``assistant`` and ``tool``. The messages before the first assistant turn are the opening; after it, every
``tool`` or ``user`` message is an observation; the conversation ends with an assistant turn.

``ChatEncoder`` builds the token ids with the episode code's ``TurnTokens`` (``rollout/turn_tokens.py``): the
opening is the chat template's prompt (ending with the assistant generation prompt), each assistant turn is
its text's tokens followed by the end-of-turn token — the tokens a model produces for that text — and each
observation is the template's tokens between the model's turn and the next generation prompt. Loss mask 1 on
the assistant tokens only. A turn that ends with one of ``stop_strings`` (``</tool_call>``: the string that ends
a model turn in an RL episode) is not followed by the end-of-turn token: as in an episode, that token comes with
the next observation, masked. So a demonstration gives the same token ids and mask as the RL episode of the same
trajectory (``tests/test_sft.py``).
"""

from __future__ import annotations

import json
import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from epr_lightning.config_hub import shipped_data_file
from epr_lightning.rollout.turn_tokens import TurnTokens

ROLES = ("system", "user", "assistant", "tool")
OBSERVATION_ROLES = ("tool", "user")


@dataclass
class Conversation:
    """One JSONL line: its messages, the tools for the template, and where it came from (``file:line``)."""

    messages: list[dict[str, str]]
    tools: list[dict[str, Any]] | None
    where: str


def parse_conversation(record: Any, where: str) -> Conversation:
    """A JSON value → ``Conversation``; ``ValueError`` naming ``where`` and the field for anything else."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with 'messages', got {type(record).__name__}")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{'role': ..., 'content': ...}}")
    out = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"{where}: messages[{j}] must be an object, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}: messages[{j}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"{where}: messages[{j}].content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    roles = [m["role"] for m in out]
    if "assistant" not in roles:
        raise ValueError(f"{where}: no assistant message (nothing to train on)")
    first = roles.index("assistant")
    if first == 0:
        raise ValueError(
            f"{where}: messages[0] is an assistant turn; the conversation must open with a prompt"
        )
    for j in range(first, len(out)):
        if roles[j] == "system":
            raise ValueError(f"{where}: messages[{j}]: a system message after the first assistant turn")
    if roles[-1] != "assistant":
        raise ValueError(f"{where}: the last message must be an assistant turn, got {roles[-1]!r}")
    tools = record.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise ValueError(f"{where}: 'tools' must be a list of JSON-schema objects")
    return Conversation(out, tools, where)


def read_conversations(path: str | Path) -> list[Conversation]:
    """Every non-blank line of a JSON Lines file; the first bad one raises ``ValueError`` as ``file:line: …``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data.path {str(path)!r} is not a file")
    out = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: malformed JSON: {err.msg} (column {err.colno})") from None
            out.append(parse_conversation(record, where))
    if not out:
        raise ValueError(f"{path}: no conversations")
    return out


@dataclass
class ChatSample:
    """Token ids of one conversation and its loss mask (1 = an assistant token)."""

    input_ids: list[int]
    loss_mask: list[int]


class ChatEncoder:
    """Conversations → ``ChatSample``s through the episode code's ``TurnTokens``.

    Args:
        tokenizer: the policy's tokenizer.
        stop_ids: the token ids that end a model turn (the policy's EOS ids, as the RL run uses).
        template_kwargs: extra ``apply_chat_template`` arguments (the policy source's ``chat_template_kwargs``).
        stop_strings: strings that end a model turn without the end-of-turn token (the environment's
            ``stop_strings()``, e.g. ToolWorld's ``</tool_call>``).
    """

    def __init__(
        self,
        tokenizer: Any,
        stop_ids: list[int],
        template_kwargs: dict[str, Any] | None = None,
        stop_strings: list[str] | None = None,
    ) -> None:
        self.tokenizer, self.stop_ids, self.template_kwargs = tokenizer, list(stop_ids), template_kwargs
        self.turns = {"tool": TurnTokens(tokenizer, self.stop_ids, template_kwargs)}
        self.stop_strings = list(stop_strings or [])

    def observation(self, role: str, text: str, model_stopped: bool) -> list[int]:
        """The tokens of an observation message (``tool`` or ``user``) after a model turn, as an episode has them."""
        if role not in self.turns:
            self.turns[role] = TurnTokens(
                self.tokenizer,
                self.stop_ids,
                self.template_kwargs,
                observation_role=cast(Literal["tool", "user"], role),
            )
        return self.turns[role].observation(text, model_stopped)

    def encode(self, conversation: Conversation) -> ChatSample:
        messages = conversation.messages
        first = next(j for j, m in enumerate(messages) if m["role"] == "assistant")
        turns = self.turns["tool"]
        ids = turns.prompt(messages[:first], conversation.tools)
        mask = [0] * len(ids)
        stopped = True  # whether the last model turn ended with the end-of-turn token
        for m in messages[first:]:
            if m["role"] == "assistant":
                part = list(self.tokenizer(m["content"], add_special_tokens=False)["input_ids"])
                stopped = not any(m["content"].endswith(s) for s in self.stop_strings)
                part += turns.end_of_turn if stopped else []
                ids, mask = ids + part, mask + [1] * len(part)
            else:
                part = self.observation(m["role"], m["content"], stopped)
                ids, mask = ids + part, mask + [0] * len(part)
        return ChatSample(ids, mask)


def collate(samples: list[ChatSample], pad_id: int) -> dict[str, Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``loss_mask`` (float) [N, T], as ``TokenBatch`` rows."""
    width = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    loss_mask = torch.zeros((len(samples), width), dtype=torch.float32)
    for i, s in enumerate(samples):
        n = len(s.input_ids)
        input_ids[i, :n] = torch.tensor(s.input_ids, dtype=torch.long)
        attention_mask[i, :n] = 1
        loss_mask[i, :n] = torch.tensor(s.loss_mask, dtype=torch.float32)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


class ChatDataModule(pl.LightningDataModule):
    """Chat-message JSONL demonstrations, split into train and a held-out share for the validation loss.

    The file is read (and every line checked) in ``setup``; the SFT module then hands it the encoder of its
    policy's tokenizer (``use_encoder``).

    Args:
        path: the JSON Lines file (one ``{"messages": [...]}`` per line).
        val_fraction: share of the conversations held out for ``val/loss`` (seeded; 0 = no validation).
        batch_size: conversations per optimizer step.
        max_tokens: conversations longer than this are dropped, with one warning (None = keep all).
        stop_strings: strings that end a model turn in the RL episodes (ToolWorld: ``["</tool_call>"]``); a turn
            ending with one is trained without the end-of-turn token, as the episode has it.
        shuffle: shuffle the training conversations every epoch.
        seed: the split's and the shuffling's seed.
    """

    def __init__(
        self,
        path: str,
        val_fraction: float = 0.1,
        batch_size: int = 8,
        max_tokens: int | None = None,
        stop_strings: list[str] | None = None,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if max_tokens is not None and max_tokens < 2:
            raise ValueError(f"data.max_tokens must be >= 2 or null, got {max_tokens}")
        self.path, self.val_fraction, self.batch_size = path, val_fraction, batch_size
        self.max_tokens, self.stop_strings = max_tokens, list(stop_strings or [])
        self.shuffle, self.seed = shuffle, seed
        self.train_conversations: list[Conversation] = []
        self.val_conversations: list[Conversation] = []
        self.pad_id = 0
        self._train: list[ChatSample] = []
        self._val: list[ChatSample] = []

    def setup(self, stage: str | None = None) -> None:
        """Read the file (every line checked) and split off the held-out share (once)."""
        if self.train_conversations:
            return
        conversations = read_conversations(shipped_data_file(self.path))
        order = list(range(len(conversations)))
        random.Random(self.seed).shuffle(order)
        n_val = math.ceil(self.val_fraction * len(order)) if self.val_fraction > 0 else 0
        if n_val >= len(order):
            raise ValueError(
                f"data.val_fraction={self.val_fraction} leaves no training conversation of {len(order)}"
            )
        self.train_conversations = [conversations[i] for i in sorted(order[n_val:])]
        self.val_conversations = [conversations[i] for i in sorted(order[:n_val])]

    def use_encoder(self, encoder: ChatEncoder, pad_id: int) -> None:
        """Tokenize both splits with ``encoder`` (the SFT module's, built from its policy's tokenizer)."""
        self.pad_id = pad_id
        self._train = self._encode(encoder, self.train_conversations)
        self._val = self._encode(encoder, self.val_conversations)
        if not self._train:
            raise ValueError(f"{self.path}: every training conversation is longer than data.max_tokens")

    def _encode(self, encoder: ChatEncoder, conversations: list[Conversation]) -> list[ChatSample]:
        samples = [encoder.encode(c) for c in conversations]
        kept = [s for s in samples if self.max_tokens is None or len(s.input_ids) <= self.max_tokens]
        if len(kept) < len(samples):
            warnings.warn(
                f"{self.path}: {len(samples) - len(kept)} conversations longer than data.max_tokens="
                f"{self.max_tokens} dropped",
                UserWarning,
                stacklevel=2,
            )
        return kept

    def _loader(self, samples: list[ChatSample], shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            samples,  # type: ignore[arg-type]
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=lambda batch: collate(batch, self.pad_id),
        )

    def train_dataloader(self) -> DataLoader:
        if not self._train:
            raise RuntimeError("ChatDataModule has no encoder yet: the SFT module calls use_encoder in setup")
        return self._loader(self._train, self.shuffle)

    def val_dataloader(self) -> DataLoader | list[Any]:
        return self._loader(self._val, False) if self._val else []
