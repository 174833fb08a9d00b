"""Batch augmentation, metrics and the torchvision shim."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kelpseg.metrics import Counts, best_threshold, dice
from kelpseg.train.augment import random_crop, random_dihedral


def test_dihedral_moves_image_and_mask_together_exactly() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 3, 8, 8)
    y = (x[:, :1] > 0).float()
    xa, ya = random_dihedral(x, y)
    assert torch.equal((xa[:, :1] > 0).float(), ya)  # same transform on both
    # every output is one of the 8 symmetries of its input, values untouched
    for i in range(32):
        cands = [torch.rot90(x[i], k, (1, 2)) for k in range(4)]
        cands += [c.flip(-1) for c in cands]
        assert any(torch.equal(xa[i], c) for c in cands)
    assert sum(not torch.equal(xa[i], x[i]) for i in range(32)) > 16  # per-sample draws


def test_random_crop_windows_per_sample() -> None:
    x = torch.arange(2 * 1 * 10 * 10, dtype=torch.float32).view(2, 1, 10, 10)
    x = x.repeat(1, 3, 1, 1)
    y = x[:, :1].clone()
    xc, yc = random_crop(x, y, 4)
    assert xc.shape == (2, 3, 4, 4) and yc.shape == (2, 1, 4, 4)
    assert torch.equal(xc[:, :1], yc)
    for i in range(2):  # a contiguous window of the input
        r0, c0 = divmod(int(xc[i, 0, 0, 0].item()) - i * 100, 10)
        assert torch.equal(xc[i, 0], x[i, 0, r0 : r0 + 4, c0 : c0 + 4])


def test_dice_counts_over_all_pixels() -> None:
    pred = np.array([[1, 1, 0, 0]])
    truth = np.array([[1, 0, 1, 0]])
    assert dice(pred, truth) == 0.5
    total = Counts.of(pred, truth) + Counts.of(np.zeros((1, 4)), np.zeros((1, 4)))
    assert total.scores()["dice"] == 0.5 and total.tn == 5


def test_best_threshold_from_histograms() -> None:
    edges = np.linspace(0, 1, 11)
    pos = np.zeros(11, int)
    neg = np.zeros(11, int)
    pos[7:] = 10  # kelp scores >= 0.7
    neg[:5] = 10
    neg[6] = 1
    t, d = best_threshold(pos, neg, edges)
    assert t == pytest.approx(0.7) and d == 1.0


def test_torchvision_shim_lets_smp_import() -> None:
    from kelpseg.compat import ensure_torchvision

    ensure_torchvision()
    ensure_torchvision()  # idempotent
    import segmentation_models_pytorch as smp
    import torchvision  # noqa: F401

    net = smp.Unet("resnet18", encoder_weights=None, in_channels=4, classes=1)
    assert net(torch.zeros(1, 4, 64, 64)).shape == (1, 1, 64, 64)
