"""The settings of one training run: ``TrainConfig`` (stored in every manifest, enough to resume or rebuild the
run), the checks that refuse meaningless settings, and the paths made absolute so a run resumes from anywhere."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from .data import split_columns, with_columns
from .data.hf import is_saved_dataset
from .errors import TrainingError
from .methods import get_method, method_names
from .models import resolve_ref
from .options import opt


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in the manifest and enough to resume or rebuild it."""

    model: str = opt("mlp", 'mlp | minilm | smollm2 | vit | tiny-bert | tiny-llama | tiny-gpt2 | tiny-vit | '
                            'DIR from `genbound pretrain` | HF model name or folder (text or image classifier)')
    data: str = opt("digits", 'wordnet | wordnet-pairs | fashion-mnist | mnist-5k | digits | FILE.csv | FILE.jsonl '
                              '(text,label or text_a,text_b,label) | glue/TASK (cola sst2 mrpc qqp stsb mnli qnli rte '
                              'wnli) | hf:NAME[:CONFIG] | FOLDER from save_to_disk')
    columns: str | None = opt(None, 'columns of a Hugging Face dataset by role: text=COL,label=COL | '
                                    'text_a=COL,text_b=COL,label=COL | image=COL,label=COL (default: guessed)')
    method: str = opt("lora", " ".join(method_names()))
    rank: int = opt(16, 'adapter rank r')
    alpha: float = opt(32.0, 'scaling s = alpha / r')
    chain: int = opt(1, f"chain links k ({', '.join(n for n in method_names() if get_method(n).chain)})")
    steps: int | None = opt(None, 'optimizer steps (overrides --epochs)')
    epochs: float = opt(1.0, 'passes over the training split')
    batch_size: int = opt(32, 'examples per step')
    lr: float = opt(1e-3, 'AdamW learning rate (A, head; B gets lr * lr_ratio)')
    lr_ratio: float | None = opt(None, "lr_B / lr_A (default: the method's, 16 for lora_plus, 1 otherwise)")
    weight_decay: float = opt(0.0, 'AdamW weight decay')
    warmup: float = opt(0.06, 'warm-up fraction of the steps')
    clip: float = opt(1.0, 'gradient-norm clipping (0 = off)')
    eval_every: int = opt(0, 'steps between evaluations (0 = about 10 per run)')
    eval_samples: int = opt(1000, 'test examples used by periodic evaluations')
    snapshot_every: int = opt(0, 'steps between trajectory snapshots (0 = about 20 per run)')
    save_every: int = opt(0, 'steps between resume states (0 = at each evaluation)')
    seed: int = opt(0, 'run seed: head init, random A, random selectors, data order, splits')
    targets: list[str] | None = opt(
        None, 'regexes over module names to adapt (default: query/value of each layer; every hidden Linear of an MLP); '
        'all-linear: every Linear/Conv1D outside the head')
    n_train: int | None = opt(None, "training examples (default: the task's)")
    n_test: int | None = opt(None, "test examples (default: the task's)")
    max_length: int = opt(128, 'token limit for text')
    hidden: list[int] = opt([256, 256], 'hidden sizes of a random-init MLP')
    device: str = opt("auto", 'auto | cpu | cuda')
    amp: bool = opt(True, 'bf16 autocast on CUDA')
    fused: bool = opt(True, 'train adapters through the fused path (merged weight; --no-fused: the reference path)')
    graphs: bool = opt(True, 'on CUDA, replay each full-batch step as a CUDA graph (--no-graphs: eager steps)')
    subspace: int | None = opt(None, 'train only z in theta = theta_0 + P z: a seeded random D-dimensional subspace '
                                     'of the trained numbers (P sparse, never stored; docs/theory.md 5e)')
    fsdp: bool = opt(False, 'under torchrun, shard the weights, gradients and AdamW state of full fine-tuning over '
                            'the processes (torch FSDP2), for models that do not fit one GPU')
    subspace_seed: int = opt(0, 'which projection P (0, 1, ...; drawn with the run seed): trying S of them costs '
                                'log2 S bits in the compression bound (compute --projection-seeds S)')


