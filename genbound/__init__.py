"""genbound: train LoRA-family adapters and measure how they generalize.

The Python API (README, "Python API"); names are imported on first use, so ``import genbound`` stays light:

    fine_tune(config, out) -> manifest      TrainConfig: every setting of a run (genbound.train.train)
    load(ckpt) -> Loaded                    a checkpoint rebuilt, its weights and data verified
    analyse(loaded, name, **options)        any registered analysis ("compute", "spectrum", "hessian",
                                            "landscape") -> its Result (JSON via ``.to_json()``, table via
                                            ``.render()``, ``result["key"]``)
    compare_checkpoints(dirs) -> dict       rows and the ranking of every measure against the gap
                                            (genbound.compare.compare)

(``train`` and ``compare`` are the modules of those names, hence the longer function names here.)
    get_method, method_names, ANALYSES      the registries
"""

__version__ = "0.1.0"

_EXPORTS = {
    "TrainConfig": "genbound.config", "fine_tune": ("genbound.train", "train"), "pretrain": "genbound.train",
    "load": "genbound.checkpoint", "Loaded": "genbound.checkpoint", "analyse": "genbound.analyses",
    "ANALYSES": "genbound.analyses", "Result": "genbound.result",
    "compare_checkpoints": ("genbound.compare", "compare"),
    "get_method": "genbound.methods", "method_names": "genbound.methods", "Update": "genbound.update",
    "load_task": "genbound.data", "GenboundError": "genbound.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        module, attr = _EXPORTS[name] if isinstance(_EXPORTS[name], tuple) else (_EXPORTS[name], name)
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'genbound' has no attribute {name!r}")
