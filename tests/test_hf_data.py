"""Hugging Face datasets (hf:NAME, save_to_disk folders) and the GLUE recipes, on tiny local copies in GLUE's
schema: columns, splits, labels, metrics, subsampling, fingerprints, one-line errors, and a train -> compute run."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets")
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value  # noqa: E402

from genbound.cli import main  # noqa: E402
from genbound.config import TrainConfig, normalized  # noqa: E402
from genbound.data import load_task, split_columns, with_columns  # noqa: E402
from genbound.errors import DataError  # noqa: E402

datasets.disable_progress_bars()

WORDS = "apple river engine cloud stone tiger music paper glass honey".split()
# task: (input columns, label names or None for float scores, test splits as GLUE has them, metrics, test split)
GLUE_SCHEMA = {
    "cola": (("sentence",), ["unacceptable", "acceptable"], ("test",), ("matthews", "accuracy"), "validation"),
    "sst2": (("sentence",), ["negative", "positive"], ("test",), ("accuracy",), "validation"),
    "mrpc": (("sentence1", "sentence2"), ["not_equivalent", "equivalent"], ("test",), ("f1", "accuracy"),
             "validation"),
    "qqp": (("question1", "question2"), ["not_duplicate", "duplicate"], ("test",), ("f1", "accuracy"), "validation"),
    "stsb": (("sentence1", "sentence2"), None, ("test",), ("pearson", "spearman"), "validation"),
    "mnli": (("premise", "hypothesis"), ["entailment", "neutral", "contradiction"], ("test_matched",
             "test_mismatched"), ("accuracy",), "validation_matched"),
    "qnli": (("question", "sentence"), ["entailment", "not_entailment"], ("test",), ("accuracy",), "validation"),
    "rte": (("sentence1", "sentence2"), ["entailment", "not_entailment"], ("test",), ("accuracy",), "validation"),
    "wnli": (("sentence1", "sentence2"), ["not_entailment", "entailment"], ("test",), ("accuracy",), "validation"),
}


def sentence(i: int, salt: str = "") -> str:
    return f"{salt}{WORDS[i % 10]} {WORDS[(i * 7 + 3) % 10]} number {i}"


def rows(inputs, names, n: int, start: int, labelled: bool = True) -> dict:
    """Columns of ``n`` examples: texts, a label (class id, or a float score in [0, 5]; -1 when unlabelled), idx."""
    out = {c: [sentence(start + i, f"{c} ") for i in range(n)] for c in inputs}
    if names is None:
        out["label"] = [round(5 * ((start + i) * 0.37 % 1), 2) if labelled else -1.0 for i in range(n)]
    else:
        out["label"] = [(start + i) % len(names) if labelled else -1 for i in range(n)]
    out["idx"] = list(range(n))
    return out


def glue_copy(root, task: str, n_train: int = 40, n_val: int = 12, n_test: int = 10):
    """A DatasetDict in the schema of GLUE's ``task`` (test splits unlabelled, label -1), saved under root/task."""
    inputs, names, tests, _, val = GLUE_SCHEMA[task]
    feats = Features({**{c: Value("string") for c in inputs},
                      "label": Value("float32") if names is None else ClassLabel(names=names), "idx": Value("int32")})
    parts = {"train": rows(inputs, names, n_train, 0), val: rows(inputs, names, n_val, 1000)}
    if task == "mnli":
        parts["validation_mismatched"] = rows(inputs, names, n_val, 2000)
    for t in tests:
        parts[t] = rows(inputs, names, n_test, 3000, labelled=False)
    dd = DatasetDict({s: Dataset.from_dict(cols, features=feats) for s, cols in parts.items()})
    dd.save_to_disk(str(root / task))
    return parts


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    return root, {task: glue_copy(root, task) for task in GLUE_SCHEMA}


def expected_inputs(cols: dict, inputs, idx=None):
    idx = range(len(cols[inputs[0]])) if idx is None else idx
    if len(inputs) == 1:
        return [cols[inputs[0]][i] for i in idx]
    return [(cols[inputs[0]][i], cols[inputs[1]][i]) for i in idx]


