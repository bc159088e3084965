"""Pure step math, imports nothing else of the package: the CPO step of eq. 9 and its
exact dual (cpo), its derivative from the KKT conditions (dco, metric_layer), and the
general QP layer the step is checked against (qp_layer)."""
