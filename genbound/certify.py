"""`genbound certify`: a PAC-Bayes certificate on the 0-1 error of a Gaussian posterior around a checkpoint
(docs/theory.md section 5d; the formulas are in genbound/pacbayes.py).

- Q: a diagonal Gaussian over the numbers training changed (``occam.trained_deltas``: adapters over every
  link, the head; every weight for full fine-tuning); frozen numbers stay deterministic and cost nothing.
  Its mean starts at the checkpoint with the init prior and at the prior's mean with the data prior (``--start``
  chooses otherwise): a fine-tuned checkpoint lies far from a prior trained on half of its data (KL / n above 1
  on the MLP track), while the prior's mean is already a good predictor at KL 0; its sigma (one per number, or
  one per tensor with ``--variance tensor``) starts at the prior's scale, parameterised as log sigma.
- P: N(mu_P, sigma_P^2 I). ``--prior init``: mu_P = the values before training (B = 0, the seeded A and head,
  W0), known before any example is seen; the certificate uses all N training examples. ``--prior data``: mu_P
  is trained with Adam on the cross-entropy (deterministic weights, from the values before training) on a
  seeded part S_p of the training split; the certificate uses only the other n = N - |S_p| examples.
- Q is trained on the certificate's examples by a PAC-Bayes objective (f-quad, f-classic, or kl^-1 itself) of
  the bounded cross-entropy, one reparameterised sample per batch, with Adam on (mean, log sigma).
- One Q per prior scale sigma_P tried (J of them); each is certified at delta / J and delta' / J (a union
  bound), and the smallest certificate is reported: it holds with probability >= 1 - delta - delta'.
- The certificate: m passes over the n examples (``--samples``), each split in order into batches of b
  (``--draw-batch``) with a fresh predictor drawn from Q for every batch, give the mean 0-1 error; the sample
  convergence bound over the K = m ceil(n / b) independent batch draws turns it into a bound on L_S(Q), and the
  PAC-Bayes-kl bound into one on L(Q). Draws made the same way over the test split give the stochastic
  predictor's test error; the posterior mean's and the checkpoint's test errors are measured.
The model is never changed: every forward pass substitutes the sampled tensors (``runtime.logits_with``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import torch

from . import pacbayes, result
from .checkpoint import Loaded
from .errors import GenboundError
from .options import opt
from .progress import tick, work
from .runtime import batch_of, device_generator, generator, logits_with, task_loss

SCHEMA = "genbound.certify/1"
KINDS, PRIORS, VARIANCES = ("pac-bayes",), ("init", "data"), ("number", "tensor")
STARTS = ("auto", "checkpoint", "prior")


@dataclass
class CertifyOptions:
    kind: str = opt("pac-bayes", 'the certificate: pac-bayes (a Gaussian posterior, PAC-Bayes-kl)')
    prior: str = opt("init", 'init (the values before training) | data (a mean trained on a seeded part of the '
                             'training split; the certificate uses the rest)')
    prior_fraction: float = opt(0.5, 'with --prior data: the share of the training split the prior is trained on')
    prior_epochs: int = opt(20, 'with --prior data: epochs of Adam on the cross-entropy for the prior mean')
    prior_lr: float | None = opt(None, 'with --prior data: learning rate of the prior mean (default: the '
                                       'checkpoint\'s training lr)')
    objective: str = opt("fquad", 'fquad | fclassic | kl: the PAC-Bayes objective the posterior is trained on')
    sigma_prior: list[float] = opt([0.003, 0.01, 0.03], 'prior scales sigma_P tried (a union bound pays for the '
                                                         'choice: delta / J each)')
    variance: str = opt("number", 'number | tensor: one posterior sigma per number or per tensor')
    start: str = opt("auto", 'checkpoint | prior | auto (the checkpoint with --prior init, the prior\'s mean with '
                             '--prior data): where the posterior mean starts')
    epochs: int = opt(10, 'epochs of posterior training over the certificate\'s examples (0: certify as started)')
    lr: float = opt(3e-3, 'Adam learning rate of the posterior (means and log sigmas)')
    batch_size: int = opt(128, 'examples per posterior training step')
    p_min: float = opt(1e-4, 'the bounded cross-entropy clamps probabilities below at p_min')
    samples: int = opt(100, 'm, passes over the examples with predictors drawn from each posterior for its '
                            'certificate')
    draw_batch: int = opt(32, 'examples that share one sampled predictor in the certificate\'s draws (smaller: '
                              'more independent units, m ceil(n / b), a tighter sampling term; slower)')
    delta: float = opt(0.025, 'the PAC-Bayes bound holds with probability >= 1 - delta')
    delta_prime: float = opt(0.01, 'the sample convergence bound holds with probability >= 1 - delta\'')
    seed: int = opt(0, 'the prior split, the posterior\'s noise and the certificate\'s draws')
    eval_batch_size: int = opt(1024, 'examples per evaluation forward pass')


Options = CertifyOptions


def check_options(o: CertifyOptions) -> None:
    """One line naming the flag for options that cannot give a certificate."""
    for flag, value, allowed in (("--kind", o.kind, KINDS), ("--prior", o.prior, PRIORS),
                                 ("--objective", o.objective, pacbayes.OBJECTIVES), ("--start", o.start, STARTS),
                                 ("--variance", o.variance, VARIANCES)):
        if value not in allowed:
            raise GenboundError(f"{flag} {value}: choose from {', '.join(allowed)}")
    if not 0 < o.prior_fraction < 1:
        raise GenboundError(f"--prior-fraction {o.prior_fraction}: must lie in (0, 1)")
    for flag, value in (("--delta", o.delta), ("--delta-prime", o.delta_prime), ("--p-min", o.p_min)):
        if not 0 < value < 1:
            raise GenboundError(f"{flag} {value}: must lie in (0, 1)")
    if o.delta + o.delta_prime >= 1:
        raise GenboundError(f"--delta {o.delta} + --delta-prime {o.delta_prime} >= 1: the certificate would hold "
                            "with no confidence")
    if not o.sigma_prior or not all(math.isfinite(s) and s > 0 for s in o.sigma_prior):
        raise GenboundError(f"--sigma-prior {' '.join(map(str, o.sigma_prior))}: give positive numbers")
    if len(set(o.sigma_prior)) != len(o.sigma_prior):
        raise GenboundError("--sigma-prior lists a scale twice (the union bound would pay for it twice)")
    for flag, value, low in (("--prior-epochs", o.prior_epochs, 0), ("--epochs", o.epochs, 0),
                             ("--batch-size", o.batch_size, 1), ("--samples", o.samples, 1),
                             ("--draw-batch", o.draw_batch, 1),
                             ("--eval-batch-size", o.eval_batch_size, 1)):
        if value < low:
            raise GenboundError(f"{flag} {value}: must be at least {low}")
    for flag, value in (("--lr", o.lr), ("--prior-lr", 1.0 if o.prior_lr is None else o.prior_lr)):
        if not (math.isfinite(value) and value > 0):
            raise GenboundError(f"{flag} {value}: must be a positive number")


# ---- the pieces ------------------------------------------------------------------------------------------
def split_for_prior(n_train: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prior indices, certificate indices) of the training split: a permutation drawn from
    ``runtime.generator(seed, "pac-bayes", "prior split")``, its first round(fraction N) entries for the prior."""
    perm = torch.randperm(n_train, generator=generator(seed, "pac-bayes", "prior split"))
    n_prior = int(round(fraction * n_train))
    if not 0 < n_prior < n_train:
        raise GenboundError(f"--prior-fraction {fraction} of {n_train} training examples leaves no examples for the "
                            "prior or none for the certificate")
    return perm[:n_prior].sort().values, perm[n_prior:].sort().values


