"""One readable training loop: AdamW, warm-up + linear decay, AMP on CUDA, chains, snapshots, resume.

A chain of k links splits the step budget evenly: at each boundary every adapter merges its link into
the frozen factors, starts a fresh one, and the optimizer state of the link tensors is dropped; the
learning-rate schedule runs on over the whole budget. The loop writes only under ``out``: resume/ while
it runs (atomically, every ``save_every`` steps and on Ctrl-C), then the checkpoint (checkpoint.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint, distributed, files
from .build import Built, adapter_state, assign_state, build, parameter_counts
from .data import Task, load_task
from .errors import GenboundError, Interrupted, NonFinite, TrainingError
from .files import check_folder_writable
from .graphs import GraphedStep
from .layers import next_link, use_fused
from .subspace import Subspace, count
from .config import TrainConfig, check_config, model_ref, normalized, run_label
from .methods import get_method
from .metrics import check_task
from .parallel import Ranks, shard, whole
from .runtime import batch_of, evaluate, generator, logits, pick_device, task_loss


SYNC_EVERY = 16  # steps between host reads of the loss (NaN check, progress bar)


def make_optimizer(built: Built, cfg: TrainConfig, capturable: bool = False,
                   subspace: Subspace | None = None) -> torch.optim.AdamW:
    """AdamW with one group per role; LoRA+ gives B ``lr_ratio`` times A's learning rate. ``capturable``:
    learning rates as device tensors and a capturable step, for CUDA-graph replay. With a subspace the
    optimizer holds z alone (one group, lr; there are no roles left to give another rate). Under --fsdp the
    step is foreach, not fused (the fused kernel on sharded tensors was never run here)."""
    if subspace is not None:
        return torch.optim.AdamW([{"params": [subspace.z], "lr": cfg.lr, "name": "z"}],
                                 weight_decay=cfg.weight_decay)
    ratio = built.method.lr_ratio if cfg.lr_ratio is None else cfg.lr_ratio
    layers = built.layers
    fast = {id(getattr(layer, leaf)) for layer in layers.values() for leaf in layer.layout.fast}
    groups: dict[str, list] = {"B": [], "rest": []}
    for p in built.model.parameters():
        if p.requires_grad:
            groups["B" if id(p) in fast else "rest"].append(p)
    spec = [{"params": groups["rest"], "lr": cfg.lr, "name": "rest"},
            {"params": groups["B"], "lr": cfg.lr * ratio, "name": "B"}]
    params = [p for g in spec for p in g["params"]]
    fused = bool(params) and all(p.is_cuda for p in params) and not cfg.fsdp  # one kernel for all on CUDA
    groups = [g for g in spec if g["params"]]
    if capturable:
        groups = [{**g, "lr": torch.tensor(float(g["lr"]), device=g["params"][0].device)} for g in groups]
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=fused or None,
                             capturable=capturable)


def schedule(total: int, warmup: int):
    """Linear warm-up to 1 over ``warmup`` steps, then linear decay to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def link_boundaries(total: int, k: int) -> list[int]:
    """Steps at which links 1..k-1 start: k links share the budget evenly."""
    return [round(t * total / k) for t in range(1, k)]


def reset_link_state(opt: torch.optim.Optimizer, built: Built) -> None:
    """Drop AdamW's moments and step count for every link tensor (not for the head)."""
    for layer in built.layers.values():
        for p in layer.parameters(recurse=False):
            opt.state.pop(p, None)