@pytest.mark.parametrize("task", list(GLUE_SCHEMA))
def test_glue_recipes(task, glue_dir, monkeypatch):
    root, copies = glue_dir
    parts = copies[task]
    monkeypatch.setenv("GENBOUND_GLUE_DIR", str(root))
    inputs, names, _, metrics, val = GLUE_SCHEMA[task]
    t = load_task(f"glue/{task}")
    assert t.metrics == metrics and t.info["metrics"] == list(metrics)
    assert t.info["test_split"] == val and t.kind == "text"
    assert t.train.x == expected_inputs(parts["train"], inputs)
    assert t.test.x == expected_inputs(parts[val], inputs)  # the labelled validation split, never test's -1
    assert t.info["pairs"] == (len(inputs) == 2)
    if names is None:
        assert (t.problem, t.num_classes, t.class_names, t.info["problem"]) == ("regression", 1, ["score"],
                                                                                 "regression")
        assert t.train.y.dtype == torch.float32 and t.regression
        assert np.array_equal(t.train.y.numpy(), np.asarray(parts["train"]["label"], dtype=np.float32))
        assert t.train.y.max() > 4 and bool((t.train.y != t.train.y.round()).any())  # scores, not class ids
    else:
        assert (t.problem, t.num_classes, t.class_names) == ("classification", len(names), names)
        assert t.train.y.dtype == torch.int64 and t.train.y.tolist() == parts["train"]["label"]
        assert t.test.y.tolist() == parts[val]["label"]


