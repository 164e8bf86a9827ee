"""Multi-turn ToolWorld episodes under the chat templates small models use — Qwen-style (a ``tool`` role rendered
as ``<tool_response>`` in a user turn, tools in the system turn), Llama-3.1-style (header tokens, ``ipython`` role
for tool results) and SmolLM2-style ChatML (results in a ``user`` turn wrapped in ``<tool_response>``, set by
``observation_role``): scripted correct model text goes through the real episode loop (token ids → decode → parse
→ dispatch → verifier) on lookup tasks that need ``calendar_list_events`` and ``messages_inbox``, earns reward 1,
and the episode's token ids are exactly the template's rendering of the whole conversation."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from epr_lightning.envs import EnvironmentTask, ToolWorld
from epr_lightning.rollout.base import SamplingParams
from epr_lightning.rollout.episodes import run_episodes
from epr_lightning.rollout.turn_tokens import TurnTokens
from epr_lightning.tasks.base import Example
from epr_lightning.testing.scripted_policy import ScriptedPolicyEngine
from epr_lightning.tiny import char_tokenizer

# Qwen2.5's layout: tools listed in the system turn, tool results as <tool_response> blocks in a user turn
QWEN_STYLE = (
    "{%- if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% else %}You are helpful.{% endif %}"
    "\n\n# Tools\n\n<tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools><|im_end|>\n"
    "{%- elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or message.role == 'assistant' %}"
    "<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}<|im_start|>user{% endif %}"
    "\n<tool_response>\n{{ message.content }}\n</tool_response>"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}<|im_end|>\n{% endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Llama 3.1's layout: header tokens, <|eot_id|> ends every turn, tool results in the ipython role, contents trimmed
LLAMA_STYLE = (
    "{{- '<|begin_of_text|>' }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set rest = messages[1:] %}{%- else %}{%- set system = '' %}{%- set rest = messages %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{%- if tools %}{{- 'Environment: ipython\\n' }}{%- endif %}"
    "{{- 'Cutting Knowledge Date: December 2023\\n\\n' + system }}"
    "{%- if tools %}{{- '\\n\\nFunctions:\\n' }}{%- for t in tools %}{{- t | tojson + '\\n' }}{%- endfor %}"
    "{%- endif %}{{- '<|eot_id|>' }}"
    "{%- for message in rest %}"
    "{%- if message.role == 'tool' or message.role == 'ipython' %}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message.content | trim + '<|eot_id|>' }}"
    "{%- else %}"
    "{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content | trim }}"
    "{{- '<|eot_id|>' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def qwen_tokenizer() -> Any:
    tok = char_tokenizer()
    tok.chat_template = QWEN_STYLE
    return tok


def llama_tokenizer() -> Any:
    tok = char_tokenizer()
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.eos_token = "<|eot_id|>"
    tok.chat_template = LLAMA_STYLE
    return tok


TEMPLATES: dict[str, tuple[Callable[[], Any], str]] = {
    "qwen": (qwen_tokenizer, "tool"),
    "llama": (llama_tokenizer, "tool"),
    "smollm2": (char_tokenizer, "user"),  # ChatML without a tool role: results wrapped in a user turn
}

CONTACTS = [
    {"id": 3, "name": "Ada King", "phone": "555-1003", "email": ""},
    {"id": 4, "name": "Ada Lovelace", "phone": "555-1004", "email": ""},
    {"id": 7, "name": "Alan Turing", "phone": "555-1007", "email": ""},
]
WORLD = {
    "contacts": CONTACTS,
    "calendar": [
        {"id": 2, "title": "Dentist", "date": "2026-03-04", "time": "08:00", "attendees": []},
        {"id": 5, "title": "Yoga", "date": "2026-03-04", "time": "09:00", "attendees": [4, 7]},
        {"id": 6, "title": "Yoga", "date": "2026-03-11", "time": "09:00", "attendees": [4, 7]},
    ],
    "notes": [],
    "payments": {"balance": 50.0, "transactions": []},
    "messages": [
        {"id": 1, "contact_id": 7, "direction": "in", "text": "Lunch?"},
        {"id": 2, "contact_id": 7, "direction": "out", "text": "Sure"},
        {"id": 3, "contact_id": 7, "direction": "in", "text": "Bring the slides"},
        {"id": 4, "contact_id": 3, "direction": "in", "text": "Not this one"},
    ],
}
TASKS = {
    "calendar": ("Cancel 'Yoga' on 2026-03-04.", [["calendar.deleted", 5]]),
    "inbox": (
        "Send Ada Lovelace the text of the last message Alan Turing sent me.",
        [["messages.sent", 4, "Bring the slides"]],
    ),
}


def call(name: str, **arguments: Any) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def results(context: str, name: str) -> list[Any]:
    """The ``result`` of every observation line ``{"name": name, "result": ...}`` in the decoded context."""
    decoder, out, start = json.JSONDecoder(), [], 0
    head = f'{{"name": "{name}", "result": '
    while (i := context.find(head, start)) >= 0:
        obj, start = decoder.raw_decode(context, i)
        out.append(obj["result"])
    return out


def calendar_policy(context: str) -> str:
    """List the day's events, delete the one titled Yoga (its id read from the result), then answer."""
    if not (listed := results(context, "calendar_list_events")):
        return (
            call("calendar_list_events", date="2026-03-04") + "\nWaiting for the result..."
        )  # cut at the stop
    if not results(context, "calendar_delete_event"):
        (yoga,) = [e for e in listed[-1] if e["title"] == "Yoga"]
        return "Found it.\n" + call("calendar_delete_event", event_id=yoga["id"])
    return "Done: Yoga on 2026-03-04 is cancelled."


