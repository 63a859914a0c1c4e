"""Hand-derived maps for every CAM method on tiny fixed-weight models.

Both models take a 2-channel 3x3 input ``X >= 0``; the target layer ``relu`` computes
``A = ReLU(conv1x1_identity(X)) = X``, so the activations are chosen directly:

    A0 = [[1, 0, 2],      A1 = [[0, 1, 0],
          [0, 1, 0],            [0, 1, 0],
          [0, 0, 3]]            [2, 0, 1]]      sum A0 = 7, sum A1 = 5, Z = 9

* ``GapNet``: GAP + linear, W = [[1, -1], [0.5, 2]] (no bias), so G_k = W[c, k] / 9 everywhere.
  y_0 = (7 - 5) / 9 = 2/9, y_1 = (3.5 + 10) / 9 = 1.5.
* ``FlatNet``: flatten + linear; row 0 of W is (G0, G1) below, so dy_0/dA = (G0, G1):

    G0 = [[1, 0, 0],      G1 = [[0, 1, 0],
          [0, -1, 0],           [0, 1, 0],
          [0, 0, 1]]            [-1, 0, 0]]
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from auditor.cam import METHODS, CamEngine, compute_cams
from auditor.cam import methods as methods_module

A0 = torch.tensor([[1.0, 0, 2], [0, 1, 0], [0, 0, 3]])
A1 = torch.tensor([[0.0, 1, 0], [0, 1, 0], [2, 0, 1]])
G0 = torch.tensor([[1.0, 0, 0], [0, -1, 0], [0, 0, 1]])
G1 = torch.tensor([[0.0, 1, 0], [0, 1, 0], [-1, 0, 0]])
X = torch.stack([A0, A1])[None]  # [1, 2, 3, 3]


def _feature_block(model: nn.Module) -> None:
    model.conv = nn.Conv2d(2, 2, 1, bias=False)
    model.relu = nn.ReLU()
    with torch.no_grad():
        model.conv.weight.copy_(torch.eye(2)[:, :, None, None])


class GapNet(nn.Module):
    def __init__(self, weight: list[list[float]] | None = None) -> None:
        super().__init__()
        _feature_block(self)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(weight or [[1.0, -1.0], [0.5, 2.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


class FlatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        _feature_block(self)
        self.fc = nn.Linear(18, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[0] = torch.cat([G0.flatten(), G1.flatten()])
            self.fc.weight[1, 0] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def pca_map(p0: torch.Tensor, p1: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Eigen-CAM by hand for K = 2: top eigenvector of the 2x2 scatter matrix in closed form."""
    c0, c1 = p0 - p0.mean(), p1 - p1.mean()
    a, b, d = float((c0 * c0).sum()), float((c0 * c1).sum()), float((c1 * c1).sum())
    lam = (a + d) / 2 + math.sqrt(((a - d) / 2) ** 2 + b * b)
    v = (b, lam - a) if abs(b) > 1e-12 else ((1.0, 0.0) if a >= d else (0.0, 1.0))
    norm = math.hypot(*v)
    proj = c0 * v[0] / norm + c1 * v[1] / norm
    if float(((proj - proj.mean()) * (ref - ref.mean())).sum()) < 0:
        proj = -proj
    return proj.clamp_min(0)


def run(model: nn.Module, method: str, target: int, **kw: object) -> torch.Tensor:
    with CamEngine(model, "relu", (method,), **kw) as engine:
        batch = engine.run(X, torch.tensor([target]))
    assert batch.status[method] == ["ok"]
    return batch.cams[method][0]


# ----------------------------------------------------------------------------- GapNet, class 0

# cam: relu(1*A0 - 1*A1) = relu([[1,-1,2],[0,0,0],[-2,0,2]])
CAM_C0 = torch.tensor([[1.0, 0, 2], [0, 0, 0], [0, 0, 2]])

GAP_CASES = {
    "cam": (0, CAM_C0),
    # alpha_k = W[0, k] / 9 -> relu(A0 - A1) / 9
    "gradcam": (0, CAM_C0 / 9),
    # constant gradients: HiResCAM = Grad-CAM
    "hirescam": (0, CAM_C0 / 9),
    # w_k = sum (A_k / sum A_k) * g_k = g_k -> Grad-CAM
    "xgradcam": (0, CAM_C0 / 9),
    # only channel 0 has a positive gradient: relu(1/9) * A0
    "layercam": (0, A0 / 9),
    # alpha0 = 1 / (2 + 7 * (1/9)) = 9/25, w0 = 9 * 9/25 * 1/9 = 9/25; relu(g1) = 0 -> w1 = 0
    "gradcam++": (0, A0 * 9 / 25),
    # zeroing A0: y = -5/9 -> w0 = (2/9 + 5/9) / (2/9) = 7/2; zeroing A1: y = 7/9 -> w1 = -5/2
    "ablationcam": (0, (3.5 * A0 - 2.5 * A1).clamp_min(0)),
}


@pytest.mark.parametrize("method", sorted(GAP_CASES))
def test_gapnet_hand_values(method: str) -> None:
    target, expected = GAP_CASES[method]
    torch.testing.assert_close(run(GapNet(), method, target), expected, atol=1e-6, rtol=1e-5)