def check_config(cfg: TrainConfig) -> None:
    """Refuse settings that would train nothing or train meaninglessly, in one line naming the flag."""
    def bad(flag: str, value, want: str) -> TrainingError:
        return TrainingError(f"--{flag} {value}: {want}")

    def finite(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if cfg.steps is not None and cfg.steps < 1:
        raise bad("steps", cfg.steps, "must be at least 1 (or leave it out and give --epochs)")
    if cfg.steps is None and not (finite(cfg.epochs) and cfg.epochs > 0):
        raise bad("epochs", cfg.epochs, "must be a positive number")
    if cfg.batch_size < 1:
        raise bad("batch-size", cfg.batch_size, "must be at least 1")
    for flag, value in (("lr", cfg.lr), ("alpha", cfg.alpha)):
        if not (finite(value) and value > 0):
            raise bad(flag, value, "must be a positive number")
    if cfg.lr_ratio is not None and not (finite(cfg.lr_ratio) and cfg.lr_ratio > 0):
        raise bad("lr-ratio", cfg.lr_ratio, "must be a positive number")
    if not (finite(cfg.warmup) and 0 <= cfg.warmup <= 1):
        raise bad("warmup", cfg.warmup, "is a fraction of the steps: give a number in [0, 1]")
    for flag, value in (("weight-decay", cfg.weight_decay), ("clip", cfg.clip)):
        if not (finite(value) and value >= 0):
            raise bad(flag, value, "must be >= 0 (0 = off)")
    for flag, value in (("eval-every", cfg.eval_every), ("snapshot-every", cfg.snapshot_every),
                        ("save-every", cfg.save_every)):
        if value < 0:
            raise bad(flag, value, "must be >= 0 (0 = automatic)")
    if cfg.eval_samples < 1:
        raise bad("eval-samples", cfg.eval_samples, "must be at least 1")
    if cfg.max_length < 2:
        raise bad("max-length", cfg.max_length, "must be at least 2 tokens")
    if cfg.subspace is not None and (isinstance(cfg.subspace, bool) or cfg.subspace < 1):
        raise bad("subspace", cfg.subspace, "is the subspace dimension D: give an integer >= 1")
    if cfg.subspace is not None and cfg.method == "lora_plus":
        raise TrainingError("--subspace with lora_plus: in a subspace only z trains, with one learning rate, so "
                            "LoRA+'s ratio for B has nothing to act on; use --method lora")
    if cfg.fsdp and (cfg.method != "full" or cfg.subspace is not None):
        raise TrainingError(f"--fsdp shards the weights of full fine-tuning: use it with --method full and no "
                            f"--subspace ({cfg.method}{' with --subspace' if cfg.subspace is not None else ''} "
                            "trains few numbers: without --fsdp the run is data parallel over the processes)")
    if cfg.subspace_seed < 0:
        raise bad("subspace-seed", cfg.subspace_seed, "must be >= 0")
    if not cfg.hidden or any(h < 1 for h in cfg.hidden):
        raise bad("hidden", " ".join(map(str, cfg.hidden)), "needs positive layer sizes")


def normalized(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with local paths made absolute (a data file or folder, a model folder), so a run resumes, and a
    checkpoint loads, from any working directory; ``--columns`` folded into the data name (``DATA#ROLE=COLUMN,...``)
    so that ``config.data`` alone rebuilds the task."""
    source, columns = split_columns(cfg.data, cfg.columns)
    if Path(source).suffix.lower() in (".csv", ".jsonl") or (
            not source.startswith(("hf:", "glue/")) and is_saved_dataset(Path(source).expanduser())):
        source = str(Path(source).expanduser().resolve())
    changes = {"data": with_columns(source, columns), "columns": None}
    if cfg.model not in ("mlp",) and Path(cfg.model).expanduser().is_dir():
        changes["model"] = str(Path(cfg.model).expanduser().resolve())
    return dataclasses.replace(cfg, **changes)


def model_ref(cfg: TrainConfig) -> dict:
    opts = {"hidden": cfg.hidden} if cfg.model == "mlp" else {"max_length": cfg.max_length}
    return resolve_ref(cfg.model, **opts)


def run_label(cfg: TrainConfig) -> str:
    """How a run is named in progress bars and summaries: the rank (and chain) only where the method has one."""
    spec = get_method(cfg.method)
    if spec.scope != "adapter":
        return cfg.method
    return f"{cfg.method} r={cfg.rank}" + (f" k={cfg.chain}" if cfg.chain > 1 else "")
