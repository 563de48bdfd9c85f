"""Loss landscapes (docs/theory.md section 9; Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets").

    f(a, b) = L(theta* + a d1 + b d2),  (a, b) on a grid over [-range, range]^2  (or f(a) = L(theta* + a d1))

L is the mean cross-entropy (and the accuracy; for regression the mean squared error alone) on a fixed,
seeded subset of ``samples`` examples of one split, in eval mode. theta lives in an explicit parameter space:

- trainable: the tensors with requires_grad (the link tensors of the adapters and the head; every weight
  for full fine-tuning).
- delta: dW space. Each adapted matrix is represented by its whole update dW = s sum_t B_t A_t (every link)
  and evaluated as a plain Linear with weight W0 + dW* + a d1 + b d2; the other trainable tensors (the head)
  are as in trainable. Unlike the factors, dW does not change under LoRA's rescaling A -> A/c, B -> cB.
- all: every floating-point nn.Parameter (frozen base weights, embeddings, LayerNorm, adapters, head).
  A chain's finished links are buffers and are not in it (perturbing W0 reaches the same functions).

Directions:

- random: Gaussian, filter-normalized: each row d[i] (the slice along dim 0; a 1-D tensor is one row) is
  scaled to ||theta*[i]||, where theta* is the centre in the space's own coordinates (dW* in delta space).
  A zero row of theta* (a lora_B row that never moved, an untouched row of dW) gets a zero row, as in
  Li et al.'s code (d <- d ||w|| / ||d||): the slice does not move what the centre holds at zero; their
  number is reported. 1-D tensors (biases, LayerNorm) are zero unless ``include_1d`` (then normalized as one
  row; Li et al.'s code copies w instead). Drawn on the CPU per (seed, direction, tensor name), so the
  directions do not depend on the device or on the order of the tensors.
- pca: u1, u2 = the top-2 right singular vectors of M = [theta_t - theta*]_t over the checkpoint's
  trajectory/ snapshots, uncentred: the best plane through theta*, which is the plane drawn (Li et al.
  centre M with sklearn's PCA). explained_variance = s_i^2 / sum_j s_j^2. d_i = c u_i with c the largest
  |coordinate| of the projected path, so range 1 just spans it. Chains: in trainable/all space, tensors of
  the same name hold different links' factors, so only the snapshots of the last link are used; in delta
  space every snapshot maps exactly to dW_t (links before t are the first t r columns of the final frozen
  factors), so the whole path is used.

Evaluation is batched: torch.func.vmap over functional_call evaluates ``chunk`` grid points per forward
pass; ``evaluate_points_loop`` is the one-point-at-a-time reference (copy the point into the model, run it).

Sharpness (grid units, Euclidean distance from the centre): increase = max_{|(a, b)| <= rho} f - f(0, 0),
max = max over the grid of f - f(0, 0); rho defaults to max(range / 4, one grid step). HF models are
evaluated with eager attention (SDPA under vmap fails on the CPU for want of a batching rule and on CUDA on
the mask's batch dimension, so the evaluation fell back to a loop); any op that vmap loops over or refuses
is reported in the result's ``evaluation``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.func import vmap

from . import result
from .checkpoint import TRAJECTORY, Loaded, read_manifest, verify_file
from .distributed import all_gather_objects, all_reduce_sum, mine, spread
from .errors import CheckpointError, GenboundError
from .options import opt
from .layers import adapter_layers, shallow_clone
from .progress import tick, work
from .runtime import batch_of, generator, length_order, logits, logits_with, problem_of_targets, task_loss

SCHEMA = "genbound.landscape/1"
SPACES, DIRS = ("trainable", "delta", "all"), ("random", "pca")


@dataclass
class LandscapeOptions:
    dirs: str = opt("random", 'random (filter-normalized Gaussian) | pca (top-2 directions of the saved trajectory)')
    space: str = opt("trainable", 'trainable | delta (dW of each adapted matrix) | all')
    grid: int = opt(41, 'points per axis (odd)')
    range: float = opt(1.0, 'the grid spans [-range, range]')
    one_d: bool = opt(False, 'a 1-D slice along d1', flag="--1d")
    samples: int = opt(1000, 'evaluation examples')
    split: str = opt("train", 'train | test')
    seed: int = opt(0, 'directions and the evaluation subset')
    include_1d: bool = opt(False, 'random directions also move biases and LayerNorm')
    chunk: int = opt(16, 'grid points per forward pass')
    batch_size: int = opt(256, 'examples per forward pass')
    rho: float | None = opt(None, 'sharpness radius (grid units; default range/4)')
    attention: str = opt("auto", 'HF attention while evaluating: auto | model')

    @property
    def step(self) -> float:
        return 2 * self.range / (self.grid - 1)

    @property
    def radius(self) -> float:
        return self.rho if self.rho is not None else max(self.range / 4, self.step)


def check_options(o: LandscapeOptions) -> None:
    if o.dirs not in DIRS:
        raise GenboundError(f"--dirs {o.dirs}: choose one of {', '.join(DIRS)}")
    if o.space not in SPACES:
        raise GenboundError(f"--space {o.space}: choose one of {', '.join(SPACES)}")
    if o.grid < 3:
        raise GenboundError(f"--grid {o.grid}: a landscape needs at least 3 points per axis")
    if o.split not in ("train", "test"):
        raise GenboundError(f"--split {o.split}: choose train or test")
    if o.attention not in ("auto", "model"):
        raise GenboundError(f"--attention {o.attention}: choose auto or model")
    for flag, value in (("--range", o.range), ("--samples", o.samples), ("--chunk", o.chunk),
                        ("--batch-size", o.batch_size)):
        if not value > 0:
            raise GenboundError(f"{flag} {value}: must be positive")
    if o.rho is not None and not o.rho >= o.step:
        raise GenboundError(f"--rho {o.rho} is smaller than the grid step {o.step:.4g}: the sharpness would see "
                            f"only the centre")


# ---- parameter spaces -----------------------------------------------------------------------------------
@dataclass
class Space:
    """What a grid point changes: ``model`` (a clone sharing the checkpoint's tensors) is evaluated with
    parameters ``base[n] + a d1[n] + b d2[n]``; ``coords`` is theta* in the space's coordinates."""

    name: str
    model: nn.Module
    base: dict[str, torch.Tensor]
    coords: dict[str, torch.Tensor]
    adapted: list[str]  # delta space: the adapted layers whose weight stands for W0 + dW

    @property
    def n_params(self) -> int:
        return sum(t.numel() for t in self.coords.values())


def build_space(loaded: Loaded, space: str, attention: str = "auto") -> Space:
    model = shallow_clone(loaded.model).eval()
    if attention == "auto" and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    params = dict(model.named_parameters())
    if space == "all":
        names = [n for n, p in params.items() if p.is_floating_point()]
    else:
        names = [n for n, p in params.items() if p.requires_grad]
    coords = {n: params[n].detach() for n in names}
    if space != "delta":
        return Space(space, model, dict(coords), coords, [])
    layers = adapter_layers(model)
    if not layers:
        raise GenboundError(f"--space delta needs adapter layers; method {loaded.built.method.name} has none "
                            f"(use --space trainable or all)")
    base = {n: t for n, t in coords.items() if not any(n.startswith(ln + ".") for ln in layers)}
    coords = dict(base)
    for ln, layer in layers.items():
        merged = layer.merged()  # weight W0 + dW*
        parent, _, leaf = ln.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, merged)
        base[f"{ln}.weight"] = merged.weight.detach()
        coords[f"{ln}.weight"] = layer.delta_weight().detach().to(merged.weight.dtype)
    return Space(space, model, base, coords, list(layers))


