"""Model knowledge as data: which layers carry classes, and how, for known model families.

Operations look layers up here instead of hard-coding names. Each row says
which layer names (globs, matched against the layer part of a tensor name)
belong to a family's head, what role they play, and how classes are laid out
along the output axis. Add a family by adding rows, not code.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HeadPattern", "CLASS_HEADS", "TOPS", "TOPS_ON_REQUEST", "PASS_THROUGH_LAYERS", "WRAPPER_PREFIXES", "unwrapped"]


@dataclass(frozen=True)
class HeadPattern:
    """One kind of head layer.

    Attributes:
        family: model family, e.g. "ssd", "retinanet", "yolo", "faster-rcnn".
        role: "classes" (output axis carries classes), "boxes" (class-agnostic box regression),
            "class-boxes" (box regression per class), or "classifier" (a plain classification layer).
        layers: globs over layer names.
        layout: "anchor-major" (`anchor*K + class`), "anchor-major-fields" (`anchor*(F+K) + F + class`),
            "class-major" (`class*G + k`), or "plain" (one group of K).
        background: "first", "last" or "none": where a background class sits, if any.
        fields: leading per-anchor fields before the classes (YOLO: 5 = x, y, w, h, obj).
        group: numbers per class in a class-major layout (Faster R-CNN box regression: 4).
        loc_suffix: for SSD-style heads, (conf suffix, loc suffix) to find the paired box layer.
    """

    family: str
    role: str
    layers: tuple[str, ...]
    layout: str
    background: str = "none"
    fields: int = 0
    group: int = 1
    loc_suffix: tuple[str, str] | None = None


# Heads whose output axis carries classes, or that move with them. First match wins.
CLASS_HEADS: tuple[HeadPattern, ...] = (
    HeadPattern("ssd", "classes", ("*_mbox_conf",), "anchor-major", "first", loc_suffix=("_mbox_conf", "_mbox_loc")),
    HeadPattern("ssd-torchvision", "classes", ("head.classification_head.module_list.*",), "anchor-major", "first"),
    HeadPattern("retinanet", "classes", ("head.classification_head.cls_logits", "*cls_logits"), "anchor-major", "none"),
    # RetinaFace (Pytorch_Retinaface's ClassHead.<level>.conv1x1): anchors x 2, softmax over (background, face)
    HeadPattern("retinaface", "classes", ("ClassHead.*", "*.ClassHead.*", "class_head.*", "*.class_head.*"), "anchor-major", "first"),
    HeadPattern("yolo", "classes", ("model.*.m.*", "*detect.m.*"), "anchor-major-fields", "none", fields=5),
    HeadPattern("faster-rcnn", "classes", ("*box_predictor.cls_score",), "plain", "first"),
    HeadPattern("faster-rcnn", "class-boxes", ("*box_predictor.bbox_pred",), "class-major", "first", group=4),
    HeadPattern("detectron2", "classes", ("*box_predictor.cls_score",), "plain", "last"),
    HeadPattern("torchvision-classifier", "classifier", ("fc", "classifier", "classifier.*", "head", "head.fc"), "plain"),
    HeadPattern("timm-classifier", "classifier", ("head", "head.fc", "fc", "classifier", "last_linear"), "plain"),
    HeadPattern("keras-classifier", "classifier", ("predictions", "logits"), "plain"),
)

# Classification tops that strip-head removes, per family. Keras applications build their
# tops as flatten -> fc1 -> fc2 -> predictions (VGG) or avg_pool -> predictions (ResNet, Inception).
TOPS: tuple[HeadPattern, ...] = (
    HeadPattern("keras-applications", "classifier", ("predictions", "fc1", "fc2", "flatten"), "plain"),
    HeadPattern("torchvision", "classifier", ("fc", "classifier", "classifier.*", "head", "heads.head"), "plain"),
    HeadPattern("timm", "classifier", ("head", "head.fc", "fc", "classifier", "last_linear"), "plain"),
    HeadPattern("ssd", "classes", ("*_mbox_conf", "*_mbox_loc"), "anchor-major", "first"),
)

# TOPS families that strip-head uses only when asked by name (--family): an SSD's conf/loc
# layers are its detection head, not a classification top, and sit between other layers.
TOPS_ON_REQUEST: tuple[str, ...] = ("ssd",)

# Keras layer classes (globs) without weights that only carry class scores towards the output.
# strip-head walks back from a full model's output through these to the layer making the scores.
PASS_THROUGH_LAYERS: tuple[str, ...] = (
    "Activation", "Softmax", "ReLU", "Dropout", "SpatialDropout*", "GaussianDropout", "AlphaDropout",
    "Flatten", "Reshape", "GlobalAveragePooling*", "GlobalAvgPool*", "GlobalMaxPooling*", "GlobalMaxPool*",
)

# Prefixes that wrappers put before every name (DataParallel/DistributedDataParallel: module.,
# torch.compile: _orig_mod.). Head patterns are matched against the name without them.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")


def unwrapped(name: str) -> str:
    """`module.fc` -> `fc`: a layer name without the wrapper prefixes it starts with."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name
