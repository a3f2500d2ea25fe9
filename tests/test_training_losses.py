import pytest
import torch

from ssfeat.training.losses import histogram_alignment_loss, mode_agreement_loss, shared_bins, shift_histogram


def test_shift_integer_equals_roll_and_full_turn_is_identity():
    p = torch.softmax(torch.randn(5, 36), -1)
    assert torch.allclose(shift_histogram(p, torch.full((5,), 7.0), True), torch.roll(p, 7, -1))
    assert torch.allclose(shift_histogram(p, torch.full((5,), 36.0), True), p)


def test_shift_round_trips_and_keeps_mass():
    p = torch.softmax(torch.randn(4, 36), -1)
    s = torch.tensor([3.0, -5.0, 12.0, 0.0])
    assert torch.allclose(shift_histogram(shift_histogram(p, s, True), -s, True), p, atol=1e-6)
    frac = shift_histogram(p, torch.tensor([0.25, 1.5, -2.75, 10.1]), True)
    assert torch.allclose(frac.sum(-1), torch.ones(4), atol=1e-6)
    # a one-hot shifted by half a bin splits evenly between the two neighbours
    one = torch.zeros(1, 36)
    one[0, 3] = 1
    h = shift_histogram(one, torch.tensor([0.5]), True)
    assert torch.allclose(h[0, 3:5], torch.tensor([0.5, 0.5]))


def test_scale_shift_drops_mass_past_the_ends():
    p = torch.zeros(1, 13)
    p[0, 11] = 1.0
    assert shift_histogram(p, torch.tensor([3.0]), False).sum() == 0
    m = shared_bins(torch.tensor([2.0, -1.5]), 13)
    assert m[0].tolist() == [False] * 2 + [True] * 11
    assert m[1].tolist() == [True] * 11 + [False] * 2


def _sharp(idx, K, B=1):
    z = torch.full((B, K), -40.0)
    z[torch.arange(B), idx] = 40.0
    return z


def test_loss_is_zero_for_perfectly_shifted_histograms_and_large_otherwise():
    z0, z1 = _sharp(torch.tensor([3, 30]), 36, 2), _sharp(torch.tensor([12, 3]), 36, 2)
    good = histogram_alignment_loss(z0, z1, torch.tensor([9.0, 9.0]), circular=True)  # 30 + 9 wraps to 3
    bad = histogram_alignment_loss(z0, z1, torch.tensor([8.0, 9.0]), circular=True)
    assert good < 1e-4 and bad > 5
    s0, s1 = _sharp(torch.tensor([6]), 13), _sharp(torch.tensor([9]), 13)
    assert histogram_alignment_loss(s0, s1, torch.tensor([3.0]), circular=False) < 1e-4
    assert histogram_alignment_loss(s0, s1, torch.tensor([-3.0]), circular=False) > 5


def test_mode_agreement_targets_the_other_views_strongest_bin():
    """Histogram alignment barely tells apart two views whose two near-equal modes swap rank; the
    mode term doubles, and its gradient raises the other view's shifted strongest bin."""
    two = torch.full((1, 13), -40.0)
    two[0, [3, 8]] = 40.0
    a, b = two.clone(), two.clone()
    a[0, 3] += 0.5  # view 0 prefers bin 3, view 1 (shifted by 2) prefers bin 10
    b[0, 8] += 0.5
    shift = torch.tensor([2.0])
    b = torch.roll(b, 2, -1)
    aligned = torch.roll(a, 2, -1)
    swapped, agreed = (histogram_alignment_loss(a, z, shift, circular=False) for z in (b, aligned))
    assert swapped < 1.25 * agreed
    assert mode_agreement_loss(a, b, shift, circular=False) > 1.8 * mode_agreement_loss(a, aligned, shift, False)
    assert mode_agreement_loss(_sharp(torch.tensor([4]), 13), _sharp(torch.tensor([6]), 13), shift, False) < 1e-4
    z1 = torch.zeros(1, 13, requires_grad=True)
    mode_agreement_loss(_sharp(torch.tensor([4]), 13), z1, torch.tensor([2.5]), circular=False).backward()
    assert z1.grad[0, 6] < 0 and z1.grad[0, 7] < 0 and (z1.grad[0, [0, 1, 2, 3, 4, 5, 8, 9]] > 0).all()


