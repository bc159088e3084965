"""The metric ``H`` of a CPO step (eq. 9: ``0.5 x'Hx <= delta``), built once from the Config
by the step's rule and handed to every step instead of a metric name.

``H = I`` (the paper's local and outer steps) or the Fisher matrix of the policy on the
step's batch plus ``cg_damping I`` (CPO's KL trust region; :func:`metacpo_ref.model.policy.fvp`).
The two Fisher solves differ on purpose (:mod:`metacpo_ref.model.fisher_solve`): Meta-CPO's
local steps are differentiated, so their ``H^{-1}`` is exact (M9 of docs/fisher-metric.md);
the baselines' and the outer step's are not, and keep CPO's ``cg_iters`` truncated CG.
"""
from dataclasses import dataclass

from metacpo_ref.model.fisher_solve import fisher_cg_solver, fisher_hvp, fisher_solver


@dataclass(frozen=True)
class Metric:
    """A step's metric: ``fisher`` (else ``H = I``), the trust radius ``delta`` of eq. 9,
    the line search's mean-KL bound ``kl_bound`` (D19), and for the Fisher matrix its
    damping, which ``H^{-1}``: ``exact`` (M9) or ``cg_iters`` CG iterations, and the
    observations it is averaged over: every ``subsample``-th of the step's batch."""

    fisher: bool
    delta: float
    kl_bound: float
    exact: bool = False
    damping: float = 0.0
    cg_iters: int = 0
    subsample: int = 1

    def _obs(self, obs):
        return obs if self.subsample == 1 else obs[::self.subsample]

    def solver(self, spec, phi, obs):
        """``v -> H(phi)^{-1} v`` on the observations ``obs``; None for ``H = I``."""
        if not self.fisher:
            return None
        if self.exact:
            return fisher_solver(spec, phi, self._obs(obs), self.damping)
        return fisher_cg_solver(spec, phi, self._obs(obs), self.damping, self.cg_iters)

    def hvp(self, spec, obs):
        """``(phi, v) -> H(phi) v``, differentiable in ``phi`` (for the cotangent of
        ``H(phi)``, M7); None for ``H = I``, which does not depend on ``phi``."""
        return fisher_hvp(spec, self._obs(obs), self.damping) if self.fisher else None


def _metric(name, delta, ls_kl, config, exact):
    """``name``'s metric of radius ``delta``: with the Fisher matrix ``delta`` is a KL radius
    and also the line search's KL bound; with ``H = I`` the bound is ``ls_kl``."""
    fisher = name == "fisher"
    return Metric(fisher, delta, delta if fisher else ls_kl, exact, config.cg_damping, config.cg_iters,
                  config.fisher_subsample)


def inner_metric(config):
    """Meta-CPO / Meta-TRPO's local steps: ``config.inner_metric`` with radius
    ``inner_delta``, the Fisher solve exact (the step taken is the step differentiated)."""
    return _metric(config.inner_metric, config.inner_delta, config.ls_kl, config, exact=True)


def local_metric(config):
    """The metric of the algorithm's own update: the meta algorithms' :func:`inner_metric`,
    or the CPO / TRPO baselines' Fisher matrix (KL radius ``baseline_delta``, CG)."""
    return inner_metric(config) if config.meta else _metric("fisher", config.baseline_delta, config.ls_kl,
                                                            config, exact=False)


def outer_metric(config):
    """The outer step's (eq. 12): ``config.outer_metric`` with radius ``outer_delta``
    (the Fisher matrix of the pre-adaptation batches at ``theta``, CG)."""
    return _metric(config.outer_metric, config.outer_delta, config.ls_kl, config, exact=False)
