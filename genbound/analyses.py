"""The analyses of a checkpoint, one registration each; the command line and studies dispatch from here.

Each analysis is one module that defines:

    Options                     a dataclass whose fields carry their help (genbound.options.opt): the CLI
                                options and a study file's [analyses.NAME] section are generated from it
    check_options(options)      one line for options that cannot give a number (before any model is loaded)
    Result                      a genbound.result.Result subclass: SCHEMA, render(), MEASURES for compare
    run(loaded, options, progress=False) -> Result
    applies(scope) -> bool      whether it applies to a method scope (optional; default: always)
    OUTPUTS, add_arguments(parser), write_outputs(results, args)
                                optional: files it writes from the command line (plots), at the edge
    across_ranks(options) -> bool
                                optional: under torchrun its passes split over the processes and ``run`` takes
                                ``ranks`` (a distributed.Context); without it rank 0 runs the analysis whole

Adding an analysis = one module + one line below; cli.py and study.py need no edit. No torch here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from .errors import GenboundError
from .registry import Registry


@dataclass(frozen=True)
class Analysis:
    name: str
    module: str  # the module that keeps the contract above
    summary: str  # one line for `genbound --help`

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    def applies(self, scope: str) -> bool:
        mod = self.load()
        return mod.applies(scope) if hasattr(mod, "applies") else True


ANALYSES: Registry[Analysis] = Registry("analysis", GenboundError)
register, get_analysis = ANALYSES.add, ANALYSES.find


# registration order = the order compare lists their measures in
register(Analysis("compute", "genbound.compute",
                  "generalization gap, the paper's bound, Theorem 1's terms and a compression bound"))
register(Analysis("hessian", "genbound.hessian", "top eigenvalues, trace and spectral density of the training "
                                                 "loss's Hessian"))
register(Analysis("landscape", "genbound.landscape", "1-D and 2-D loss slices with random or trajectory-PCA "
                                                     "directions, batched"))
register(Analysis("spectrum", "genbound.spectra", "singular values of the learned updates and intruder dimensions"))
register(Analysis("certify", "genbound.certify", "PAC-Bayes certificate on the 0-1 error of a Gaussian posterior "
                                                 "over the trained numbers (centred at the checkpoint or, with a "
                                                 "data prior, at the prior's mean)"))


def execute(loaded, name: str, options, progress: bool = False, ranks=None):
    """Analysis ``name`` on a loaded checkpoint with an options object: its Result, whose JSON names the checkpoint
    folder (the command line, studies and ``analyse`` all run analyses through here). ``ranks``: the processes
    that share this analysis (an analysis with ``across_ranks``; None: this process alone)."""
    extra = {"ranks": ranks} if ranks is not None else {}
    result = get_analysis(name).load().run(loaded, options, progress=progress, **extra)
    if loaded.path is not None:
        result.data["checkpoint"] = str(loaded.path)
    return result


def analyse(loaded, name: str, progress: bool = False, **options):
    """Run analysis ``name`` on a loaded checkpoint with the given options (the fields of its Options; the rest
    at their defaults) and return its Result."""
    from .options import options_of

    mod = get_analysis(name).load()
    opts = options_of(mod.Options, options, f"analyse({name!r})")
    if hasattr(mod, "check_options"):
        mod.check_options(opts)
    return execute(loaded, name, opts, progress)
