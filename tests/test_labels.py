"""Classes by name: the built-in label tables, label files, resolution, moves between label spaces."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FIXTURES
from helpers import digest, error_line, run

import surgery
from surgery import labels
from surgery.errors import FormatError, OperationError

SSD = FIXTURES / "ssd300_coco_tiny.h5"
ROAD = "person,bicycle,car,motorcycle,bus,truck"
LENGTHS = {"coco80": 80, "coco80+bg": 81, "coco91": 91, "voc20": 20, "voc21": 21, "imagenet1k": 1000}


# -- the tables ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LENGTHS))
def test_every_table_has_its_length_and_unique_names(name):
    names = labels.load(name)
    assert len(names) == LENGTHS[name]
    real = [n for n in names if not labels.is_placeholder(n)]
    assert len(set(real)) == len(real) and all(n and n == n.strip() for n in names)


def test_builtin_tables_are_the_documented_ones():
    assert labels.builtin_names() == ["coco80", "coco80+bg", "coco91", "voc20", "voc21", "imagenet1k"]


def test_coco91_has_torchvisions_gaps_and_round_trips_with_coco80():
    coco80, coco91 = labels.load("coco80"), labels.load("coco91")
    assert coco91[0] == "__background__" and [i for i, n in enumerate(coco91) if n == "N/A"] == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
    ids = labels.resolve(coco80, coco91, "coco91")
    assert ids[:3] == [1, 2, 3] and ids[-1] == 90 and len(set(ids)) == 80
    assert [coco80.index(coco91[i]) for i in ids] == list(range(80))  # each name maps back to its own id
    assert labels.move(coco91, coco80) == ids and labels.move(coco80, coco91)[1:4] == [0, 1, 2]


def test_background_first_tables_extend_their_plain_ones():
    assert labels.load("coco80+bg") == ["background", *labels.load("coco80")]
    assert labels.load("voc21") == ["background", *labels.load("voc20")]


def test_imagenet_disambiguated_names_and_anchors():
    names = labels.load("imagenet1k")
    assert (names[0], names[134], names[517], names[638], names[639], names[999]) == (
        "tench", "crane (bird)", "crane (machine)", "maillot (swimsuit)", "maillot (tank suit)", "toilet tissue")
    assert labels.resolve(["Cardigan", "cardigan", "TENCH"], names, "imagenet1k") == [264, 474, 0]
    with pytest.raises(OperationError) as e:
        labels.resolve(["CARDIGAN"], names, "imagenet1k")
    assert str(e.value) == "class name 'CARDIGAN' matches 'Cardigan' (264) and 'cardigan' (474) in imagenet1k when case is ignored (--classes); write the name exactly"


# -- label files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["cat\ndog\nbird\n", '["cat", "dog", "bird"]', '{"2": "bird", "0": "cat", "1": "dog"}', "  cat\r\ndog\r\nbird"],
)
def test_label_files_in_every_form(tmp_path, text):
    path = tmp_path / "labels.txt"
    path.write_text(text, encoding="utf-8")
    assert labels.load(path) == ["cat", "dog", "bird"]


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"0": "cat", "2": "dog"}', "label ids are not 0..1: id 1 is missing"),
        ("[1, 2]", "a JSON label list must hold only strings"),
        ("cat\n\ndog\n", "class 1 has an empty name"),
        ("[oops", "label file looks like JSON but is not valid JSON (Expecting value: line 1 column 2 (char 1))"),
    ],
)
def test_bad_label_files_are_one_line(tmp_path, text, message):
    path = tmp_path / "labels.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FormatError) as e:
        labels.load(path)
    assert e.value.what == message


def test_unknown_table_name():
    with pytest.raises(FormatError) as e:
        labels.load("coco81")
    assert str(e.value) == "'coco81' is neither a built-in label table nor a file (--labels); use one of coco80, coco80+bg, coco91, voc20, voc21, imagenet1k, or a file with one name per line"


# -- the founding command by names ------------------------------------------------------


def test_founding_command_by_names_equals_the_index_form_bit_for_bit(tmp_path):
    by_name, by_index = tmp_path / "road.h5", tmp_path / "road_idx.h5"
    before = digest(SSD)
    result = run("subsample", SSD, "-o", by_name, "--classes", ROAD, "--labels", "coco80+bg", "--anchors", "4", "--labels-out", tmp_path / "road.txt")
    assert result.exit_code == 0, result.stderr
    assert "resolved indices: 0,1,2,3,4,6,8" in result.stdout
    assert "classes by name in coco80+bg: background=0, person=1, bicycle=2, car=3, motorcycle=4, bus=6, truck=8" in result.stdout
    assert run("subsample", SSD, "-o", by_index, "--classes", "0,1,2,3,4,6,8", "--anchors", "4", "-q").exit_code == 0
    a, b = surgery.load(by_name), surgery.load(by_index)
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].read().tobytes() == b[name].read().tobytes()
    road = ["background", "person", "bicycle", "car", "motorcycle", "bus", "truck"]
    assert json.loads(a.metadata["surgery.labels"]) == road
    assert (tmp_path / "road.txt").read_text(encoding="utf-8") == "".join(n + "\n" for n in road)
    assert digest(SSD) == before


def test_the_tutorials_list_by_names_gives_the_tutorials_indices(tmp_path):
    names = "background,car,truck,person,bicycle,traffic light,motorcycle,bus,stop sign"
    result = run("subsample", SSD, "-o", tmp_path / "r.h5", "--classes", names, "--labels", "coco80+bg", "--anchors", "4", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["classes"] == [0, 3, 8, 1, 2, 10, 4, 6, 12]


def test_no_background_and_a_later_edit_without_labels(tmp_path):
    first, second = tmp_path / "a.h5", tmp_path / "b.h5"
    result = run("subsample", SSD, "-o", first, "--classes", "car,bus", "--labels", "coco80+bg", "--no-background", "--anchors", "4", "--json")
    assert json.loads(result.stdout)["classes"] == [3, 6]
    result = run("subsample", first, "-o", second, "--classes", "bus", "--json")  # anchors from the *_mbox_loc layers
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["classes"] == [1] and json.loads(result.stdout)["labels"] == ["bus"]


def test_index_edit_of_a_labelled_file_records_the_followed_labels(tmp_path):
    first, second = tmp_path / "a.h5", tmp_path / "b.h5"
    assert run("subsample", SSD, "-o", first, "--classes", "car,bus", "--labels", "coco80+bg", "--anchors", "4", "-q").exit_code == 0
    assert run("subsample", first, "-o", second, "--classes", "2,0", "--anchors", "4", "-q").exit_code == 0
    assert json.loads(surgery.load(second).metadata["surgery.labels"]) == ["bus", "background"]
    result = run("inspect", second)
    assert "labels (2, from the checkpoint's recorded labels (surgery.labels)): bus, background" in result.stdout
    assert json.loads(run("inspect", second, "--json").stdout)["labels"]["names"] == ["bus", "background"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--classes", "person,persn"], "error: unknown class name 'persn' in coco80+bg (--classes); the nearest names are 'person', 'sink', 'oven'"),
        (["--classes", "person,3"], "error: --classes mixes names (person) and indices (3) (--classes); write all classes as names (with --labels) or all as indices"),
        (["--classes", "N/A"], None),
    ],
)
def test_bad_names_are_one_line(tmp_path, args, message):
    labels_option = ["--labels", "coco91" if args[1] == "N/A" else "coco80+bg"]
    result = run("subsample", SSD, "-o", tmp_path / "x.h5", *args, *labels_option, "--anchors", "4")
    assert result.exit_code == 1
    line = error_line(result)
    if message is None:
        message = "error: 'N/A' marks unused ids in coco91, not a class (--classes); name the classes to keep"
    assert line == message
    assert not (tmp_path / "x.h5").exists()


def test_names_without_labels_and_a_table_of_the_wrong_length(tmp_path):
    result = run("subsample", SSD, "-o", tmp_path / "x.h5", "--classes", "person", "--anchors", "4")
    assert error_line(result) == ("error: invalid value for '--classes': --classes gives names but the checkpoint carries no labels; pass --labels with a table "
                                  "(coco80, coco80+bg, coco91, voc20, voc21, imagenet1k) or a file of names; see 'surgery subsample --help'")
    result = run("subsample", SSD, "-o", tmp_path / "x.h5", "--classes", "person", "--labels", "coco80", "--anchors", "4")
    assert error_line(result) == "error: coco80 has 80 names but the head has 81 classes (--labels); use coco80+bg"


def test_library_resample_by_names():
    tree = surgery.load(SSD)
    edited, report = surgery.ops.resample_classes(tree, classes=["person", "car"], labels="coco80+bg", anchors=4)
    assert json.loads(edited.metadata["surgery.source_classes"]) == [0, 1, 3]
    assert json.loads(edited.metadata["surgery.labels"]) == ["background", "person", "car"]
    assert report.notes[0] == "background 'background' (0) kept first; pass --no-background to leave it out"


# -- moving between label spaces ----------------------------------------------------------


def _faster_rcnn(tmp_path, rows: int):
    """A torchvision FastRCNNPredictor's state dict: cls_score (C, in) and bbox_pred (4C, in), class-major."""
    rng = np.random.default_rng(0)
    tensors = {
        "roi_heads.box_predictor.cls_score.weight": rng.standard_normal((rows, 16)).astype("float32"),
        "roi_heads.box_predictor.cls_score.bias": rng.standard_normal(rows).astype("float32"),
        "roi_heads.box_predictor.bbox_pred.weight": rng.standard_normal((4 * rows, 16)).astype("float32"),
        "roi_heads.box_predictor.bbox_pred.bias": rng.standard_normal(4 * rows).astype("float32"),
    }
    path = tmp_path / "frcnn.pt"
    surgery.save(surgery.Tree([surgery.Entry.from_array(k, v) for k, v in tensors.items()], convention=surgery.TORCH), path)
    return path, tensors


