"""run/: the run directory: its marker and lock, config, logs (metrics.jsonl, samples.jsonl), checkpoints, resume
and report.html."""
