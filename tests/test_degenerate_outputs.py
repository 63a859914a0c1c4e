"""Degenerate model outputs (issue 11): constant maps get status constant_cam and NaN metrics,
non-finite logits get a status (never a class-0 prediction) and a finding, and `cam` only
accepts a head verified by the probe logits = W GAP(A) + b."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from torch import nn

from auditor.audit.runner import audit
from auditor.cam import compute_cams
from auditor.config import AuditSettings
from auditor.data import open_dataset
from auditor.data.config import parse_data_section
from tests.fixtures_data import make_csv_masks

SETTINGS = AuditSettings(
    methods=("gradcam",),
    batch_size=5,
    bootstrap=50,
    faithfulness_samples=0,
    sanity_check=False,
    clusters=False,
    gallery_per_class=1,
    interventions=True,
    inference_copy=False,
)


class Net(nn.Module):
    """conv -> ReLU -> GAP -> linear; logits NaN for images whose channel-0 mean > ``cut``."""

    def __init__(self, cut: float = math.inf) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 2)
        self.cut = cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(self.pool(self.relu(self.conv(x))).flatten(1))
        bad = x[:, 0].mean(dim=(1, 2)) > self.cut
        return torch.where(bad[:, None], float("nan"), logits)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    manifest = Path(make_csv_masks(tmp_path_factory.mktemp("degenerate"))["manifest"])
    cfg = parse_data_section(
        {"manifest": str(manifest), "input_size": 16, "classes": ["cat", "dog"]},
        manifest.parent,
        "c.toml",
    )
    return open_dataset(cfg)


def _rows(run: Path):
    return pq.read_table(run / "samples.parquet").to_pandas()


def test_a_1x1_layer_is_refused_before_any_batch(tmp_path: Path, dataset) -> None:
    """A 1x1 target layer makes every map one number (constant_cam on every sample): since
    issue 27 the applicability check refuses it up front, naming the layer and the grid, and
    writes no rows (per-sample constant maps stay a status: tests/test_cam*.py)."""
    from auditor.errors import AuditorInputError

    with pytest.raises(AuditorInputError, match=r"'pool' has a 1x1 grid"):
        audit(Net(), dataset, tmp_path / "r", settings=SETTINGS, layer="pool", render=False)
    assert not (tmp_path / "r" / "samples.parquet").exists()


def test_nonfinite_logits_are_a_status_not_class_0(tmp_path: Path, dataset) -> None:
    means = sorted(float(dataset.load(i).image[0].mean()) for i in range(len(dataset)))
    cut = (means[2] + means[3]) / 2  # the two brightest images get NaN logits
    out = audit(Net(cut), dataset, tmp_path / "r", settings=SETTINGS, layer="conv", render=False)
    rows = _rows(out.run_dir)
    bad = rows["status"] == "nonfinite_logits"
    assert int(bad.sum()) == 2
    assert (rows.loc[bad, "pred"] == -1).all() and not rows.loc[bad, "correct"].any()
    assert rows.loc[bad, "energy_in_mask"].isna().all()
    assert rows.loc[bad, "only_bg_correct"].isna().all()  # no intervention outcome either
    assert rows.loc[~bad, "energy_in_mask"].notna().all()
    assert out.summary["dataset"]["n_nonfinite_logits"] == 2
    finding = [f for f in out.summary["findings"] if f["kind"] == "nonfinite_logits"]
    assert finding and finding[0]["severity"] == "high" and finding[0]["evidence"]["n"] == 2


def test_cam_head_probe_accepts_gap_linear_and_refuses_hidden_layer() -> None:
    from torchvision.models.mobilenetv3 import InvertedResidualConfig as C

    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=3).eval()
    big = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))  # layer4: 3x3
    maps = compute_cams(resnet, big, None, methods=("cam", "gradcam"), layer="layer4")
    a, b = maps["cam"].flatten(1), maps["gradcam"].flatten(1)
    assert float(torch.corrcoef(torch.stack([a[0], b[0]]))[0, 1]) > 0.99  # CAM ∝ Grad-CAM
    cfg = [C(8, 3, 16, 8, True, "RE", 2, 1, 1.0), C(8, 3, 24, 16, False, "HS", 2, 1, 1.0)]
    mnv3 = torchvision.models.MobileNetV3(cfg, last_channel=32, num_classes=3).eval()
    # features outputs 96 channels; classifier.0 is Linear(96 -> 32), a hidden layer
    assert mnv3.classifier[0].in_features == 96
    with pytest.raises(ValueError, match=r"W \* GAP\(A\) \+ b"):
        compute_cams(mnv3, images, None, methods=("cam",), layer="features")
