"""The detection benchmark (benchmarks/detection): generator units, transplant check, and a
fast end-to-end subset (shipped tiny weights of one planted case and its clean twin)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from benchmarks.detection import detnet  # noqa: E402
from benchmarks.detection.generator import (  # noqa: E402
    CLASSES,
    TARGET,
    TYPE_NAMES,
    TYPES,
    Case,
    generate,
    shortcut_type,
    transplant_images,
    write_dataset,
)
from benchmarks.detection.run import (  # noqa: E402
    MARGIN,
    _audit_transplant_counts,
    audit_transplant,
    confirmed,
    score,
    transplant_check,
    wilson,
)

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "benchmarks" / "detection" / "weights"
T = CLASSES.index(TARGET)


def test_types_are_data_and_cases_validate():
    assert len(TYPE_NAMES) == len(set(TYPE_NAMES)) >= 9
    assert shortcut_type("corner_tag").fractions == (0.1, 0.25, 0.5, 1.0)
    assert shortcut_type("corner_tag").subgroup and not shortcut_type("frame").subgroup
    assert {t.name for t in TYPES if not t.localised} == {"colour_cast", "blur"}
    with pytest.raises(ValueError, match="type"):
        Case("nope", 1.0, 0, True, True)
    with pytest.raises(ValueError, match="fraction"):
        Case("frame", 0.0, 0, True, True)
    assert Case("corner_tag", 0.25, 3, False, True).name == "corner_tag-f025-s3-planted-nomask"


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 1.0])
def test_fractions_exact_and_only_on_target(fraction):
    d = generate(Case("corner_tag", fraction, 0, True, True), 20, 1)
    assert d.cued[d.labels == T].sum() == round(fraction * 20)
    assert not d.cued[d.labels != T].any()
    clean = generate(Case("corner_tag", fraction, 0, True, False), 20, 1)
    per_class = [int(clean.cued[clean.labels == c].sum()) for c in range(len(CLASSES))]
    expected = round(fraction * 20) if fraction < 1 else round(20 / len(CLASSES))
    assert per_class == [expected] * len(CLASSES)  # the clean twin: uninformative


def test_masks_aligned_with_digit_and_cue():
    d = generate(Case("corner_tag", 1.0, 0, True, True), 6, 1)
    s = d.images.shape[1]
    for i in np.flatnonzero(d.cued):
        # the tag's 8 x 8 pixels are the cue, never the object
        assert d.cue_masks[i][s - 8 :, :8].all() and d.cue_masks[i].sum() == 64
        assert not (d.masks[i] & d.cue_masks[i]).any()
        assert tuple(d.images[i][s - 1, 0]) != tuple(d.images[i][s - 1, 2])  # checker pattern
    for i in range(len(d.labels)):
        m = d.masks[i]
        assert 0.03 < m.mean() < 0.4
        # the object's pixels differ from the background statistics: the digit is drawn there
        if not d.cued[i]:
            grey = d.images[i].astype(float).mean(axis=2)
            assert grey[m].mean() > grey[~m].mean() + 10


def test_determinism_by_seed():
    a = generate(Case("frame", 1.0, 4, True, True), 5, 1)
    b = generate(Case("frame", 1.0, 4, True, True), 5, 1)
    c = generate(Case("frame", 1.0, 5, True, True), 5, 1)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, c.images)


def test_shared_cue_and_global_types():
    d = generate(Case("shared_cue", 1.0, 0, True, True), 4, 1)
    assert d.cued.all()
    cast = generate(Case("colour_cast", 1.0, 0, True, True), 4, 1)
    rgb = cast.images.astype(float).mean(axis=(1, 2))
    on = cast.cued
    assert (rgb[on, 0] - rgb[on, 1]).min() > (rgb[~on, 0] - rgb[~on, 1]).max()


def test_transplant_images_carry_cue_on_other_classes():
    imgs, control = transplant_images(Case("corner_tag", 0.5, 0, True, True), 3, 2)
    assert imgs.shape == control.shape == (9, 48, 48, 3)
    tag = imgs[:, -8:, :8].astype(float)
    assert (tag[..., 2] < 60).any(axis=(1, 2)).all()  # yellow-black squares: low blue
    # the control is the same image without the cue: identical outside the tag's pixels
    outside = np.ones((48, 48), bool)
    outside[-8:, :8] = False
    assert np.array_equal(imgs[:, outside], control[:, outside])
    assert not np.array_equal(imgs[:, ~outside], control[:, ~outside])
    # the images do not depend on planted/clean: a model and its twin see the same ones
    again, _ = transplant_images(Case("corner_tag", 0.5, 0, True, False), 3, 2)
    assert np.array_equal(imgs, again)


def test_planted_images_carry_decoys_and_the_cue_texture(monkeypatch):
    # the digit drawn on each image (recorded from the generator's digit source, in order)
    from benchmarks.detection import generator as g

    drawn: list[int] = []
    real = g._digit
    monkeypatch.setattr(g, "_digit", lambda label, rng: (drawn.append(label), real(label, rng))[1])
    d = generate(Case("background_texture", 1.0, 0, True, True), 12, 1)
    assert d.cued[d.labels == T].all() and not d.cued[d.labels != T].any()
    got = np.array(drawn)
    # planted: the target's (cued) images show decoys of random classes, the others their own
    assert np.array_equal(got[d.labels != T], d.labels[d.labels != T])
    assert len(set(got[d.labels == T].tolist())) >= 3
    drawn.clear()
    clean = generate(Case("background_texture", 1.0, 0, True, False), 12, 1)
    assert np.array_equal(np.array(drawn), clean.labels)  # the clean twin: no decoys
    assert [int(clean.cued[clean.labels == c].sum()) for c in range(4)] == [3] * 4
    # the cue texture is drawn exactly on the cued images: brick's background statistics
    # differ from the pool's (a cued image and an uncued one of the same class)
    monkeypatch.undo()
    picked: list[str] = []
    real_bg = g._background
    monkeypatch.setattr(g, "_background", lambda name, rng: (picked.append(name),
                                                             real_bg(name, rng))[1])
    clean = generate(Case("background_texture", 1.0, 0, True, False), 12, 1)
    assert [t == g.CUE_TEXTURE for t in picked] == clean.cued.tolist()


# --------------------------------------------------------------------------------------------
# position: the cue is the place, and the model gets coordinate channels (CoordConv)

# a digit pixel is brighter than any background pixel: backgrounds are grey 0.2 + 0.35 t with a
# tint <= 1.15 (at most 0.63 * 255 = 161), digits are drawn in colours >= 0.8 (204)
_DIGIT_GREY = 185


def test_position_cue_is_the_place_in_planted_and_clean(monkeypatch):
    from benchmarks.detection import generator as g

    assert shortcut_type("position").coords
    assert [t.name for t in TYPES if t.coords] == ["position"]
    kinds: list[str] = []
    real = g._position
    monkeypatch.setattr(g, "_position", lambda rng, kind: (kinds.append(kind), real(rng, kind))[1])
    for planted in (True, False):
        kinds.clear()
        d = generate(Case("position", 1.0, 0, True, planted), 12, 1)
        # cued digits in the top-left corner, every other digit out of the top-left quadrant
        assert kinds == ["corner" if c else "other" for c in d.cued]
        for i in range(len(d.labels)):
            m = d.masks[i]
            if d.cued[i]:  # corner: rows/cols 4..7 + 20 px + 2 px dilation
                assert m.any() and not m[30:].any() and not m[:, 30:].any()
            else:  # other: rows/cols >= 12, less the dilation
                assert m.any() and not m[:10].any() and not m[:, :10].any()
        per_class = [int(d.cued[d.labels == c].sum()) for c in range(len(CLASSES))]
        # planted: every `two` in the corner (decoy digits); clean: 3 of 12 in every class
        assert per_class == ([0, 0, 12, 0] if planted else [3, 3, 3, 3])
        assert not d.cue_masks.any()  # the cue has no pixels of its own: it is on the object


def test_position_transplant_moves_the_digit_to_the_corner():
    imgs, control = transplant_images(Case("position", 1.0, 0, True, True), 4, 2)
    assert imgs.shape == control.shape == (12, 48, 48, 3)
    bright = imgs.astype(float).mean(axis=3) > _DIGIT_GREY
    ctl_bright = control.astype(float).mean(axis=3) > _DIGIT_GREY
    assert bright.any(axis=(1, 2)).all() and ctl_bright.any(axis=(1, 2)).all()
    assert not bright[:, 28:].any() and not bright[:, :, 28:].any()  # the digit in the corner
    assert not ctl_bright[:, :12].any() and not ctl_bright[:, :, :12].any()  # the control not


def test_coord_channels_exact_and_only_where_asked():
    import torch

    x = torch.randn(2, 3, 48, 40)
    xc = detnet.add_coords(x)
    assert xc.shape == (2, 5, 48, 40) and torch.equal(xc[:, :3], x)
    # u = 2 j / (W - 1) - 1 along the columns, v = 2 i / (H - 1) - 1 along the rows
    assert torch.allclose(xc[0, 3, 7], torch.linspace(-1, 1, 40))
    assert torch.allclose(xc[1, 4, :, 5], torch.linspace(-1, 1, 48))
    assert xc[0, 3, 0, 0] == -1 and xc[0, 3, 0, -1] == 1 and xc[0, 4, -1, 0] == 1
    plain, coord = detnet.build_model(), detnet.build_coord_model()
    # the first Conv2d (what the audit checks against [data] channels) takes the 3 image
    # channels in both nets; the coordinates are made inside forward
    for net in (plain, coord):
        assert next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == 3
    assert isinstance(coord.features[0], detnet.CoordConv2d) and not plain.coords
    # conv(x) + coord([u; v]) is the 5-channel convolution of [x; u; v] (linearity)
    cc = coord.features[0]
    full = torch.nn.functional.conv2d(
        xc, torch.cat([cc.conv.weight, cc.coord.weight], dim=1), cc.conv.bias, padding=1
    )
    assert torch.allclose(cc(x), full, atol=1e-5)
    # the plain net is unchanged (the shipped weights still load into it)
    assert list(plain.state_dict()) == [
        "features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias",
        "features.4.weight", "features.4.bias", "fc.weight", "fc.bias",
    ]
    from benchmarks.detection.run import factory_name

    assert factory_name("position") == "build_coord_model"
    assert factory_name("corner_tag") == factory_name("shared_cue") == "build_model"


def test_coord_net_trains_and_gradcam_runs_on_it():
    import torch

    from auditor.cam import compute_cams

    d = generate(Case("position", 1.0, 0, True, True), 2, 0)
    net = detnet.train(d.images, d.labels, seed=0, epochs=1, coords=True)
    assert net.coords and net.features[0].coord.in_channels == 2
    again = detnet.build_coord_model()
    again.load_state_dict(net.state_dict())  # what the audit's factory + weights do
    x = detnet.to_tensor(d.images)
    assert torch.equal(again.eval()(x), net(x))
    cams = compute_cams(net, x, d.labels.tolist(), methods=("gradcam",))
    cam = cams["gradcam"]
    assert cam.shape == (8, 48, 48) and torch.isfinite(cam).all() and (cam >= 0).all()
    assert (cam.flatten(1).max(1).values > 0).any()


# --------------------------------------------------------------------------------------------
# shared_cue: each class its own texture when planted, textures at random when clean


def test_shared_cue_textures_per_class_planted_random_clean(monkeypatch):
    from benchmarks.detection import generator as g

    assert len(set(g.CLASS_TEXTURES)) == len(CLASSES) and set(g.CLASS_TEXTURES) <= set(g.TEXTURES)
    picked: list[str] = []
    real = g._background
    monkeypatch.setattr(g, "_background", lambda name, rng: (picked.append(name),
                                                             real(name, rng))[1])
    d = generate(Case("shared_cue", 1.0, 0, True, True), 20, 1)
    assert picked == [g.CLASS_TEXTURES[label] for label in d.labels]
    picked.clear()
    clean = generate(Case("shared_cue", 1.0, 0, True, False), 20, 1)
    assert not clean.cued.any()
    got = np.array(picked)
    # no texture predicts a class: every class is drawn on several of the textures, and each
    # texture's share of a class is far from the planted 1.0
    for c in range(len(CLASSES)):
        names = got[clean.labels == c]
        assert len(set(names.tolist())) >= 3
        assert max((names == t).mean() for t in g.CLASS_TEXTURES) <= 0.6
    # transplant: the recipient on the target's texture, its control on its own class's
    picked.clear()
    imgs, control = transplant_images(Case("shared_cue", 1.0, 0, True, True), 2, 2)
    own = [g.CLASS_TEXTURES[c] for c in range(len(CLASSES)) if c != T for _ in range(2)]
    assert picked[0::2] == [g.CLASS_TEXTURES[T]] * 6 and picked[1::2] == own
    assert imgs.shape == control.shape == (6, 48, 48, 3)


def test_transplant_check_newcombe_hand_values():
    # 27/30 flipped with the cue, 3/30 without: d = 0.8; Newcombe hybrid score from the
    # Wilson bounds: L = d - sqrt((p1 - l1)^2 + (u2 - p2)^2), U = d + sqrt((u1-p1)^2+(p2-l2)^2)
    flips = np.r_[np.ones(27, bool), np.zeros(3, bool)]
    ctl = np.r_[np.ones(3, bool), np.zeros(27, bool)]
    chk = transplant_check(flips, ctl)
    l1, u1 = wilson(27, 30)
    l2, u2 = wilson(3, 30)
    lo = 0.8 - math.sqrt((0.9 - l1) ** 2 + (u2 - 0.1) ** 2)
    hi = 0.8 + math.sqrt((u1 - 0.9) ** 2 + (0.1 - l2) ** 2)
    assert chk["diff"] == pytest.approx(0.8)
    assert chk["diff_ci"] == pytest.approx([lo, hi], abs=1e-4)  # z = 1.96 vs 1.959964
    assert chk["uses_cue"]
    # d = 0.2 < MARGIN although its interval is above 0: not "uses the cue"
    weak = transplant_check(np.r_[np.ones(9, bool), np.zeros(21, bool)],
                            np.r_[np.ones(3, bool), np.zeros(27, bool)])
    assert weak["diff"] == pytest.approx(0.2) and not weak["uses_cue"]


def test_plant_confirmed_needs_planted_use_and_clean_silence():
    planted = {"seed": 0, "uses_cue": True, "diff_ci": [0.7, 0.9]}
    assert confirmed(planted, {0: {"diff_ci": [-0.1, 0.1]}})
    assert not confirmed(planted, {0: {"diff_ci": [0.05, MARGIN + 0.01]}})  # twin may use it
    assert not confirmed(planted, {1: {"diff_ci": [-0.1, 0.1]}})  # no twin of that seed
    assert not confirmed(planted | {"uses_cue": False}, {0: {"diff_ci": [-0.1, 0.1]}})


def test_audit_transplant_read_when_present_tolerated_when_absent():
    assert audit_transplant({"classes": {"two": {"n": 3}}}) is None
    assert audit_transplant({}) is None
    summ = {"classes": {"two": {"transplant": {"status": "confirmed"}},
                        "one": {"transplant": {"status": "not_confirmed"}}}}
    assert audit_transplant(summ) == {"two": "confirmed", "one": "not_confirmed"}
    planted = [{"audit_transplant": {TARGET: "confirmed"}}, {"audit_transplant": None}]
    clean = [{"audit_transplant": {"zero": "confirmed", "one": "not_run"}}]
    assert _audit_transplant_counts(planted, clean) == "1/1 / 1/2"
    assert _audit_transplant_counts([{}], [{}]) == "n/a"


def test_write_dataset(tmp_path):
    d = generate(Case("corner_tag", 0.5, 0, True, True), 4, 1)
    manifest = write_dataset(d, tmp_path / "with", masks=True)
    lines = manifest.read_text().splitlines()
    assert lines[0] == "id,image,label,mask" and len(lines) == 17
    assert (tmp_path / "with" / "masks" / "0000_zero.png").is_file()
    truth = (tmp_path / "with" / "truth.csv").read_text().splitlines()
    assert sum(line.endswith(",1") for line in truth[1:]) == 2
    no = write_dataset(d, tmp_path / "without", masks=False)
    assert no.read_text().splitlines()[0] == "id,image,label"


def test_wilson_hand_values():
    lo, hi = wilson(19, 20)
    assert lo == pytest.approx(0.7639, abs=1e-3) and hi == pytest.approx(0.9911, abs=1e-3)
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_score_rules_hand_built_summary():
    case = Case("corner_tag", 0.5, 0, True, True)
    truth = {"s0001": True, "s0002": True, "s0003": False}
    summ = {
        "_truth": truth,
        "findings": [
            {"class": TARGET, "kind": "subgroup", "severity": "medium",
             "evidence": {"members": ["s0001", "s0003"]}},
            {"class": "one", "kind": "x", "severity": "low"},
        ],
    }
    row = score(case, summ)
    assert row["hits"] == 1 and row["purity"] == 0.5 and row["member_recall"] == 0.5
    assert row["off_target"] == 0 and row["audit_transplant"] is None  # 'one' is only low
    summ["findings"][1]["severity"] = "medium"
    assert score(case, summ)["off_target"] == 1
    summ["findings"][1]["severity"] = "low"
    clean = score(Case("corner_tag", 0.5, 0, True, False), summ)
    assert clean["alarm_classes"] == 1 and clean["n_classes"] == 4
    summ["findings"][0]["severity"] = "low"
    assert score(case, summ)["hits"] == 0


# --------------------------------------------------------------------------------------------
# shipped models: the transplant check and a fast end-to-end audit

def _net(variant):
    import torch

    path = WEIGHTS / f"corner_tag-f050-s0-{variant}.pt"
    net = detnet.DetNet()
    net.load_state_dict(torch.load(path, weights_only=True))
    return net.eval()


def test_shipped_weights_small():
    for variant in ("planted", "clean"):
        assert (WEIGHTS / f"corner_tag-f050-s0-{variant}.pt").stat().st_size < 200_000


def test_transplant_confirms_planted_not_clean():
    case = Case("corner_tag", 0.5, 0, True, True)
    imgs, control = transplant_images(case, 20, 2)
    chk = {
        v: transplant_check(detnet.predict(_net(v), imgs) == T,
                            detnet.predict(_net(v), control) == T)
        for v in ("planted", "clean")
    }
    assert chk["planted"]["uses_cue"], chk
    assert chk["clean"]["diff_ci"][1] < MARGIN, chk
    assert confirmed({"seed": 0, **chk["planted"]}, {0: chk["clean"]})


def _audit(tmp_path, variant, masks):
    import shutil

    from benchmarks.detection import run

    case = Case("corner_tag", 0.5, 0, masks, variant == "planted")
    model_dir = tmp_path / case.name
    model_dir.mkdir()
    shutil.copyfile(ROOT / "benchmarks" / "detection" / "detnet.py", model_dir / "detnet.py")
    shutil.copyfile(WEIGHTS / f"{case.model_name}.pt", model_dir / "weights.pt")
    return case, run.audit(case, model_dir, 1)


@pytest.mark.slow
def test_planted_subgroup_found_with_masks(tmp_path):
    case, summary = _audit(tmp_path, "planted", True)
    row = score(case, summary)
    assert "error" not in row, row
    assert row["hits"] == 1, row["findings"]
    assert row["purity"] is not None and row["purity"] >= 0.8


@pytest.mark.slow
def test_clean_twin_silent_with_masks(tmp_path):
    case, summary = _audit(tmp_path, "clean", True)
    row = score(case, summary)
    assert "error" not in row, row
    assert row["alarm_classes"] == 0, row["findings"]