@pytest.mark.slow
def test_best_constant_scale_histogram_is_central_with_full_mode():
    """The input-independent optimum of the "full" scale loss is central; of "shared" (paper Eq. 4)
    it sits on the edges (the degenerate solution that training got stuck in)."""
    shifts = torch.linspace(-6, 6, 49)
    centre_of_mass = {}
    for mode in ("full", "shared"):
        z = torch.zeros(13, requires_grad=True)
        opt = torch.optim.Adam([z], lr=0.05)
        for _ in range(400):
            zz = 12 * torch.nn.functional.normalize(z - z.mean(), dim=-1).expand(len(shifts), 13)
            loss = histogram_alignment_loss(zz, zz, shifts, circular=False, scale_mode=mode)
            opt.zero_grad()
            loss.backward()
            opt.step()
        p = torch.softmax(zz[0], -1)
        centre_of_mass[mode] = (p * (torch.arange(13) - 6).abs()).sum().item()
    assert centre_of_mass["full"] < 3 < centre_of_mass["shared"]


def test_loss_gradients_are_finite():
    z0 = torch.randn(8, 13, requires_grad=True)
    z1 = torch.randn(8, 13, requires_grad=True)
    loss = histogram_alignment_loss(z0, z1, torch.linspace(-6, 6, 8), circular=False)
    loss.backward()
    assert torch.isfinite(z0.grad).all() and torch.isfinite(z1.grad).all() and z0.grad.abs().sum() > 0


def test_fractional_shift_gradcheck():
    p = torch.rand(2, 8, dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.3, -1.7], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: shift_histogram(x, s, True), (p,))


def test_scale_shift_round_trips_while_the_mass_stays_in_range():
    """Zero-filled (scale) shifts: while no mass is pushed past either end, +k then -k bins gives the
    histogram back, keeps its mass and equals the circular shift; fractional shifts keep the mass too."""
    K = 13
    p = torch.zeros(4, K)
    p[:, 4:9] = torch.softmax(torch.randn(4, 5), -1)  # mass on bins 4..8
    k = torch.tensor([4.0, -4.0, 2.0, -3.0])  # at most 4 bins either way: still inside 0..12
    there = shift_histogram(p, k, False)
    assert torch.allclose(there, shift_histogram(p, k, True)) and torch.allclose(there.sum(-1), torch.ones(4))
    assert torch.allclose(shift_histogram(there, -k, False), p)
    frac = torch.tensor([3.5, -3.25, 0.75, -0.5])
    assert torch.allclose(shift_histogram(p, frac, False).sum(-1), torch.ones(4), atol=1e-6)
    # one bin further and the mass past the end is dropped: the way back cannot restore it
    back = shift_histogram(shift_histogram(p, k + k.sign(), False), -(k + k.sign()), False)
    assert (back.sum(-1)[:2] < 1 - 1e-3).all()


def test_scale_loss_is_zero_for_perfectly_shifted_pairs_in_both_modes():
    src = torch.tensor([6, 2, 10, 0, 12])
    shift = torch.tensor([3.0, 5.0, -4.0, 0.0, -12.0])
    z0, z1 = _sharp(src, 13, 5), _sharp(src + shift.long(), 13, 5)
    for mode in ("full", "shared"):
        for symmetric in (True, False):
            kw = {"circular": False, "scale_mode": mode, "symmetric": symmetric}
            assert histogram_alignment_loss(z0, z1, shift, **kw) < 1e-4, (mode, symmetric)
            assert histogram_alignment_loss(z0, z1, shift + 1, **kw) > 5, (mode, symmetric)
