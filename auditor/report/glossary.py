"""Plain-language definitions of every number and column the report shows, for a reader
who is not an ML specialist. Column headers link here (``#gloss-<id>``)."""

from __future__ import annotations

__all__ = ["GLOSSARY", "glossary"]

#: (id, term, definition), in reading order.
GLOSSARY: tuple[tuple[str, str, str], ...] = (
    (
        "cam",
        "Explanation map (CAM)",
        "A heat map over the image showing which areas raised the model's score for a class. "
        "Red areas mattered most. Different methods (Grad-CAM, LayerCAM, ...) draw it differently.",
    ),
    (
        "primary",
        "Primary method",
        "The explanation method whose maps drive the findings and the gates; the others are "
        "shown for comparison.",
    ),
    ("n", "n", "The number of evaluation images of the class that were audited."),
    (
        "accuracy",
        "Accuracy",
        "The share of images the model classified correctly, from 0% to 100%.",
    ),
    (
        "interval",
        "Interval",
        "The range within which the true value lies with 95% confidence, given how many images "
        "were audited. A wide interval means few images: treat the value with caution. Where two "
        "intervals do not overlap, the difference is unlikely to be chance.",
    ),
    (
        "energy_in_mask",
        "Energy in object",
        "The share of the explanation map that falls inside the annotated object (0 to 1). "
        "Higher is better: the model looks at the object.",
    ),
    (
        "background_focus",
        "Background focus",
        "The share of the explanation map that falls OUTSIDE the annotated object (1 minus energy "
        "in object). Lower is better; a high value suggests the class is recognised from its "
        "surroundings (a shortcut).",
    ),
    (
        "energy_lift",
        "Energy lift",
        "Energy in object divided by the share of the image the object covers. 1 means the map "
        "is no more on the object than chance; above 1 means it concentrates on the object.",
    ),
    (
        "pointing_game",
        "Pointing game",
        "The share of images whose single strongest map point lies inside the object.",
    ),
    (
        "iou",
        "IoU",
        "Overlap between the strongest part of the map and the object: the intersection divided "
        "by the union, 0 (none) to 1 (identical).",
    ),
    (
        "auc",
        "Localisation AUC",
        "How well the map's values separate object pixels from background pixels: 0.5 is chance, "
        "1 is perfect.",
    ),
    (
        "chance",
        "Chance energy",
        "The energy in the object that a map ignoring the image would get (about the object's "
        "area). A value near it means the map says nothing about the object.",
    ),
    (
        "drop",
        "Drop, object only",
        "How much accuracy falls when the background is removed and only the object is kept. A "
        "large drop means the class needs its background.",
    ),
    (
        "bg_gap",
        "Background gap",
        "Accuracy on the original images minus accuracy when the same objects are pasted onto "
        "backgrounds of other images. A large gap means the class is recognised partly from "
        "its usual background.",
    ),
    (
        "risk",
        "Risk (sort order)",
        "A score used only to sort classes, highest concern first: background focus (0 to 1) "
        "plus the accuracy drop with the object alone (if positive) plus 0.25 for each kind of "
        "finding about the class. It is not a probability; read the columns it is made of.",
    ),
    (
        "flags",
        "Flags",
        "Short labels for the rules a class triggered (see Findings for the full wording).",
    ),
    (
        "severity",
        "Severity",
        "How much a finding should weigh in the release decision: high (act before release), "
        "medium (review), low (note).",
    ),
    (
        "gate",
        "Release gate",
        "A pass/fail rule from the configuration; any failed gate makes the audit exit with "
        "code 1 so that a release pipeline stops.",
    ),
    (
        "sanity",
        "Sanity check",
        "The maps of the trained model are compared with those of a model with randomised "
        "weights. A method whose maps barely change does not explain this model; its numbers are "
        "marked and should not be used as evidence.",
    ),
    (
        "only_bg",
        "Background-only images",
        "Copies of the evaluation images with the object removed. When every such image is "
        "predicted as one class, that class can look like a shortcut because it is the model's "
        "default answer for empty scenes; compare with the maps before concluding.",
    ),
)


def glossary() -> list[dict[str, str]]:
    """The glossary as ``[{"id", "term", "definition"}]``."""
    return [{"id": i, "term": t, "definition": d} for i, t, d in GLOSSARY]
