"""Lightning callbacks: entropy tracking, targets, controllers, diversity, precision audit (installed as ``epr_lightning.callbacks``)."""
from .diversity import DiversityMonitor  # noqa: E402
from .entropy import EntropyTracker  # noqa: E402
from .precision import PrecisionAudit  # noqa: E402
from .samples import SampleLogger  # noqa: E402
from .controllers import (  # noqa: E402
    AdaptiveEntropyBonus,
    ClipHigherController,
    EntropyController,
    REPOZetaController,
    adaptive_bonus_step,
    clip_higher_step,
    entropy_direction,
    zeta_step,
)
from .targets import EntropyTarget, FixedEntropy, InitialEntropy, ScheduledEntropy  # noqa: E402
from .graceful import GracefulStop  # noqa: E402
from .dynamics import EntropyDynamics  # noqa: E402
