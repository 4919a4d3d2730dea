"""Task losses, survival discretisation and the gene-guided consistency loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ksmodel.losses import (
    class_weights,
    classification_loss,
    consistency_loss,
    consistency_total,
    discretise,
    survival_bin_edges,
    survival_nll,
    survival_risk,
)
from ksmodel.model import KSOutput


def test_class_weights_inverse_frequency_and_absent_class():
    w = class_weights([0, 0, 0, 1, 2, 2], 4)
    torch.testing.assert_close(w, torch.tensor([6 / 12, 6 / 4, 6 / 8, 0.0]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\]"):
        class_weights([0, 4], 4)


def test_classification_loss_is_weighted_cross_entropy():
    logits, label = torch.randn(7, 3), torch.tensor([0, 1, 2, 2, 1, 0, 0])
    w = class_weights(label, 3)
    torch.testing.assert_close(classification_loss(logits, label, w),
                               F.cross_entropy(logits, label, weight=w))
    torch.testing.assert_close(classification_loss(logits, label), F.cross_entropy(logits, label))


def test_survival_bins_are_quartiles_of_event_times():
    time = np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 100, 200])
    event = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    edges = survival_bin_edges(time, event, n_bins=4)
    np.testing.assert_allclose(edges[1:-1], np.quantile(time[:8], [0.25, 0.5, 0.75]))
    assert edges[0] == -np.inf and edges[-1] == np.inf
    bins = discretise(time, edges)
    assert bins.dtype == torch.long
    assert bins.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]
    # boundary goes to the upper bin; values outside the training range still get a bin
    assert discretise([edges[1], -5.0, 1e9], edges).tolist() == [1, 0, 3]
    # no event at all: quantiles of every time
    np.testing.assert_allclose(survival_bin_edges(time, np.zeros(10), 2)[1], np.median(time))


def _mcat_nll(hazards, y, c, eps=1e-7):
    """MCAT's nll_loss (alpha = 0), written as in the original code."""
    s = torch.cumprod(1 - hazards, dim=1)
    s_pad = torch.cat([torch.ones_like(c), s], 1)
    unc = -(1 - c) * (torch.log(torch.gather(s_pad, 1, y).clamp(min=eps))
                      + torch.log(torch.gather(hazards, 1, y).clamp(min=eps)))
    cen = -c * torch.log(torch.gather(s_pad, 1, y + 1).clamp(min=eps))
    return (cen + unc).mean()


def test_survival_nll_matches_mcat_and_uses_censoring():
    torch.manual_seed(0)
    logits = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (16,))
    event = torch.randint(0, 2, (16,))
    want = _mcat_nll(torch.sigmoid(logits), y.view(-1, 1), (1 - event).view(-1, 1).double())
    torch.testing.assert_close(survival_nll(logits, y, event), want)
    # a censored patient in the last bin only needs to survive all bins: raising every hazard
    # increases the loss; an event in bin 0 wants a high hazard there
    base = torch.zeros(1, 4)
    assert survival_nll(base + 1, torch.tensor([3]), torch.tensor([0])) > \
        survival_nll(base, torch.tensor([3]), torch.tensor([0]))
    assert survival_nll(base + 1, torch.tensor([0]), torch.tensor([1])) < \
        survival_nll(base, torch.tensor([0]), torch.tensor([1]))
    extreme = torch.tensor([[60.0, -60, 60, -60]], requires_grad=True)
    loss = survival_nll(extreme, torch.tensor([1]), torch.tensor([1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(extreme.grad).all()


def test_survival_risk_is_minus_sum_of_survival():
    logits = torch.randn(5, 4)
    s = torch.cumprod(1 - torch.sigmoid(logits), dim=1)
    torch.testing.assert_close(survival_risk(logits), -s.sum(1))
    # higher hazards -> higher risk
    assert survival_risk(torch.full((1, 4), 2.0)) > survival_risk(torch.full((1, 4), -2.0))


def _cos_gram(x):
    x = F.normalize(x, dim=-1)
    return x @ x.T


def test_consistency_zero_when_grams_agree_and_grows_with_disagreement():
    torch.manual_seed(0)
    b, g, h, w = 5, 3, 2, 2
    base = torch.randn(b, h * w * 2)
    vgrid = base[:, None].expand(b, g, -1).reshape(b, g, h, w, 2).contiguous()
    assert consistency_loss(base * 3.0, vgrid).item() == pytest.approx(0.0, abs=1e-6)
    losses = []
    for eps in (0.0, 0.3, 1.0, 3.0):
        gene = base + eps * torch.randn(b, h * w * 2, generator=torch.Generator().manual_seed(1))
        losses.append(consistency_loss(gene, vgrid).item())
    assert all(a < b_ for a, b_ in zip(losses, losses[1:], strict=False))


def test_consistency_is_per_group_across_patients():
    """Oracle: explicit loop over offset groups (the original's reshape mixed groups/patients)."""
    torch.manual_seed(1)
    gene, vgrid = torch.randn(4, 8), torch.randn(4, 3, 2, 3, 2)
    grams = [_cos_gram(vgrid[:, k].reshape(4, -1)) for k in range(3)]
    want = ((_cos_gram(gene) - torch.stack(grams).mean(0)) ** 2).sum() / 4
    torch.testing.assert_close(consistency_loss(gene, vgrid), want)


def test_consistency_zero_for_one_patient_and_differentiable():
    assert consistency_loss(torch.randn(1, 4), torch.randn(1, 2, 2, 2, 2)).item() == 0.0
    gene = torch.randn(3, 4, requires_grad=True)
    vgrid = torch.randn(3, 2, 2, 2, 2, requires_grad=True)
    consistency_loss(gene, vgrid).backward()
    assert gene.grad.abs().sum() > 0 and vgrid.grad.abs().sum() > 0


def test_consistency_total_weights_the_subspaces_with_alpha():
    torch.manual_seed(2)
    e_t, e_m, v_t, v_m = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 2, 1, 2, 2), \
        torch.randn(3, 2, 1, 2, 2)
    out = KSOutput(torch.zeros(3, 2), None, None, (e_t, e_m), (v_t, v_m))
    lt, lm = consistency_loss(e_t, v_t), consistency_loss(e_m, v_m)
    torch.testing.assert_close(consistency_total(out, 0.3), 0.3 * lt + 0.7 * lm)
    torch.testing.assert_close(consistency_total(out, 1.0), lt)
    single = KSOutput(torch.zeros(3, 2), None, None, (e_t,), (v_t,))
    torch.testing.assert_close(consistency_total(single, 0.3), lt)
