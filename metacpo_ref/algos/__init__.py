"""The algorithms: the local CPO step with its line search (update), one iteration's
frame over tasks (iteration), Meta-CPO / Meta-TRPO's local steps, meta-gradient and
meta step (meta, fisher_step; Algorithm 1, eqs. 5-12), CPO / TRPO (baselines).
Imports config, step, model and envs; nothing above."""