def test_gradcam_pp_class1_hand_values() -> None:
    # g0 = 0.5/9, S0 = 7: alpha0 = 1/(2 + 3.5/9) = 18/43, w0 = 9 * 18/43 * 0.5/9 = 9/43
    # g1 = 2/9,   S1 = 5: alpha1 = 1/(2 + 10/9) = 9/28,  w1 = 9 * 9/28 * 2/9 = 9/14
    expected = A0 * 9 / 43 + A1 * 9 / 14
    torch.testing.assert_close(run(GapNet(), "gradcam++", 1), expected, atol=1e-6, rtol=1e-5)


def test_scorecam_hand_values() -> None:
    # H0 = A0 / 3; relu(conv(X * H0)) = (A0^2/3, A0*A1/3): sums 5 and 4/3
    #   y0 = (5 - 4/3)/9 = 11/27, y1 = (2.5 + 8/3)/9 = 31/54 -> p0 = sigmoid(y0 - y1) = s(-1/6)
    # H1 = A1 / 2; (A0*A1/2, A1^2/2): sums 2 and 3.5
    #   y0 = (2 - 3.5)/9 = -1/6, y1 = (1 + 7)/9 = 8/9      -> p0 = s(-1/6 - 8/9) = s(-19/18)
    s = torch.tensor([sigmoid(-1 / 6), sigmoid(-19 / 18)])
    w = torch.softmax(s, 0)
    expected = w[0] * A0 + w[1] * A1
    torch.testing.assert_close(run(GapNet(), "scorecam", 0), expected, atol=1e-6, rtol=1e-5)
    # chunking the masked forwards does not change the result
    torch.testing.assert_close(
        run(GapNet(), "scorecam", 0, score_batch_size=1), expected, atol=1e-6, rtol=1e-5
    )


def test_eigencam_hand_values() -> None:
    # scatter of the centred [9, 2] matrix (A0, A1): [[10 - ..]] solved in closed form by pca_map;
    # sign: positive correlation with (A0 + A1) / 2
    expected = pca_map(A0, A1, (A0 + A1) / 2)
    torch.testing.assert_close(run(GapNet(), "eigencam", 0), expected, atol=1e-5, rtol=1e-4)
    # class-agnostic
    torch.testing.assert_close(run(GapNet(), "eigencam", 1), expected, atol=1e-5, rtol=1e-4)


def test_gradcam_equals_relu_cam_over_z_for_gap_linear() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 4),
    )
    images = torch.randn(3, 3, 8, 8)
    targets = torch.tensor([0, 2, 3])
    with CamEngine(model, "3", ("cam", "gradcam")) as engine:
        batch = engine.run(images, targets)
    torch.testing.assert_close(batch.cams["gradcam"], batch.cams["cam"] / 64, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- FlatNet, class 0

FLAT_CASES = {
    # relu(G0*A0 + G1*A1) = relu([[1,1,0],[0,0,0],[-2,0,3]])
    "hirescam": torch.tensor([[1.0, 1, 0], [0, 0, 0], [0, 0, 3]]),
    # relu(G0)*A0 + relu(G1)*A1 = [[1,0,0],[0,0,0],[0,0,3]] + [[0,1,0],[0,1,0],[0,0,0]]
    "layercam": torch.tensor([[1.0, 1, 0], [0, 1, 0], [0, 0, 3]]),
    # alpha0 = mean G0 = 1/9, alpha1 = mean G1 = 1/9
    "gradcam": (A0 + A1) / 9,
    # w0 = (1 - 1 + 3) / 7 = 3/7; w1 = (1 + 1 - 2) / 5 = 0
    "xgradcam": A0 * 3 / 7,
    # positive g = 1 only: w_k = sum_{g>0} 1 / (2 + S_k) -> w0 = 2/9, w1 = 2/7 (0/0 -> 0 elsewhere)
    "gradcam++": A0 * 2 / 9 + A1 * 2 / 7,
    # Eigen-CAM of A*G, sign fixed by sum_k A_k G_k
    "eigengradcam": pca_map(A0 * G0, A1 * G1, A0 * G0 + A1 * G1),
}


@pytest.mark.parametrize("method", sorted(FLAT_CASES))
def test_flatnet_hand_values(method: str) -> None:
    torch.testing.assert_close(run(FlatNet(), method, 0), FLAT_CASES[method], atol=1e-5, rtol=1e-4)


def test_ablationcam_flatnet_hand_values() -> None:
    # y0 = sum G*A = (1 - 1 + 3) + (1 + 1 - 2) = 3
    # zeroing A0 -> y = 0 (w0 = 1); zeroing A1 -> y = 3 (w1 = 0)
    torch.testing.assert_close(run(FlatNet(), "ablationcam", 0), A0, atol=1e-6, rtol=1e-5)


def test_cam_without_gap_head_raises_helpful_error() -> None:
    with pytest.raises(ValueError, match="gradcam"):
        run(FlatNet(), "cam", 0)


def test_every_method_has_a_hand_test() -> None:
    covered = set(GAP_CASES) | set(FLAT_CASES) | set(GAP_CASES_PARITY)
    covered |= {"scorecam", "eigencam", "randomcam", "kpcacam", "smoothgradcam++", "iscam", "sscam"}
    covered |= {"fullgrad", "legrad"}  # test_fullgrad_*, test_legrad_hand_values
    assert covered == set(METHODS)


def test_every_method_documents_formula_and_paper() -> None:
    for name, method in METHODS.items():
        assert method.fn.__doc__ and "=" in method.fn.__doc__, name
        assert any(str(y) in method.reference for y in range(2015, 2027)), name


def test_every_method_carries_report_metadata() -> None:
    squash = lambda t: " ".join(t.replace("`", "").split())  # noqa: E731
    for name, method in METHODS.items():
        assert method.title and method.description and method.cost, name
        assert "=" in method.formula and squash(method.formula) in squash(method.fn.__doc__ or "")
        info = method.info()
        assert info["formula"] == method.formula and info["title"] == method.title
        assert info["reference"] == method.reference and info["kind"] == method.kind
        if method.kind in ("perturbation", "backprop") or method.own_pass is not None:
            assert method.extra_forwards != 0, name
        else:
            assert method.extra_forwards == 0 and "no extra" in method.cost, name
    assert METHODS["gradcam"].title == "Grad-CAM"
    assert METHODS["scorecam"].extra_forwards == "K"


def test_register_refuses_a_formula_missing_from_the_docstring() -> None:
    from auditor.cam import register

    def _fn(ctx: object) -> torch.Tensor:
        """Doc without the formula: ``M = A``."""
        raise NotImplementedError

    deco = register(
        "_test_bad",
        needs_gradients=False,
        kind="activation",
        reference="X 2020",
        title="Bad",
        formula="M = B",
        description="d",
    )
    with pytest.raises(ValueError, match="formula"):
        deco(_fn)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="title"):
        register(
            "_test_bad",
            needs_gradients=False,
            kind="activation",
            reference="X 2020",
            title=" ",
            formula="M = A",
            description="d",
        )
    assert "_test_bad" not in METHODS