def test_glue_needs_a_local_copy_or_the_hub(tmp_path, monkeypatch):
    import genbound.data.hf as hf

    monkeypatch.setattr(hf, "hub_reachable", lambda: False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GENBOUND_GLUE_DIR", raising=False)
    start = time.monotonic()
    with pytest.raises(DataError, match="not in the local cache.*DIR/mrpc.*GENBOUND_GLUE_DIR=DIR"):
        load_task("glue/mrpc")
    with pytest.raises(DataError, match="hub cannot be reached"):
        load_task("hf:someone/nothing:cfg")
    assert time.monotonic() - start < 20  # no retries waited out
    monkeypatch.setenv("GENBOUND_GLUE_DIR", str(tmp_path))
    with pytest.raises(DataError, match="holds no save_to_disk folder mrpc/"):
        load_task("glue/mrpc")
    with pytest.raises(DataError, match="unknown GLUE task 'glue/mrcp'.*glue/mrpc"):
        load_task("glue/mrcp")


def test_hub_names_and_errors(monkeypatch, glue_dir):
    """hf:NAME:CONFIG reaches load_dataset as (NAME, CONFIG) when the hub answers (a stand-in here); its errors
    become one line; a malformed name is refused before any loading."""
    import genbound.data.hf as hf

    root, _ = glue_dir
    asked = []

    def fake(name, config):
        asked.append((name, config))
        if config == "nope":
            raise ValueError("BuilderConfig 'nope' not found.\nAvailable: ['mrpc']")
        return datasets.load_from_disk(str(root / "rte"))

    monkeypatch.setattr(hf, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    t = load_task("hf:nyu-mll/glue:rte", n_train=8)
    assert asked == [("nyu-mll/glue", "rte")] and t.info["source"] == "Hugging Face hub nyu-mll/glue:rte"
    assert t.metrics == ("accuracy",) and t.info["columns"] == "text_a=sentence1,text_b=sentence2,label=label"
    assert t.info["test_split"] == "validation" and len(t.train) == 8
    with pytest.raises(DataError, match=r"^hf:x:nope: cannot load x:nope \(ValueError: BuilderConfig 'nope' not "
                                        r"found.\)$"):
        load_task("hf:x:nope")
    with pytest.raises(DataError, match="give a hub dataset as hf:NAME"):
        load_task("hf:a b")
    assert len(asked) == 2


def reviews(tmp_path, n: int = 30, flip: int | None = None):
    """A DatasetDict whose columns genbound cannot guess (review, stars; string labels, no ClassLabel), with an
    unlabelled test split (label None) and a labelled validation split."""
    def part(n, start, labelled=True):
        stars = [["bad", "good", "great"][(start + i) % 3] if labelled else None for i in range(n)]
        if flip is not None and start == 0:
            stars[flip] = "bad" if stars[flip] != "bad" else "good"
        return {"review": [sentence(start + i) for i in range(n)], "stars": stars}

    path = tmp_path / "reviews"
    DatasetDict({"train": Dataset.from_dict(part(n, 0)), "validation": Dataset.from_dict(part(9, 500)),
                 "test": Dataset.from_dict(part(5, 900, labelled=False))}).save_to_disk(str(path))
    return path


def test_folder_with_and_without_columns(tmp_path):
    path = reviews(tmp_path)
    with pytest.raises(DataError) as err:
        load_task(str(path))
    assert "cannot tell which column holds the input (columns: review, stars)" in str(err.value)
    t = load_task(str(path), columns="text=review,label=stars")
    assert t.class_names == ["bad", "good", "great"] and t.train.y.tolist() == [i % 3 for i in range(30)]
    assert t.train.x == [sentence(i) for i in range(30)] and t.info["test_split"] == "validation"
    assert t.info["columns"] == "text=review,label=stars" and t.metrics == ("accuracy",)
    drawn = []
    for seed in range(8):  # the classes are those of all labelled examples, not of the ones drawn
        try:
            small = load_task(str(path), columns="text=review,label=stars", seed=seed, n_train=2, n_test=1)
        except DataError as err:  # both drawn training examples of one class
            assert "holds only one class" in str(err)
            continue
        assert small.class_names == ["bad", "good", "great"] and small.num_classes == 3
        drawn.append(len(set(small.train.y.tolist() + small.test.y.tolist())))
    assert min(drawn) < 3
    same = load_task(f"{path}#text=review,label=stars")  # the inline form a manifest records
    assert same.fingerprint() == t.fingerprint()
    with pytest.raises(DataError, match=r"no column 'stras' \(columns: review, stars\)"):
        load_task(str(path), columns="text=review,label=stras")
    with pytest.raises(DataError, match="unknown column role"):
        load_task(str(path), columns="txt=review")
    with pytest.raises(DataError, match="name no one input"):
        load_task(str(path), columns="text=review,text_a=review,label=stars")
    with pytest.raises(DataError, match="columns apply to Hugging Face datasets"):
        load_task("digits", columns="text=x")


def test_folder_read_by_its_files_not_by_a_name(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not one written by save_to_disk"):
        load_task(str(tmp_path / "plain"))


@pytest.mark.parametrize("columns, form", [
    ({"text": [], "label": []}, "text"),
    ({"sentence": [], "label": []}, "text"),
    ({"question": [], "sentence": [], "label": []}, "pair"),
    ({"premise": [], "hypothesis": [], "labels": []}, "pair"),
    ({"question1": [], "question2": [], "label": []}, "pair"),
])
def test_guessed_columns(tmp_path, columns, form):
    names = list(columns)
    inputs = names[:-1]
    data = {c: [sentence(i, c) for i in range(20)] for c in inputs}
    data[names[-1]] = [i % 2 for i in range(20)]
    Dataset.from_dict(data).save_to_disk(str(tmp_path / "d"))  # one Dataset: train, split with test_fraction
    t = load_task(str(tmp_path / "d"), test_fraction=0.25)
    assert t.info["pairs"] == (form == "pair") and (len(t.train), len(t.test)) == (15, 5)
    assert t.info["test_split"].startswith("train (seeded split")
    everything = sorted(t.train.x + t.test.x)
    assert everything == sorted(expected_inputs(data, inputs))
    assert t.class_names == ["0", "1"]


def test_image_column(tmp_path):
    from datasets import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(24, 5, 4), dtype=np.uint8)
    feats = Features({"img": Image(), "label": ClassLabel(names=["dark", "light"])})
    labels = [int(p.mean() > 127) for p in pixels]
    labels[:2] = [0, 1]
    DatasetDict({"train": Dataset.from_dict({"img": list(pixels[:16]), "label": labels[:16]}, features=feats),
                 "test": Dataset.from_dict({"img": list(pixels[16:]), "label": labels[16:]}, features=feats)}
                ).save_to_disk(str(tmp_path / "imgs"))
    t = load_task(str(tmp_path / "imgs"))  # guessed: the Image feature
    assert t.kind == "vision" and t.info["columns"] == "image=img,label=label"
    assert t.train.x.dtype == torch.float32 and t.train.x.shape == (16, 20)
    np.testing.assert_allclose(t.train.x.numpy(), pixels[:16].reshape(16, -1).astype(np.float64) / 255, atol=1e-7)
    assert t.test.y.tolist() == labels[16:] and t.class_names == ["dark", "light"]
    assert load_task(str(tmp_path / "imgs"), columns="image=img").fingerprint() == t.fingerprint()


def test_unlabelled_examples_and_splits(tmp_path):
    """-1 labels are dropped from train (and counted); an all -1 test split is passed over for validation; with
    neither labelled, train is split."""
    feats = Features({"text": Value("string"), "label": ClassLabel(names=["a", "b"])})
    train = {"text": [sentence(i) for i in range(20)], "label": [-1 if i % 5 == 0 else i % 2 for i in range(20)]}
    unlabelled = {"text": ["x", "y"], "label": [-1, -1]}
    val = {"text": ["v1", "v2", "v3"], "label": [0, 1, 1]}
    DatasetDict({"train": Dataset.from_dict(train, features=feats),
                 "test": Dataset.from_dict(unlabelled, features=feats),
                 "validation": Dataset.from_dict(val, features=feats)}).save_to_disk(str(tmp_path / "a"))
    t = load_task(str(tmp_path / "a"))
    kept = [i for i in range(20) if i % 5]
    assert t.train.x == [sentence(i) for i in kept] and t.info["dropped_unlabelled_train"] == 4
    assert t.info["test_split"] == "validation" and t.test.x == val["text"]
    DatasetDict({"train": Dataset.from_dict(train, features=feats),
                 "test": Dataset.from_dict(unlabelled, features=feats)}).save_to_disk(str(tmp_path / "b"))
    t = load_task(str(tmp_path / "b"), test_fraction=0.25)
    assert t.info["test_split"].startswith("train") and (len(t.train), len(t.test)) == (12, 4)
    assert sorted(t.train.x + t.test.x) == sorted(sentence(i) for i in kept)


def test_fingerprints_follow_the_content(tmp_path):
    a = load_task(str(reviews(tmp_path / "a")), columns="text=review,label=stars")
    b = load_task(str(reviews(tmp_path / "b")), columns="text=review,label=stars")
    c = load_task(str(reviews(tmp_path / "c", flip=7)), columns="text=review,label=stars")
    assert a.fingerprint() == b.fingerprint()
    assert c.fingerprint()["train"] != a.fingerprint()["train"] and c.fingerprint()["test"] == a.fingerprint()["test"]


def test_seeded_subsampling(glue_dir, monkeypatch):
    root, parts = glue_dir
    monkeypatch.setenv("GENBOUND_GLUE_DIR", str(root))
    one = load_task("glue/qnli", seed=3, n_train=10, n_test=5)
    again = load_task("glue/qnli", seed=3, n_train=10, n_test=5)
    other = load_task("glue/qnli", seed=4, n_train=10, n_test=5)
    assert one.fingerprint() == again.fingerprint() and one.train.x != other.train.x
    full = expected_inputs(parts["qnli"]["train"], ("question", "sentence"))
    pos = [full.index(x) for x in one.train.x]
    assert len(set(pos)) == 10 and pos == sorted(pos)  # distinct examples, in the source's order
    assert one.train.y.tolist() == [parts["qnli"]["train"]["label"][i] for i in pos]
    assert (one.info["n_train"], one.info["n_available_train"], one.info["n_available_test"]) == (10, 40, 12)
    with pytest.raises(DataError, match="n_train=41 is larger than the 40"):
        load_task("glue/qnli", n_train=41)


def test_regression_targets_must_differ(tmp_path):
    feats = Features({"sentence1": Value("string"), "sentence2": Value("string"), "label": Value("float32")})
    data = {"sentence1": ["a", "b", "c", "d"], "sentence2": ["e", "f", "g", "h"], "label": [2.5] * 4}
    DatasetDict({"train": Dataset.from_dict(data, features=feats),
                 "validation": Dataset.from_dict(data, features=feats)}).save_to_disk(str(tmp_path / "flat"))
    with pytest.raises(DataError, match="every training target is 2.5"):
        load_task(str(tmp_path / "flat"))
    data["label"] = [0.5, 1.5, 4.25, 2.0]
    DatasetDict({"train": Dataset.from_dict(data, features=feats)}).save_to_disk(str(tmp_path / "ok"))
    t = load_task(str(tmp_path / "ok"), test_fraction=0.25)  # a float label: a regression task
    assert t.regression and t.metrics == ("pearson", "spearman") and t.train.y.dtype == torch.float32
    with pytest.raises(DataError, match="regression task has no classes"):
        load_task(f"{tmp_path / 'ok'}@0-1")


def test_columns_fold_into_the_data_name(tmp_path, monkeypatch):
    path = reviews(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = normalized(TrainConfig(data="reviews", columns="label=stars,text=review"))  # a relative folder
    assert (cfg.data, cfg.columns) == (f"{path.resolve()}#text=review,label=stars", None)
    assert split_columns(cfg.data) == (str(path.resolve()), {"text": "review", "label": "stars"})
    assert with_columns("glue/mrpc", None) == "glue/mrpc"
    assert normalized(cfg).data == cfg.data  # idempotent (a resumed run normalizes nothing new)


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_cli_bad_columns_one_line(tmp_path, capsys):
    path = reviews(tmp_path)
    args = ["train", "--model", "tiny-bert", "--data", str(path), "--steps", "1", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "x")]) == 2
    assert "(columns: review, stars)" in one_line(capsys.readouterr().err)
    assert main([*args, "--columns", "text=body,label=stars", "--out", str(tmp_path / "y")]) == 2
    assert "no column 'body' (columns: review, stars)" in one_line(capsys.readouterr().err)
    assert main([*args, "--columns", "text review", "--out", str(tmp_path / "z")]) == 2
    assert "ROLE=COLUMN" in one_line(capsys.readouterr().err)


def test_train_on_glue_then_compute_reloads_it(tmp_path, monkeypatch, capsys, one_thread):
    """train on a 40-example local MRPC, then compute rebuilds the data from the manifest (glue/mrpc and
    $GENBOUND_GLUE_DIR) and checks its fingerprints; changed data is refused in one line. A folder trained with
    --columns reloads with the same columns."""
    glue = tmp_path / "glue"
    parts = glue_copy(glue, "mrpc")
    monkeypatch.setenv("GENBOUND_GLUE_DIR", str(glue))
    ck = tmp_path / "ck"
    assert main(["train", "--model", "tiny-bert", "--data", "glue/mrpc", "--method", "lora", "--rank", "2",
                 "--steps", "3", "--batch-size", "8", "--quiet", "--out", str(ck)]) == 0
    man = json.loads((ck / "genbound.json").read_text())
    assert man["config"]["data"] == "glue/mrpc" and man["task"]["metrics"] == ["f1", "accuracy"]
    assert man["task"]["test_split"] == "validation" and man["task"]["n_train"] == 40
    assert main(["compute", "--ckpt", str(ck), "--json", str(tmp_path / "c.json"), "--quiet"]) == 0
    out = json.loads((tmp_path / "c.json").read_text())
    assert out["n_train"] == 40 and out["data"]["verified"] and not out["data"]["other_data"]
    capsys.readouterr()

    parts["train"]["label"][0] = 1 - parts["train"]["label"][0]  # the local copy changes under the checkpoint
    feats = datasets.load_from_disk(str(glue / "mrpc"))["train"].features
    DatasetDict({s: Dataset.from_dict(c, features=feats) for s, c in parts.items()}).save_to_disk(str(glue / "m2"))
    monkeypatch.setenv("GENBOUND_GLUE_DIR", str(tmp_path / "moved"))
    (tmp_path / "moved").mkdir()
    (glue / "m2").rename(tmp_path / "moved" / "mrpc")
    assert main(["compute", "--ckpt", str(ck), "--quiet"]) == 2
    assert "changed since training" in one_line(capsys.readouterr().err)

    path = reviews(tmp_path)
    ck2 = tmp_path / "ck2"
    assert main(["train", "--model", "tiny-bert", "--data", str(path), "--columns", "text=review,label=stars",
                 "--rank", "2", "--steps", "2", "--batch-size", "8", "--quiet", "--out", str(ck2)]) == 0
    man = json.loads((ck2 / "genbound.json").read_text())
    assert man["config"]["data"] == f"{path.resolve()}#text=review,label=stars"
    assert man["task"]["num_classes"] == 3 and man["task"]["columns"] == "text=review,label=stars"
    assert main(["compute", "--ckpt", str(ck2), "--json", str(tmp_path / "c2.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "c2.json").read_text())["data"]["verified"]
    assert main(["compute", "--ckpt", str(ck2), "--data", f"{path}#text=review,label=stars", "--json",
                 str(tmp_path / "c3.json"), "--quiet"]) == 0  # other data may name its columns the same way
    assert json.loads((tmp_path / "c3.json").read_text())["data"]["name"] == f"{path}#text=review,label=stars"