# ---- trajectory -----------------------------------------------------------------------------------------
@dataclass
class Snapshot:
    step: int
    link: int
    tensors: dict[str, torch.Tensor]


def read_trajectory(ckpt: str | Path) -> list[Snapshot]:
    """The snapshots in ``ckpt``/trajectory/, by step (empty when there are none), each checked against the
    sha256 its manifest records."""
    out, man = [], read_manifest(ckpt)
    for path in sorted((Path(ckpt) / TRAJECTORY).glob("step_*.safetensors")):
        verify_file(Path(ckpt), man, path.relative_to(Path(ckpt)).as_posix())
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            out.append(Snapshot(int(meta["step"]), int(meta["link"]), tensors))
        except (SafetensorError, OSError, KeyError, ValueError) as err:
            raise CheckpointError(f"{path} is corrupt or lacks step/link metadata ({err})") from None
    return sorted(out, key=lambda s: s.step)


def snapshot_coords(space: Space, loaded: Loaded, snap: Snapshot) -> dict[str, torch.Tensor]:
    """A snapshot in the space's coordinates, for the tensors it determines (in all space the frozen ones,
    which it does not hold, are at the centre and left out)."""
    layers = loaded.built.layers
    out = {}
    for n, centre in space.coords.items():
        owner = n[: -len(".weight")]
        if owner in space.adapted:
            layer, prefix = layers[owner], owner + "."
            mine = {k[len(prefix):]: t for k, t in snap.tensors.items() if k.startswith(prefix)}
            out[n] = layer.layout.update_from(layer, mine, snap.link).to_dense().to(centre.dtype)
        elif n in snap.tensors:
            out[n] = snap.tensors[n].to(centre.device, centre.dtype)
        elif space.name != "all":
            raise CheckpointError(f"the snapshot of step {snap.step} lacks the trainable tensor {n}")
    return out


