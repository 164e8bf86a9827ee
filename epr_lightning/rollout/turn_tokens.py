"""Token ids of a multi-turn conversation, built without ever re-encoding the model's own tokens.

The opening prompt is rendered by the chat template (with ``tools=`` when the template takes them). After
each model turn, the tokens of the environment's answer are what the template would put between the
model's end-of-turn token and the next assistant generation prompt: the template's closing of an assistant
message (ChatML: ``"\\n"`` after ``<|im_end|>``), the observation's message (role ``tool``, rendered by the
template's own tool-response format, or role ``user`` with the text in a wrapper such as
``<tool_response>…</tool_response>``, for templates without a tool role) and the generation prompt. They are
found by rendering a fixed dummy conversation with and without that message and taking the difference, so the
model's tokens are never decoded and re-encoded for training. A turn cut by the per-turn token cap gets the
end-of-turn token first (a template token, masked like the observation, never trained on); so does a turn that
a stop string ended (``</tool_call>``).
"""

from __future__ import annotations

from typing import Any, Literal

_DUMMY = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]


def _ids(enc: Any) -> list[int]:
    return list(enc["input_ids"] if hasattr(enc, "keys") else enc)


def template_takes_tools(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "tools" in template


class TurnTokens:
    """Encodes opening prompts and observations for one tokenizer.

    Args:
        tokenizer: an HF tokenizer (a chat template is used when it has one).
        stop_ids: the token ids that end a model turn (EOS first is not required).
        template_kwargs: extra ``apply_chat_template`` arguments (e.g. ``enable_thinking``).
        observation_role: the role of the observation's message, ``"tool"`` or ``"user"``.
        observation_wrapper: its content, ``{observation}`` standing for the environment's text.
    """

    def __init__(
        self,
        tokenizer: Any,
        stop_ids: list[int],
        template_kwargs: dict[str, Any] | None = None,
        observation_role: Literal["tool", "user"] = "tool",
        observation_wrapper: str = "{observation}",
    ) -> None:
        self.tokenizer = tokenizer
        self.role, self.wrapper = observation_role, observation_wrapper
        self.kwargs = dict(template_kwargs or {})
        self.templated = bool(getattr(tokenizer, "chat_template", None))
        self.stop_ids = list(stop_ids)
        if not self.templated:
            self.end_of_turn = [self.stop_ids[0]] if self.stop_ids else []
            self.closing: list[int] = []
            return
        base = self._render(_DUMMY, generation_prompt=False)
        ends = [i for i, t in enumerate(base) if t in self.stop_ids]
        if not ends:
            raise ValueError(
                "the chat template does not end an assistant message with a stop token "
                f"({self.stop_ids}); multi-turn episodes need one to know where a model turn ends"
            )
        self.base = base
        self.end_of_turn = [base[ends[-1]]]
        self.closing = base[ends[-1] + 1 :]

    def _render(self, messages: list[dict[str, Any]], generation_prompt: bool, **kw: Any) -> list[int]:
        enc = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=True, **self.kwargs, **kw
        )
        return _ids(enc)

    def prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Token ids of the opening messages, ending with the assistant generation prompt."""
        if not self.templated:
            text = "\n\n".join(str(m.get("content", "")) for m in messages)
            return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        extra = {"tools": tools} if tools and template_takes_tools(self.tokenizer) else {}
        return self._render(messages, generation_prompt=True, **extra)

    def observation(self, text: str, model_stopped: bool) -> list[int]:
        """Tokens appended after a model turn: [end-of-turn unless it ended with one] + closing + the observation's
        message + generation prompt."""
        head = ([] if model_stopped else self.end_of_turn) + self.closing
        content = self.wrapper.replace("{observation}", text)
        if not self.templated:
            return head + list(self.tokenizer("\n" + content + "\n", add_special_tokens=False)["input_ids"])
        try:
            full = self._render([*_DUMMY, {"role": self.role, "content": content}], generation_prompt=True)
        except Exception as err:
            raise ValueError(f"the chat template cannot render a {self.role!r} message: {err}") from None
        if full[: len(self.base)] != self.base:
            raise ValueError(
                f"the chat template renders a {self.role!r} message by changing earlier turns; "
                "token-exact multi-turn episodes need an append-only template"
            )
        return head + full[len(self.base) :]
