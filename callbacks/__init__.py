"""Lightning callbacks: entropy tracking, targets, controllers, diversity, precision audit (installed as ``epr_lightning.callbacks``)."""
