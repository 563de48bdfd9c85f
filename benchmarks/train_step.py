"""Training step time and peak memory of every method against the frozen-backbone limit and PEFT's LoRA.

    python benchmarks/train_step.py [--shapes roberta-base:32x128 roberta-base:16x512 minilm:32x128]
        [--methods limit head lora asym cla rcla c3la paca full peft-lora lora:ref cla:ref c3la:ref]
        [--rounds 3] [--steps 30] [--replays 60] [--no-graphs]
        [--accuracy-model .carry/minilm16 --accuracy-epochs 1] [--device auto] [--out reports/performance]

Models are random-init encoders of the named shape (cost does not depend on the weights) with a 45-class
head, fed random tokens without padding (with the all-ones attention mask a tokenizer gives), under bf16
autocast with fp32 master weights. Every method trains
the head; adapters sit on query and value (genbound's and PEFT's default), r = 16, alpha = 32; chains (c3la)
are measured on their last link, with the two finished links in place. One step = forward, cross-entropy,
backward, fused AdamW (capturable); the training loop adds gradient clipping and the learning-rate schedule,
the same for every method, which are not timed here. ``limit``: every weight frozen but the head, with the
gradient still flowing down to the embeddings' output: no adapter can cost less. ``NAME:ref`` runs genbound's reference
adapter path (fused off) for comparison. ``peft-lora``: peft.get_peft_model with the same r, alpha and
targets, dropout 0.

Per method and round: a fresh model; peak allocated memory over eager steps, counted from what was allocated
before the model was built (what earlier variants left, which the process does not free, is untouched and
subtracted; its size is reported as left_over_mib_max; one side stream serves all variants, since every new
stream holds a cuBLAS workspace for good);
the median eager step time (CUDA events); the median step time when the whole step is captured once in a
CUDA graph and replayed (launch overhead removed), by genbound.graphs as in the training loop. Rounds
rotate the method order; the reported numbers are medians over rounds, with ratios to the limit and to
PEFT LoRA from the same run. With --accuracy-model it then trains each genbound method for a short fixed
budget on WordNet (genbound train: fused path, CUDA graphs) and prints test accuracy and ms per step, with
lora and cla also on the reference path (eager, fused off): speed must not be bought with a broken method.
Writes <name>.json and <name>.md under --out.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchlib import add_output_options, setup_device

from genbound.graphs import WARMUP, GraphedStep, side_stream
from genbound.layers import adapter_layers, attach, next_link, set_trainable
from genbound.methods import FULL, HEAD, get_method

SHAPES = {"roberta-base": dict(kind="roberta", vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                               num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514),
          "minilm": dict(kind="bert", vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                         num_attention_heads=12, intermediate_size=1536, max_position_embeddings=512),
          "tiny": dict(kind="bert", vocab_size=1000, hidden_size=64, num_hidden_layers=2,  # CPU smoke tests
                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)}
TARGETS = ("query", "value")
R, ALPHA, K, CLASSES = 16, 32.0, 3, 45


def base_model(shape: str):
    from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

    spec = dict(SHAPES[shape])
    kind = spec.pop("kind")
    torch.manual_seed(0)
    if kind == "roberta":
        return RobertaForSequenceClassification(RobertaConfig(num_labels=CLASSES, **spec))
    return BertForSequenceClassification(BertConfig(num_labels=CLASSES, **spec))


def prepare(base, variant: str, device: torch.device):
    """(model on device, trainable parameters) for one variant."""
    name, _, path = variant.partition(":")
    model = copy.deepcopy(base)
    if name == "peft-lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                                                 target_modules=list(TARGETS), task_type="SEQ_CLS"))
        model.to(device)
        return model, [p for p in model.parameters() if p.requires_grad]
    for p in model.parameters():
        p.requires_grad_(False)
    if name == "limit":
        embeddings = model.base_model.embeddings
        embeddings.register_forward_hook(lambda mod, inp, out: out.requires_grad_(True))
        for p in model.classifier.parameters():
            p.requires_grad_(True)
    else:
        method = get_method(name)
        if method.scope not in (FULL, HEAD):
            names = [n for n, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and n.rpartition(".")[2] in TARGETS]
            k = K if method.chain else 1
            attach(model, method, names, R, ALPHA, k, seed=0)
            for link in range(1, k):
                next_link(model, link)
        set_trainable(model, method, ["classifier"])
        for layer in adapter_layers(model).values():
            layer.fused = path != "ref"
    model.to(device)
    return model, [p for p in model.parameters() if p.requires_grad]


def make_step(model, params, batch):
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True, capturable=True)
    ids, mask, y = batch

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=ids, attention_mask=mask).logits
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step, opt


def graph_body(model, opt):
    """The step as genbound.graphs.GraphedStep runs it (no autocast cache inside a capture)."""
    def body(inputs):
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            logits = model(input_ids=inputs["ids"], attention_mask=inputs["mask"]).logits
        loss = F.cross_entropy(logits.float(), inputs["y"])
        loss.backward()
        opt.step()
        return loss
    return body


def event_times(fn, n: int) -> list[float]:
    """Milliseconds of each of n back-to-back calls (CUDA events, no host sync between calls)."""
    events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
    events[0].record()
    for i in range(n):
        fn()
        events[i + 1].record()
    torch.cuda.synchronize()
    return [events[i].elapsed_time(events[i + 1]) for i in range(n)]


def release() -> int:
    """Free what the last variant left (HF and PEFT modules hold reference cycles); bytes still allocated."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def measure(base, variant: str, batch, device, steps: int, replays: int, graphs: bool) -> dict:
    before = release()
    torch.cuda.reset_peak_memory_stats(device)
    model, params = prepare(base, variant, device)
    model.train()
    step, opt = make_step(model, params, batch)
    side = side_stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (and optimizer state) off the default stream, as graphs require
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    eager = statistics.median(event_times(step, steps))
    out = {"eager_ms": eager, "peak_mib": (torch.cuda.max_memory_allocated(device) - before) / 2**20,
           "left_over_mib": before / 2**20, "trainable": sum(p.numel() for p in params)}
    if graphs:  # the same capture as genbound's training loop (genbound.graphs)
        graphed, body = GraphedStep(), graph_body(model, opt)
        inputs = {"ids": batch[0], "mask": batch[1], "y": batch[2]}
        zero_grad = opt.zero_grad
        try:
            for _ in range(WARMUP + 1):
                graphed.run(body, inputs, lambda: zero_grad(set_to_none=True))
            out["graph_ms"] = statistics.median(
                event_times(lambda: graphed.run(body, inputs, lambda: None), replays))
        except RuntimeError as err:  # a model whose forward syncs with the host cannot be captured
            out["graph_error"] = str(err).splitlines()[0][:200]
        del graphed
    del model, params, opt, step
    release()
    return out


