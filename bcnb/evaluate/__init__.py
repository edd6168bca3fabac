"""Stage 4, evaluation: test metrics, statistics over patients, calibration, the decision
rule chosen on validation, test-time augmentation, Grad-CAM and the backbone comparison."""