def test_faster_rcnn_coco91_moved_to_coco80_bg_by_name(tmp_path):
    src, tensors = _faster_rcnn(tmp_path, 91)
    out = tmp_path / "frcnn81.pt"
    result = run("subsample", src, "-o", out, "--from-labels", "coco91", "--to-labels", "coco80+bg", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    coco91, target = labels.load("coco91"), labels.load("coco80+bg")
    ids = [0, *labels.resolve(target[1:], coco91, "coco91")]
    assert document["classes"] == ids and document["labels"] == target
    assert document["move"][:3] == [{"index": 0, "name": "background", "source": 0}, {"index": 1, "name": "person", "source": 1}, {"index": 2, "name": "bicycle", "source": 2}]
    assert document["move"][12] == {"index": 12, "name": "stop sign", "source": 13}  # id 12 is an N/A gap
    moved = surgery.load(out)
    cls = moved["roi_heads.box_predictor.cls_score.weight"].read()
    boxes = moved["roi_heads.box_predictor.bbox_pred.weight"].read()
    assert cls.shape == (81, 16) and boxes.shape == (324, 16)
    for j, c in enumerate(ids):  # each class's 4 box rows move with its score row
        assert np.array_equal(cls[j], tensors["roi_heads.box_predictor.cls_score.weight"][c])
        assert np.array_equal(boxes[4 * j : 4 * j + 4], tensors["roi_heads.box_predictor.bbox_pred.weight"][4 * c : 4 * c + 4])
    assert np.array_equal(moved["roi_heads.box_predictor.bbox_pred.bias"].read(), tensors["roi_heads.box_predictor.bbox_pred.bias"].reshape(91, 4)[ids].ravel())


def test_move_back_needs_upsample_for_the_gaps_and_keeps_every_shared_row(tmp_path):
    src, tensors = _faster_rcnn(tmp_path, 81)
    result = run("subsample", src, "-o", tmp_path / "x.pt", "--from-labels", "coco80+bg", "--to-labels", "coco91")
    assert error_line(result) == "error: subsample cannot add classes (--classes); use `surgery upsample` to add new classes"
    result = run("upsample", src, "-o", tmp_path / "x.pt", "--from-labels", "coco80+bg", "--to-labels", "coco91", "--init", "zeros")
    assert result.exit_code == 0, result.stderr
    assert "    12  N/A  new" in result.stdout and "    13  stop sign  12" in result.stdout
    moved = surgery.load(tmp_path / "x.pt")["roi_heads.box_predictor.cls_score.weight"].read()
    assert moved.shape == (91, 16) and not moved[12].any()
    assert np.array_equal(moved[13], tensors["roi_heads.box_predictor.cls_score.weight"][12])


def test_move_options_that_do_not_fit(tmp_path):
    src, _ = _faster_rcnn(tmp_path, 91)
    result = run("subsample", src, "-o", tmp_path / "x.pt", "--to-labels", "coco80+bg")
    assert error_line(result) == "error: --to-labels needs the source label space (--to-labels); pass --from-labels (a table or a file)"
    result = run("subsample", src, "-o", tmp_path / "x.pt", "--from-labels", "coco91")
    assert error_line(result) == "error: --from-labels only applies with --to-labels (--from-labels); add --to-labels, or use --labels"
    result = run("subsample", src, "-o", tmp_path / "x.pt", "--from-labels", "coco91", "--to-labels", "coco80+bg", "--classes", "person")
    assert error_line(result) == "error: --classes and --to-labels both given (--to-labels); a move keeps the target's classes, by name; drop --classes"


def test_background_names_find_each_other_and_duplicates_copy():
    assert labels.resolve(["background", "Person"], labels.load("coco91"), "coco91") == [0, 1]
    assert labels.resolve(["__background__"], labels.load("voc21"), "voc21") == [0]
    resolved = labels.resolve_classes("cat,cat,new", labels.space("voc21"))
    assert resolved.classes == [0, 8, 8, None] and resolved.names == ["background", "cat", "cat", "LABEL_3"]
