"""A run: its directory (rundir: config, checkpoint, metrics rows of a declared schema, the
meta-test files, the lock), training with checkpoints and resume (training), meta-testing
(evaluation) and the figures (plots). Imports everything below it; only the CLI and checks import it."""