def run_shape(shape_spec: str, variants: list[str], device, args) -> dict:
    shape, _, size = shape_spec.partition(":")
    bsz, seq = (int(v) for v in size.split("x"))
    base = base_model(shape)
    gen = torch.Generator().manual_seed(0)
    # the attention mask a tokenizer gives (genbound's training always passes it; without one, HF builds a mask
    # under graph capture that SDPA can only serve with its math kernel)
    batch = (torch.randint(5, base.config.vocab_size, (bsz, seq), generator=gen).to(device),
             torch.ones(bsz, seq, dtype=torch.long, device=device),
             torch.randint(0, CLASSES, (bsz,), generator=gen).to(device))
    rounds: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            rounds[v].append(measure(base, v, batch, device, args.steps, args.replays, not args.no_graphs))
            row = rounds[v][-1]
            print(f"  {shape_spec} round {r} {v:12s} eager {row['eager_ms']:.3f} ms  "
                  f"graph {row.get('graph_ms', float('nan')):.3f} ms  peak {row['peak_mib']:.0f} MiB", flush=True)
    table = {}
    for v, rows in rounds.items():
        agg = {key: statistics.median(r[key] for r in rows) for key in ("eager_ms", "peak_mib")}
        graphs = [r["graph_ms"] for r in rows if "graph_ms" in r]
        agg["graph_ms"] = statistics.median(graphs) if graphs else None
        agg["eager_ms_rounds"] = [r["eager_ms"] for r in rows]
        agg["graph_ms_rounds"] = graphs
        agg["peak_mib_rounds"] = [r["peak_mib"] for r in rows]
        agg["left_over_mib_max"] = max(r["left_over_mib"] for r in rows)
        agg["trainable"] = rows[0]["trainable"]
        if any("graph_error" in r for r in rows):
            agg["graph_error"] = next(r["graph_error"] for r in rows if "graph_error" in r)
        table[v] = agg
    for ref in ("limit", "peft-lora"):
        if ref not in table:
            continue
        for agg in table.values():
            for key in ("eager_ms", "graph_ms", "peak_mib"):
                a, b = agg[key], table[ref][key]
                agg[f"{key}/{ref}"] = a / b if a is not None and b else None
    return {"shape": shape, "batch": bsz, "seq": seq, "methods": table}


