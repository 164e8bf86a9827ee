"""Lightning callbacks: entropy tracking, targets, controllers, dynamics, diversity, precision audit, samples,
per-prompt validation records and graceful stop (installed as ``epr_lightning.callbacks``)."""

from .control_rules import adaptive_bonus_step, clip_higher_step, entropy_direction, zeta_step
from .controller_base import EntropyController
from .controllers import AdaptiveEntropyBonus, ClipHigherController, REPOZetaController
from .diversity import DiversityMonitor
from .dynamics import EntropyDynamics
from .entropy import EntropyTracker
from .graceful import GracefulStop
from .precision import PrecisionAudit
from .samples import SampleLogger
from .targets import EntropyTarget, FixedEntropy, InitialEntropy, ScheduledEntropy
from .validation_records import ValidationRecords, read_validation_records

__all__ = [
    "AdaptiveEntropyBonus",
    "ClipHigherController",
    "DiversityMonitor",
    "EntropyController",
    "EntropyDynamics",
    "EntropyTarget",
    "EntropyTracker",
    "FixedEntropy",
    "GracefulStop",
    "InitialEntropy",
    "PrecisionAudit",
    "REPOZetaController",
    "SampleLogger",
    "ScheduledEntropy",
    "ValidationRecords",
    "adaptive_bonus_step",
    "clip_higher_step",
    "entropy_direction",
    "read_validation_records",
    "zeta_step",
]
