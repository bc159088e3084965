"""A run: training with checkpoints and resume, meta-testing, the metrics file and its
figures (training, plots). Imports everything below it; only the CLI and checks import it."""
