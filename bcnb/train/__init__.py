"""Stage 3, training: fitting the head (on cached features or end to end), the feature cache,
checkpoints that resume a killed run exactly, several devices, and a Dask cluster."""
