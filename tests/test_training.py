"""The training recipe: every config option on tiny in-memory data, checked for its behaviour."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kelpseg.compat import ensure_torchvision

ensure_torchvision()

import segmentation_models_pytorch as smp  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from kelpseg.config import ConfigError, TrainConfig, load_config  # noqa: E402
from kelpseg.data.cache import PackedTiles  # noqa: E402
from kelpseg.data.dataset import (  # noqa: E402
    EpochWeightedSampler,
    PackedDataset,
    keep_batch,
    make_sampler,
    tile_weights,
)
from kelpseg.features.indices import WINNING_17  # noqa: E402
from kelpseg.features.pipeline import FeatureBuilder  # noqa: E402
from kelpseg.train.augment import augment_batch, random_rotate, step_generator  # noqa: E402
from kelpseg.train.fit import FoldResult  # noqa: E402
from kelpseg.train.losses import LOSSES, WeightedLoss  # noqa: E402
from kelpseg.train.model import build_model  # noqa: E402
from kelpseg.train.module import KelpSegModule  # noqa: E402
from kelpseg.train.optim import build_optimizer, build_scheduler  # noqa: E402
from tests.tiles import packed_folds  # noqa: E402

SMALL_NET = ["model.encoder=tu-mobilenetv3_small_050", "model.decoder_channels=[16,16,16,8,8]"]


# ---------------------------------------------------------------- data and sampler


@pytest.fixture(scope="module")
def tiny() -> tuple[PackedTiles, pd.DataFrame]:
    """16 in-memory 64 px tiles in 2 folds; the odd ones carry kelp."""
    return packed_folds(16)


def test_sampler_draws_tiles_in_proportion_to_their_weights(tiny) -> None:
    _, tiles = tiny
    factors = TrainConfig().sampler_weights
    w = tile_weights(tiles, factors)
    kelp = tiles["has_kelp"].to_numpy()
    assert (w[kelp] > w[~kelp]).all()  # has_kelp 3.0 dominates
    sampler = make_sampler(tiles, factors, 40_000, seed=1)
    counts = np.bincount(list(sampler), minlength=len(tiles)) / 40_000
    np.testing.assert_allclose(counts, w / w.sum(), atol=0.01)
    assert counts[kelp].sum() > 0.9


def test_sampler_epochs_are_reproducible_and_resumable() -> None:
    w = np.linspace(0.1, 1.0, 10)
    running = EpochWeightedSampler(w, 50, seed=7)
    epochs = []
    for e in range(3):
        running.set_epoch(e)
        epochs.append(list(running))
    assert epochs[0] != epochs[1]
    fresh = EpochWeightedSampler(w, 50, seed=7)  # e.g. a process resumed at epoch 2
    fresh.set_epoch(2)
    assert list(fresh) == epochs[2]
    auto = EpochWeightedSampler(w, 50, seed=7)  # without set_epoch: moves on by itself
    assert [list(auto) for _ in range(3)] == epochs


def test_sampler_is_sharded_by_lightnings_ddp_wrapper() -> None:
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    sampler = EpochWeightedSampler(np.ones(20), 40, seed=3)
    shards = []
    for rank in range(2):
        wrapped = DistributedSamplerWrapper(sampler, num_replicas=2, rank=rank, shuffle=False)
        wrapped.set_epoch(4)
        shards.append(list(wrapped))
    sampler.set_epoch(4)
    full = list(sampler)
    assert len(shards[0]) == len(shards[1]) == 20
    assert sorted(shards[0] + shards[1]) == sorted(full)  # every draw once, across ranks


def test_dataset_reads_whole_batches_in_sampler_order(tiny) -> None:
    packed, tiles = tiny
    ds = PackedDataset(packed, np.arange(len(tiles)))
    dl = DataLoader(ds, batch_size=5, sampler=[7, 2, 2, 9, 0], collate_fn=keep_batch)
    raw, mask = next(iter(dl))
    assert raw.dtype == torch.int16 and raw.shape == (5, 7, 64, 64)
    assert torch.equal(raw, torch.from_numpy(packed.images[[7, 2, 2, 9, 0]]))
    assert torch.equal(mask, torch.from_numpy(packed.masks[[7, 2, 2, 9, 0]]))


def test_datamodule_trains_without_excluded_tiles_and_validates_on_all(tiny) -> None:
    from kelpseg.data.datamodule import KelpDataModule

    packed, tiles = tiny
    excluded = {"T00", "T03", "T05"}  # T03 is in fold 1, T00 and T05 in fold 0
    tiles = tiles.assign(excluded=tiles["tile_id"].isin(excluded))
    cfg = load_config("tiny", ["train.samples_per_epoch=400", "train.batch_size=8"])
    dm = KelpDataModule(cfg, packed, tiles, fold=0)
    fold1 = set(tiles.loc[tiles["fold"] == 1, "tile_id"])
    fold0 = tiles.loc[tiles["fold"] == 0, "tile_id"].tolist()
    assert set(dm.train_tiles["tile_id"]) == fold1 - {"T03"}
    assert dm.val_tiles["tile_id"].tolist() == fold0  # T00 and T05 are still validated on
    drawn = {packed.tile_ids[r] for r in dm.train_rows[list(dm.train_dataloader().sampler)]}
    assert drawn <= fold1 - {"T03"} and {"T07", "T11", "T15"} <= drawn  # never T03
    val = torch.cat([m for _, m in dm.val_dataloader()])
    assert torch.equal(val, torch.from_numpy(packed.masks[packed.row(fold0)]))
    assert dm.steps_per_epoch == 50
    raw, _ = dm.preview_batch(2)
    assert torch.equal(raw, torch.from_numpy(packed.images[[1, 5]]))  # fold 0's kelp tiles
    rows = packed.row(sorted(fold1 - {"T03"}))
    sample = dm.normalization_sample(pixels=64)
    assert sample.shape == (1, 7, 1, 7 * 64)
    assert np.isin(sample[0, 6, 0].numpy(), np.unique(packed.images[rows, 6])).all()


# ---------------------------------------------------------------- features and normalization


def _raw(seed: int = 0, b: int = 4, size: int = 24) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    raw = rng.integers(6000, 20000, size=(b, 7, size, size)).astype(np.int16)
    raw[:, 5] = rng.random((b, size, size)) < 0.1
    raw[:, 6] = rng.integers(-5, 50, size=(b, size, size))
    return torch.from_numpy(raw)


def test_band_selection_and_order() -> None:
    raw = _raw()
    order = ["Red", "Green", "Blue", "SWIR1", "NIR", "QA", "DEM"]
    fb = FeatureBuilder(["NDVI"], bands=order, normalize="none")
    feats = fb.raw_features(raw)
    assert fb.channel_names == [*order, "NDVI"] and feats.shape[1] == 8
    for i, row in enumerate([2, 3, 4, 0, 1, 5, 6]):
        assert torch.equal(feats[:, i], raw[:, row].float())
    assert FeatureBuilder([], bands=["NIR"]).num_channels == 1


def test_zscore_gives_zero_mean_unit_std_on_the_fit_data() -> None:
    raw = _raw(1)
    fb = FeatureBuilder(["NDVI", "AVI"], normalize="zscore")
    fb.fit_bounds(raw)
    x = fb(raw).transpose(0, 1).reshape(9, -1).double()
    np.testing.assert_allclose(x.mean(1).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.std(1, correction=0).numpy(), 1.0, atol=1e-4)


def test_minmax_spans_zero_to_one_on_the_fit_data() -> None:
    raw = _raw(2)
    fb = FeatureBuilder(list(WINNING_17), normalize="minmax")
    fb.fit_bounds(raw)
    x = fb(raw).transpose(0, 1).reshape(fb.num_channels, -1)
    varying = fb.q_high - fb.q_low != 1  # constant channels keep (lo, lo + 1)
    torch.testing.assert_close(x.amin(1)[varying], torch.zeros(int(varying.sum())))
    torch.testing.assert_close(x.amax(1)[varying], torch.ones(int(varying.sum())))


@pytest.mark.parametrize("mode", ["sample_minmax", "sample_quantile"])
def test_per_sample_modes_ignore_the_other_samples(mode: str) -> None:
    raw = _raw(3)
    raw[2, :5] //= 2  # a much darker sample
    fb = FeatureBuilder(["NDVI", "MVI"], normalize=mode, quantiles=(0.05, 0.95))
    batch = fb(raw)
    for i in range(len(raw)):
        torch.testing.assert_close(batch[i : i + 1], fb(raw[i : i + 1]))
    x = batch.flatten(-2)
    assert x.min() >= 0 and (x.amin(-1)[:, :5] <= 1e-6).all()  # every sample reaches 0
    if mode == "sample_minmax":
        assert (x.amax(-1)[:, :5] >= 1 - 1e-6).all()
    else:
        q = torch.quantile(raw[0, 1].double().flatten(), torch.tensor([0.05, 0.95]).double())
        expected = ((raw[0, 1].double() - q[0]) / (q[1] - q[0])).clamp(0, 1)
        torch.testing.assert_close(batch[0, 1].double(), expected, atol=1e-4, rtol=0)


def test_stats_from_water_pixels_only() -> None:
    raw = _raw(4)
    raw[:, 6, :, 12:] = 0  # water on the right
    raw[:, 6, :, :12] = 40
    raw[:, 1, :, :12] = 30000  # bright land NIR must not enter the statistics
    fb = FeatureBuilder([], normalize="zscore", stats_pixels="water")
    fb.fit_bounds(raw)
    water_nir = raw[:, 1, :, 12:].double()
    assert fb.q_low[1].item() == pytest.approx(water_nir.mean().item(), rel=1e-5)
    x = fb(raw)[:, 1, :, 12:].double()
    assert abs(x.mean().item()) < 1e-4 and x.std(correction=0).item() == pytest.approx(1, rel=1e-3)


@pytest.mark.parametrize("fill", ["min", -1.0])
def test_missing_pixel_fill(fill: str | float) -> None:
    raw = _raw(5)
    raw[0, :5, :3, :3] = -32768
    fb = FeatureBuilder(["NDVI"], fill=fill)
    fb.fit_bounds(raw)
    x = fb(raw)
    assert torch.isfinite(x).all()
    expected = 0.0 if fill == "min" else fill  # min -> the lowest value -> 0 after clipping
    assert (x[0, :5, :3, :3] == expected).all() and (x[0, -1, :3, :3] == expected).all()


# ---------------------------------------------------------------- augmentation


def test_rotation_keeps_image_and_mask_aligned() -> None:
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    blobs = [((yy - cy) ** 2 + (xx - cx) ** 2 < r**2) for cy, cx, r in [(15, 20, 7), (32, 30, 9)]]
    mask = (blobs[0] | blobs[1]).float()[None, None].repeat(8, 1, 1, 1)
    img = torch.cat([mask, torch.rand(8, 2, 48, 48)], dim=1)
    xr, yr, angles = random_rotate(img, mask, 90.0, torch.Generator().manual_seed(0))
    assert (angles.abs() <= 90).all() and angles.std() > 10  # one angle per sample
    assert set(yr.unique().tolist()) <= {0.0, 1.0}  # nearest keeps the mask binary
    agree = ((xr[:, 0] > 0.5) == (yr[:, 0] > 0.5)).float().mean()
    assert agree > 0.98
    assert not torch.equal(yr, mask)


def test_augmentation_is_seeded_and_optional() -> None:
    x, y = torch.rand(4, 3, 16, 16), (torch.rand(4, 1, 16, 16) > 0.5).float()
    a = augment_batch(x, y, rotate_degrees=30, generator=step_generator(1, 2, 3))
    b = augment_batch(x, y, rotate_degrees=30, generator=step_generator(1, 2, 3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = augment_batch(x, y, rotate_degrees=30, generator=step_generator(1, 2, 4))
    assert not torch.equal(a[0], c[0])
    same = augment_batch(x, y, flips=False, generator=step_generator(0))
    assert torch.equal(same[0], x) and torch.equal(same[1], y)


# ---------------------------------------------------------------- models


@pytest.mark.parametrize(
    ("arch", "size"),
    [
        ("Unet", 70),
        ("UnetPlusPlus", 70),
        ("MAnet", 70),
        ("Linknet", 70),
        ("FPN", 70),
        ("PSPNet", 70),
        ("DeepLabV3", 70),
        ("DeepLabV3Plus", 70),
        ("PAN", 130),
        ("UPerNet", 70),
        ("Segformer", 70),
        ("DPT", 70),
    ],
)
def test_every_smp_architecture_pads_to_its_encoder_multiple(arch: str, size: int) -> None:
    cfg = load_config("tiny", [*SMALL_NET, f"model.arch={arch}", "model.decoder_channels=null"])
    module = KelpSegModule(cfg.model_dump(mode="json")).eval()
    assert module.divisor == module.net.encoder.output_stride
    raw = torch.full((1, 7, size, size), 8000, dtype=torch.int16)
    assert module(raw).shape == (1, 1, size, size)


def test_decoder_options_and_kwargs_reach_smp() -> None:
    cfg = load_config(
        "tiny",
        [
            "model.arch=UnetPlusPlus",
            "model.decoder_attention_type=scse",
            "model.decoder_channels=[32,16,16,8,8]",
            "model.kwargs={decoder_use_norm: false}",
        ],
    )
    net = build_model(cfg.model, 9)
    kinds = {type(m).__name__ for m in net.modules()}
    assert "SCSEModule" in kinds and "BatchNorm2d" in kinds  # encoder BN only
    assert net.segmentation_head[0].in_channels == 8
    assert not any(type(m).__name__ == "BatchNorm2d" for m in net.decoder.modules())
    bad = load_config("tiny", ["model.arch=Linknet", "model.decoder_attention_type=scse"])
    with pytest.raises(ValueError, match=r"does not take \['decoder_attention_type'\]"):
        build_model(bad.model, 9)
    with pytest.raises(ValueError, match=r"unknown model\.arch"):
        build_model(load_config("tiny", ["model.arch=UNetX"]).model, 9)


def test_channels_last_gives_the_same_output() -> None:
    cfg = load_config("tiny", SMALL_NET)
    torch.manual_seed(0)
    a = KelpSegModule(cfg.model_dump(mode="json")).eval()
    cfg.model.channels_last = True
    b = KelpSegModule(cfg.model_dump(mode="json")).eval()
    b.load_state_dict(a.state_dict())
    conv = next(m for m in b.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    raw = _raw(6, b=2, size=64)
    torch.testing.assert_close(a(raw), b(raw), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- losses, optimizers, schedulers


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_loss_is_smps(name: str) -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.7).float()
    reference = {
        "dice": smp.losses.DiceLoss("binary", from_logits=True),
        "bce": smp.losses.SoftBCEWithLogitsLoss(),
        "jaccard": smp.losses.JaccardLoss("binary", from_logits=True),
        "tversky": smp.losses.TverskyLoss("binary", from_logits=True),
        "lovasz": smp.losses.LovaszLoss("binary", from_logits=True),
        "focal": smp.losses.FocalLoss("binary"),
    }[name]
    torch.testing.assert_close(WeightedLoss({name: 1.0})(logits, target), reference(logits, target))


def test_weighted_loss_sum_from_config() -> None:
    cfg = load_config("tiny", ["train.loss={dice: 1.0, bce: 0.5}"])
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    loss = WeightedLoss(dict(cfg.train.loss))
    expected = LOSSES["dice"]()(logits, target) + 0.5 * LOSSES["bce"]()(logits, target)
    torch.testing.assert_close(loss(logits, target), expected)
    with pytest.raises(ConfigError, match="loss"):
        load_config("tiny", ["train.loss={dise: 1.0}"])


@pytest.mark.parametrize(
    ("name", "kind"),
    [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)],
)
def test_optimizers(name: str, kind: type) -> None:
    t = TrainConfig(optimizer=name, lr=0.01, weight_decay=0.001, momentum=0.8)
    opt = build_optimizer(torch.nn.Linear(2, 1).parameters(), t)
    group = opt.param_groups[0]
    assert type(opt) is kind and group["lr"] == 0.01 and group["weight_decay"] == 0.001
    if name == "sgd":
        assert group["momentum"] == 0.8


def _lr_curve(t: TrainConfig, steps: int, metric: float | None = None) -> list[float]:
    opt = build_optimizer(torch.nn.Linear(2, 1).parameters(), t)
    cfg = build_scheduler(opt, t, steps)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        cfg["scheduler"].step(*([metric] if metric is not None else []))
    return lrs


def test_scheduler_curves() -> None:
    lr = 0.1
    const = _lr_curve(TrainConfig(scheduler="constant", lr=lr), 10)
    assert const == [lr] * 10
    one = _lr_curve(TrainConfig(scheduler="onecycle", lr=lr, pct_start=0.2), 50)
    peak = int(np.argmax(one))
    assert one[0] == pytest.approx(lr / 2) and 8 <= peak <= 11 and max(one) == pytest.approx(lr)
    assert one[-1] < lr / 150 and all(a >= b for a, b in pairwise(one[peak:]))
    cos = _lr_curve(TrainConfig(scheduler="cosine", lr=lr, min_lr=0.001), 20)
    assert cos[0] == lr and all(a >= b for a, b in pairwise(cos))
    assert cos[10] == pytest.approx((lr + 0.001) / 2) and cos[-1] < 0.002
    step = _lr_curve(TrainConfig(scheduler="step", lr=lr, step_epochs=2, gamma=0.5), 6)
    assert step == pytest.approx([lr, lr, lr / 2, lr / 2, lr / 4, lr / 4])
    flat = _lr_curve(TrainConfig(scheduler="plateau", lr=lr, plateau_patience=1), 6, metric=0.5)
    assert flat[:3] == [lr] * 3 and flat[-1] < lr
    opt = build_optimizer(torch.nn.Linear(2, 1).parameters(), TrainConfig(scheduler="plateau"))
    assert build_scheduler(opt, TrainConfig(scheduler="plateau"), 5)["monitor"] == "val/dice"


def test_precision_aliases_and_validation() -> None:
    assert load_config("tiny", ["train.precision=bf16"]).train.precision == "bf16-mixed"
    assert load_config("tiny", ["train.precision=32"]).train.precision == "32-true"
    with pytest.raises(ConfigError):
        load_config("tiny", ["train.precision=bf16-true"])


# ---------------------------------------------------------------- whole fits


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the module's fits (creating a SQLite store takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _fit(tiny, tracking: str, tmp_path: Path, overrides: list[str], fold: int = 0):
    from kelpseg.train.fit import train_fold

    packed, tiles = tiny
    cfg = load_config(
        "tiny",
        [
            *SMALL_NET,
            "train.max_epochs=2",
            "train.samples_per_epoch=16",
            f"tracking.uri={tracking}",
            *overrides,
        ],
    )
    return cfg, train_fold(cfg, tiles, packed, fold, tmp_path)


def _mlflow(tracking: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking)


class Recorder(Callback):
    """What a fit really did: LR, optimizer steps, gradient norms, the network's inputs/outputs."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.steps: list[int] = []
        self.grad_norms: list[float] = []
        self.weights: list[dict[str, torch.Tensor]] = []
        self.inputs: list[torch.Size] = []
        self.channels_last: list[bool] = []
        self.out_dtypes: set[torch.dtype] = set()
        self.input_range: tuple[float, float] = (float("inf"), float("-inf"))

    def on_train_start(self, trainer, pl_module) -> None:
        def hook(net, args, out) -> None:
            if net.training:
                x = args[0]
                self.inputs.append(x.shape)
                self.channels_last.append(x.is_contiguous(memory_format=torch.channels_last))
                self.out_dtypes.add(out.dtype)
                lo, hi = self.input_range
                self.input_range = (min(lo, x.min().item()), max(hi, x.max().item()))

        pl_module.net.register_forward_hook(hook)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.weights.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        grads = [p.grad.detach().flatten() for p in pl_module.parameters() if p.grad is not None]
        if grads:  # none in SWA's batch-norm update epoch
            self.grad_norms.append(torch.cat(grads).float().norm().item())
        self.steps.append(trainer.global_step)


