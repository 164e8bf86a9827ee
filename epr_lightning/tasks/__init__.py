"""Tasks: prompts with verifiable answers, their reward functions, and robust batch scoring."""

from epr_lightning.tasks.answers import (
    ExactAnswerReward,
    canonical_number,
    extract_final_answer,
    extract_number,
)
from epr_lightning.tasks.arithmetic import ArithmeticTask
from epr_lightning.tasks.base import Example, RewardFunction, Split, Task
from epr_lightning.tasks.countdown import CountdownReward, CountdownTask
from epr_lightning.tasks.dataset import DatasetTask
from epr_lightning.tasks.expressions import (
    ExpressionError,
    ExpressionLimits,
    canonical_expression,
    parse_expression,
    safe_eval,
)
from epr_lightning.tasks.math_reward import MathAnswerReward
from epr_lightning.tasks.property_numbers import NumberPropertyReward, NumbersWithPropertyTask
from epr_lightning.tasks.scoring import ScoreResult, score_completions
from epr_lightning.tasks.toy import CharacterFractionReward, CharacterTask
from epr_lightning.tasks.trl_reward import TRLReward

__all__ = [
    "ArithmeticTask",
    "CharacterFractionReward",
    "CharacterTask",
    "CountdownReward",
    "CountdownTask",
    "DatasetTask",
    "Example",
    "ExactAnswerReward",
    "ExpressionError",
    "ExpressionLimits",
    "MathAnswerReward",
    "NumberPropertyReward",
    "NumbersWithPropertyTask",
    "RewardFunction",
    "ScoreResult",
    "TRLReward",
    "Split",
    "Task",
    "canonical_expression",
    "canonical_number",
    "extract_final_answer",
    "extract_number",
    "parse_expression",
    "safe_eval",
    "score_completions",
]