class _Run:
    """The mutable state of one run (model, optimizer, step, logs) and where it is saved."""

    def __init__(self, cfg: TrainConfig, out: Path, task: Task, built: Built, device: torch.device,
                 ranks: Ranks | None = None):
        self.cfg, self.out, self.task, self.built, self.device = cfg, out, task, built, device
        self.ranks = ranks or Ranks(distributed.Context())
        self.main = self.ranks.ctx.main  # the rank that writes files
        self.peak = 0  # bytes; see peak_memory
        n = len(task.train)
        self.per_epoch = math.ceil(n / cfg.batch_size)
        self.total = cfg.steps if cfg.steps is not None else max(1, round(cfg.epochs * self.per_epoch))
        self.eval_every = cfg.eval_every or max(1, self.total // 10)
        self.snapshot_every = cfg.snapshot_every or max(1, self.total // 20)
        self.save_every = cfg.save_every or self.eval_every
        self.boundaries = link_boundaries(self.total, cfg.chain)
        if self.ranks.fsdp:
            shard(built.model, device)
        else:
            built.model.to(device)
        self.train_in = {k: v.to(device) for k, v in built.backbone.encode(task.train).items()}
        self.test_in = {k: v.to(device) for k, v in built.backbone.encode(task.test).items()}
        self.y_train, self.y_test = task.train.y.to(device), task.test.y.to(device)
        # periodic evaluations: a seeded random subset of the test split (splits can be ordered by class)
        pick = torch.randperm(len(self.y_test), generator=generator(cfg.seed, "eval subset"))[:cfg.eval_samples]
        pick = pick.sort().values.to(device)
        self.eval_in = {k: v[pick] for k, v in self.test_in.items()}
        self.eval_y = self.y_test[pick]
        self.sub = None
        if cfg.subspace is not None:
            numbers = count(built.model)
            if cfg.subspace > numbers:
                raise TrainingError(f"--subspace {cfg.subspace}: larger than the {numbers:,} numbers {cfg.method} "
                                    "trains here (give D <= that)")
            self.sub = Subspace(built.model, cfg.subspace, cfg.seed, cfg.subspace_seed)
        # with a subspace, or over several processes, steps run eagerly: the projection's steps and a gradient
        # all-reduce (NCCL) inside a graph were never captured and checked on a GPU
        eager = ("--subspace steps run eagerly" if self.sub is not None else
                 f"steps over {self.ranks.ctx.world} processes run eagerly (the gradient all-reduce was never "
                 "captured in a graph)" if self.ranks.active else None)
        use = cfg.graphs and device.type == "cuda"
        self.graphed = GraphedStep() if use and eager is None else None
        self.graph_error: str | None = f"not used: {eager}" if use and eager is not None else None
        self.weight = 1.0  # this rank's share of the batch (parallel.Ranks.split)
        self.opt = make_optimizer(built, cfg, capturable=self.graphed is not None, subspace=self.sub)
        self.trainable = [self.sub.z] if self.sub is not None else [
            p for p in built.model.parameters() if p.requires_grad]
        self._order: tuple[int, torch.Tensor | None] = (-1, None)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, schedule(self.total, round(cfg.warmup * self.total)))
        self.step, self.link, self.train_seconds = 0, 0, 0.0

    def batch_indices(self, step: int) -> torch.Tensor:
        epoch, pos = divmod(step, self.per_epoch)
        if self._order[0] != epoch:
            perm = torch.randperm(len(self.y_train), generator=generator(self.cfg.seed, "order", epoch))
            self._order = (epoch, perm.to(self.device))
        return self._order[1][pos * self.cfg.batch_size:(pos + 1) * self.cfg.batch_size]

    def save_state(self) -> None:
        """Rank 0 writes the resume state (under --fsdp every rank first takes part in gathering it)."""
        if not (self.main or self.ranks.fsdp):
            return
        if self.ranks.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            adapter = whole(adapter_state(self.built.model), keep=self.main)
            optimizer = get_optimizer_state_dict(self.built.model, self.opt, options=StateDictOptions(
                full_state_dict=True, cpu_offload=True))
            if not self.main:
                return
        else:
            adapter = {k: v.cpu() for k, v in adapter_state(self.built.model).items()}
            optimizer = self.opt.state_dict()
        state = {"step": self.step, "link": self.link, "train_seconds": self.train_seconds,
                 "adapter": adapter, "optimizer": optimizer, "scheduler": self.sched.state_dict()}
        if self.sub is not None:
            state["subspace"] = self.sub.state()
        files.atomic_torch_save(state, self.out / "resume" / "state.pt")

    def load_state(self) -> None:
        """Every rank loads the resume state rank 0 wrote (under --fsdp to its CPU: the whole tensors need not
        fit one GPU; each rank then keeps its shards)."""
        state = torch.load(self.out / "resume" / "state.pt", map_location="cpu" if self.ranks.fsdp else self.device,
                           weights_only=False)
        if self.ranks.fsdp:
            self._load_sharded(state)
        else:
            assign_state(self.built.model, state["adapter"], "resume state")
        if self.sub is not None:
            self.sub.load(state["subspace"])
        if not self.ranks.fsdp:
            self.opt = make_optimizer(self.built, self.cfg, capturable=self.graphed is not None, subspace=self.sub)
            self.opt.load_state_dict(state["optimizer"])
        if self.graphed is not None:  # a state saved without graphs holds float learning rates
            for g in self.opt.param_groups:
                g["lr"] = torch.as_tensor(g["lr"], dtype=torch.float32, device=self.device)
            self.graphed.reset()
        self.sched.optimizer = self.opt
        self.sched.load_state_dict(state["scheduler"])
        self.step, self.link, self.train_seconds = state["step"], state["link"], state["train_seconds"]

    def _load_sharded(self, state: dict) -> None:
        """The whole tensors and AdamW state of a --fsdp resume state, into this rank's shards."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        names = set(adapter_state(self.built.model))
        if set(state["adapter"]) != names:
            raise TrainingError(f"{self.out}: the resume state does not fit this model (its tensors differ)")
        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(self.built.model, state["adapter"], options=options)
        set_optimizer_state_dict(self.built.model, self.opt, optim_state_dict=state["optimizer"], options=options)

    def train_step(self) -> torch.Tensor:
        """One optimizer step; returns the loss as a 0-d tensor (no host sync: see check_losses)."""
        cfg = self.cfg
        if self.step in self.boundaries:
            self.link += 1
            next_link(self.built.model, self.link)
            reset_link_state(self.opt, self.built)
            if self.sub is not None:  # a fresh z from the new link's tensors, and fresh moments for it
                self.sub.start_link()
                self.opt.state.pop(self.sub.z, None)
            if self.graphed is not None:
                self.graphed.reset()
        idx, self.weight = self.ranks.split(self.batch_indices(self.step))
        if self.graphed is not None and len(idx) == cfg.batch_size:
            inputs = {k: v.index_select(0, idx) for k, v in self.train_in.items()}  # full padded length
            inputs["y"] = self.y_train.index_select(0, idx)
            try:
                loss = self.graphed.run(self.body, inputs, lambda: self.opt.zero_grad(set_to_none=True))
            except Exception as err:  # capture failed (the step was not made): go on eagerly
                self.graph_error = str(err).splitlines()[0][:300]
                self.graphed = None
                torch.cuda.synchronize(self.device)
        if self.graphed is None or len(idx) != cfg.batch_size:
            self.opt.zero_grad(set_to_none=True)
            loss = self.body({**batch_of(self.train_in, idx), "y": self.y_train[idx]})
        self.sched.step()
        self.step += 1
        return loss.detach()

    def body(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Forward, loss, backward, clipping and the AdamW step on one batch (inputs + "y")."""
        amp = self.cfg.amp and self.device.type == "cuda"
        batch = {k: v for k, v in inputs.items() if k != "y"}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp, cache_enabled=self.graphed is None):
            out = logits(self.built.model, batch)
        loss = task_loss(out.float(), inputs["y"], self.task.problem)
        if self.ranks.active:  # this rank's share of the batch's mean loss
            (loss * self.ranks.backward_scale(self.weight)).backward()
        else:
            loss.backward()
        if self.sub is not None:
            self.sub.pull_grad()  # dL/dz = P^T dL/dtheta
        if self.ranks.active:  # gradients (and the loss) summed over ranks before clipping
            loss = self.ranks.reduce(self.trainable, loss * self.weight)
        if self.cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.clip)
        self.opt.step()
        if self.sub is not None:
            self.sub.push()  # theta = theta_0 + P z
        return loss

    def check_losses(self, losses: list[torch.Tensor]) -> list[float]:
        """The host values of the last steps' losses; a non-finite one stops the run before anything is saved."""
        values = torch.stack(losses).tolist() if losses else []
        for i, v in enumerate(values):
            if not math.isfinite(v):
                raise NonFinite(f"loss became {v} at step {self.step - len(values) + i} (try a lower --lr)")
        return values

    def peak_memory(self) -> int | None:
        """Peak GPU memory of the training steps so far: the allocator's peak since the last evaluation ended
        (``log_eval`` resets it), kept as the maximum over those stretches; None off CUDA."""
        if self.device.type != "cuda":
            return None
        self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device))
        return self.peak

    def log_eval(self, running: float) -> None:
        """Rank 0 evaluates and writes (under --fsdp every rank evaluates: each forward needs them all)."""
        if not (self.main or self.ranks.fsdp):
            return
        self.peak_memory()  # evaluation (batches of 256, no graph) is left out of the training peak
        m = evaluate(self.built.model, self.eval_in, self.eval_y, problem=self.task.problem)
        row = {"step": self.step, "link": self.link, "lr": float(self.sched.get_last_lr()[0]),
               "train_loss_running": running, "test_loss_subset": m["loss"],
               **({"test_mse_subset": m["mse"]} if "mse" in m else {"test_acc_subset": m["acc"]}),
               "eval_samples": len(self.eval_y)}
        if self.main:
            files.append_jsonl(self.out / "metrics.jsonl", row)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def snapshot(self) -> None:
        tensors = {n: p.detach() for n, p in self.built.model.named_parameters() if p.requires_grad}
        if self.ranks.fsdp:
            tensors = whole(tensors, keep=self.main)
        if self.main:
            checkpoint.save_snapshot(self.out, self.step, self.link, {n: t.cpu() for n, t in tensors.items()})


