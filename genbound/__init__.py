"""genbound: train LoRA-family adapters and measure how they generalize.

The Python API (README, "Python API"); names are imported on first use, so ``import genbound`` stays light:

    train(config, out) -> manifest          TrainConfig: every setting of a run
    load(ckpt) -> Loaded                    a checkpoint rebuilt, its weights and data verified
    analyse(loaded, name, **options)        any registered analysis ("compute", "spectrum", "hessian",
                                            "landscape") -> its Result (JSON via ``.to_json()``, table via
                                            ``.render()``, ``result["key"]``)
    compare(dirs) -> dict                   rows and the ranking of every measure against the gap
    get_method, method_names, ANALYSES      the registries
"""

__version__ = "0.1.0"

_EXPORTS = {
    "TrainConfig": "genbound.config", "train": "genbound.train", "pretrain": "genbound.train",
    "load": "genbound.checkpoint", "Loaded": "genbound.checkpoint", "analyse": "genbound.analyses",
    "ANALYSES": "genbound.analyses", "Result": "genbound.result", "compare": "genbound.compare",
    "get_method": "genbound.methods", "method_names": "genbound.methods", "Update": "genbound.update",
    "load_task": "genbound.data", "GenboundError": "genbound.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'genbound' has no attribute {name!r}")
