"""Hugging Face model folders: class surgery by name rewrites config.json with the weights, proven with real transformers.

The models are built locally from a tiny BertConfig (2 layers, hidden 32); nothing is downloaded.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import digest, error_line, leftovers, run

import surgery

os.environ["HF_HUB_OFFLINE"] = "1"  # set before transformers is imported: nothing may be fetched

NER = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
KEEP = ["O", "B-LOC", "I-LOC", "b-per", "I-PER"]  # b-per matches B-PER ignoring case
KEPT_IDS = [0, 5, 6, 1, 2]
TOPICS = ["world", "sports", "business", "science"]


def _tiny(auto: str, labels: list[str], arch: str, folder):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        architectures=[arch],
    )
    torch.manual_seed(0)
    model = getattr(transformers, auto).from_config(config).eval()
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text('{"do_lower_case": true}\n', encoding="utf-8")
    return model


def _logits(model, torch):
    ids = torch.arange(2 * 12).reshape(2, 12) % 64
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def _reload(auto: str, folder):
    transformers = pytest.importorskip("transformers")
    model, info = getattr(transformers, auto).from_pretrained(folder, output_loading_info=True)
    return model.eval(), info


def _no_reinitialised_weights(info: dict) -> None:
    assert info["missing_keys"] == [] or info["missing_keys"] == set()
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not info.get("error_msgs")


@pytest.mark.interop
def test_token_classifier_subsampled_by_names_loads_in_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    src, out = tmp_path / "ner", tmp_path / "ner_small"
    original = _tiny("AutoModelForTokenClassification", NER, "BertForTokenClassification", src)
    before = digest(src)
    result = run("subsample", src, "-o", out, "--classes", ",".join(KEEP), "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["classes"] == KEPT_IDS and document["labels"] == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt"]
    assert (out / "vocab.txt").read_bytes() == (src / "vocab.txt").read_bytes()  # copied verbatim
    assert digest(src) == before and leftovers(tmp_path) == []

    model, info = _reload("AutoModelForTokenClassification", out)
    _no_reinitialised_weights(info)
    assert model.config.id2label == {0: "O", 1: "B-LOC", 2: "I-LOC", 3: "B-PER", 4: "I-PER"}
    assert model.config.label2id == {"O": 0, "B-LOC": 1, "I-LOC": 2, "B-PER": 3, "I-PER": 4} and model.config.num_labels == 5
    old, new = _logits(original, torch), _logits(model, torch)
    # The kept classifier rows are exact copies; a 5-wide matmul may round differently from a 9-wide one.
    assert float((new - old[..., KEPT_IDS]).abs().max()) <= 1e-6


@pytest.mark.interop
def test_sequence_classifier_subsampled_by_library_call_loads_in_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    src, out = tmp_path / "topics", tmp_path / "topics_small"
    original = _tiny("AutoModelForSequenceClassification", TOPICS, "BertForSequenceClassification", src)
    tree = surgery.load(src)
    edited, _ = surgery.ops.resample_classes(tree, ["science", "world"])
    surgery.save(edited, out)
    assert json.loads(edited.metadata["surgery.labels"]) == ["science", "world"]
    model, info = _reload("AutoModelForSequenceClassification", out)
    _no_reinitialised_weights(info)
    assert model.config.id2label == {0: "science", 1: "world"}
    old, new = _logits(original, torch), _logits(model, torch)
    assert float((new - old[:, [3, 0]]).abs().max()) <= 1e-6


@pytest.mark.interop
def test_later_edit_uses_the_written_config_and_force_replaces_the_folder(tmp_path):
    src, out, again = tmp_path / "ner", tmp_path / "ner_small", tmp_path / "ner_two"
    _tiny("AutoModelForTokenClassification", NER, "BertForTokenClassification", src)
    assert run("subsample", src, "-o", out, "--classes", "O,B-LOC,I-LOC", "-q").exit_code == 0
    result = run("subsample", out, "-o", again, "--classes", "I-LOC,O", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["classes"] == [2, 0]
    assert json.loads((again / "config.json").read_text())["id2label"] == {"0": "I-LOC", "1": "O"}
    # Rewriting the same output folder (it holds tokenizer files) is allowed with --force.
    assert run("subsample", src, "-o", out, "--classes", "B-MISC", "--force", "-q").exit_code == 0
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "B-MISC"}


def _folder(tmp_path, config: dict, tensors: dict[str, np.ndarray], *, torch_bin: bool = False):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    tree = surgery.Tree([surgery.Entry.from_array(k, v) for k, v in tensors.items()], convention=surgery.TORCH)
    surgery.save(tree, folder / ("pytorch_model.bin" if torch_bin else "model.safetensors"))
    return folder


def test_detr_keeps_its_no_object_class_last_and_config_counts_without_it(tmp_path):
    config = {"architectures": ["DetrForObjectDetection"], "id2label": {"0": "N/A", "1": "person", "2": "bicycle", "3": "car"}, "num_labels": 4}
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((5, 8)).astype("float32"), rng.standard_normal(5).astype("float32")
    box = rng.standard_normal((4, 8)).astype("float32")
    src = _folder(tmp_path, config, {"class_labels_classifier.weight": weight, "class_labels_classifier.bias": bias, "bbox_predictor.layers.2.weight": box})
    result = run("subsample", src, "-o", tmp_path / "out", "--classes", "car,person", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["classes"] == [3, 1, 4] and document["labels"] == ["car", "person", "no-object"]
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["id2label"] == {"0": "car", "1": "person"} and written["num_labels"] == 2
    out = surgery.load(tmp_path / "out")
    assert np.array_equal(out["class_labels_classifier.weight"].read(), weight[[3, 1, 4]])
    assert np.array_equal(out["bbox_predictor.layers.2.weight"].read(), box)  # boxes are class-agnostic


def test_pytorch_model_bin_folder_is_read_and_written_as_safetensors(tmp_path):
    config = {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "neg", "1": "neu", "2": "pos"}}
    weight = np.arange(12, dtype="float32").reshape(3, 4)
    src = _folder(tmp_path, config, {"classifier.weight": weight, "classifier.bias": np.zeros(3, "float32")}, torch_bin=True)
    assert surgery.load(src).format == "torch"
    result = run("subsample", src, "-o", tmp_path / "out", "--classes", "pos,neg", "-q")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]  # no stale .bin
    out = surgery.load(tmp_path / "out")
    assert np.array_equal(out["classifier.weight"].read(), weight[[2, 0]]) and out.metadata["format"] == "pt"


def test_roberta_style_head_edits_only_out_proj(tmp_path):
    config = {"architectures": ["RobertaForSequenceClassification"], "id2label": {"0": "a", "1": "b", "2": "c"}}
    tensors = {"classifier.dense.weight": np.ones((3, 3), "float32"), "classifier.dense.bias": np.ones(3, "float32"),
               "classifier.out_proj.weight": np.eye(3, dtype="float32"), "classifier.out_proj.bias": np.arange(3, dtype="float32")}
    src = _folder(tmp_path, config, tensors)
    edited, report = surgery.ops.resample_classes(surgery.load(src), ["c"])
    assert edited["classifier.dense.weight"].shape == (3, 3) and edited["classifier.out_proj.weight"].shape == (1, 3)
    assert report.notes[0] == "class layers classifier.out_proj, from config.json architectures RobertaForSequenceClassification: a two-layer classifier: only classifier.out_proj (or a plain classifier) holds the classes"


def test_folder_output_of_another_format_is_refused(tmp_path):
    config = {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "neg", "1": "pos"}}
    src = _folder(tmp_path, config, {"classifier.weight": np.ones((2, 4), "float32"), "classifier.bias": np.zeros(2, "float32")})
    result = run("subsample", src, "-o", tmp_path / "out", "--classes", "pos", "--to", "npz")
    assert result.exit_code == 2  # subsample has no --to: a usage error
    result = run("convert", src, "-o", tmp_path / "out", "--to", "npz")
    assert result.exit_code == 1
    assert error_line(result) == f"error: a Hugging Face model folder is written as safetensors, not npz ({tmp_path / 'out'}); drop --to, or name a file"


def test_single_file_output_says_the_config_stays_behind(tmp_path):
    config = {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "neg", "1": "pos"}}
    src = _folder(tmp_path, config, {"classifier.weight": np.ones((2, 4), "float32"), "classifier.bias": np.zeros(2, "float32")})
    result = run("subsample", src, "-o", tmp_path / "out.safetensors", "--classes", "pos")
    assert result.exit_code == 0, result.stderr
    assert "note: config.json is written only beside a folder output; name a folder (no suffix) to keep it in step" in result.stdout
    assert json.loads(surgery.load(tmp_path / "out.safetensors").metadata["surgery.labels"]) == ["pos"]


def test_timm_hub_config_follows_num_classes_and_label_names(tmp_path):
    config = {"architecture": "resnet18", "num_classes": 3, "label_names": ["cat", "dog", "fox"], "num_features": 4}
    src = _folder(tmp_path, config, {"fc.weight": np.eye(3, 4, dtype="float32"), "fc.bias": np.arange(3, dtype="float32")})
    result = run("subsample", src, "-o", tmp_path / "out", "--classes", "fox,cat", "-q")
    assert result.exit_code == 0, result.stderr
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written == {"architecture": "resnet18", "num_classes": 2, "label_names": ["fox", "cat"], "num_features": 4}


def test_unknown_architecture_still_rewrites_num_labels(tmp_path):
    config = {"architectures": ["MyNet"], "id2label": {"0": "a", "1": "b", "2": "c"}, "num_labels": 3}
    src = _folder(tmp_path, config, {"fc.weight": np.eye(3, 4, dtype="float32"), "fc.bias": np.zeros(3, "float32")})
    assert run("subsample", src, "-o", tmp_path / "out", "--classes", "c,a", "-q").exit_code == 0
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["num_labels"] == 2 and written["id2label"] == {"0": "c", "1": "a"} and written["label2id"] == {"c": 0, "a": 1}


def test_sharded_pytorch_bin_folder_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}", encoding="utf-8")
    (folder / "pytorch_model.bin.index.json").write_text("{}", encoding="utf-8")
    result = run("inspect", folder)
    assert error_line(result) == f"error: sharded pytorch_model-*.bin checkpoints are not read ({folder}); re-save the model with save_pretrained(..., safe_serialization=True), or point at one shard"


def test_sharded_folder_with_config_is_one_checkpoint(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {"encoder.weight": rng.standard_normal((64, 8)).astype("float32"), "classifier.weight": rng.standard_normal((3, 8)).astype("float32")}
    folder = tmp_path / "sharded"
    surgery.save(surgery.Tree([surgery.Entry.from_array(k, v) for k, v in tensors.items()], convention=surgery.TORCH), folder, shard_size=1024)
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"], "id2label": {"0": "a", "1": "b", "2": "c"}}), encoding="utf-8")
    result = run("subsample", folder, "-o", tmp_path / "out", "--classes", "c,b", "-q")
    assert result.exit_code == 0, result.stderr
    out = surgery.load(tmp_path / "out")
    assert np.array_equal(out["classifier.weight"].read(), tensors["classifier.weight"][[2, 1]])
    assert np.array_equal(out["encoder.weight"].read(), tensors["encoder.weight"])