def test_compute_cams_upsamples_to_image_size() -> None:
    out = compute_cams(GapNet(), X, torch.tensor([0]), methods=("cam", "gradcam"), layer="relu")
    assert set(out) == {"cam", "gradcam"}
    assert out["cam"].shape == (1, 3, 3) and out["cam"].dtype == torch.float32
    torch.testing.assert_close(out["cam"][0], CAM_C0)
    big = torch.nn.functional.interpolate(X, size=(6, 6), mode="nearest")
    out = compute_cams(GapNet(), big, [0], methods=("cam",), layer="relu")
    assert out["cam"].shape == (1, 6, 6)
    assert float(out["cam"].min()) >= 0


# ----------------------------------------------------------------------------- parity methods

# FEM, A0 = [1,0,2,0,1,0,0,0,3]: mean 7/9, population std sqrt(15/9 - 49/81) = 1.031, threshold
# 2.84 -> only the 3 is above: w0 = 1/9; A1: mean 5/9, std sqrt(7/9 - 25/81) = 0.685,
# threshold 1.93 -> only the 2: w1 = 1/9.
GAP_CASES_PARITY = {
    # relu(G0 A0) + relu(G1 A1) with G0 = 1/9 > 0, G1 = -1/9 < 0
    "gradcam_elementwise": (0, A0 / 9),
    # GAP + linear: the Hessian is 0, ShapleyCAM = Grad-CAM
    "shapleycam": (0, CAM_C0 / 9),
    "fem": (0, (A0 + A1) / 9),
    # two classes: the only comparison is class 1, s = p1 (y0 - y1) / (p1 + 1e-9) ~= y0 - y1:
    # ds/dA_k = (W[0, k] - W[1, k]) / 9 = (0.5, -3) / 9
    "finercam": (0, (0.5 * A0 - 3 * A1).clamp_min(0) / 9),
}


@pytest.mark.parametrize("method", sorted(GAP_CASES_PARITY))
def test_gapnet_parity_hand_values(method: str) -> None:
    target, expected = GAP_CASES_PARITY[method]
    torch.testing.assert_close(run(GapNet(), method, target), expected, atol=1e-6, rtol=1e-5)


def test_gradcam_elementwise_flatnet_hand_values() -> None:
    # relu(G0*A0) = [[1,0,0],[0,0,0],[0,0,3]]; relu(G1*A1) = [[0,1,0],[0,1,0],[0,0,0]]
    expected = torch.tensor([[1.0, 1, 0], [0, 1, 0], [0, 0, 3]])
    torch.testing.assert_close(run(FlatNet(), "gradcam_elementwise", 0), expected)


class QuadNet(nn.Module):
    """y0 = sum_ij A0 A1 (a quadratic tail: the Hessian couples the two channels), y1 = sum A."""

    def __init__(self) -> None:
        super().__init__()
        _feature_block(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.conv(x))
        return torch.stack([(a[:, 0] * a[:, 1]).sum((1, 2)), a.sum((1, 2, 3))], dim=1)


def test_shapleycam_hessian_term_hand_values() -> None:
    # G = (A1, A0); H A = (A1, A0) as well (d/dA0 of G.A: the coupling term), so
    # G - 0.5 HA = (A1, A0) / 2: w0 = mean(A1)/2 = 5/18, w1 = mean(A0)/2 = 7/18
    expected = (5 * A0 + 7 * A1) / 18
    torch.testing.assert_close(run(QuadNet(), "shapleycam", 0), expected, atol=1e-6, rtol=1e-5)
    # Grad-CAM on the same capture: w = (5/9, 7/9), twice ShapleyCAM's
    torch.testing.assert_close(run(QuadNet(), "gradcam", 0), 2 * expected, atol=1e-6, rtol=1e-5)