def _recorded_fit(tiny, tracking: str, tmp_path: Path, overrides: list[str], monkeypatch):
    """A 2-epoch fit of 4 batches an epoch; returns the trainer and a :class:`Recorder`."""
    from kelpseg.train import fit

    rec, built, original = Recorder(), [], fit.build_trainer

    def build_trainer(cfg, callbacks, logger, steps_per_epoch):
        built.append(original(cfg, [*callbacks, rec], logger, steps_per_epoch))
        return built[-1]

    monkeypatch.setattr(fit, "build_trainer", build_trainer)
    _fit(tiny, tracking, tmp_path, ["train.log_images=0", *overrides])
    return built[0], rec


def _adamw_onecycle(trainer, rec: Recorder) -> None:
    opt = trainer.optimizers[0]
    assert type(opt) is torch.optim.AdamW and opt.defaults["weight_decay"] == 1e-4
    sched = trainer.lr_scheduler_configs[0]
    assert isinstance(sched.scheduler, torch.optim.lr_scheduler.OneCycleLR)
    assert rec.lrs[0] == pytest.approx(3e-4 / 2) and int(np.argmax(rec.lrs)) == 3  # pct_start .5
    assert max(rec.lrs) == pytest.approx(3e-4) and rec.lrs[-1] == pytest.approx(3e-4 / 2 / 100)
    assert rec.out_dtypes == {torch.float32} and set(rec.inputs) == {torch.Size([4, 9, 64, 64])}
    assert rec.steps == list(range(1, 9)) and min(rec.grad_norms) > 0.01  # unclipped, no accum
    assert not any(rec.channels_last)
    assert set(trainer.lightning_module.loss.weights) == {"dice"}


