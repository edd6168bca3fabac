"""The run folder, without TensorFlow: its record (config.yaml, checked and never rewritten),
one writer at a time, the decision on which folders may be written, staging and the swap,
every file a run leaves with its reader and writer, and the seeds. Everything above reads a
run through here; importing it starts no TensorFlow."""
