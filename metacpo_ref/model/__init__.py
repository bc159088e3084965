"""The policy and the estimates built from its batches: the Gaussian MLP policy (policy),
returns, advantages and the cost measures (advantages), the Fisher metric's solve
(fisher_solve) and a step's metric built from the Config (metric). Imports only config and step."""
