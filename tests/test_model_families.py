"""Architecture matrix (issue 11): tiny random-weight instances of every supported family go
through auto-detection and compute_cams; the chosen layer, its reshape, and finite,
non-degenerate maps are checked. Reduced depths/widths keep the whole file within seconds."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn

from auditor.cam import compute_cams
from auditor.cam.layers import (
    ChannelsLastReshape,
    TokenReshape,
    detect_target_layer,
    infer_reshape,
    parse_reshape,
    resolve_target,
    token_grid,
)
from auditor.cam.outputs import logits_of

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

tv = torchvision.models


def _head_normal(model: nn.Module, name: str) -> nn.Module:
    """Random normal head weights (torchvision ViT and timm Mixer initialise the head to 0)."""
    with torch.no_grad():
        model.get_submodule(name).weight.normal_()
    return model


def _tv_convnext() -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig

    return tv.ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=3)


def _tv_mnv3() -> nn.Module:
    from torchvision.models.mobilenetv3 import InvertedResidualConfig as C

    cfg = [C(8, 3, 16, 8, True, "RE", 2, 1, 1.0), C(8, 3, 24, 16, False, "HS", 2, 1, 1.0)]
    return tv.MobileNetV3(cfg, last_channel=32, num_classes=3)


def _tv_vgg() -> nn.Module:
    from torchvision.models.vgg import make_layers

    model = tv.VGG(make_layers([8, "M", 16, "M"]), num_classes=3, init_weights=True)
    # a small classifier on 16 x 7 x 7 (VGG's adaptive pool output)
    model.classifier = nn.Sequential(nn.Linear(16 * 49, 32), nn.ReLU(), nn.Linear(32, 3))
    return model


def _hf(config_cls: str, model_cls: str, **kw: object) -> nn.Module:
    cfg = getattr(transformers, config_cls)(**kw)
    return getattr(transformers, model_cls)(cfg)


# name -> (builder, input (H, W), expected layer, expected reshape description)
FAMILIES: dict[str, tuple[Callable[[], nn.Module], tuple[int, int], str, dict[str, object]]] = {
    "tv_resnet18": (lambda: tv.resnet18(num_classes=3), (64, 64), "layer4", {"kind": "none"}),
    "tv_vgg": (_tv_vgg, (32, 32), "features.4", {"kind": "none"}),
    "tv_mobilenet_v3": (_tv_mnv3, (32, 32), "features", {"kind": "none"}),
    "tv_convnext": (_tv_convnext, (64, 64), "features", {"kind": "none"}),
    "tv_vit": (
        lambda: _head_normal(
            tv.VisionTransformer(
                image_size=32,
                patch_size=8,
                num_layers=2,
                num_heads=2,
                hidden_dim=16,
                mlp_dim=32,
                num_classes=3,
            ),
            "heads.head",
        ),
        (32, 32),
        "encoder.layers.encoder_layer_1.ln_1",
        {"kind": "tokens", "prefix_tokens": 1, "grid": [4, 4]},
    ),
    "tv_swin": (
        lambda: tv.SwinTransformer(
            patch_size=[4, 4],
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=[4, 4],
            num_classes=3,
        ),
        (32, 32),
        "permute",
        {"kind": "none"},
    ),
    "tv_maxvit": (
        lambda: tv.MaxVit(
            input_size=(32, 32),
            stem_channels=8,
            partition_size=2,
            block_channels=[16, 32],
            block_layers=[1, 1],
            head_dim=8,
            stochastic_depth_prob=0.0,
            num_classes=3,
        ),
        (32, 32),
        "blocks.1",
        {"kind": "none"},
    ),
    "timm_vit_nonsquare": (
        lambda: timm.create_model(
            "vit_small_patch16_224",
            pretrained=False,
            img_size=(32, 24),
            patch_size=8,
            depth=2,
            embed_dim=16,
            num_heads=2,
            num_classes=3,
        ),
        (32, 24),
        "blocks.1.norm1",
        {"kind": "tokens", "prefix_tokens": 1, "grid": [4, 3]},
    ),
    "timm_vit_registers": (
        lambda: timm.create_model(
            "vit_small_patch16_224",
            pretrained=False,
            img_size=32,
            patch_size=8,
            depth=2,
            embed_dim=16,
            num_heads=2,
            num_classes=3,
            reg_tokens=4,
        ),
        (32, 32),
        "blocks.1.norm1",
        {"kind": "tokens", "prefix_tokens": 5, "grid": [4, 4]},
    ),
    "timm_deit_distilled": (
        lambda: timm.create_model(
            "deit_tiny_distilled_patch16_224",
            pretrained=False,
            img_size=32,
            patch_size=8,
            depth=2,
            embed_dim=16,
            num_heads=2,
            num_classes=3,
        ),
        (32, 32),
        "blocks.1.norm1",
        {"kind": "tokens", "prefix_tokens": 2, "grid": [4, 4]},
    ),
    "timm_swin": (
        lambda: timm.create_model(
            "swin_tiny_patch4_window7_224",
            pretrained=False,
            img_size=32,
            embed_dim=16,
            depths=(1, 1),
            num_heads=(2, 2),
            window_size=4,
            num_classes=3,
        ),
        (32, 32),
        "norm",
        {"kind": "channels_last"},
    ),
    "timm_convnext": (
        lambda: timm.create_model(
            "convnext_atto",
            pretrained=False,
            depths=(1, 1, 1, 1),
            dims=(8, 16, 24, 32),
            num_classes=3,
        ),
        (64, 64),
        "stages",
        {"kind": "none"},
    ),
    "timm_mixer": (
        lambda: _head_normal(
            timm.models.mlp_mixer.MlpMixer(
                img_size=32, patch_size=8, num_blocks=2, embed_dim=16, num_classes=3
            ),
            "head",
        ),
        (32, 32),
        "norm",
        {"kind": "tokens", "prefix_tokens": 0, "grid": [4, 4]},
    ),
    "hf_vit": (
        lambda: _hf(
            "ViTConfig",
            "ViTForImageClassification",
            image_size=32,
            patch_size=8,
            num_hidden_layers=2,
            hidden_size=16,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=3,
        ),
        (32, 32),
        "layernorm_before",
        {"kind": "tokens", "prefix_tokens": 1, "grid": [4, 4]},
    ),
    "hf_convnext": (
        lambda: _hf(
            "ConvNextConfig",
            "ConvNextForImageClassification",
            num_stages=2,
            hidden_sizes=[8, 16],
            depths=[1, 1],
            num_labels=3,
        ),
        (32, 32),
        "convnext.encoder.stages.1",
        {"kind": "none"},
    ),
    "hf_swinv2": (
        lambda: _hf(
            "Swinv2Config",
            "Swinv2ForImageClassification",
            image_size=32,
            patch_size=4,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=4,
            num_labels=3,
        ),
        (32, 32),
        "swinv2.layernorm",
        {"kind": "tokens", "prefix_tokens": 0, "grid": [4, 4]},
    ),
    "gray_resnet18": (
        lambda: _gray_resnet(),
        (64, 64),
        "layer4",
        {"kind": "none"},
    ),
}


def _gray_resnet() -> nn.Module:
    model = tv.resnet18(num_classes=3)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model


def _channels(model: nn.Module) -> int:
    return next(m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.fixture(scope="module")
def built() -> dict[str, nn.Module]:
    out = {}
    for i, (name, (build, _, _, _)) in enumerate(FAMILIES.items()):
        torch.manual_seed(i)
        out[name] = build().eval()
    return out


def _subset(reshape: dict[str, object], expected: dict[str, object]) -> bool:
    return all(reshape.get(k) == v for k, v in expected.items())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_layer_reshape_and_maps(family: str, built: dict[str, nn.Module]) -> None:
    model = built[family]
    _, size, layer, reshape = FAMILIES[family]
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, _channels(model), *size, generator=g)
    choice = detect_target_layer(model, images)
    assert choice.name == layer or choice.name.endswith("." + layer), (choice.name, layer)
    assert choice.shape[0] == 3  # batch first
    assert _subset(choice.describe()["reshape"], reshape), choice.describe()
    assert choice.reason
    cams = compute_cams(model, images, None, methods=("gradcam", "layercam"))
    for method, cam in cams.items():
        assert cam.shape == (3, *size), (method, cam.shape)
        assert bool(torch.isfinite(cam).all()), method
        flat = cam.flatten(1)
        spread = (flat.amax(1) - flat.amin(1)) / flat.amax(1).clamp_min(1e-12)
        assert float(spread.max()) > 0.1, (family, method, spread)  # not constant, not zero
    # the same layer from the engine's own probe (no example): declared input size where known
    assert logits_of(model(images)).shape == (3, 3)


def test_hf_output_unwrapped_by_faithfulness(built: dict[str, nn.Module]) -> None:
    from auditor.metrics.faithfulness import faithfulness_metrics

    model = built["hf_vit"]
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    cams = compute_cams(model, images, torch.tensor([0, 1]))
    res = faithfulness_metrics(model, images, cams, torch.tensor([0, 1]), steps=4)
    assert set(res["gradcam"]) >= {"deletion_auc", "insertion_auc", "average_drop"}
    for key in ("deletion_auc", "insertion_auc"):
        values = res["gradcam"][key]
        assert values.shape == (2,) and bool(((values >= 0) & (values <= 1)).all()), key


def test_batchless_layer_never_chosen_and_refused(built: dict[str, nn.Module]) -> None:
    model = built["hf_swinv2"]
    names = [n for n, _ in model.named_modules() if "continuous_position_bias_mlp" in n]
    assert names  # Swinv2's position-bias MLP: output has no batch dimension
    with pytest.raises(ValueError, match="batch"):
        infer_reshape(model, names[-1], torch.randn(2, 3, 32, 32))


def test_vit_reshape_zero_prefix_is_not_turned_into_swin(built: dict[str, nn.Module]) -> None:
    from auditor.audit.runner import _reshape_fn
    from auditor.cam import vit_reshape

    r = _reshape_fn(vit_reshape(num_prefix_tokens=0))
    assert isinstance(r, TokenReshape) and r.prefix_tokens == 0
    assert _reshape_fn(None) == "auto"
    assert isinstance(_reshape_fn("swin"), ChannelsLastReshape)
    tokens = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)
    grid = _reshape_fn({"kind": "tokens", "prefix_tokens": 0, "grid": [2, 3]})(tokens)
    assert grid.shape == (2, 3, 2, 3)
    assert float(grid[1, 2, 1, 0]) == float(tokens[1, 3, 2])  # row 1, col 0 = token 3


def test_parse_reshape_errors() -> None:
    assert parse_reshape("auto") == "auto" and parse_reshape("none") is None
    with pytest.raises(ValueError, match="prefix_tokens"):
        parse_reshape({"kind": "tokens", "prefix_tokens": -1})
    with pytest.raises(ValueError, match="grid"):
        parse_reshape({"kind": "tokens", "grid": [14]})
    with pytest.raises(ValueError, match="unknown key"):
        parse_reshape({"kind": "tokens", "prefix": 1})
    with pytest.raises(ValueError, match="kind"):
        parse_reshape({"kind": "tubes"})
    with pytest.raises(ValueError, match="'auto'"):
        parse_reshape("vitt")


def test_token_grid_hand_values() -> None:
    assert token_grid(196, (224, 224)) == (14, 14)
    assert token_grid(140, (224, 160)) == (14, 10)  # non-square input, stride 16
    assert token_grid(49, (224, 224)) == (7, 7)  # Swin's last stage, stride 32
    assert token_grid(197, (224, 224)) is None


def test_given_layer_auto_reshape_and_explicit(built: dict[str, nn.Module]) -> None:
    model = built["timm_deit_distilled"]
    names, reshape, choices = resolve_target(
        model, "blocks.0.norm1", "auto", torch.randn(2, 3, 32, 32)
    )
    assert names == ("blocks.0.norm1",)
    assert isinstance(reshape, TokenReshape) and reshape.prefix_tokens == 2
    assert "set by the user" in choices[0].reason
    # an explicit reshape is used as given
    names, reshape, _ = resolve_target(
        model, "blocks.0.norm1", {"kind": "tokens", "prefix_tokens": 2}
    )
    assert isinstance(reshape, TokenReshape) and reshape.grid is None


def test_default_probe_uses_declared_input_size(built: dict[str, nn.Module]) -> None:
    # HF ViT refuses inputs other than config.image_size: the default probe must use it
    assert detect_target_layer(built["hf_vit"]).name.endswith("layernorm_before")