def test_randomcam_is_seeded_relu_of_uniform_weights() -> None:
    for seed in (0, 3):
        w = torch.rand(1, 2, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        expected = (w[0, 0] * A0 + w[0, 1] * A1).clamp_min(0)
        with CamEngine(GapNet(), "relu", ("randomcam",), seed=seed) as engine:
            got = engine.run(X, torch.tensor([0])).cams["randomcam"][0]
        torch.testing.assert_close(got, expected)
    with pytest.raises(TypeError, match="seed"):
        CamEngine(GapNet(), "relu", ("randomcam",), seed="0")  # type: ignore[arg-type]


def test_kpcacam_matches_scikit_learn_kernel_pca() -> None:
    decomposition = pytest.importorskip("sklearn.decomposition")
    mat = torch.stack([A0, A1]).reshape(2, 9).T.double().numpy()
    mat = mat - mat.mean(0)
    proj = decomposition.KernelPCA(n_components=1, kernel="sigmoid").fit_transform(mat)[:, 0]
    proj_t = torch.from_numpy(proj).float().reshape(3, 3)
    ref = (A0 + A1) / 2
    if float(((proj_t - proj_t.mean()) * (ref - ref.mean())).sum()) < 0:
        proj_t = -proj_t
    torch.testing.assert_close(
        run(GapNet(), "kpcacam", 1), proj_t.clamp_min(0), atol=1e-5, rtol=1e-4
    )


def test_eigen_smooth_is_the_first_component_of_the_weighted_activations() -> None:
    # GapNet class 0, Grad-CAM: weighted activations (A0, -A1) / 9
    expected = pca_map(A0 / 9, -A1 / 9, (A0 - A1) / 9)
    torch.testing.assert_close(
        run(GapNet(), "gradcam", 0, eigen_smooth=True), expected, atol=1e-6, rtol=1e-4
    )
    # element-wise methods: the products G_k A_k (FlatNet, HiResCAM)
    expected = pca_map(A0 * G0, A1 * G1, A0 * G0 + A1 * G1)
    torch.testing.assert_close(
        run(FlatNet(), "hirescam", 0, eigen_smooth=True), expected, atol=1e-5, rtol=1e-4
    )
    with pytest.raises(ValueError, match="eigen_smooth"):
        CamEngine(GapNet(), "relu", ("eigencam",), eigen_smooth=True)


def _ill_conditioned_net(channels: int = 64) -> nn.Module:
    """Channels spanning 1e-30 .. 1e21: float32 Gram matrices overflow (eigh used to raise)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, 3),
    )
    with torch.no_grad():
        model[0].weight.mul_(torch.logspace(-30, 21, channels)[:, None, None, None])
    return model


def test_eigen_methods_survive_ill_conditioned_activations() -> None:
    model = _ill_conditioned_net()
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with CamEngine(model, "1", ("eigencam", "eigengradcam", "kpcacam")) as engine:
        batch = engine.run(x, torch.tensor([0, 1]))
    for method in ("eigencam", "eigengradcam"):
        cams = batch.cams[method]
        assert bool(torch.isfinite(cams).all()) and float(cams.amax()) > 0, method
        assert batch.status[method] == ["ok", "ok"], method
    # the same map as a float64 SVD of the centred activations (the definition)
    with torch.no_grad():
        acts = model[1](model[0](x)).double()
    mat = acts.flatten(2).transpose(1, 2)
    mat = mat - mat.mean(1, keepdim=True)
    u, svals, _ = torch.linalg.svd(mat, full_matrices=False)
    proj = (u[:, :, 0] * svals[:, :1]).reshape(2, 4, 4)
    ref = acts.mean(1)
    for i in range(2):
        p = (
            proj[i]
            if float(((proj[i] - proj[i].mean()) * (ref[i] - ref[i].mean())).sum()) >= 0
            else -proj[i]
        )
        got = batch.cams["eigencam"][i].double()
        torch.testing.assert_close(
            got / got.max(), p.clamp_min(0) / p.clamp_min(0).max(), atol=1e-4, rtol=1e-3
        )


def test_eigen_failure_is_a_per_sample_status(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: eigh never converges and the SVD fails for the first sample only."""
    real_svd = torch.linalg.svd
    calls = {"svd": 0}

    def bad_eigh(*_a: object, **_k: object) -> None:
        raise torch.linalg.LinAlgError("injected: failed to converge")

    def svd(m: torch.Tensor, *a: object, **k: object) -> object:
        calls["svd"] += 1
        if calls["svd"] == 1:
            raise torch.linalg.LinAlgError("injected: failed to converge")
        return real_svd(m, *a, **k)

    monkeypatch.setattr(torch.linalg, "eigh", bad_eigh)
    monkeypatch.setattr(torch.linalg, "svd", svd)
    images = torch.cat([X, X])
    with CamEngine(GapNet(), "relu", ("eigencam", "gradcam")) as engine:
        batch = engine.run(images, torch.tensor([0, 0]))
    assert batch.status["eigencam"] == ["method_failed", "ok"]
    assert batch.status["gradcam"] == ["ok", "ok"]
    assert float(batch.cams["eigencam"][0].abs().sum()) == 0
    torch.testing.assert_close(
        batch.cams["eigencam"][1], pca_map(A0, A1, (A0 + A1) / 2), atol=1e-5, rtol=1e-4
    )


# ----------------------------------------------------------------------------- extra passes


def test_smoothgradcam_pp_equals_gradcam_pp_when_gradients_ignore_the_noise() -> None:
    # GapNet: dy/dA = W / 9 whatever the input, so D_p = G^p and SmoothGrad-CAM++ = Grad-CAM++
    torch.testing.assert_close(run(GapNet(), "smoothgradcam++", 0), A0 * 9 / 25)


def test_smoothgradcam_pp_averages_noisy_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    # QuadNet y0 = sum A0 A1: G = (A1, A0) of the noisy input; with S noisy copies of X the
    # engine's seeded draws are replayed here: D_p = mean_s relu(X + e_s)^p (channel-swapped)
    monkeypatch.setattr(methods_module, "SMOOTHGRAD_SAMPLES", 2)
    gen = torch.Generator().manual_seed(0)
    noisy = [F.relu(X[0] + torch.randn(X.shape, generator=gen)[0] * 0.3) for _ in range(2)]
    grads = torch.stack([n.flip(0) for n in noisy])  # [S, K, 3, 3]: G0 = A1', G1 = A0'
    d1, d2, d3 = grads.mean(0), grads.pow(2).mean(0), grads.pow(3).mean(0)
    acts = torch.stack([A0, A1])
    denom = 2 * d2 + acts.sum((1, 2), keepdim=True) * d3
    alpha = torch.where(denom == 0, 0.0, d2 / torch.where(denom == 0, 1.0, denom))
    w = (alpha * F.relu(d1)).sum((1, 2))
    expected = (w[0] * A0 + w[1] * A1).clamp_min(0)
    torch.testing.assert_close(run(QuadNet(), "smoothgradcam++", 0), expected, atol=1e-5, rtol=1e-4)


# Score-CAM-style masks on GapNet (3x3 input = layer size: no interpolation):
# m0 = A0/3, m1 = A1/2; y0(X * m0) = (5 - 4/3)/9 = 11/27, y0(X * m1) = (2 - 3.5)/9 = -1/6,
# and y is positively homogeneous on X >= 0: y(c X m) = c y(X m).
S_MASKED = torch.tensor([11 / 27, -1 / 6])


def test_iscam_hand_values(monkeypatch: pytest.MonkeyPatch) -> None:
    # S = 2: c_1 = 1/2, c_2 = 1/2 + 1 = 3/2 -> mean coefficient 1: s = S_MASKED
    monkeypatch.setattr(methods_module, "ISCAM_SAMPLES", 2)
    w = torch.softmax(S_MASKED, 0)
    expected = w[0] * A0 + w[1] * A1
    torch.testing.assert_close(run(GapNet(), "iscam", 0), expected, atol=1e-6, rtol=1e-5)
    # S = 3: c = 1/3, 1, 2 -> mean 10/9
    monkeypatch.setattr(methods_module, "ISCAM_SAMPLES", 3)
    w = torch.softmax(S_MASKED * 10 / 9, 0)
    torch.testing.assert_close(
        run(GapNet(), "iscam", 0), w[0] * A0 + w[1] * A1, atol=1e-6, rtol=1e-5
    )


def test_sscam_hand_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(methods_module, "SSCAM_SAMPLES", 2)
    monkeypatch.setattr(methods_module, "SSCAM_STD", 0.0)  # no noise: Score-CAM on raw logits
    w = torch.softmax(S_MASKED, 0)
    torch.testing.assert_close(
        run(GapNet(), "sscam", 0), w[0] * A0 + w[1] * A1, atol=1e-6, rtol=1e-5
    )
    # with noise: y0(X * (m + e)) = sum relu(X (m + e)) . W[0] / 9, replayed from the seed
    monkeypatch.setattr(methods_module, "SSCAM_STD", 0.5)
    gen = torch.Generator().manual_seed(0)
    masks = torch.stack([A0 / 3, A1 / 2])
    scores = torch.zeros(2)
    for _ in range(2):  # one draw per sample for the whole chunk of (image, channel) masks
        eps = torch.randn(2, 1, 3, 3, generator=gen)[:, 0] * 0.5
        for k in range(2):
            a = F.relu(X[0] * (masks[k] + eps[k]))
            scores[k] += (a[0].sum() - a[1].sum()) / 9 / 2
    w = torch.softmax(scores, 0)
    torch.testing.assert_close(
        run(GapNet(), "sscam", 0), w[0] * A0 + w[1] * A1, atol=1e-5, rtol=1e-4
    )


def test_aug_smooth_hand_values() -> None:
    # GapNet Grad-CAM is positively homogeneous in X and equivariant to flips: every augmented
    # map, normalised and flipped back, is minmax(relu(A0 - A1)) = CAM_C0 / 2
    torch.testing.assert_close(run(GapNet(), "gradcam", 0, aug_smooth=True), CAM_C0 / 2)
    # an asymmetric case: FlatNet's map is not flip-equivariant, the average differs from it
    plain = run(FlatNet(), "hirescam", 0)
    smooth = run(FlatNet(), "hirescam", 0, aug_smooth=True)
    assert float(smooth.max()) <= 1 + 1e-6 and not torch.allclose(smooth, plain / plain.max())


def test_docs_method_table_lists_every_method() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "cam-engine.md").read_text()
    table = text.split("### Every method: cost and reference", 1)[1]
    for name in METHODS:
        assert f"| `{name}` |" in table, name


