import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dyn.training import losses


def _maps(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_spectral_loss_zero_for_identical_maps():
    maps = [_maps(2, 8, 4, 4), _maps(2, 8, 4, 4, seed=1)]
    assert losses.spectral_loss(maps, [m.clone() for m in maps]).item() == 0.0


def test_spectral_loss_gradients_are_finite():
    student = [_maps(3, 8, 4, 4).requires_grad_(), _maps(3, 8, 4, 4, seed=1).requires_grad_()]
    teacher = [_maps(3, 16, 4, 4, seed=2), _maps(3, 16, 4, 4, seed=3)]
    loss = losses.spectral_loss(student, teacher)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert all(torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0 for s in student)


def _pool_loop(x, channels):
    # adaptive average pooling over channels by its definition: bin i covers [floor(i C / c), ceil((i+1) C / c))
    b, c, h, w = x.shape
    out = torch.zeros(b, channels, h, w, dtype=x.dtype)
    for i in range(channels):
        start, end = (i * c) // channels, -(-((i + 1) * c) // channels)
        out[:, i] = x[:, start:end].mean(dim=1)
    return out


@pytest.mark.parametrize("c_in, c_out", [(16, 8), (12, 5), (7, 7)])
def test_pool_channels_matches_loop(c_in, c_out):
    x = _maps(2, c_in, 3, 3)
    torch.testing.assert_close(losses.pool_channels(x, c_out), _pool_loop(x, c_out))


def _spectral_loop(student_maps, teacher_maps):
    total = 0.0
    for s, t in zip(student_maps, teacher_maps):
        t = _pool_loop(t, s.shape[1])
        h, w = s.shape[-2:]
        squared, count = 0.0, 0
        for b in range(s.shape[0]):
            for c in range(s.shape[1]):
                for u in range(h):
                    for v in range(w // 2 + 1):  # rfft2: the last axis keeps w // 2 + 1 frequencies
                        fs = ft = 0j
                        for y in range(h):
                            for x in range(w):
                                phase = complex(math.cos(-2 * math.pi * (u * y / h + v * x / w)),
                                                math.sin(-2 * math.pi * (u * y / h + v * x / w)))
                                fs += float(s[b, c, y, x]) * phase
                                ft += float(t[b, c, y, x]) * phase
                        fs, ft = fs / math.sqrt(h * w), ft / math.sqrt(h * w)  # orthonormal scaling
                        squared += (fs.real - ft.real) ** 2 + (fs.imag - ft.imag) ** 2
                        count += 2
        total += squared / count
    return total / len(student_maps)


def test_spectral_loss_matches_definition():
    student = [_maps(2, 3, 4, 3, seed=4), _maps(2, 3, 4, 3, seed=5)]
    teacher = [_maps(2, 6, 4, 3, seed=6), _maps(2, 7, 4, 3, seed=7)]  # wider teachers, pooled to 3 channels
    expected = _spectral_loop(student, teacher)
    assert losses.spectral_loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_spectral_loss_runs_in_float32_under_bfloat16():
    s, t = _maps(2, 4, 4, 4).bfloat16(), _maps(2, 8, 4, 4, seed=1).bfloat16()
    assert losses.spectral_loss([s], [t]).dtype == torch.float32


def _standardise(x, eps=1e-5):
    # BatchNorm2d in training mode by hand: each channel over (batch, y, x), biased variance
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def _projector_reference(student_maps, teacher_maps, linears):
    total = 0.0
    for s, t, linear in zip(student_maps, teacher_maps, linears):
        b, _, h, w = s.shape
        projected = torch.zeros(b, linear.weight.shape[0], h, w)
        for i in range(b):
            for y in range(h):
                for x in range(w):
                    projected[i, :, y, x] = linear.weight @ s[i, :, y, x] + linear.bias
        total = total + ((_standardise(projected) - _standardise(t)) ** 2).mean()
    return total / len(student_maps)


@pytest.mark.parametrize("student_channels, teacher_channels", [([6], [10]), ([6, 4], [10, 7])])
def test_projector_loss_matches_its_definition(student_channels, teacher_channels):
    # a per-position matrix product, batch-statistics standardisation of both sides, MSE; no FFT
    projector = losses.ChannelProjector(student_channels, teacher_channels)
    student = [_maps(3, c, 2, 3, seed=i) for i, c in enumerate(student_channels)]
    teacher = [_maps(3, c, 2, 3, seed=10 + i) for i, c in enumerate(teacher_channels)]
    got = losses.projector_loss(projector(student), teacher, projector.teacher_norms)
    with torch.no_grad():
        expected = _projector_reference(student, teacher, projector.maps)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_projector_pools_a_larger_teacher_grid_before_normalising():
    projector = losses.ChannelProjector([4], [6])
    student, teacher = _maps(2, 4, 2, 2), _maps(2, 6, 4, 4, seed=1)
    got = losses.projector_loss(projector([student]), [teacher], projector.teacher_norms)
    with torch.no_grad():
        expected = _projector_reference([student], [F.avg_pool2d(teacher, 2)], projector.maps)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("trainable", [False, True])
def test_projector_freezes_what_the_method_does_not_train_but_passes_gradients(trainable):
    projector = losses.ChannelProjector([4, 5], [8, 6], trainable=trainable)
    student = [_maps(2, 4, 3, 3).requires_grad_(), _maps(2, 5, 3, 3, seed=1).requires_grad_()]
    teacher = [_maps(2, 8, 3, 3, seed=2), _maps(2, 6, 3, 3, seed=3)]
    losses.projector_loss(projector(student), teacher, projector.teacher_norms).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    trained = {name for name, p in projector.named_parameters() if p.requires_grad}
    assert trained == ({f"{part}.{i}.{kind}" for part in ("maps", "student_norms") for i in (0, 1)
                        for kind in ("weight", "bias")} if trainable else set())
    for norm in [*projector.student_norms, *projector.teacher_norms]:  # affines start at identity
        assert (norm.weight == 1).all() and (norm.bias == 0).all()


def test_projector_loss_runs_in_float32_under_bfloat16_autocast():
    projector = losses.ChannelProjector([4], [6], trainable=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        projected = projector([_maps(2, 4, 3, 3)])
        loss = losses.projector_loss(projected, [_maps(2, 6, 3, 3, seed=1).bfloat16()], projector.teacher_norms)
    assert projected[0].dtype == loss.dtype == torch.float32 and math.isfinite(loss.item())


def test_projector_initialisation_is_pytorchs_default_from_the_seed():
    import timm

    from dyn.training.task import LayerDistillationTask

    teacher = timm.create_model("cait_digits").eval()

    def build(seed, method="projector"):
        torch.manual_seed(seed)
        student = timm.create_model("deit_digits")
        return LayerDistillationTask(student, teacher, [(0, 0), (7, 11)], method, beta=0.2, alpha=0.9,
                                     temperature=1.0, label_smoothing=0.0).projector()

    first, again, other = build(1), build(1), build(2)
    for a, b, c in zip(first.maps, again.maps, other.maps):
        torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
        assert not torch.equal(a.weight, c.weight)
    # the same draws as a plain nn.Linear made right after the student in the same stream
    torch.manual_seed(1)
    timm.create_model("deit_digits")
    reference = [torch.nn.Linear(32, 64), torch.nn.Linear(32, 64)]  # deit_digits 32 wide, cait_digits 64
    for linear, ref in zip(first.maps, reference):
        torch.testing.assert_close(linear.state_dict(), ref.state_dict(), rtol=0, atol=0)
    trained = build(1, "projector_trained")  # the variant draws the same initial projection
    torch.testing.assert_close(trained.state_dict(), first.state_dict(), rtol=0, atol=0)


def test_soft_kd_loss_matches_formula():
    s, t, temperature = _maps(4, 10), _maps(4, 10, seed=1), 2.0
    p_t = torch.softmax(t / temperature, dim=1)
    expected = (p_t * (p_t.log() - torch.log_softmax(s / temperature, dim=1))).sum() / 4 * temperature ** 2
    torch.testing.assert_close(losses.soft_kd_loss(s, t, temperature), expected)
    assert losses.soft_kd_loss(t, t, temperature).abs().item() < 1e-6


def _lowpass_loop(x, keep):
    """The translator by its definition: each position's channel DFT, frequencies above keep * C/2 (and
    their mirror images) zeroed, the inverse DFT."""
    b, c, h, w = x.shape
    out = torch.zeros(b, c, h, w, dtype=torch.float64)
    cut = math.ceil(keep * (c // 2))
    for i in range(b):
        for y in range(h):
            for z in range(w):
                v = [float(x[i, j, y, z]) for j in range(c)]
                spectrum = [sum(v[j] * complex(math.cos(2 * math.pi * k * j / c), -math.sin(2 * math.pi * k * j / c))
                                for j in range(c)) for k in range(c)]
                kept = [s if min(k, c - k) <= cut else 0 for k, s in enumerate(spectrum)]
                for j in range(c):
                    out[i, j, y, z] = sum(kept[k] * complex(math.cos(2 * math.pi * k * j / c),
                                                            math.sin(2 * math.pi * k * j / c)) for k in range(c)).real / c
    return out


@pytest.mark.parametrize("c, keep", [(16, 0.25), (12, 0.25), (9, 0.5), (8, 1.0)])
def test_lowpass_translator_matches_its_definition(c, keep):
    x = _maps(2, c, 2, 3)
    got = losses.lowpass_channels(x, keep)
    assert got.shape == x.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _lowpass_loop(x, keep), rtol=1e-4, atol=1e-5)


def test_lowpass_translator_keeps_a_smooth_map_and_keep_one_is_identity():
    channels = torch.arange(32, dtype=torch.float32)
    smooth = torch.cos(2 * math.pi * channels / 32)[None, :, None, None].expand(2, 32, 3, 3)  # k = 1 only
    torch.testing.assert_close(losses.lowpass_channels(smooth, 0.25), smooth, atol=1e-5, rtol=0)
    x = _maps(2, 32, 3, 3)
    torch.testing.assert_close(losses.lowpass_channels(x, 1.0), x, atol=1e-5, rtol=0)


def test_lowpass_method_is_spectralkd_against_the_translated_teacher():
    import timm

    import dyn.models  # noqa: F401
    from dyn.training.task import LayerDistillationTask, SharedTeacher

    torch.manual_seed(0)
    teacher = timm.create_model("cait_digits").eval()
    student = timm.create_model("deit_digits")
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    task = LayerDistillationTask(student, teacher, [(7, 11)], "lowpass", beta=0.2, alpha=0.9, temperature=1.0,
                                 label_smoothing=0.0, options={"lowpass_keep": 0.25}).train()
    teacher_out = SharedTeacher([task])(x)
    out = task(x, y, teacher_out)
    logits, maps = task.trainable_module(x)
    expected = losses.spectral_loss(maps, [losses.lowpass_channels(teacher_out.maps[11], 0.25)])
    torch.testing.assert_close(out["feat_loss"], expected)


def _low_rank_maps(b=6, c=12, h=3, w=3, rank=3, seed=0):
    """Maps whose channel vectors are a mean, plus `rank` strong directions, plus weak noise."""
    rng = np.random.default_rng(seed)
    mean, basis = rng.normal(size=c) * 3, rng.normal(size=(c, rank)) * 4
    vectors = mean + rng.normal(size=(b * h * w, rank)) @ basis.T + 0.05 * rng.normal(size=(b * h * w, c))
    return torch.from_numpy(vectors.reshape(b, h, w, c).transpose(0, 3, 1, 2).copy()).float()


def _pca_reference(x: np.ndarray, keep: float):
    """The translator by its definition with numpy: np.cov of the channel vectors of every position, the top
    max(1, ceil(keep C)) eigenvectors of np.linalg.eigh, and m + V V^T (x - m) at each position by loops."""
    b, c, h, w = x.shape
    vectors = x.transpose(0, 2, 3, 1).reshape(-1, c).astype(np.float64)
    mean, cov = vectors.mean(axis=0), np.cov(vectors, rowvar=False)
    values, vectors_ = np.linalg.eigh(cov)
    k = max(1, math.ceil(round(keep * c, 9)))
    top = vectors_[:, np.argsort(values)[::-1][:k]]
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(b):
        for y in range(h):
            for z in range(w):
                v = x[i, :, y, z].astype(np.float64)
                out[i, :, y, z] = mean + top @ (top.T @ (v - mean))
    return out, mean, top, np.sort(values)[::-1][:k].sum() / values.sum()


def _estimate(x, keep, batches=2):
    moments = losses.ChannelMoments()
    for part in torch.chunk(x, batches):  # streamed over batches, as over the teacher's
        moments.add(part)
    return losses.channel_pca(moments, keep)


@pytest.mark.parametrize("keep", [0.25, 0.1, 0.5])
def test_pca_translator_matches_a_numpy_reference(keep):
    x = _low_rank_maps()
    pca = _estimate(x, keep)
    want, mean, top, explained = _pca_reference(x.numpy(), keep)
    assert pca.components.shape == (12, max(1, math.ceil(keep * 12))) and pca.components.dtype == torch.float64
    np.testing.assert_allclose(pca.mean.numpy(), mean, rtol=0, atol=1e-6)
    # eigenvectors are defined up to sign: compare the projections V V^T
    np.testing.assert_allclose(pca.components.numpy() @ pca.components.numpy().T, top @ top.T, rtol=0, atol=1e-8)
    assert pca.explained == pytest.approx(explained, rel=1e-9)
    got = losses.pca_project(x, pca.mean, pca.components)
    assert got.shape == x.shape and got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5, atol=1e-4)
    if keep >= 0.25:  # 3 of 12 directions hold the low-rank structure: the map keeps it, loses only the noise
        assert (got - x).abs().max() < 0.5 and pca.explained > 0.99


def test_pca_translator_is_order_free_and_the_channel_lowpass_is_not():
    # Channel order is arbitrary (permute a layer's channels with the weights: the same network). Permuting
    # the channels of the data, and so of the estimate, permutes the PCA-translated map the same way; the
    # channel low-pass of a permuted map is not the permuted low-pass (it keeps another subspace).
    x = _low_rank_maps(c=16, seed=3)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    pca, pca_permuted = _estimate(x, 0.25), _estimate(x[:, perm], 0.25)
    torch.testing.assert_close(losses.pca_project(x[:, perm], pca_permuted.mean, pca_permuted.components),
                               losses.pca_project(x, pca.mean, pca.components)[:, perm], rtol=1e-4, atol=1e-4)
    assert pca_permuted.explained == pytest.approx(pca.explained, rel=1e-9)
    lowpass_permuted = losses.lowpass_channels(x[:, perm], 0.25)
    assert (lowpass_permuted - losses.lowpass_channels(x, 0.25)[:, perm]).abs().max() > 1.0


def test_pca_keep_one_gives_back_the_map_and_the_number_of_components():
    x = _low_rank_maps(c=10, seed=1)
    pca = _estimate(x, 1.0)
    assert pca.components.shape == (10, 10) and pca.explained == pytest.approx(1.0)
    torch.testing.assert_close(losses.pca_project(x, pca.mean, pca.components), x, rtol=0, atol=1e-4)
    assert [losses.pca_components(keep, 10) for keep in (0.3, 0.01, 0.25, 0.7, 1.0)] == [3, 1, 3, 7, 10]
    assert losses.pca_components(0.25, 64) == 16 and losses.pca_components(0.25, 384) == 96


def test_pca_method_is_spectralkd_against_the_projected_teacher():
    import timm

    import dyn.models  # noqa: F401
    from dyn.training.task import LayerDistillationTask, SharedTeacher

    torch.manual_seed(0)
    teacher = timm.create_model("cait_digits").eval()
    student = timm.create_model("deit_digits")
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    task = LayerDistillationTask(student, teacher, [(0, 0), (7, 11)], "pca", beta=0.2, alpha=0.9, temperature=1.0,
                                 label_smoothing=0.0, options={"pca_keep": 0.25}).train()
    shared = SharedTeacher([task])
    teacher_out = shared(x)
    with pytest.raises(RuntimeError, match="set_translators"):
        task(x, y, teacher_out)
    images = torch.randn(10, 1, 8, 8)
    estimates = shared.estimate_pca(images, [(0, 0.25), (11, 0.25)], batch_size=4, device=torch.device("cpu"))
    # the estimate sees the maps the shared forward gives the loss: the same normalisation path
    for layer in (0, 11):
        want = _estimate(shared.forward(images).maps[layer], 0.25, batches=1)
        torch.testing.assert_close(estimates[(layer, 0.25)].mean, want.mean, rtol=0, atol=1e-9)
        assert estimates[(layer, 0.25)].components.shape == (64, 16)
    task.set_translators({layer: estimates[(layer, 0.25)] for layer in (0, 11)}, images=10)
    out = task(x, y, teacher_out)
    logits, maps = task.trainable_module(x)
    expected = losses.spectral_loss(maps, [losses.pca_project(teacher_out.maps[t], *estimates[(t, 0.25)][:2])
                                           for t in (0, 11)])
    torch.testing.assert_close(out["feat_loss"], expected)
