"""Hessian spectra of the training loss (docs/theory.md section 8): HVPs, Lanczos, Hutchinson/Hutch++, SLQ density.

    operator.py           the parameter sets, the data subsample, HessianOperator (forward-over-reverse HVPs)
    estimators.py         Lanczos top-k (single-vector and block), power iteration, Hutchinson, Hutch++, SLQ
    pyhessian_backend.py  PyHessian 0.1 on the same model, data and parameters (cross-check)
    analysis.py           HessianOptions, hessian_analysis (the JSON-able result), render
"""

from .analysis import (OUTPUTS, SCHEMA, USES_INITIAL, HessianOptions, Options, Result, across_ranks, add_arguments,
                       check_options, hessian_analysis, measure_costs, render, run, write_outputs)
from .estimators import (Eigen, block_start, hutchinson, hutchpp, lanczos_block_top, lanczos_quadrature, lanczos_top,
                         power_iteration, slq_density)
from .operator import (PARAM_SETS, Batch, HessianOperator, MatrixOperator, select_params, subsample_indices,
                       training_batches, working_model)

__all__ = ["OUTPUTS", "USES_INITIAL", "Options", "Result", "across_ranks", "add_arguments", "check_options", "run",
           "write_outputs",
           "SCHEMA", "PARAM_SETS", "Batch", "Eigen", "HessianOperator", "HessianOptions", "MatrixOperator",
           "block_start", "hessian_analysis", "hutchinson", "hutchpp", "lanczos_block_top", "lanczos_quadrature",
           "lanczos_top", "measure_costs", "power_iteration", "render", "select_params", "slq_density",
           "subsample_indices", "training_batches", "working_model"]