# ----------------------------------------------------------------------------- FullGrad


class FullGradNet(nn.Module):
    """1-channel 3x3 input -> conv1x1 (w = [2, -1], b = [1, -0.5]) -> flatten -> linear.

    No nonlinearity, so ``dy_0/dz_k = V_k`` with row 0 of the head ``(V0, V1) = (G0, G1)`` and
    ``dy_0/dx = 2 G0 - G1``; the head's bias (non-spatial) is not a FullGrad term.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.fc = nn.Linear(18, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([2.0, -1.0])[:, None, None, None])
            self.conv.bias.copy_(torch.tensor([1.0, -0.5]))
            self.fc.weight.zero_()
            self.fc.weight[0] = torch.cat([G0.flatten(), G1.flatten()])
            self.fc.weight[1, 0] = 1.0
            self.fc.bias.copy_(torch.tensor([5.0, -5.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


def test_fullgrad_hand_values() -> None:
    # x = A0; grad_x y_0 = 2 G0 - G1 = [[2,-1,0],[0,-3,0],[1,0,2]]
    # |grad_x * x| = [[2,0,0],[0,3,0],[0,0,6]] -> norm (/6): [[1/3,0,0],[0,1/2,0],[0,0,1]]
    # |G0 * 1| -> norm: [[1,0,0],[0,1,0],[0,0,1]];  |G1 * -0.5| -> norm: [[0,1,0],[0,1,0],[1,0,0]]
    # S = [[4/3,1,0],[0,5/2,0],[1,0,2]], min S = 0
    expected = torch.tensor([[4 / 3, 1.0, 0.0], [0.0, 2.5, 0.0], [1.0, 0.0, 2.0]])
    with CamEngine(FullGradNet(), "conv", ("fullgrad", "gradcam")) as engine:
        batch = engine.run(A0[None, None], torch.tensor([0]))
    assert batch.status["fullgrad"] == ["ok"]
    torch.testing.assert_close(batch.cams["fullgrad"][0], expected, atol=1e-5, rtol=1e-5)


def test_fullgrad_upsamples_each_resolution_bilinearly() -> None:
    # a stride-2 conv: its bias term is [2, 2] and upsampled to the 4x4 input (align_corners=False)
    class Strided(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 2, stride=2)
            self.fc = nn.Linear(4, 1)
            with torch.no_grad():
                self.conv.weight.fill_(1.0)
                self.conv.bias.fill_(2.0)
                self.fc.weight.copy_(torch.tensor([[1.0, -2.0, 0.0, 4.0]]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).flatten(1))

    x = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    # dy/dz = [[1,-2],[0,4]]; |dy/dz * 2| = [[2,4],[0,8]] -> norm [[1/4,1/2],[0,1]]
    low = torch.tensor([[0.25, 0.5], [0.0, 1.0]])
    # grad_x = dy/dz repeated over each 2x2 block (weights 1); |grad_x * x| normalised
    grad_x = torch.tensor([[1.0, -2.0], [0.0, 4.0]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    term = (grad_x * x[0, 0]).abs()
    term = term / term.max()
    up = F.interpolate(low[None, None], size=(4, 4), mode="bilinear", align_corners=False)[0, 0]
    expected = term + up
    expected = expected - expected.min()
    with CamEngine(Strided(), "conv", ("fullgrad",)) as engine:
        got = engine.run(x, torch.tensor([0])).cams["fullgrad"][0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _bn_net(inplace: bool) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(4, 4, 3, padding=1, stride=2),
        nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    bn = net[1]
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.3, -0.2, 0.1, 0.5]))
        bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.0, 1.5]))
        bn.bias.copy_(torch.tensor([0.2, 0.1, -0.3, 0.0]))
    return net


def test_fullgrad_bn_effective_bias_and_inplace_relu() -> None:
    # BatchNorm's term uses beta - mu gamma / sqrt(var + eps); in-place ReLUs after a layer
    # must not change the gradient read at its output
    from auditor.cam.fullgrad import _effective_bias

    net = _bn_net(False)
    bn = net[1]
    expected_b = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(_effective_bias(bn), expected_b.detach())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    maps = [
        compute_cams(_bn_net(inplace), x, [0, 2], methods=("fullgrad",), layer="3")["fullgrad"]
        for inplace in (False, True)
    ]
    torch.testing.assert_close(maps[0], maps[1])
    assert maps[0].shape == (2, 8, 8) and bool((maps[0] >= 0).all())


def test_fullgrad_multi_target_rows_match_single_targets() -> None:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    both = compute_cams(
        _bn_net(True), x, torch.tensor([[0, 1], [2, 0]]), methods=("fullgrad",), layer="3"
    )["fullgrad"]
    assert both.shape == (2, 2, 8, 8)
    for t in range(2):
        one = compute_cams(
            _bn_net(True), x, torch.tensor([[0, 1], [2, 0]])[:, t], methods=("fullgrad",), layer="3"
        )["fullgrad"]
        torch.testing.assert_close(both[:, t], one)


def test_fullgrad_refuses_models_it_cannot_explain() -> None:
    # no biased conv/BN layer: the map would be the input gradient alone
    with pytest.raises(ValueError, match="biased nn.Conv2d"):
        CamEngine(GapNet(), "relu", ("fullgrad",))

    class TinyViT(nn.Module):  # patch-embedding conv (biased) + attention over tokens
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, 8, 4, stride=4)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.patch(x).flatten(2).transpose(1, 2)
            return self.fc(self.attn(t, t, t)[0].mean(1))

    with pytest.raises(ValueError, match="transformer"):
        CamEngine(TinyViT(), "patch", ("fullgrad",))
    # a real (small) torchvision ViT, target layer and token reshape auto-detected
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    with pytest.raises(ValueError, match="fullgrad.*transformer"):
        compute_cams(vit, torch.randn(1, 3, 32, 32), [0], methods=("fullgrad",))
    # the other methods still work on it
    CamEngine(TinyViT(), "patch", ("gradcam",))

    class TinyMixer(nn.Module):  # patch embedding + LayerNorm + token MLPs, no attention
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, 8, 4, stride=4)
            self.norm = nn.LayerNorm(8)
            self.mlp = nn.Linear(8, 8)
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.patch(x).flatten(2).transpose(1, 2)
            return self.fc(self.mlp(self.norm(t)).mean(1))

    with pytest.raises(ValueError, match="patch embeddings"):
        CamEngine(TinyMixer(), "patch", ("fullgrad",))

    stats_free = nn.Sequential(
        nn.Conv2d(3, 2, 3),
        nn.BatchNorm2d(2, track_running_stats=False),
        nn.Flatten(),
        nn.LazyLinear(2),
    )
    with pytest.raises(ValueError, match="running statistics"):
        CamEngine(stats_free, "1", ("fullgrad",))

    # convolutional, but with normalisation biases FullGrad's conv/BN sum leaves out
    from torchvision.models import resnet18

    gn = resnet18(num_classes=3, norm_layer=lambda c: nn.GroupNorm(2, c))
    with pytest.raises(ValueError, match="GroupNorm/InstanceNorm layers \\(bn1, "):
        CamEngine(gn, "layer4", ("fullgrad",))
    CamEngine(gn, "layer4", ("gradcam",))  # the other methods still apply
    import timm

    convnext = timm.create_model("convnext_atto", pretrained=False, num_classes=3)
    with pytest.raises(ValueError, match="fullgrad.*LayerNorm"):
        compute_cams(convnext, torch.randn(1, 3, 64, 64), [0], methods=("fullgrad",))
    # without affine parameters there is no bias to miss: still accepted
    no_affine = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4, affine=False), nn.ReLU(), nn.Flatten(),
        nn.LazyLinear(2),
    )  # fmt: skip
    no_affine(torch.randn(1, 3, 8, 8))
    CamEngine(no_affine, "2", ("fullgrad",))


def test_fullgrad_pass_runs_only_when_requested(monkeypatch: pytest.MonkeyPatch) -> None:
    from auditor.cam import fullgrad as fullgrad_module

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("FullGrad's pass ran although it was not requested")

    monkeypatch.setattr(fullgrad_module, "fullgrad_terms", boom)
    net = _bn_net(True)
    added: list[nn.Module] = []
    original = nn.Module.register_forward_hook

    def counting(self: nn.Module, *a: object, **k: object) -> object:
        added.append(self)
        return original(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(nn.Module, "register_forward_hook", counting)
    x = torch.randn(1, 3, 8, 8)
    compute_cams(net, x, [0], methods=("gradcam", "gradcam++"), layer="3")
    assert all(m is net[3] for m in added)  # the target layer only: no hook on the bias layers


# ----------------------------------------------------------------------------- LeGrad


def _hand_vit() -> nn.Module:
    """1 block, 1 head, D = 2, tokens: class + a 1x3 patch grid (N = 4), fixed weights.

    Patch embedding, class token, both block norms' effect and the MLP are switched off so the
    tokens are the position embeddings ``x = [(0, 0), (1, 0), (0, 1), (1, 1)]``; ``W_v = I``,
    ``b_v = 0``, ``W_p = diag(1, -1)``, head ``w_0 = (2, 1)``, ``w_1 = (-1, -3)``. Queries and
    keys are random: the map must not depend on the attention values.
    """
    timm = pytest.importorskip("timm")
    torch.manual_seed(3)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=(4, 12),
        patch_size=4,
        embed_dim=2,
        depth=1,
        num_heads=1,
        mlp_ratio=1.0,
        num_classes=2,
        qkv_bias=True,
        global_pool="token",
    )
    blk = model.blocks[0]
    with torch.no_grad():
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
        model.cls_token.zero_()
        model.pos_embed.copy_(torch.tensor([[[0.0, 0], [1, 0], [0, 1], [1, 1]]]))
        blk.attn.qkv.weight[4:].copy_(torch.eye(2))
        blk.attn.qkv.bias[4:].zero_()
        blk.attn.proj.weight.copy_(torch.tensor([[1.0, 0], [0, -1]]))
        blk.mlp.fc2.weight.zero_()
        blk.mlp.fc2.bias.zero_()
        model.head.weight.copy_(torch.tensor([[2.0, 1], [-1, -3]]))
    blk.norm1 = nn.Identity()
    model.norm = nn.Identity()
    return model.eval()


def test_legrad_hand_values() -> None:
    # s = w_c . mean_i z_i + b, z_i = x_i + W_p sum_j A_ij v_j + b_p, so
    # ds/dA_ij = w_c . W_p v_j / N (the same for every query i; N = 4 tokens, one head, one
    # block): E_j = ReLU(w_c . W_p x_j) / 4. W_p x_j = (1, 0), (0, -1), (1, -1) for the patches:
    # class 0: (2, -1, 1) -> (0.5, 0, 0.25); class 1: (-1, 3, 2) -> (0, 0.75, 0.5)
    model = _hand_vit()
    images = torch.randn(2, 3, 4, 12)
    from auditor.cam import vit_reshape

    reshape = vit_reshape(1, grid=(1, 3))
    with CamEngine(model, "blocks.0.norm2", ("legrad",), reshape=reshape) as engine:
        batch = engine.run(images, torch.tensor([0, 1]))
    expected = torch.tensor([[[0.5, 0.0, 0.25]], [[0.0, 0.75, 0.5]]])
    torch.testing.assert_close(batch.cams["legrad"], expected, atol=1e-6, rtol=1e-5)
    assert batch.status["legrad"] == ["ok", "ok"]


def test_legrad_multi_target_equals_single_targets_and_restores_the_model() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=(16, 24),
        patch_size=8,
        depth=2,
        num_classes=4,
        reg_tokens=2,
    )
    model.train()
    model.blocks[1].eval()
    fused = [blk.attn.fused_attn for blk in model.blocks]
    flags = [m.training for m in model.modules()]
    images = torch.randn(3, 3, 16, 24)
    with torch.no_grad():
        logits = model.eval()(images)
    model.train()
    model.blocks[1].eval()
    both = compute_cams(model, images, torch.tensor([[0, 1], [2, 3], [1, 0]]), methods=("legrad",))
    one = compute_cams(model, images, [0, 2, 1], methods=("legrad",))["legrad"]
    torch.testing.assert_close(both["legrad"][:, 0], one)
    assert both["legrad"].shape == (3, 2, 16, 24) and float(one.amax()) > 0
    assert [blk.attn.fused_attn for blk in model.blocks] == fused
    assert [m.training for m in model.modules()] == flags
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), logits)  # the model computes as before


def test_legrad_restores_the_model_when_the_pass_fails() -> None:
    from auditor.cam.legrad import legrad_maps

    timm = pytest.importorskip("timm")
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8, depth=2, num_classes=3
    )
    fused = [blk.attn.fused_attn for blk in model.blocks]

    def boom(*_args: object) -> None:
        raise RuntimeError("head failed")

    handle = model.blocks[1].mlp.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="head failed"):
        legrad_maps(model, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    handle.remove()
    assert [blk.attn.fused_attn for blk in model.blocks] == fused
    assert model.training and torch.is_grad_enabled()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_legrad_torchvision_keeps_the_attention_output() -> None:
    import torchvision

    from auditor.cam.legrad import legrad_maps

    torch.manual_seed(1)
    model = torchvision.models.VisionTransformer(
        image_size=16,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        mlp_dim=16,
        num_classes=3,
    ).eval()
    nn.init.normal_(model.heads.head.weight)  # torchvision initialises the head to zero
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        logits = model(images)
    maps = legrad_maps(model, images, torch.tensor([0, 2]))
    assert maps.shape == (2, 2, 2) and bool((maps >= 0).all()) and float(maps.amax()) > 0
    with torch.no_grad():
        torch.testing.assert_close(model(images), logits)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not any("forward" in vars(m) for m in model.modules())  # the pass's forward is gone


@pytest.mark.parametrize("arch", ["resnet", "swin", "wrapped_vit", "map_pool"])
def test_legrad_refuses_unsupported_models(arch: str) -> None:
    import torchvision

    timm = pytest.importorskip("timm")
    if arch == "resnet":
        model: nn.Module = torchvision.models.resnet18(num_classes=3)
        reason = "no supported ViT attention blocks"
    elif arch == "swin":
        model = timm.create_model(
            "swin_tiny_patch4_window7_224",
            pretrained=False,
            img_size=28,
            window_size=7,
            embed_dim=12,
            depths=(1, 1),
            num_heads=(1, 1),
            num_classes=3,
        )
        reason = "no supported ViT attention blocks"
    elif arch == "wrapped_vit":
        vit = timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=16,
            patch_size=8,
            depth=1,
            num_classes=3,
        )
        model = nn.Sequential(nn.Identity(), vit)
        reason = "pass the ViT itself"
    else:
        model = timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=16,
            patch_size=8,
            depth=1,
            num_classes=3,
            global_pool="map",
        )
        reason = "attention pooling"
    with pytest.raises(ValueError, match=reason) as info:
        CamEngine(
            model,
            "0" if arch == "wrapped_vit" else None,
            ("gradcam", "legrad"),
            example=torch.randn(1, 3, 16, 16) if arch != "swin" else torch.randn(1, 3, 28, 28),
        )
    assert "`legrad` cannot run on" in str(info.value)


def test_fullgrad_is_not_fused_over_target_layers() -> None:
    # input-resolution maps do not depend on the target layer(s): not summed once per layer
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    one = compute_cams(_bn_net(True), x, [0, 1], methods=("fullgrad", "gradcam"), layer="3")
    two = compute_cams(_bn_net(True), x, [0, 1], methods=("fullgrad", "gradcam"), layer=["1", "3"])
    torch.testing.assert_close(one["fullgrad"], two["fullgrad"])
    assert not torch.allclose(one["gradcam"], two["gradcam"])  # the layer methods are fused


def test_legrad_is_not_fused_over_target_layers() -> None:
    # patch-grid maps do not depend on the target layer(s): not summed once per layer
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8, depth=2, num_classes=3
    )
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    kw = {"methods": ("legrad", "gradcam"), "reshape": "vit"}
    one = compute_cams(model, x, [0, 1], layer="blocks.1.norm1", **kw)
    two = compute_cams(model, x, [0, 1], layer=["blocks.0.norm1", "blocks.1.norm1"], **kw)
    torch.testing.assert_close(one["legrad"], two["legrad"])
    assert not torch.allclose(one["gradcam"], two["gradcam"])  # the layer methods are fused
