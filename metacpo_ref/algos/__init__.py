"""The algorithms: a step's data (step_data), its problem (step_problem), the line search
(line_search), one CPO step for acting and for differentiating (local_step), one
iteration's frame over tasks (iteration), Meta-CPO / Meta-TRPO's replayed local steps,
meta-gradient and meta step (meta; Algorithm 1, eqs. 5-12), CPO / TRPO (baselines).
Imports config, step, model and envs; nothing above."""