# ---- directions -----------------------------------------------------------------------------------------
def filter_normalized(w: torch.Tensor, d: torch.Tensor, include_1d: bool) -> torch.Tensor:
    """d with each row scaled to the norm of the same row of w (rows = slices along dim 0; a 1-D tensor is
    one row and is zeroed unless include_1d); a zero row of w gives a zero row."""
    if w.dim() <= 1 and not include_1d:
        return torch.zeros_like(w)
    rows, drows = w.reshape(w.shape[0] if w.dim() > 1 else 1, -1), d.reshape(w.shape[0] if w.dim() > 1 else 1, -1)
    return (drows * (rows.norm(dim=1, keepdim=True) / drows.norm(dim=1, keepdim=True))).reshape(w.shape)


def random_directions(coords: dict[str, torch.Tensor], seed: int, count: int,
                      include_1d: bool) -> list[dict[str, torch.Tensor]]:
    """``count`` filter-normalized Gaussian directions, each tensor drawn from generator(seed, i, name)."""
    return [{n: filter_normalized(w, torch.randn(w.shape, generator=generator(seed, "landscape", i, n))
                                  .to(w.device, w.dtype), include_1d) for n, w in coords.items()}
            for i in range(count)]


def zero_rows(coords: dict[str, torch.Tensor], include_1d: bool) -> tuple[int, int]:
    """(rows of theta* that are zero, rows normalized) over the tensors the random directions move."""
    zero = total = 0
    for w in coords.values():
        if w.dim() <= 1 and not include_1d:
            continue
        norms = w.reshape(w.shape[0] if w.dim() > 1 else 1, -1).norm(dim=1)
        zero, total = zero + int((norms == 0).sum()), total + norms.numel()
    return zero, total