RESUME, RESUME_CONFIG, RESUME_IDENTITY = "resume", "config.json", "identity.json"


def _resume_config(out: Path) -> TrainConfig:
    """The config of the interrupted run in ``out``; one line when there is none."""
    if not (out / RESUME / "state.pt").is_file() or not (out / RESUME / RESUME_CONFIG).is_file():
        done = " (it holds a finished checkpoint)" if (out / checkpoint.MANIFEST).is_file() else ""
        raise TrainingError(f"--resume {out}: no interrupted run to continue there{done}")
    try:
        return TrainConfig(**json.loads(checkpoint.read_text(out / RESUME / RESUME_CONFIG)))
    except (json.JSONDecodeError, TypeError) as err:
        raise TrainingError(f"{out / RESUME / RESUME_CONFIG} is damaged ({err})") from None


def _check_identity(out: Path, built: Built, task: Task) -> None:
    """A resumed run continues only on the base and data it started on."""
    path = out / RESUME / RESUME_IDENTITY
    if not path.is_file():  # written by an older genbound
        return
    saved = json.loads(path.read_text())
    if saved["base_sha256"] != built.backbone.sha256:
        raise TrainingError(f"--resume {out}: the base model changed since the run started (sha256 "
                            f"{saved['base_sha256'][:12]}..., now {built.backbone.sha256[:12]}...); nothing changed")
    if saved["data"] != task.fingerprint():
        raise TrainingError(f"--resume {out}: the data {task.name} changed since the run started (examples or "
                            "labels differ); nothing was changed")


