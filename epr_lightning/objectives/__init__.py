"""Objective pieces: advantage estimators, REPO transforms, policy losses, extra loss terms, entropy theory."""

from epr_lightning.objectives.advantages import DrGRPOAdvantage, GRPOAdvantage, RLOOAdvantage
from epr_lightning.objectives.aggregation import AggregationMode, aggregate
from epr_lightning.objectives.base import (
    AdvantageEstimator,
    AdvantageTransform,
    LossOutput,
    LossTerm,
    PolicyBatch,
    PolicyLoss,
)
from epr_lightning.objectives.entropy_terms import EntropyBonus, KLPenalty
from epr_lightning.objectives.losses import ClipCovLoss, GSPOLoss, KLCovLoss, PPOClipLoss, REINFORCELoss
from epr_lightning.objectives.objective import Objective
from epr_lightning.objectives.repo import REPO, REPOD, REPOR

__all__ = [
    "REPO",
    "REPOD",
    "REPOR",
    "AdvantageEstimator",
    "AdvantageTransform",
    "AggregationMode",
    "ClipCovLoss",
    "DrGRPOAdvantage",
    "EntropyBonus",
    "GRPOAdvantage",
    "GSPOLoss",
    "KLCovLoss",
    "KLPenalty",
    "LossOutput",
    "LossTerm",
    "Objective",
    "PPOClipLoss",
    "PolicyBatch",
    "PolicyLoss",
    "REINFORCELoss",
    "RLOOAdvantage",
    "aggregate",
]