def _flat(t: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([t[n].reshape(-1).double() for n in names])


def _unflat(v: torch.Tensor, like: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    out = {n: torch.zeros_like(w) for n, w in like.items()}
    for n, part in zip(names, torch.split(v, [like[n].numel() for n in names])):
        out[n] = part.reshape(like[n].shape).to(like[n].dtype)
    return out


def pca_directions(diffs: list[dict[str, torch.Tensor]]) -> tuple[list[torch.Tensor], list[float], list[str]]:
    """Unit u1, u2 (float64, flattened over the returned names: those that change) spanning the best plane
    through 0 for the rows theta_t - theta*, and the explained variance ratios s_i^2 / sum s^2. The sign
    makes the first snapshot's coordinate negative."""
    names = [n for n in diffs[0] if any(bool(d[n].any()) for d in diffs)]
    if not names:
        raise GenboundError("the trajectory never leaves the centre: no PCA directions")
    M = torch.stack([_flat(d, names) for d in diffs])
    evals, evecs = torch.linalg.eigh(M @ M.T)  # Gram matrix: T x T, T = number of snapshots
    evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
    if len(diffs) < 2 or evals[1] <= 1e-12 * evals[0]:
        raise GenboundError(f"the trajectory ({len(diffs)} snapshots) spans fewer than 2 dimensions: no 2-D PCA plane")
    u = [M.T @ evecs[:, i] / evals[i].sqrt() for i in range(2)]
    u[1] = u[1] - (u[1] @ u[0]) * u[0]  # one Gram-Schmidt step against rounding
    u = [x / x.norm() for x in u]
    u = [-x if float(M[0] @ x) > 0 else x for x in u]
    return u, [float(e / evals.sum()) for e in evals[:2]], names


def project(diffs: list[dict[str, torch.Tensor]], dirs: list[dict[str, torch.Tensor]]) -> np.ndarray:
    """Least-squares coordinates (T x k) of each theta_t - theta* on the directions: argmin ||D c - diff||
    (over the tensors the diffs hold: the others are zero in every diff)."""
    names = list(diffs[0])
    D = torch.stack([_flat(d, names) for d in dirs], 1)
    rhs = torch.stack([_flat(d, names) for d in diffs], 1)
    return torch.linalg.lstsq(D.cpu(), rhs.cpu()).solution.T.numpy()


def trajectory_directions(space: Space, loaded: Loaded, snaps: list[Snapshot], source: str):
    """PCA directions scaled by c (see the module docstring), the path in grid units and a description."""
    if not snaps:
        raise GenboundError(f"--dirs pca needs the training trajectory, but {source} holds no snapshots "
                            f"(trajectory/step_*.safetensors); use --dirs random")
    last = max(s.link for s in snaps)
    used = snaps if space.name == "delta" or last == 0 else [s for s in snaps if s.link == last]
    diffs = [{n: c[n] - space.coords[n] for n in c} for c in (snapshot_coords(space, loaded, s) for s in used)]
    u, ratios, names = pca_directions(diffs)
    unit = [_unflat(x, space.coords, names) for x in u]
    path = project(diffs, unit)
    scale = float(np.abs(path).max())
    dirs = [{n: t * scale for n, t in d.items()} for d in unit]
    note = (f"top-2 principal directions of theta_t - theta* (uncentred) over {len(used)} of {len(snaps)} snapshots"
            + (f" (link {last} only: earlier links' tensors are other factors)" if len(used) < len(snaps) else "")
            + f", scaled by c = {scale:.4g} (the largest |coordinate| of the path); explained variance "
            f"{ratios[0]:.3f} + {ratios[1]:.3f}")
    traj = {"steps": [s.step for s in used], "links": [s.link for s in used], "a": (path[:, 0] / scale).tolist(),
            "b": (path[:, 1] / scale).tolist(), "scale": scale, "snapshots_total": len(snaps)}
    return dirs, ratios, traj, note


# ---- evaluation -----------------------------------------------------------------------------------------
@dataclass
class EvalData:
    inputs: dict[str, torch.Tensor]
    y: torch.Tensor
    indices: list[int]  # rows of the split, in evaluation order

    def batches(self, batch_size: int) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        n, dev = len(self.y), self.y.device
        return [(batch_of(self.inputs, torch.arange(lo, min(lo + batch_size, n), device=dev)),
                 self.y[lo:lo + batch_size]) for lo in range(0, n, batch_size)]


def eval_subset(loaded: Loaded, split: str, samples: int, seed: int) -> EvalData:
    """``samples`` examples of the split (all when it has fewer), drawn by generator(seed, "landscape-subset"),
    encoded once on the model's device; texts are ordered by length (stable) so each batch pads little."""
    data = getattr(loaded.task, split)
    if len(data) == 0:
        raise GenboundError(f"the checkpoint's {split} split is empty")
    idx = torch.randperm(len(data), generator=generator(seed, "landscape-subset"))[:samples].sort().values
    enc = loaded.built.backbone.encode(data.take(idx))
    order = length_order(enc)
    order = torch.arange(len(idx)) if order is None else order
    dev = loaded.device
    return EvalData({k: v[order].to(dev) for k, v in enc.items()}, data.y[idx][order].to(dev), idx[order].tolist())


def point_params(base: dict, dirs: list[dict], coef: torch.Tensor) -> dict[str, torch.Tensor]:
    """base + sum_j coef[..., j] dirs[j] for the tensors the directions move (the same arithmetic in every
    path); coef (k,) gives one point, (P, k) P points stacked on a leading axis."""
    out = {}
    for n in dirs[0]:
        p = base[n]
        for j, d in enumerate(dirs):
            c = coef[..., j]
            p = p + c.reshape(c.shape + (1,) * d[n].dim()) * d[n]
        out[n] = p
    return out


def _per_example(model: nn.Module, params: dict, batch: dict, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = logits_with(model, params, batch).float()
    return per_example(out, y)


def per_example(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each example's task loss (CE, or the squared error of a regression task's float targets) and whether
    its argmax is right (always False for regression, which has no error surface)."""
    problem = problem_of_targets(y)
    correct = torch.zeros_like(y, dtype=torch.bool) if problem == "regression" else out.argmax(-1) == y
    return task_loss(out, y, problem, "none"), correct


def moving(dirs: list[dict]) -> list[dict]:
    """The directions restricted to the tensors that some direction moves (the rest stay at the centre)."""
    keep = [n for n in dirs[0] if any(bool(d[n].any()) for d in dirs)]
    return [{n: d[n] for n in keep} for d in dirs]


@torch.no_grad()
def evaluate_points(space: Space, dirs: list[dict], coefs: torch.Tensor, data: EvalData, chunk: int,
                    batch_size: int, ranks=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mean CE and accuracy at each row of ``coefs`` (P x k), ``chunk`` points per vmapped forward pass.
    Falls back to a loop of functional_call (still no copies into the model) when an op refuses vmap.
    With ``ranks`` (several processes) each rank evaluates its share of the chunks one process would form and
    the sums are gathered by one all-reduce (every point's sum comes from one rank, the others add zeros), so
    every rank holds one process's numbers exactly."""
    dirs, n = moving(dirs), len(data.y)
    coefs = coefs.to(data.y.device, next(iter(space.base.values())).dtype)
    batches = data.batches(batch_size)
    dev = data.y.device  # sums stay on the device: no synchronization per batch
    loss, correct = (torch.zeros(len(coefs), dtype=t, device=dev) for t in (torch.float64, torch.long))
    info: dict = {"path": "vmap", "chunk": chunk, "batch_size": batch_size, "vmap_fallback_ops": []}

    def one(params, batch, y):
        return _per_example(space.model, params, batch, y)

    for lo in mine(range(0, len(coefs), chunk), ranks):
        part = coefs[lo:lo + chunk]
        stacked = point_params(space.base, dirs, part)  # once per chunk, not per batch
        for batch, y in batches:
            if info["path"] == "vmap":
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        ce, ok = vmap(one, in_dims=(0, None, None))(stacked, batch, y)
                    info["vmap_fallback_ops"] = sorted({*info["vmap_fallback_ops"], *(
                        str(w.message).split("batching rule for ")[1].split(".")[0]
                        for w in caught if "batching rule for " in str(w.message))})
                except torch.OutOfMemoryError:
                    raise  # too large a --chunk: say so, not a silent switch to the loop
                except (RuntimeError, NotImplementedError, ValueError) as err:
                    info["path"] = f"loop of functional_call (vmap failed: {str(err).splitlines()[0][:200]})"
            if info["path"] != "vmap":
                ce, ok = (torch.stack(t) for t in zip(*(one({n: v[i] for n, v in stacked.items()}, batch, y)
                                                          for i in range(len(part)))))
            loss[lo:lo + len(part)] += ce.double().sum(1)
            correct[lo:lo + len(part)] += ok.sum(1)
        tick(len(part))
    if spread(ranks):
        all_reduce_sum(loss)
        all_reduce_sum(correct)
        info = merged_info(all_gather_objects(info))
    return (loss / n).cpu().numpy(), (correct.double() / n).cpu().numpy(), info


def merged_info(infos: list[dict]) -> dict:
    """The ranks' evaluation notes as one: the loop if any rank fell back to it, every op vmap looped over."""
    out = dict(infos[0])
    out["path"] = next((i["path"] for i in infos if i["path"] != "vmap"), "vmap")
    out["vmap_fallback_ops"] = sorted({op for i in infos for op in i["vmap_fallback_ops"]})
    return out


@torch.no_grad()
def evaluate_points_loop(space: Space, dirs: list[dict], coefs: torch.Tensor, data: EvalData,
                         batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference (and the benchmark's baseline): for each point, copy its parameters into a model and
    evaluate it batch by batch, as the loss-landscape scripts do. The checkpoint's tensors are not touched."""
    dirs = moving(dirs)
    model = shallow_clone(space.model)
    for n in dirs[0]:
        owner, _, leaf = n.rpartition(".")
        mod = model.get_submodule(owner) if owner else model
        setattr(mod, leaf, nn.Parameter(space.base[n].clone(), requires_grad=False))
    coefs = coefs.to(data.y.device, next(iter(space.base.values())).dtype)
    batches = data.batches(batch_size)
    losses, accs = [], []
    for c in coefs:
        for n, p in point_params(space.base, dirs, c).items():
            model.get_parameter(n).copy_(p)
        loss, correct = 0.0, 0
        for batch, y in batches:
            per, ok = per_example(logits(model, batch).float(), y)
            loss += float(per.double().sum())
            correct += int(ok.sum())
        losses.append(loss / len(data.y))
        accs.append(correct / len(data.y))
    return np.array(losses), np.array(accs)


# ---- the analysis ---------------------------------------------------------------------------------------
def grid_axis(grid: int, span: float) -> list[float]:
    """``grid`` points from -span to span; for odd ``grid`` the middle one is exactly 0."""
    return [span * (2 * i - (grid - 1)) / (grid - 1) for i in range(grid)]


def sharpness(a: list[float], b: list[float], losses: np.ndarray, centre: float, rho: float) -> dict:
    """increase = max of f over grid points within Euclidean distance rho of the centre, minus f(0, 0);
    max = max of f over the whole grid minus f(0, 0) (``losses`` is len(b) x len(a))."""
    A, B = np.meshgrid(np.array(a), np.array(b))
    inside = np.hypot(A, B) <= rho + 1e-12
    worst = np.unravel_index(int(np.argmax(losses)), losses.shape)
    return {"rho": rho, "increase": float(losses[inside].max() - centre), "max": float(losses.max() - centre),
            "points_within_rho": int(inside.sum()), "argmax": [float(A[worst]), float(B[worst])]}


def landscape_analysis(loaded: Loaded, opts: LandscapeOptions, ckpt: str | Path | None = None, ranks=None,
                       progress: bool = False) -> dict:
    """The loss surface of one checkpoint (module docstring); ``ckpt`` is its folder, read for --dirs pca. With
    ``ranks`` (several processes) the grid's chunks split over them; the directions (random, or PCA of the
    trajectory: no data pass) and the sharpness are computed on every rank alike (docs/design.md section 8c)."""
    check_options(opts)
    space = build_space(loaded, opts.space, opts.attention)
    k = 1 if opts.one_d else 2
    out: dict = {"schema": SCHEMA, "method": loaded.manifest["method"]["name"], "dirs": opts.dirs,
                 "space": opts.space, "grid": opts.grid, "range": opts.range, "one_d": opts.one_d}
    if opts.dirs == "random":
        dirs = random_directions(space.coords, opts.seed, k, opts.include_1d)
        zero, rows = zero_rows(space.coords, opts.include_1d)
        out["description"] = (f"random Gaussian directions in {opts.space} space, filter-normalized per row "
                              f"(Li et al. 2018), seed {opts.seed}; 1-D tensors "
                              f"{'normalized as one row' if opts.include_1d else 'zeroed'}; {zero} of {rows} "
                              f"rows of theta* are zero and stay at zero")
        out.update(explained_variance=None, trajectory=None, zero_rows=zero)
    else:
        source = str(ckpt) if ckpt is not None else "this checkpoint (no folder given)"
        snaps = read_trajectory(ckpt) if ckpt is not None else []
        dirs, ratios, traj, note = trajectory_directions(space, loaded, snaps, source)
        dirs = dirs[:k]
        out.update(description=f"{note}; {opts.space} space", explained_variance=ratios, trajectory=traj)
    if not any(bool(d.any()) for d in dirs[0].values()):
        raise GenboundError(f"the first direction is zero: every row of theta* in {opts.space} space is zero "
                            f"(try --include-1d or another --space)")
    a = grid_axis(opts.grid, opts.range)
    b = a if k == 2 else [0.0]
    pts = [[0.0] * k] + ([[x] for x in a] if k == 1 else [[x, y] for y in b for x in a])
    data = eval_subset(loaded, opts.split, opts.samples, opts.seed)
    if loaded.device.type == "cuda":
        torch.cuda.synchronize(loaded.device)
    t0 = time.perf_counter()
    coefs = torch.tensor(pts)
    points = sum(len(coefs[lo:lo + opts.chunk]) for lo in mine(range(0, len(coefs), opts.chunk), ranks))
    with work(points, "landscape", "point", progress):
        loss, acc, info = evaluate_points(space, dirs, coefs, data, opts.chunk, opts.batch_size, ranks)
    if loaded.device.type == "cuda":
        torch.cuda.synchronize(loaded.device)
    info.update(seconds=time.perf_counter() - t0, points=len(pts), device=str(loaded.device),
                attention=getattr(getattr(space.model, "config", None), "_attn_implementation", None))
    shape = (len(a),) if k == 1 else (len(b), len(a))
    losses, accs = loss[1:].reshape(shape), acc[1:].reshape(shape)
    sharp = sharpness(a, b, losses.reshape(len(b), len(a)), float(loss[0]), opts.radius)
    d_norms = [float(_flat(d, list(d)).norm()) for d in dirs]
    regression = loaded.task.regression  # no error surface: MSE only
    out.update(coords={"a": a, "b": b if k == 2 else []}, center_loss=float(loss[0]),
               center_acc=None if regression else float(acc[0]), loss_kind="mse" if regression else "ce",
               losses=losses.tolist(), accuracies=None if regression else accs.tolist(), sharpness=sharp,
               samples=len(data.y),
               samples_requested=opts.samples, split=opts.split, seed=opts.seed, include_1d=opts.include_1d,
               n_params=space.n_params, direction_norms=d_norms, evaluation=info, options=asdict(opts),
               layout="losses[j][i] = f(a_i, b_j): rows follow b (d2), columns a (d1)" if k == 2 else
               "losses[i] = f(a_i)")
    return out


def landscape_arrays(result: dict) -> dict[str, np.ndarray]:
    """The arrays of a result for the .npz: grid coordinates, losses, accuracies, the projected trajectory."""
    out = {"a": np.array(result["coords"]["a"]), "b": np.array(result["coords"]["b"]),
           "losses": np.array(result["losses"]), "center_loss": np.array(result["center_loss"])}
    if result.get("accuracies") is not None:
        out["accuracies"] = np.array(result["accuracies"])
    if result.get("trajectory"):
        t = result["trajectory"]
        out.update(trajectory_a=np.array(t["a"]), trajectory_b=np.array(t["b"]),
                   trajectory_steps=np.array(t["steps"]), trajectory_links=np.array(t["links"]))
    if result.get("explained_variance"):
        out["explained_variance"] = np.array(result["explained_variance"])
    return out


def render(r: dict) -> str:
    """A few lines for the terminal."""
    s, e = r["sharpness"], r["evaluation"]
    lines = [f"{r['method']}: {'1-D' if r['one_d'] else '2-D'} landscape, {r['grid']} points "
             f"{'along d1' if r['one_d'] else 'per axis'} over [-{r['range']:g}, {r['range']:g}], {r['space']} space "
             f"({r['n_params']:,} numbers)",
             f"  directions: {r['description']}",
             f"  {r['samples']} {r['split']} examples (seed {r['seed']}); {e['points']} points in {e['seconds']:.2f} s "
             f"({e['path']}, chunk {e['chunk']}, {e['device']})",
             f"  centre loss {r['center_loss']:.4f} "
             f"({'MSE' if r['center_acc'] is None else 'CE, acc ' + format(r['center_acc'], '.4f')}); "
             "sharpness: increase within "
             f"rho={s['rho']:g} {s['increase']:.4f}, max over the grid {s['max']:.4f}"]
    if e["vmap_fallback_ops"]:
        lines.append(f"  note: no vmap batching rule for {', '.join(e['vmap_fallback_ops'])} (looped inside vmap)")
    return "\n".join(lines)


# ---- the analysis contract (genbound/analyses.py) -------------------------------------------------------
Options = LandscapeOptions


class Result(result.Result):
    SCHEMA = SCHEMA
    MEASURES = {"sharpness": (lambda a: a["sharpness"]["increase"], "loss increase at radius rho")}

    def render(self) -> str:
        return render(self.data)


def across_ranks(options: LandscapeOptions) -> bool:
    """Under torchrun the grid points split over the processes (``run`` takes ``ranks``)."""
    return True


def run(loaded: Loaded, options: LandscapeOptions, progress: bool = False, ranks=None) -> Result:
    return Result(landscape_analysis(loaded, options, ckpt=loaded.path, ranks=ranks, progress=progress))


USES_INITIAL = False  # never asks for the model before training: its load keeps no step-0 copy
OUTPUTS = [("out", "--out", "prefix")]


def add_arguments(parser) -> None:
    parser.add_argument("--surface", action="store_true", help="a 3-D surface view instead of contours")
    parser.add_argument("--out", metavar="PREFIX",
                        help="writes PREFIX.png (every checkpoint) and PREFIX[-folder].npz (default: each "
                             "checkpoint's DIR/analysis/landscape.png and .npz)")


def write_outputs(results: dict[str, Result], args) -> None:
    """With --out: PREFIX.png (every checkpoint on one colour scale) and one PREFIX[-folder].npz per checkpoint.
    Without: each checkpoint's own DIR/analysis/landscape.png and .npz (one line where that folder cannot be
    written; the result is in the printed table and --json)."""
    from . import plots

    if args.out is None:
        for label, r in results.items():
            prefix = Path(r["checkpoint"]) / "analysis" / "landscape"
            try:
                prefix.parent.mkdir(parents=True, exist_ok=True)
                np.savez(prefix.with_name("landscape.npz"), **landscape_arrays(r.data))
                plots.save(plots.landscape_figure({label: r.data}, surface=args.surface),
                           str(prefix.with_name("landscape.png")))
            except OSError as err:
                print(f"landscape figure of {r['checkpoint']} not written in its analysis/ folder "
                      f"({err.strerror or err})")
                continue
            print(f"wrote {prefix}.png and {prefix}.npz")
        return
    prefix = Path(args.out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    names = [Path(r["checkpoint"]).name for r in results.values()]
    for i, r in enumerate(results.values()):
        tag = names[i] if names.count(names[i]) == 1 else f"{i}-{names[i]}"  # equal folder names in two places
        name = prefix.name if len(results) == 1 else f"{prefix.name}-{tag}"
        np.savez(prefix.with_name(name + ".npz"), **landscape_arrays(r.data))
    plots.save(plots.landscape_figure({k: r.data for k, r in results.items()}, surface=args.surface),
               str(prefix.with_name(prefix.name + ".png")))
    print(f"wrote {prefix}.png and {len(results)} .npz file(s)")
