"""Subspace training (docs/theory.md section 5e): the trained numbers move only in a seeded random subspace,

    theta = theta_0 + P z,        z in R^D (starts at 0),   P: numbers x D, a sparse random projection,

so the compression bound codes the D coordinates of z instead of every trained number.

theta is every tensor with requires_grad (the method's trainable link tensors and the head; every weight for
full), flattened in ``named_parameters`` order and concatenated; theta_0 is their value when the link starts
(what a decoder rebuilds from the base and the seed). P is never formed: row i (trained number i) holds NNZ
entries +-1/sqrt(NNZ) in columns drawn with replacement (repeats add up), from generator(run seed, "subspace",
projection seed), so every row has norm about 1 and one unit of z moves a trained number by about one unit
(Adam's steps on z are then on the scale of steps on theta). ``apply`` (P z: gathers, sums in a fixed order,
elementwise only, so CPU and CUDA give the same bits) and ``transpose`` (P^T g: index_add) are tested against
the dense P built column by column.

Training keeps theta in the model's own parameters (so every method, its fused path, evaluation, snapshots and
checkpoints see ordinary tensors): backward gives dL/dtheta, ``pull_grad`` turns it into dL/dz = P^T dL/dtheta,
the optimizer steps z, and ``push`` writes theta_0 + P z back. Chains: each link has its own z (D numbers, the
same P); at a boundary the layouts merge and restart the link as without a subspace, the finished z is kept, and
theta_0 becomes the tensors' new values (fresh link, the head as it is). A run of k links trains k D numbers,
stored as ``coordinates`` (k x D); ``replay`` rebuilds every tensor of the model from them and a step-0 model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import next_link
from .runtime import generator

KIND = "sparse"
NNZ = 4  # nonzero entries per row of P
FILE = "subspace.safetensors"


class SparseProjection:
    """P (numbers x dim): row i has NNZ entries sign / sqrt(NNZ) in columns ``cols[:, i]`` (see the module
    docstring); only the column indices and the signs are kept (NNZ x numbers each)."""

    def __init__(self, numbers: int, dim: int, seed: int, projection_seed: int = 0,
                 device: torch.device | str = "cpu"):
        if numbers < 1 or not 1 <= dim:
            raise ValueError(f"a projection needs numbers >= 1 and dim >= 1, got {numbers} x {dim}")
        gen = generator(seed, "subspace", projection_seed)
        self.numbers, self.dim, self.scale = numbers, dim, 1.0 / math.sqrt(NNZ)
        self.cols = torch.randint(dim, (NNZ, numbers), generator=gen).to(device)
        self.neg = (torch.randint(2, (NNZ, numbers), generator=gen) == 1).to(device)

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """P z (numbers,), in z's dtype: the signed gathers summed in a fixed order, then scaled."""
        acc = None
        for j in range(NNZ):
            v = z.index_select(0, self.cols[j])
            v = torch.where(self.neg[j], -v, v)
            acc = v if acc is None else acc + v
        return acc * self.scale

    def transpose(self, g: torch.Tensor) -> torch.Tensor:
        """P^T g (dim,), in g's dtype."""
        out = torch.zeros(self.dim, dtype=g.dtype, device=g.device)
        for j in range(NNZ):
            out.index_add_(0, self.cols[j], torch.where(self.neg[j], -g, g))
        return out * self.scale

    def dense(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """P as a dense matrix built column by column (P e_j): the test oracle, small sizes only."""
        eye = torch.eye(self.dim, dtype=dtype, device=self.cols.device)
        return torch.stack([self.apply(eye[j]) for j in range(self.dim)], 1)


def trained(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The tensors theta is made of, in order: every parameter with requires_grad, in named_parameters order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def count(model: nn.Module) -> int:
    """How many numbers theta has (P's rows)."""
    return sum(p.numel() for _, p in trained(model))


class Subspace:
    """The subspace state of one model during training (see the module docstring): the projection, theta_0 of
    the current link, z (an nn.Parameter, the only tensor the optimizer holds) and the finished links' z."""

    def __init__(self, model: nn.Module, dim: int, seed: int, projection_seed: int = 0):
        self.params = [p for _, p in trained(model)]
        self.names = [n for n, _ in trained(model)]
        device = self.params[0].device
        self.proj = SparseProjection(count(model), dim, seed, projection_seed, device)
        self.theta0 = self.flat()
        self.z = nn.Parameter(torch.zeros(dim, device=device))
        self.done: list[torch.Tensor] = []

    @torch.no_grad()
    def flat(self) -> torch.Tensor:
        """theta now, float32, flattened in order."""
        return torch.cat([p.detach().float().reshape(-1) for p in self.params])

    @torch.no_grad()
    def theta(self, z: torch.Tensor | None = None) -> torch.Tensor:
        """theta_0 + P z (float32)."""
        return self.theta0 + self.proj.apply((self.z if z is None else z).detach().float())

    @torch.no_grad()
    def push(self, z: torch.Tensor | None = None) -> None:
        """Write theta_0 + P z into the parameters (each rounded once to its dtype)."""
        write(self.params, self.theta(z))

    def pull_grad(self) -> None:
        """z.grad = P^T dL/dtheta from the parameters' gradients, which are then cleared."""
        g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).float().reshape(-1)
                       for p in self.params])
        for p in self.params:
            p.grad = None
        self.z.grad = self.proj.transpose(g)

    @torch.no_grad()
    def start_link(self) -> None:
        """After the layouts started a new link: keep the finished z, start z = 0 from the tensors' values now."""
        self.done.append(self.z.detach().clone())
        self.z.zero_()
        self.theta0 = self.flat()

    def coordinates(self) -> torch.Tensor:
        """Every link's z, links x D (float32, CPU)."""
        return torch.stack([*self.done, self.z.detach()]).float().cpu()

    def state(self) -> dict:
        return {"done": [d.cpu() for d in self.done], "z": self.z.detach().cpu(), "theta0": self.theta0.cpu()}

    @torch.no_grad()
    def load(self, state: dict) -> None:
        device = self.z.device
        self.done = [d.to(device) for d in state["done"]]
        self.z.copy_(state["z"])
        self.theta0 = state["theta0"].to(device)


def write(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    """Copy consecutive slices of ``flat`` into ``params`` (in place, no gradient)."""
    with torch.no_grad():
        at = 0
        for p in params:
            p.copy_(flat[at:at + p.numel()].view_as(p))
            at += p.numel()


@torch.no_grad()
def replay(model: nn.Module, coords: torch.Tensor, seed: int, projection_seed: int = 0) -> Subspace:
    """Rebuild a trained model from its step-0 state (``model``, changed in place) and every link's z
    (``coords``, links x D): link t's tensors are theta_0 + P z_t, then the layouts start link t + 1 as in
    training. Returns the Subspace (theta_0 of the last link)."""
    sub = Subspace(model, coords.shape[1], seed, projection_seed)
    for t in range(coords.shape[0]):
        if t:
            next_link(model, t)
            sub.start_link()
        sub.z.copy_(coords[t])
        sub.push()
    return sub


def manifest_entry(sub: Subspace, projection_seed: int) -> dict:
    """The manifest's ``subspace`` object (docs/design.md section 5)."""
    links, dim = sub.coordinates().shape
    return {"kind": KIND, "dim": dim, "nnz": NNZ, "projection_seed": projection_seed, "numbers": sub.proj.numbers,
            "links": links, "coordinates": links * dim, "tensors": sub.names, "file": FILE}