def _bf16_focal(trainer, rec: Recorder) -> None:
    assert trainer.precision == "bf16-mixed" and rec.out_dtypes == {torch.bfloat16}
    loss = trainer.lightning_module.loss
    assert loss.weights == {"dice": 1.0, "focal": 2.0}
    assert type(loss.losses["focal"]) is smp.losses.FocalLoss


def _sgd_step(trainer, rec: Recorder) -> None:
    opt = trainer.optimizers[0]
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.5
    assert opt.defaults["lr"] == 0.01
    assert rec.lrs == pytest.approx([0.01] * 4 + [0.001] * 4)  # gamma 0.1 after 1 epoch


def _plateau_channels_last(trainer, rec: Recorder) -> None:
    sched = trainer.lr_scheduler_configs[0]
    assert isinstance(sched.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert sched.monitor == "val/dice" and sched.interval == "epoch"
    assert all(rec.channels_last)


def _cosine_clip_quantile(trainer, rec: Recorder) -> None:
    assert isinstance(
        trainer.lr_scheduler_configs[0].scheduler, torch.optim.lr_scheduler.CosineAnnealingLR
    )
    assert rec.lrs[0] == pytest.approx(3e-4) and all(a > b for a, b in pairwise(rec.lrs))
    assert rec.lrs[-1] < 3e-5
    assert trainer.gradient_clip_val == 1e-3 and max(rec.grad_norms) <= 1e-3 * 1.001
    lo, hi = rec.input_range  # per-sample quantile scaling: every input in [0, 1]
    assert lo >= 0.0 and hi <= 1.0


def _crop_accumulate(trainer, rec: Recorder) -> None:
    assert set(rec.inputs) == {torch.Size([4, 9, 32, 32])}
    assert rec.steps == [0, 1, 1, 2, 2, 3, 3, 4]  # an optimizer step every 2 batches


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        (["train.pct_start=0.5"], _adamw_onecycle),
        (["train.precision=bf16-mixed", "train.loss={dice: 1.0, focal: 2.0}"], _bf16_focal),
        (
            [
                "train.optimizer=sgd",
                "train.lr=0.01",
                "train.momentum=0.5",
                "train.scheduler=step",
                "train.step_epochs=1",
            ],
            _sgd_step,
        ),
        (["train.scheduler=plateau", "model.channels_last=true"], _plateau_channels_last),
        (
            [
                "train.scheduler=cosine",
                "train.gradient_clip_val=0.001",
                "features.normalize=sample_quantile",
            ],
            _cosine_clip_quantile,
        ),
        (["train.crop_size=32", "train.accumulate_grad_batches=2"], _crop_accumulate),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_fit_applies_each_option(
    tiny, tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides, check
) -> None:
    """Each option is checked for its effect on the fit, not just for running."""
    trainer, rec = _recorded_fit(tiny, tracking, tmp_path, overrides, monkeypatch)
    assert len(rec.lrs) == 8  # 2 epochs x 16 samples / batch 4
    check(trainer, rec)


def test_augment_options_reach_the_training_batch(tiny) -> None:
    packed, _ = tiny
    raw = torch.from_numpy(packed.images[:4].copy())
    mask = torch.from_numpy(packed.masks[:4].copy())

    def inputs(*overrides: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = load_config("tiny", [*SMALL_NET, *overrides])
        module = KelpSegModule(cfg.model_dump(mode="json"))
        module.features.fit_bounds(raw, cfg.features.quantiles)
        return (*module.training_inputs(raw, mask, batch_idx=0), module.features(raw))

    x, y, plain = inputs("augment.flips=false", "augment.rotate_degrees=0")
    assert torch.equal(x, plain) and torch.equal(y[:, 0], mask.float())
    x, y, _ = inputs("augment.flips=true", "augment.rotate_degrees=0")
    assert not torch.equal(x, plain) and torch.equal(y.sum((1, 2, 3)), mask.float().sum((1, 2)))
    x, y, _ = inputs("augment.flips=false", "augment.rotate_degrees=45")
    assert not torch.equal(x, plain) and not torch.equal(y[:, 0], mask.float())
    x, y, _ = inputs("augment.flips=false", "train.crop_size=24")
    assert x.shape[-2:] == y.shape[-2:] == (24, 24)


def test_fit_accumulates_gradients(tiny, tracking: str, tmp_path: Path) -> None:
    import torch as th

    _, result = _fit(tiny, tracking, tmp_path, ["train.accumulate_grad_batches=2"])
    state = th.load(result.checkpoint, weights_only=False)
    assert state["global_step"] == 4  # 2 epochs x 4 batches / 2


def test_fit_with_swa_scores_the_averaged_weights(
    tiny, tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = ["train.swa=true", "train.max_epochs=3", "train.swa_epoch_start=1"]
    trainer, rec = _recorded_fit(tiny, tracking, tmp_path, overrides, monkeypatch)
    result = FoldResult.from_json((tmp_path / "fold0" / "result.json").read_text())
    assert result.checkpoint.name == "swa.ckpt" and result.checkpoint.is_file()
    state = torch.load(result.checkpoint, weights_only=False)
    assert any("StochasticWeightAveraging" in k for k in state["callbacks"])
    swa = state["state_dict"]
    names = [n for n, _ in trainer.lightning_module.named_parameters()]
    trained = rec.weights[:3]  # the 3 epochs' weights; a 4th epoch only updates batch-norm stats
    assert all(not all(torch.equal(swa[n], w[n]) for n in names) for w in trained)  # averaged
    assert all(torch.equal(swa[n], rec.weights[3][n]) for n in names)  # what was validated
    assert result.val_dice == pytest.approx(result.metrics["val/dice"])
    steps = [torch.load(p, weights_only=False)["global_step"] for p in _checkpoint_files(tmp_path)]
    assert len(set(steps)) == len(steps)  # swa.ckpt is not a second copy of last.ckpt


def test_fit_trains_without_excluded_tiles(tiny, tracking: str, tmp_path: Path) -> None:
    packed, tiles = tiny
    tiles = tiles.assign(excluded=tiles["tile_id"].isin({"T00", "T03", "T05"}))
    _, result = _fit((packed, tiles), tracking, tmp_path, ["train.max_epochs=1"])
    params = _mlflow(tracking).get_run(result.run_id).data.params
    assert (params["train_tiles"], params["val_tiles"]) == ("7", "8")


def _checkpoint_files(out: Path) -> list[Path]:
    """Every regular file under ``out`` that torch can load as a Lightning checkpoint."""
    found = []
    for p in sorted(out.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.stat().st_size > 10_000:
            try:
                state = torch.load(p, weights_only=False, map_location="cpu")
            except Exception:  # not a checkpoint
                continue
            if isinstance(state, dict) and "state_dict" in state:
                found.append(p)
    return found


@pytest.mark.parametrize("dices", [(0.5, 0.4, 0.6), (0.5, 0.6, 0.4)], ids=["last-best", "mid-best"])
def test_each_checkpoint_is_stored_once(
    tiny, tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dices: tuple
) -> None:
    """No copy in MLflow; ``last.ckpt`` is a link to ``best.ckpt`` when it is the best epoch."""

    def scripted_dice(self: KelpSegModule) -> None:  # val Dice per epoch as given
        self.val_metrics.reset()
        self.log("val/dice", dices[self.current_epoch])

    monkeypatch.setattr(KelpSegModule, "on_validation_epoch_end", scripted_dice)
    name = f"once-{dices}"
    _, result = _fit(
        tiny, tracking, tmp_path, ["train.max_epochs=3", f"tracking.experiment={name}"]
    )
    fold = tmp_path / "fold0"
    assert any((tmp_path / "mlartifacts").rglob("config.yaml"))  # the run's artifacts are here
    files = _checkpoint_files(tmp_path)
    steps = [torch.load(p, weights_only=False)["global_step"] for p in files]
    assert len(set(steps)) == len(steps), files  # one file per saved training state
    run = _mlflow(tracking).get_run(result.run_id)
    assert run.data.tags["checkpoint"] == str((fold / "best.ckpt").resolve())
    best_epoch = int(np.argmax(dices))
    assert result.checkpoint == fold / "best.ckpt" and result.val_dice == pytest.approx(max(dices))
    assert torch.load(fold / "best.ckpt", weights_only=False)["epoch"] == best_epoch
    assert torch.load(fold / "last.ckpt", weights_only=False)["epoch"] == 2
    assert (fold / "last.ckpt").is_symlink() == (best_epoch == 2)
    expected = [fold / "best.ckpt"] + ([fold / "last.ckpt"] if best_epoch != 2 else [])
    assert files == expected
    assert not list(fold.glob(".*"))  # no temporary files left


def test_deterministic_fits_repeat_exactly(tiny, tracking: str, tmp_path: Path) -> None:
    opts = ["train.deterministic=true", "augment.rotate_degrees=20"]
    _, a = _fit(tiny, tracking, tmp_path / "a", opts)
    _, b = _fit(tiny, tracking, tmp_path / "b", opts)
    sa = torch.load(a.checkpoint, weights_only=False)["state_dict"]
    sb = torch.load(b.checkpoint, weights_only=False)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and a.val_dice == b.val_dice
    # the control: another seed trains to other weights (so equality above is not vacuous)
    _, c = _fit(tiny, tracking, tmp_path / "c", [*opts, "train.seed=7"])
    sc = torch.load(c.checkpoint, weights_only=False)["state_dict"]
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_fit_logs_a_sample_figure_per_epoch(tiny, tracking: str, tmp_path: Path) -> None:
    _, result = _fit(tiny, tracking, tmp_path, ["train.log_images=2"])
    client = _mlflow(tracking)
    figures = sorted(a.path for a in client.list_artifacts(result.run_id, "samples"))
    assert figures == ["samples/epoch_000.png", "samples/epoch_001.png"]
    local = client.download_artifacts(result.run_id, figures[0], str(tmp_path))
    assert Path(local).read_bytes()[:4] == b"\x89PNG"


def test_all_folds_are_mlflow_runs_of_one_experiment(
    synth_data, tracking: str, tmp_path: Path
) -> None:
    from kelpseg.pipeline import fold_list, prepare, run_training

    cfg = load_config(
        "tiny",
        [
            *SMALL_NET,
            "train.folds=all",
            "train.log_images=0",
            "tracking.experiment=allfolds",
            f"tracking.uri={tracking}",
        ],
    )
    assert fold_list(cfg) == [0, 1]
    prep = prepare(synth_data.root, cfg, tmp_path)
    results = run_training(prep, cfg, tmp_path)
    assert [r.fold for r in results] == [0, 1]
    client = _mlflow(tracking)
    exp = client.get_experiment_by_name("allfolds")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["fold0", "fold1"]
    assert {r.info.run_id for r in runs} == {r.run_id for r in results}
