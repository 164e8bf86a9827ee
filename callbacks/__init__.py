"""Lightning callbacks: entropy tracking, targets, controllers, diversity, precision audit (installed as ``epr_lightning.callbacks``)."""
from .diversity import DiversityMonitor  # noqa: E402
from .entropy import EntropyTracker  # noqa: E402
from .precision import PrecisionAudit  # noqa: E402
from .samples import SampleLogger  # noqa: E402