def inbox_policy(context: str) -> str:
    """Both contacts in one block (a JSON list, the SmolLM2 format), Alan's inbox, then the message to Ada."""
    if not (found := results(context, "contacts_search")):
        calls = [
            {"name": "contacts_search", "arguments": {"query": "Alan Turing"}},
            {"name": "contacts_search", "arguments": {"query": "Ada Lovelace"}},
        ]
        return f"<tool_call>\n{json.dumps(calls)}\n</tool_call>"
    ids = {c["name"]: c["id"] for hits in found for c in hits}
    if not (inbox := results(context, "messages_inbox")):
        return call("messages_inbox", contact_id=ids["Alan Turing"])
    if not results(context, "messages_send"):
        last = [m for m in inbox[-1] if m["direction"] == "in"][-1]["text"]
        return call("messages_send", contact_id=ids["Ada Lovelace"], text=last)
    return "Sent."


POLICIES = {"calendar": (calendar_policy, 3), "inbox": (inbox_policy, 4)}  # policy, model turns


def run(template: str, task_name: str, stop_at_call_end: bool = True):
    make_tok, role = TEMPLATES[template]
    tok = make_tok()
    env = ToolWorld(num_train=1, num_val=0, stop_at_call_end=stop_at_call_end)
    task = EnvironmentTask(env, max_turns=6, max_episode_tokens=6000, observation_role=role)  # type: ignore[arg-type]
    instruction, required = TASKS[task_name]
    messages = [{"role": "system", "content": "Use the tools."}, {"role": "user", "content": instruction}]
    example = Example(
        task_name, instruction, None, {"world": copy.deepcopy(WORLD), "required": required}, messages
    )
    engine = ScriptedPolicyEngine(POLICIES[task_name][0])
    engine.setup(None, tok)  # type: ignore[arg-type]
    params = SamplingParams(max_new_tokens=500, stop_token_ids=[tok.eos_token_id])
    rollout = run_episodes(engine, None, tok, task, [example], params, 1)
    return tok, task, env, messages, rollout.episodes[0]


@pytest.mark.parametrize("task_name", sorted(TASKS))
@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_scripted_lookups_succeed_and_tokens_are_the_templates_rendering(
    template: str, task_name: str
) -> None:
    tok, task, env, messages, ep = run(template, task_name)
    assert (ep.reward, ep.ended_by, ep.num_turns) == (1.0, "final_answer", POLICIES[task_name][1])
    assert ep.counters["tool_errors"] == 0
    # the whole conversation, rendered by the template in one go, is the episode's tokens
    conversation = list(messages)
    for turn in ep.turns:
        if turn["role"] == "assistant":
            conversation.append({"role": "assistant", "content": turn["content"]})
        else:
            content = task.observation_wrapper.replace("{observation}", turn["content"])
            conversation.append({"role": task.observation_role, "content": content})
    tools = env.tools() if template == "qwen" or template == "llama" else None
    rendered = list(tok.apply_chat_template(conversation, tools=tools, tokenize=True)["input_ids"])
    episode = ep.prompt_ids + ep.completion_ids
    closing = TurnTokens(tok, [tok.eos_token_id]).closing
    assert rendered == episode + closing
    # model tokens (mask 1, their sampler log-probs) and template/observation tokens (mask 0) position by position
    for role, start, end in ep.spans:
        assert ep.token_mask[start:end] == [int(role == "assistant")] * (end - start)
        assert ep.sampler_logprobs[start:end] == [-0.5 if role == "assistant" else 0.0] * (end - start)
    # every call turn stopped at </tool_call> (the calendar policy's trailing text was never generated); the
    # observation then closes the turn with the end-of-turn token; the final answer ends with it
    calls = [t["content"] for t in ep.turns if t["role"] == "assistant"][:-1]
    assert all(c.endswith("</tool_call>") for c in calls) and "Waiting" not in "".join(calls)
    ends = [ep.completion_ids[end - 1] for role, _, end in ep.spans if role == "assistant"]
    assert ends[-1] == tok.eos_token_id and tok.eos_token_id not in ends[:-1]
    if template == "smollm2":
        assert "<|im_start|>user\n<tool_response>\n{" in tok.decode(episode)
    if template == "llama":
        assert "<|start_header_id|>ipython<|end_header_id|>\n\n{" in tok.decode(episode)


def test_without_the_stop_a_call_turn_runs_on_to_its_end_of_turn() -> None:
    tok, _, _, _, ep = run("qwen", "calendar", stop_at_call_end=False)
    first = ep.turns[0]["content"]
    assert ep.reward == 1.0 and first.endswith("Waiting for the result...")
    assert ep.completion_ids[ep.spans[0][2] - 1] == tok.eos_token_id


def test_observation_role_and_wrapper_render_as_configured() -> None:
    tok = char_tokenizer()
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    user = TurnTokens(
        tok, [tok.eos_token_id], None, "user", "<tool_response>\n{observation}\n</tool_response>"
    )
    assert user.observation("{}", model_stopped=True) == enc(
        "\n<|im_start|>user\n<tool_response>\n{}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    task = EnvironmentTask(ToolWorld(num_train=1, num_val=0), observation_role="user")
    assert task.observation_wrapper == "<tool_response>\n{observation}\n</tool_response>"
    assert EnvironmentTask(ToolWorld(num_train=1, num_val=0)).observation_wrapper == "{observation}"
    with pytest.raises(ValueError, match="observation_wrapper must contain"):
        EnvironmentTask(ToolWorld(num_train=1, num_val=0), observation_wrapper="<r></r>")
    with pytest.raises(ValueError, match="observation_role must be"):
        EnvironmentTask(ToolWorld(num_train=1, num_val=0), observation_role="system")  # type: ignore[arg-type]
