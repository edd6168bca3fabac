"""Stage 2, the model: the pretrained bases and their preprocessing, the paper's transfer
model, and the ImageNet weights files."""
