"""Pure step math, imports nothing else of the package: the CPO step of eq. 9 and its
exact dual (cpo), its derivative from the KKT conditions, through a parameter-dependent
metric too (dco), and the general QP layer the step is checked against (qp_layer)."""
