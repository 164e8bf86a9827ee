"""What multi-turn episodes log: turns, tool calls and errors, end causes, success per difficulty, and one
whole episode as TensorBoard text."""

from __future__ import annotations

from typing import Any

from epr_lightning.rollout.episodes import END_CAUSES, Episode, EpisodeRollout


def success_by_difficulty(episodes: list[Episode], success_threshold: float) -> dict[int, tuple[float, int]]:
    """``{difficulty: (success rate, episodes)}`` over the episodes whose example has ``meta["difficulty"]``."""
    groups: dict[int, list[bool]] = {}
    for ep in episodes:
        d = ep.example.meta.get("difficulty")
        if d is not None:
            groups.setdefault(int(d), []).append(ep.reward >= success_threshold)
    return {d: (sum(v) / len(v), len(v)) for d, v in sorted(groups.items())}


def episode_metrics(rollout: EpisodeRollout, success_threshold: float) -> dict[str, float]:
    """Means per episode (``episode/turns``, ``episode/<counter>`` such as ``tool_calls``/``tool_errors``,
    ``episode/observation_tokens``), counts of end causes (``episode/ended_by/<cause>``; ``env_error`` =
    environment failures) and ``episode/success/d<k>`` per difficulty."""
    eps = rollout.episodes
    n = max(len(eps), 1)
    out = {
        "episode/turns": sum(ep.num_turns for ep in eps) / n,
        "episode/observation_tokens": sum(len(ep.token_mask) - sum(ep.token_mask) for ep in eps) / n,
        "episode/tool_calls": 0.0,
        "episode/tool_errors": 0.0,
    }
    for name in sorted({k for ep in eps for k in ep.counters}):
        out[f"episode/{name}"] = sum(ep.counters.get(name, 0.0) for ep in eps) / n
    for cause in END_CAUSES:
        out[f"episode/ended_by/{cause}"] = float(sum(ep.ended_by == cause for ep in eps))
    for d, (rate, _) in success_by_difficulty(eps, success_threshold).items():
        out[f"episode/success/d{d}"] = rate
    return out


def _fence(text: str) -> str:
    return "```\n" + text.replace("```", "`\u200b``") + "\n```"


def format_episode(ep: Episode, max_chars: int = 1500) -> str:
    """Markdown of one episode: the task, every turn (model and tool), the end cause and reward."""
    lines = [
        f"**task** ({ep.example.id}, difficulty {ep.example.meta.get('difficulty', '-')}): {ep.example.prompt}"
    ]
    for i, turn in enumerate(ep.turns):
        text = turn["content"] if len(turn["content"]) <= max_chars else turn["content"][:max_chars] + " …"
        lines.append(f"**{turn['role']}** (turn {i + 1}):\n\n{_fence(text)}")
    lines.append(
        f"**ended by** {ep.ended_by}, **reward** {ep.reward:g}" + (f", error: {ep.error}" if ep.error else "")
    )
    return "\n\n".join(lines)


def log_sample_episode(logger: Any, rollout: EpisodeRollout, step: int, tag: str = "episodes/sample") -> None:
    """Write the batch's first episode (all turns) as TensorBoard text, when the logger is a TensorBoard one."""
    experiment: Any = getattr(logger, "experiment", None) if logger is not None else None
    if rollout.episodes and hasattr(experiment, "add_text"):
        experiment.add_text(tag, format_episode(rollout.episodes[0]), global_step=step)