def _discard(out: Path, created: bool) -> None:
    """Remove what a fresh run wrote (the folder itself when the run created it)."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
    else:
        for p in out.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _check_finite_weights(built: Built) -> None:
    for name, t in adapter_state(built.model).items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFinite(f"the trained tensor {name} holds inf or nan values (try a lower --lr)")


def _main_checks(ctx: distributed.Context, check) -> None:
    """``check()`` on rank 0 alone (its probe files would otherwise meet the other ranks' checks); every rank
    raises the GenboundError it raised."""
    err = None
    if ctx.main:
        try:
            check()
        except GenboundError as e:
            err = e
    err = distributed.broadcast_object(err) if ctx.active else err
    if err is not None:
        raise err


def _check_same_start(task: Task, built: Built) -> None:
    """Every rank loaded the same data and base and drew the same initial tensors (seeded heads, random A,
    selectors), as data parallelism assumes: compared by fingerprint and per-tensor sums, in one line if not."""
    mine = (task.fingerprint(), built.backbone.sha256,
            [float(t.double().sum()) for t in adapter_state(built.model).values()])
    every = distributed.all_gather_objects(mine)
    if any(other != mine for other in every):
        what = ("data" if any(o[0] != mine[0] for o in every) else
                "base model" if any(o[1] != mine[1] for o in every) else "initial tensors")
        raise TrainingError(f"the {len(every)} processes did not build the same starting point (their {what} "
                            "differ): every rank must see the same data files and base model")


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True,
          data_parallel: bool = False) -> dict:
    """Train ``cfg`` into checkpoint directory ``out`` (or continue it with resume=True); return the manifest.

    A fresh run that stops on an inf or nan removes what it wrote, so the same ``out`` can be used again; an
    interrupted run (Ctrl-C) keeps its resume state. ``data_parallel``: under torchrun, join its processes and
    train this one run over all of them (parallel.py; section 8b); rank 0 writes every file, and every rank
    returns the manifest. Without it (the Python API, a study's runs) the run is this process's own."""
    out = Path(out)
    ctx = distributed.context() if data_parallel else distributed.Context()
    cfg = _resume_config(out) if resume else normalized(cfg)
    check_config(cfg)
    get_method(cfg.method)  # unknown names fail before any data is loaded
    if cfg.fsdp and not ctx.active:
        raise TrainingError("--fsdp shards one run over several processes: start it with torchrun "
                            "--nproc-per-node N (N >= 2) -m genbound train ...")
    device = distributed.device_of(ctx, cfg.device) if ctx.active else pick_device(cfg.device)
    if ctx.active:
        distributed.init(device)
        distributed.barrier()  # every rank's own output checks are done before rank 0 looks into out
    if not resume:
        _main_checks(ctx, lambda: checkpoint.check_fresh(out))
    task = load_task(cfg.data, seed=cfg.seed, n_train=cfg.n_train, n_test=cfg.n_test)
    check_task(task)
    ref = model_ref(cfg)
    built = build(ref, task, cfg.method, cfg.rank, cfg.alpha, cfg.chain, cfg.seed, cfg.targets)
    if ctx.active:
        _check_same_start(task, built)
    run = _Run(cfg, out, task, built, device, Ranks(ctx, cfg.fsdp))
    created = not out.exists()
    if resume:
        _check_identity(out, built, task)
        run.load_state()
    elif ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        files.atomic_write_text(out / RESUME / RESUME_IDENTITY, json.dumps(
            {"base_sha256": built.backbone.sha256, "data": task.fingerprint()}, indent=1))
        files.atomic_write_text(out / RESUME / RESUME_CONFIG, json.dumps(dataclasses.asdict(cfg), indent=1))
    try:
        if not resume:
            run.snapshot()
        manifest = _train_loop(run, cfg, out, ref, progress and ctx.main)
    except NonFinite as err:
        if resume:
            raise NonFinite(f"{err}; the resume state in {out} is kept (--resume meets the same step again): "
                            f"remove {out} to start over with other settings") from None
        if ctx.main:
            _discard(out, created)
        raise NonFinite(f"{err}; nothing was kept in {out}") from None
    if ctx.main:
        shutil.rmtree(out / RESUME, ignore_errors=True)
    if ctx.active:
        distributed.barrier(long=True)  # rank 0's final evaluation and checkpoint may take long
        manifest = distributed.broadcast_object(manifest)
    return manifest


def _train_loop(run: _Run, cfg: TrainConfig, out: Path, ref: dict, progress: bool) -> dict | None:
    """Steps until the budget is spent (saving resume state on the way and on Ctrl-C), then the checkpoint
    (written and returned by rank 0; the other ranks return None)."""
    built, device = run.built, run.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = tqdm(total=run.total, initial=run.step, desc=run_label(cfg), disable=not progress, dynamic_ncols=True)
    running, start, pending = None, time.perf_counter(), []
    try:
        with use_fused(built.model, cfg.fused):
            t0 = time.perf_counter()
            while run.step < run.total:
                pending.append(run.train_step())
                bar.update(1)
                snap = run.step % run.snapshot_every == 0 or run.step == run.total
                evaluate_now = run.step % run.eval_every == 0 or run.step == run.total
                save = run.step % run.save_every == 0 and run.step < run.total
                if not (snap or evaluate_now or save or len(pending) >= SYNC_EVERY):
                    continue
                for loss in run.check_losses(pending):  # the loss sync of SYNC_EVERY steps (eager token
                    # batches also read their length in batch_of: one small sync per step, for shorter rows)
                    running = loss if running is None else 0.95 * running + 0.05 * loss
                pending = []
                run.train_seconds += time.perf_counter() - t0
                bar.set_postfix(loss=f"{running:.4f}", link=run.link)
                if snap:
                    run.snapshot()
                if evaluate_now:
                    run.log_eval(running)
                if save:
                    run.save_state()
                t0 = time.perf_counter()
    except KeyboardInterrupt:
        run.check_losses(pending)
        run.train_seconds += time.perf_counter() - t0  # the steps since the last sync count too
        if run.ranks.fsdp:  # gathering needs every rank at the same point, which Ctrl-C does not promise
            raise Interrupted(f"interrupted at step {run.step}/{run.total}; under --fsdp the resume state is the "
                              f"last one saved (every --save-every steps): continue with --resume {out}") from None
        run.save_state()
        raise Interrupted(f"interrupted at step {run.step}/{run.total}; continue with --resume {out}") from None
    finally:
        bar.close()
    peak = run.peak_memory()
    final = {f"{split}_{key}": value
             for split, (inputs, y) in {"train": (run.train_in, run.y_train), "test": (run.test_in, run.y_test)}.items()
             for key, value in evaluate(built.model, inputs, y, problem=run.task.problem,
                                        metrics=run.task.metrics).items()} if run.main or run.ranks.fsdp else {}
    if run.ranks.fsdp:  # the whole tensors into a plain model on rank 0's CPU, saved as one process would
        gathered = whole(adapter_state(built.model), keep=run.main)
        if run.main:
            built = build(ref, run.task, cfg.method, cfg.rank, cfg.alpha, cfg.chain, cfg.seed, cfg.targets)
            assign_state(built.model, gathered, "the gathered --fsdp tensors")
    if not run.main:
        return None
    timing = {"train_seconds": run.train_seconds, "wall_seconds_this_session": time.perf_counter() - start,
              "peak_gpu_memory_bytes": peak, "peak_gpu_memory_scope": "training steps (evaluations left out)",
              "device": str(device), "steps": run.total, "steps_per_link": run.boundaries,
              "cuda_graphs": run.graphed is not None, "cuda_graph_error": run.graph_error,
              "world_size": run.ranks.ctx.world}
    _check_finite_weights(built)
    return checkpoint.save(out, cfg=dataclasses.asdict(cfg), built=built, task=run.task, ref=ref,
                           metrics=final, timing=timing, counts=parameter_counts(built), subspace=run.sub)


def pretrain(cfg: TrainConfig, out: str | Path, progress: bool = True) -> dict:
    """Self-pretrain a base: full training of a random-init MLP or ViT (``vit``, ``tiny-vit``), saved as a base
    folder that ``--model DIR`` loads: model.safetensors + genbound-base.json (kind, the sha256 of the weights,
    what it was trained on), and for a ViT an HF config.json, its head left out (each fine-tuning task gets a
    fresh one). The run itself stays in DIR/pretrain-run (a normal checkpoint, resumable)."""
    from .methods import is_head
    from .images import VIT_SIZES
    from .models import BASE_MANIFEST, state_sha256

    out = Path(out)
    check_folder_writable(out, "--out")
    if (out / BASE_MANIFEST).exists():
        raise TrainingError(f"{out} already holds a pretrained base; choose another --out")
    if cfg.model != "mlp" and cfg.model not in VIT_SIZES:
        raise TrainingError(f"genbound pretrain builds an MLP or ViT base: use --model mlp, {' or '.join(VIT_SIZES)}")
    run_dir = out / "pretrain-run"
    cfg = dataclasses.replace(cfg, method="full", chain=1)
    if not (run_dir / checkpoint.MANIFEST).exists():
        train(cfg, run_dir, resume=(run_dir / "resume" / "state.pt").exists(), progress=progress)
    loaded = checkpoint.load(run_dir)
    model = loaded.model
    if cfg.model == "mlp":
        files.atomic_save_tensors(model.state_dict(), out / "model.safetensors")
        meta = {"kind": "mlp", "sizes": model.sizes}
    else:  # an HF folder without the head
        head = loaded.built.backbone.head
        files.atomic_save_tensors({k: v for k, v in model.state_dict().items() if not is_head(k, head)},
                                  out / "model.safetensors", {"format": "pt"})
        files.atomic_write_text(out / "config.json", model.config.to_json_string())
        meta = {"kind": "vit", "model": cfg.model, "vit": VIT_SIZES[cfg.model]}
    meta.update({"sha256": files.sha256_file(out / "model.safetensors"),
                 "state_sha256": state_sha256(model, loaded.built.backbone.head),  # = a run's base.sha256
                 "pretrained_on": loaded.manifest["task"],
                 "metrics": loaded.manifest["metrics"], "config": loaded.manifest["config"],
                 "note": "self-pretrained by genbound pretrain"})
    files.atomic_write_text(out / BASE_MANIFEST, json.dumps(meta, indent=1))
    return meta