def accuracy(args, device, keep) -> dict:
    """Test accuracy after a short budget per method; ``keep(partial)`` after each run."""
    from genbound.train import TrainConfig, train

    out = {}
    runs = [m for m in args.methods if m not in ("limit", "peft-lora") and ":" not in m]
    runs += [f"{m}:ref" for m in ("lora", "cla") if m in runs]
    for variant in runs:
        name, _, path = variant.partition(":")
        lr = {"full": 1e-4, "head": 5e-3}.get(name, 5e-4)
        cfg = TrainConfig(model=args.accuracy_model, data="wordnet", method=name, rank=R, alpha=ALPHA,
                          chain=K if get_method(name).chain else 1, epochs=args.accuracy_epochs, batch_size=32,
                          lr=lr, seed=0, fused=path != "ref", graphs=path != "ref")
        t0 = time.perf_counter()
        man = train(cfg, Path(args.accuracy_dir) / variant.replace(":", "-"), progress=False)
        out[variant] = {"test_acc": man["metrics"]["test_acc"], "train_seconds": man["timing"]["train_seconds"],
                        "cuda_graphs": man["timing"].get("cuda_graphs"),
                        "cuda_graph_error": man["timing"].get("cuda_graph_error"),
                        "wall_seconds": time.perf_counter() - t0, "steps": man["timing"]["steps"],
                        "peak_mib": man["timing"]["peak_gpu_memory_bytes"] / 2**20}
        print(f"  accuracy {variant:10s} test acc {out[variant]['test_acc']:.4f}  "
              f"train {out[variant]['train_seconds']:.1f} s", flush=True)
        keep(out)
    return out


def markdown(result: dict) -> str:
    lines = [f"# Training step: time and peak memory per method ({result['device']}, torch {result['torch']})", "",
             "`" + result["command"] + "`", "",
             "Medians over rounds; ratios are to the frozen-backbone limit and to PEFT's LoRA in the same run.", ""]

    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    for s in result["shapes"]:
        lines += [f"## {s['shape']}, batch {s['batch']} x {s['seq']} tokens, bf16 autocast", "",
                  "| method | trainable | eager ms | graphed ms | peak MiB | eager / limit | graphed / limit "
                  "| peak / limit | eager / PEFT | graphed / PEFT | peak / PEFT |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for v, a in s["methods"].items():
            lines.append(f"| {v} | {a['trainable']:,} | {f(a['eager_ms'], '.3f')} | {f(a['graph_ms'], '.3f')} | "
                         f"{a['peak_mib']:.0f} | {f(a.get('eager_ms/limit'), '.3f')} | "
                         f"{f(a.get('graph_ms/limit'), '.3f')} | {f(a.get('peak_mib/limit'), '.4f')} | "
                         f"{f(a.get('eager_ms/peft-lora'), '.3f')} | {f(a.get('graph_ms/peft-lora'), '.3f')} | "
                         f"{f(a.get('peak_mib/peft-lora'), '.4f')} |")
        errors = {v: a["graph_error"] for v, a in s["methods"].items() if "graph_error" in a}
        lines += [""] + [f"- {v}: no CUDA graph: {e}" for v, e in errors.items()] + [""]
    if result.get("accuracy"):
        lines += ["## Accuracy after a short budget (MiniLM on WordNet, genbound train)", "",
                  "| run | test acc | steps | train s | ms / step | CUDA graphs | peak MiB |",
                  "|---|---|---|---|---|---|---|"]
        for v, a in result["accuracy"].items():
            lines.append(f"| {v} | {a['test_acc']:.4f} | {a['steps']} | {a['train_seconds']:.1f} | "
                         f"{1000 * a['train_seconds'] / a['steps']:.2f} | {a['cuda_graphs']} | {a['peak_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="*", default=["roberta-base:32x128", "roberta-base:16x512", "minilm:32x128"])
    ap.add_argument("--methods", nargs="+", default=["limit", "head", "lora", "asym", "cla", "rcla", "c3la", "paca",
                                                     "full", "peft-lora", "lora:ref", "cla:ref", "c3la:ref"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30, help="timed eager steps per round")
    ap.add_argument("--replays", type=int, default=60, help="timed graph replays per round")
    ap.add_argument("--no-graphs", action="store_true")
    ap.add_argument("--accuracy-model", help="e.g. .carry/minilm16: also train each method briefly on WordNet")
    ap.add_argument("--accuracy-epochs", type=float, default=1.0)
    ap.add_argument("--accuracy-dir", default="runs/train_step")
    add_output_options(ap, "train_step")
    args = ap.parse_args()
    device = setup_device(args)
    if device.type != "cuda":
        raise SystemExit("train_step.py measures CUDA step times and memory: run it on the GPU machine")
    torch.backends.cuda.matmul.allow_tf32 = True
    result = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "command": "python benchmarks/train_step.py " + " ".join(sys.argv[1:]), "r": R, "alpha": ALPHA,
              "targets": list(TARGETS), "rounds": args.rounds, "shapes": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for spec in args.shapes:
        result["shapes"].append(run_shape(spec, args.methods, device, args))
        (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))  # partial results survive
    if args.accuracy_model:
        def keep(partial):
            (out / f"{args.name}.json").write_text(json.dumps({**result, "accuracy": partial}, indent=1))

        result["accuracy"] = accuracy(args, device, keep)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