def index_digest(idx: torch.Tensor) -> str:
    """sha256 of the sorted indices as decimal text joined by commas: names the certificate's examples."""
    return hashlib.sha256(",".join(map(str, sorted(idx.tolist()))).encode()).hexdigest()


def in_model_dtype(loaded: Loaded, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors in the dtypes the model holds them in (Q and P live in float32; a bf16 model computes in bf16)."""
    held = {**dict(loaded.model.named_parameters()), **dict(loaded.model.named_buffers())}
    return {k: v.to(held[k].dtype) if k in held else v for k, v in tensors.items()}


def _batches(idx: torch.Tensor, size: int, gen: torch.Generator | None = None):
    order = idx if gen is None else idx[torch.randperm(len(idx), generator=gen)]
    for lo in range(0, len(order), size):
        yield order[lo:lo + size]


def train_prior_mean(loaded: Loaded, start: dict[str, torch.Tensor], inputs: dict, y: torch.Tensor,
                     idx: torch.Tensor, o: CertifyOptions) -> dict[str, torch.Tensor]:
    """The data-dependent prior's mean: Adam on the cross-entropy of the examples ``idx`` only (deterministic
    weights), from the values before training."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in start.items()}
    opt = torch.optim.Adam(params.values(), lr=o.prior_lr or loaded.manifest["config"]["lr"])
    gen = generator(o.seed, "pac-bayes", "prior order")
    for _ in range(o.prior_epochs):
        for b in _batches(idx, o.batch_size, gen):
            b = b.to(y.device)
            loss = task_loss(logits_with(loaded.model, in_model_dtype(loaded, params), batch_of(inputs, b)).float(),
                             y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {k: v.detach() for k, v in params.items()}


class Posterior:
    """Q = N(mu, diag sigma^2) over named tensors, sigma = exp(log_sigma); ``sample`` draws mu + sigma eps."""

    def __init__(self, mean: dict[str, torch.Tensor], sigma0: float, per_number: bool):
        self.mu = {k: v.detach().clone().float().requires_grad_(True) for k, v in mean.items()}
        self.log_sigma = {k: torch.full(v.shape if per_number else (), math.log(sigma0), dtype=torch.float32,
                                        device=v.device, requires_grad=True) for k, v in mean.items()}

    def parameters(self) -> list[torch.Tensor]:
        return [*self.mu.values(), *self.log_sigma.values()]

    def sigma(self, k: str) -> torch.Tensor:
        return self.log_sigma[k].exp()

    def sample(self, gen: torch.Generator) -> dict[str, torch.Tensor]:
        return {k: m + self.sigma(k) * torch.randn(m.shape, generator=gen, device=m.device, dtype=m.dtype)
                for k, m in self.mu.items()}

    def kl(self, prior_mean: dict[str, torch.Tensor], sigma_p: float, dtype=torch.float32) -> torch.Tensor:
        """KL(Q || N(prior_mean, sigma_p^2 I)) (``pacbayes.gaussian_kl``), in ``dtype``."""
        return sum(pacbayes.gaussian_kl(self.mu[k].to(dtype), self.sigma(k).to(dtype), prior_mean[k].to(dtype),
                                        sigma_p) for k in self.mu)


def train_posterior(loaded: Loaded, post: Posterior, prior_mean: dict, sigma_p: float, inputs: dict,
                    y: torch.Tensor, idx: torch.Tensor, delta_j: float, o: CertifyOptions, tag: int) -> float | None:
    """``epochs`` passes of Adam over the certificate's examples on the PAC-Bayes objective of the bounded CE,
    one reparameterised sample per batch; the last objective value (None without steps)."""
    opt = torch.optim.Adam(post.parameters(), lr=o.lr)
    order = generator(o.seed, "pac-bayes", "posterior order", tag)
    noise = device_generator(y.device, o.seed, "pac-bayes", "noise", tag)
    n, last = len(idx), None
    for _ in range(o.epochs):
        for b in _batches(idx, o.batch_size, order):
            b = b.to(y.device)
            out = logits_with(loaded.model, in_model_dtype(loaded, post.sample(noise)), batch_of(inputs, b))
            loss = pacbayes.bounded_ce(out, y[b], o.p_min).mean()
            value = pacbayes.objective(o.objective, loss, post.kl(prior_mean, sigma_p), n, delta_j)
            opt.zero_grad()
            value.backward()
            opt.step()
            last = float(value.detach())
    if last is not None and not math.isfinite(last):
        raise GenboundError(f"the PAC-Bayes objective became {last} with sigma_P {sigma_p:g}: lower --lr")
    return last


@torch.no_grad()
def wrong(loaded: Loaded, tensors: dict, inputs: dict, y: torch.Tensor, idx: torch.Tensor, size: int) -> int:
    """How many of the examples ``idx`` the model with ``tensors`` substituted gets wrong."""
    count, tensors = 0, in_model_dtype(loaded, tensors)
    for b in _batches(idx, size):
        b = b.to(y.device)
        count += int((logits_with(loaded.model, tensors, batch_of(inputs, b)).argmax(-1) != y[b]).sum())
    return count


@torch.no_grad()
def stochastic_errors(loaded: Loaded, post: Posterior, inputs: dict, ys: dict, idx: dict, m: int,
                      gen: torch.Generator, draw_batch: int) -> dict[str, float]:
    """The mean 0-1 error of predictors drawn from Q on the certificate's examples and on the test split: m
    passes over each, split in order into batches of ``draw_batch`` examples, a fresh predictor for every batch."""
    totals = dict.fromkeys(idx, 0)
    for _ in range(m):
        for s in idx:
            for b in _batches(idx[s], draw_batch):
                totals[s] += wrong(loaded, post.sample(gen), inputs[s], ys[s], b, draw_batch)
                tick()
    return {s: totals[s] / (m * len(idx[s])) for s in idx}


# ---- the analysis -------------------------------------------------------------------------------------------
def certify(loaded: Loaded, o: CertifyOptions, progress: bool = False) -> dict:
    """Every number of `genbound certify` for one loaded checkpoint."""
    from .compute import majority_error
    from .occam import trained_deltas

    check_options(o)
    task, dev, man = loaded.task, loaded.device, loaded.manifest
    if task.regression:
        raise GenboundError("certify bounds a 0-1 error; a regression task has none")
    if len(task.train) == 0 or len(task.test) == 0:
        raise GenboundError("the checkpoint's task has no train or test examples to certify on")
    enc = loaded.built.backbone.encode
    inputs = {s: {k: v.to(dev) for k, v in enc(getattr(task, s)).items()} for s in ("train", "test")}
    ys = {s: getattr(task, s).y.to(dev) for s in ("train", "test")}
    n_train, n_test = len(ys["train"]), len(ys["test"])
    pairs = trained_deltas(loaded, loaded.initial())
    if not pairs:
        raise GenboundError("the checkpoint changed no numbers: there is no posterior to certify")
    final = {k: f.to(dev) for k, (f, _) in pairs.items()}
    before = {k: s.to(dev) for k, (_, s) in pairs.items()}
    loaded.model.eval()
    all_idx, test_idx = torch.arange(n_train), torch.arange(n_test)
    if o.prior == "data":
        prior_idx, cert_idx = split_for_prior(n_train, o.prior_fraction, o.seed)
        prior_mean = train_prior_mean(loaded, before, inputs["train"], ys["train"], prior_idx, o)
    else:
        prior_idx, cert_idx, prior_mean = all_idx[:0], all_idx, before
    n = len(cert_idx)
    start = o.start if o.start != "auto" else "checkpoint" if o.prior == "init" else "prior"
    size = o.eval_batch_size
    errs = lambda t, s, i: wrong(loaded, t, inputs[s], ys[s], i, size) / len(i)  # noqa: E731
    delta_j, delta_prime_j = pacbayes.union_deltas(o.delta, o.delta_prime, len(o.sigma_prior))
    batches, fill = pacbayes.draw_layout(n, o.draw_batch)
    units = o.samples * batches
    tried = []
    for j, sigma_p in enumerate(o.sigma_prior):
        post = Posterior(final if start == "checkpoint" else prior_mean, sigma_p, o.variance == "number")
        kl_start = float(post.kl(prior_mean, sigma_p, torch.float64).detach())
        last = train_posterior(loaded, post, prior_mean, sigma_p, inputs["train"], ys["train"], cert_idx, delta_j, o,
                               j)
        draws = device_generator(dev, o.seed, "pac-bayes", "certify", j)
        est = stochastic_errors(loaded, post, inputs, ys, {"train": cert_idx, "test": test_idx}, o.samples, draws,
                                o.draw_batch)
        kl = float(post.kl(prior_mean, sigma_p, torch.float64).detach())
        cert = pacbayes.certificate(est["train"], units, kl, n, delta_j, delta_prime_j, fill)
        mean = {k: v.detach() for k, v in post.mu.items()}
        sig = torch.cat([post.sigma(k).detach().double().reshape(-1) for k in post.mu])
        row = {"sigma_prior": sigma_p, "kl": kl, "kl_start": kl_start, "kl_over_n": kl / n,
               "stochastic_train_err": est["train"], "train_err_bound": cert["train_err_bound"],
               "budget": cert["budget"], "certificate": cert["certificate"], "stochastic_test_err": est["test"],
               "mean_train_err": errs(mean, "train", cert_idx), "mean_test_err": errs(mean, "test", test_idx),
               "sigma_geomean": float(sig.log().mean().exp()), "sigma_max": float(sig.max()), "objective_last": last}
        tried.append(row)
        if progress:
            print(f"  sigma_P {sigma_p:g}: KL {kl:.1f}, stochastic train err {est['train']:.4f}, certificate "
                  f"{cert['certificate']:.4f}, stochastic test err {est['test']:.4f}", flush=True)
    best = min(tried, key=lambda r: r["certificate"])
    meth = man["method"]
    out = {
        "schema": SCHEMA, "method": meth["name"], "rank": meth["rank"], "chain_k": meth["chain_k"],
        "kind": o.kind, "prior": o.prior, "objective": o.objective, "variance": o.variance, "start": start,
        "n_train": n_train, "n": n, "n_prior": len(prior_idx), "n_test": n_test,
        "examples": {"rule": "all training examples" if o.prior == "init" else
                     "torch.randperm(N, generator=runtime.generator(seed, 'pac-bayes', 'prior split')): the first "
                     "round(prior_fraction N) train the prior, the rest are the certificate's",
                     "seed": o.seed, "prior_fraction": o.prior_fraction if o.prior == "data" else 0.0,
                     "certificate_sha256": index_digest(cert_idx)},
        "numbers": sum(v.numel() for v in final.values()), "tensors": len(final),
        "samples": o.samples, "draw_batch": o.draw_batch, "sample_units": units, "draw_fill": fill,
        "delta": o.delta, "delta_prime": o.delta_prime,
        "confidence": 1 - o.delta - o.delta_prime, "priors_tried": len(o.sigma_prior),
        "delta_each": delta_j, "delta_prime_each": delta_prime_j,
        **{k: best[k] for k in ("sigma_prior", "kl", "stochastic_train_err", "train_err_bound", "certificate",
                                "stochastic_test_err", "mean_train_err", "mean_test_err")},
        "checkpoint_test_err": errs(final, "test", test_idx),
        "prior_mean_test_err": errs(prior_mean, "test", test_idx),
        "majority_err": majority_error(ys["train"], ys["test"]),
        "tried": tried, "options": asdict(o),
    }
    return out


def render(r: dict) -> str:
    """The readable table of one certificate."""
    used = (f"all N={r['n_train']} training examples" if r["prior"] == "init" else
            f"n={r['n']} of N={r['n_train']} training examples (the prior's mean was trained on the other "
            f"{r['n_prior']}, seed {r['examples']['seed']})")
    lines = [f"{r['method']}  r={r['rank']} k={r['chain_k']}   PAC-Bayes certificate ({r['objective']}, prior "
             f"{r['prior']}, sigma per {r['variance']}, start {r['start']}) over {r['numbers']:,} trained numbers in "
             f"{r['tensors']} tensors",
             f"  uses {used}; {r['samples']} passes, " + (
                 f"a predictor drawn from Q for every {r['draw_batch']} examples: {r['sample_units']:,} independent "
                 "draws" if "draw_batch" in r else "one predictor drawn from Q a pass (genbound before --draw-batch)"),
             f"  confidence {r['confidence']:.3f} "
             f"(delta {r['delta']:g} + delta' {r['delta_prime']:g}, each split over {r['priors_tried']} prior scales)",
             f"  {'sigma_P':>8}{'KL':>12}{'KL/n':>9}{'stoch train':>13}{'bound':>9}{'certificate':>13}"
             f"{'stoch test':>12}{'mean test':>11}"]
    for t in r["tried"]:
        lines.append(f"  {t['sigma_prior']:>8g}{t['kl']:>12.1f}{t['kl_over_n']:>9.4f}"
                     f"{t['stochastic_train_err']:>13.4f}{t['train_err_bound']:>9.4f}{t['certificate']:>13.4f}{t['stochastic_test_err']:>12.4f}"
                     f"{t['mean_test_err']:>11.4f}")
    vacuous = r["certificate"] >= min(1.0, r["majority_err"])
    lines += [f"  certified test error of the stochastic predictor: {r['certificate']:.4f}"
              + ("  (vacuous: >= the majority-class error)" if vacuous else ""),
              f"  measured test error: stochastic predictor {r['stochastic_test_err']:.4f}, posterior mean "
              f"{r['mean_test_err']:.4f}, checkpoint {r['checkpoint_test_err']:.4f}, prior mean "
              f"{r['prior_mean_test_err']:.4f}; majority class {r['majority_err']:.4f}"]
    return "\n".join(lines)


class Result(result.Result):
    SCHEMA = SCHEMA
    MEASURES = {
        "pac_bayes_certificate": (lambda a: a["certificate"], "PAC-Bayes certificate on the test error of the "
                                                              "stochastic predictor (Q: at the checkpoint with "
                                                              "the init prior, at the prior's mean with a data "
                                                              "prior)"),
        "pac_bayes_kl_over_n": (lambda a: a["kl"] / a["n"], "KL(Q||P) / n of the certified posterior"),
    }

    def render(self) -> str:
        return render(self.data)


def draw_units(loaded: Loaded, o: CertifyOptions) -> int:
    """The predictors ``certify`` draws (a fresh one per batch of the certificate's and the test examples, m passes,
    every prior scale): its progress."""
    n_train, n_test = len(loaded.task.train), len(loaded.task.test)
    n = n_train if o.prior == "init" else n_train - round(o.prior_fraction * n_train)
    return len(o.sigma_prior) * o.samples * (-(-n // o.draw_batch) + -(-n_test // o.draw_batch))


def run(loaded: Loaded, options: CertifyOptions, progress: bool = False) -> Result:
    with work(draw_units(loaded, options), "certify", "draw", progress):
        return Result(certify(loaded, options, progress))
