"""Running the notebooks headless: one run (``bcnb reproduce``, ``--only``, ``--resume``),
protocols of folds or repeats, and sweeps, all through one staging mechanism."""
