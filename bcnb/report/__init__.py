"""What a run says about itself, without TensorFlow: report.md, the model card, the figures
and the caveats every one of them carries."""
