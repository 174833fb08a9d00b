"""Typed configuration for every stage: YAML files plus ``section.key=value`` overrides.

Unknown keys are rejected, so a typo in a config fails loudly instead of being ignored.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where tiles come from and how strictly they are checked."""

    tile_size: int | None = Field(350, description="Expected tile side in px; null accepts any.")
    strict: bool = Field(False, description="Fail on the first bad file instead of skipping it.")
    exclude: list[str] = Field(
        default_factory=list,
        description="Leave out training tiles with any of these tile_stats flags, e.g. "
        "[mask_suspect, high_corrupted_pixels_pct] (kelpseg.data.quality.FLAG_COLUMNS).",
    )
    correct_dem_shift: bool = Field(
        True,
        description="Undo DEM shifts that `kelpseg stats` detected with confidence before AOI "
        "grouping (kelpseg.data.quality.correct_dem does it for any raw tile).",
    )

    @field_validator("exclude")
    @classmethod
    def _exclude(cls, v: list[str]) -> list[str]:
        from kelpseg.data.quality import FLAG_COLUMNS

        bad = [f for f in v if f not in FLAG_COLUMNS]
        if bad:
            raise ValueError(f"unknown tile flag(s) {bad}; choose from {', '.join(FLAG_COLUMNS)}")
        return v


class GroupsConfig(_Section):
    """AOI de-duplication: tiles whose DEM embeddings are this similar share an AOI."""

    threshold: float = Field(0.97, ge=-1.0, le=1.0)
    embedding: Literal["dem-pool", "timm"] = Field(
        "dem-pool", description="dem-pool (no weights) or timm (a CNN; needs timm_weights)."
    )
    grid: int = Field(16, ge=4, description="Side of the pooled DEM grid the embedding uses.")
    timm_model: str = Field("resnet50", description="timm model of the timm embedding.")
    timm_weights: str | None = Field(
        None, description="Local weights file for timm_model (never downloaded)."
    )
    max_group_size: int | None = Field(
        None, ge=1, description="Cut the all-water group into chunks (areas are never split)."
    )


class SplitConfig(_Section):
    """Stratified grouped K-fold over AOIs."""

    folds: int = Field(5, ge=2)
    seed: int = 42


BandName = Literal["SWIR1", "NIR", "Red", "Green", "Blue", "QA", "DEM"]
LossName = Literal["dice", "bce", "jaccard", "tversky", "lovasz", "focal"]
Precision = Literal["32-true", "16-mixed", "bf16-mixed"]
NormMode = Literal["quantile", "zscore", "minmax", "sample_quantile", "sample_minmax", "none"]
_PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}


class FeaturesConfig(_Section):
    """Input channels: bands, spectral indices and their normalization (DESIGN.md stages 4-5)."""

    bands: list[BandName] = Field(
        default_factory=lambda: ["SWIR1", "NIR", "Red", "Green", "Blue", "QA", "DEM"],
        description="Tile bands fed to the network, in this order (indices follow).",
    )
    indices: list[str] = Field(
        default_factory=lambda: ["NDVI", "DEMWM"],
        description="Names from the 17-index table, or any spyndex index (`spyndex:NAME`).",
    )
    units: Literal["dn", "reflectance"] = "dn"
    mask_land: bool = Field(False, description="Mask indices (NaN, then filled) on DEM land.")
    mask_cloud: bool = Field(
        False,
        description="Also mask indices where QA != 0 (the 2nd-place code masked both; real QA "
        "flags clear pixels too, hiding the kelp labelled under them).",
    )
    fill: Literal["min"] | float = Field(
        "min",
        description="Missing pixels: `min` = the sample's channel minimum before normalization, "
        "or a number written into the normalized output.",
    )
    normalize: NormMode = Field(
        "quantile", description="`sample_*` use each sample's own statistics."
    )
    stats_pixels: Literal["valid", "water"] = Field(
        "valid", description="Pixels the statistics come from: all valid ones or water only."
    )
    quantiles: tuple[float, float] = (0.01, 0.99)
    stats_tiles: int = Field(256, ge=1, description="Training tiles sampled for the stats.")

    @field_validator("indices")
    @classmethod
    def _indices(cls, v: list[str]) -> list[str]:
        from kelpseg.features.indices import resolve

        return resolve(v)

    @field_validator("quantiles")
    @classmethod
    def _quantiles(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= v[0] < v[1] <= 1.0:
            raise ValueError(f"quantiles must satisfy 0 <= low < high <= 1, got {v}")
        return v


class AugmentConfig(_Section):
    """Batch augmentation on the device (DESIGN.md stage 7): no noise, colour or resize changes."""

    flips: bool = Field(True, description="Random flips and 90-degree turns (exact).")
    rotate_degrees: float = Field(
        0.0, ge=0.0, le=90.0, description="Random rotation within +-degrees; 0 = off."
    )
    rotate_padding: Literal["zeros", "border", "reflection"] = "reflection"


class ModelConfig(_Section):
    """segmentation-models-pytorch architecture and encoder (smp name or ``tu-`` timm name)."""

    arch: str = Field(
        "Unet", description="Any `smp.create_model` name (Unet, UnetPlusPlus, FPN...)."
    )
    encoder: str = "tu-efficientnet_b5"
    encoder_weights: str | None = Field(None, description="null = random init (offline).")
    encoder_depth: int | None = Field(None, ge=1, le=5, description="null = the arch default.")
    decoder_channels: list[int] | int | None = Field(None, description="null = the arch default.")
    decoder_attention_type: Literal["scse"] | None = Field(
        None, description="Unet / UnetPlusPlus decoder attention."
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Further keyword arguments of the smp architecture."
    )
    channels_last: bool = Field(False, description="channels_last memory format (GPU + AMP).")


class TrainConfig(_Section):
    """Optimisation, sampling and the Lightning trainer."""

    folds: list[int] | Literal["all"] = Field(default_factory=lambda: [0])
    holdout_fold: int | None = Field(
        None,
        ge=0,
        description="A fold of the split that no model trains on (each trains on the other "
        "folds but its own validation fold): `kelpseg run` scores the best fold and the "
        "ensemble on it, tunes the ensemble's threshold there and submits the better one "
        "(predict.choose). null = none (every fold trains; all = every fold but this one).",
    )
    max_epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    samples_per_epoch: int | None = Field(10240, ge=1)
    crop_size: int | None = Field(None, description="Random training crop (px); null = full tile.")
    loss: dict[LossName, float] = Field(
        default_factory=lambda: {"dice": 1.0}, description="Weighted sum of smp losses."
    )
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(3e-4, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, description="SGD only.")
    scheduler: Literal["onecycle", "cosine", "step", "plateau", "constant"] = "onecycle"
    pct_start: float = Field(0.1, gt=0.0, lt=1.0, description="onecycle.")
    div_factor: float = Field(2.0, gt=0.0, description="onecycle: initial lr = lr / div_factor.")
    final_div_factor: float = Field(100.0, gt=0.0, description="onecycle.")
    min_lr: float = Field(0.0, ge=0.0, description="cosine: the final learning rate.")
    step_epochs: int = Field(3, ge=1, description="step: epochs between decays.")
    gamma: float = Field(0.1, gt=0.0, description="step: decay factor.")
    plateau_patience: int = Field(2, ge=0, description="plateau: epochs without val/dice gain.")
    plateau_factor: float = Field(0.5, gt=0.0, lt=1.0, description="plateau: decay factor.")
    accumulate_grad_batches: int = Field(1, ge=1)
    gradient_clip_val: float | None = Field(None, gt=0.0)
    swa: bool = Field(False, description="Stochastic weight averaging (Lightning callback).")
    swa_lr: float | None = Field(None, gt=0.0, description="SWA learning rate; null = lr / 10.")
    swa_epoch_start: float | int = Field(0.8, gt=0.0, description="Fraction or epoch index.")
    precision: Precision = Field("32-true", description="32-true, 16-mixed or bf16-mixed (AMP).")
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, ddp_spawn, fsdp...")
    num_nodes: int = Field(1, ge=1)
    num_workers: int = Field(0, ge=0)
    seed: int = 42
    deterministic: bool | Literal["warn"] = Field(
        False, description="torch deterministic algorithms (exact repeats, slower on GPU)."
    )
    resume: bool = Field(False, description="Continue from OUT/fold*/last.ckpt (CLI --resume).")
    log_images: int = Field(
        4, ge=0, description="Validation tiles drawn into an MLflow figure each epoch; 0 = off."
    )
    sampler_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "has_kelp": 3.0,
            "kelp_pixels_pct": 0.2,
            "qa_ok": 0.0,
            "qa_corrupted_pixels_pct": -1.0,
            "almost_all_water": 0.5,
            "dem_nan_pixels_pct": 0.25,
            "dem_zero_pixels_pct": -1.0,
        }
    )
    progress: bool = True

    @field_validator("folds", mode="before")
    @classmethod
    def _folds(cls, v: Any) -> Any:
        if isinstance(v, int):
            return [v]
        if isinstance(v, str) and v != "all":
            return [int(x) for x in v.split(",")]
        return v

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, v: Any) -> Any:
        return _PRECISION_ALIASES.get(str(v), v)

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("train.loss needs at least one weighted loss, e.g. {dice: 1.0}")
        return v


class PredictConfig(_Section):
    """Prediction (``kelpseg predict`` and the test tiles of ``kelpseg run``): threshold, batch
    size, ensemble, precision, TTA and extra outputs; the CLI flags override these."""

    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    batch_size: int = Field(8, ge=1, description="Tiles (map: windows) per forward pass on a GPU.")
    cpu_batch_size: int = Field(
        1,
        ge=1,
        description="The same on a CPU, where batches of 8 ran 40 % slower than single tiles "
        "(cache-bound activations; bench/RESULTS.md).",
    )
    probabilities: bool = Field(False, description="Also write {id}_proba.tif.")
    proba_format: Literal["float32", "uint8"] = Field(
        "float32", description="float32 (NaN nodata) or uint8 (p*254, 255 nodata)."
    )
    weights: str = Field(
        "equal", description="Ensemble weights: equal, dice (fold val Dice, min-max) or 0.2,0.8."
    )
    vote: Literal["soft", "hard"] = Field(
        "soft", description="soft: mean probability; hard: mean of thresholded masks."
    )
    precision: Literal["fp32", "bf16", "fp16"] | None = Field(
        None, description="Autocast dtype; null = bf16 on a GPU that has it, else fp32."
    )
    tta: Literal["none", "flips", "d4"] = Field(
        "none", description="Test-time augmentation (flips: 3 passes, d4: 8), mean probability."
    )
    spread: bool = Field(False, description="Ensembles: also write {id}_spread.tif (std).")
    tune_threshold: bool = Field(
        True,
        description="kelpseg run: tune the threshold out of fold (threshold.json) and predict "
        "with it; false = predict.threshold.",
    )
    choose: Literal["auto", "ensemble", "single"] = Field(
        "auto",
        description="kelpseg run: which of the ensemble of the folds and the best fold alone "
        "predicts OUT/predictions (the one to submit; the other goes to "
        "OUT/predictions_{single,ensemble}). auto = the higher Dice on the held-out fold "
        "(train.holdout_fold; a tie: the single model), else the ensemble.",
    )

    def batch_for(self, device_type: str) -> int:
        """The batch size for a torch device type (``cpu``, ``cuda``, ...)."""
        return self.cpu_batch_size if device_type == "cpu" else self.batch_size

    @field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, v: Any) -> Any:
        if isinstance(v, list | tuple):
            v = ",".join(str(x) for x in v)
        if v in ("equal", "dice"):
            return v
        parse_weights(str(v))
        return str(v)


def parse_weights(spec: str | list[float]) -> list[float]:
    """Given ensemble weights (``"0.2,0.8"`` or numbers): finite, non-negative, not all zero.

    Raises:
        ValueError: naming the spec otherwise.
    """
    try:
        vals = [float(x) for x in (spec if isinstance(spec, list) else str(spec).split(","))]
    except ValueError as err:
        raise ValueError(f"weights must be equal, dice or numbers, got {spec!r}") from err
    if any(not math.isfinite(x) or x < 0 for x in vals) or sum(vals) <= 0:
        raise ValueError(f"weights must be finite, non-negative, not all zero, got {spec!r}")
    return vals


class PostprocessConfig(_Section):
    """Post-processing of the probabilities / masks (kelpseg.infer.postprocess); all off."""

    smooth_sigma: float = Field(0.0, ge=0.0, description="Gaussian smoothing (px); 0 = off.")
    open_radius: int = Field(0, ge=0, description="Binary opening, disk radius (px); 0 = off.")
    close_radius: int = Field(0, ge=0, description="Binary closing, disk radius (px); 0 = off.")
    min_object_px: int = Field(0, ge=0, description="Drop kelp objects under N px; 0 = off.")
    fill_holes_px: int = Field(0, ge=0, description="Fill holes under N px; 0 = off.")
    land_mask: bool = Field(False, description="No kelp where DEM > 0.")


class TrackingConfig(_Section):
    """MLflow tracking: null uri = ``sqlite:///<out>/mlflow.db``."""

    uri: str | None = None
    experiment: str = "kelpseg"


class XgbConfig(_Section):
    """Per-pixel XGBoost baseline (``kelpseg xgb``, kelpseg.baselines.xgb); folds = train.folds."""

    pixels_per_class: int = Field(
        200_000, ge=1, description="Kelp and non-kelp training pixels per fold (each, at most)."
    )
    negatives: Literal["valid", "water"] = Field(
        "valid", description="Non-kelp pixels drawn from every valid pixel, or water only."
    )
    n_estimators: int = Field(200, ge=1)
    max_depth: int = Field(6, ge=1)
    learning_rate: float = Field(0.1, gt=0.0)
    subsample: float = Field(0.8, gt=0.0, le=1.0)
    colsample_bytree: float = Field(0.8, gt=0.0, le=1.0)
    n_jobs: int | None = Field(None, ge=1, description="Threads; null = the machine's CPUs.")
    seed: int = 42
    threshold: float = Field(
        0.5, gt=0.0, lt=1.0, description="Decision threshold (validation Dice; tests unless tuned)."
    )
    prior_correction: bool = Field(
        True,
        description="Undo the balanced sampling's inflation of the kelp odds in the model's "
        "probabilities (a log-odds offset from the pixel counts).",
    )
    tune_threshold: bool = Field(
        True,
        description="Tune the threshold out of fold (as `kelpseg threshold OUT/xgb`) and "
        "predict the test tiles with it.",
    )
    top_features: int = Field(20, ge=1, description="Features in the importance picture.")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Further xgboost.XGBClassifier arguments."
    )


class Config(_Section):
    """The whole pipeline's configuration."""

    data: DataConfig = Field(default_factory=DataConfig)
    groups: GroupsConfig = Field(default_factory=GroupsConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    xgb: XgbConfig = Field(default_factory=XgbConfig)

    @model_validator(mode="after")
    def _holdout(self) -> Config:
        check_holdout(self)
        return self


def check_holdout(cfg: Config) -> None:
    """``train.holdout_fold`` must be a fold of the split, not one of ``train.folds``, and
    leave every trained fold some training tiles.

    Raises:
        ValueError: naming the keys otherwise.
    """
    h, k = cfg.train.holdout_fold, cfg.split.folds
    if h is None:
        return
    if h >= k:
        raise ValueError(f"train.holdout_fold {h} is not a fold of split.folds={k} (0..{k - 1})")
    if k < 3:
        raise ValueError(
            f"train.holdout_fold needs split.folds >= 3 (a held-out fold, a validation fold "
            f"and one to train on), got {k}"
        )
    if cfg.train.folds != "all" and h in cfg.train.folds:
        raise ValueError(
            f"train.folds {cfg.train.folds} includes the held-out fold {h} (train.holdout_fold)"
        )


class ConfigError(ValueError):
    """A config file or override that does not validate."""


def builtin_config(name: str) -> Path:
    """Path of a config shipped with kelpseg (``default``, ``demo``, ``tiny``)."""
    path = Path(str(resources.files("kelpseg") / "configs" / f"{name}.yaml"))
    if not path.is_file():
        raise ConfigError(f"no built-in config {name!r}; have: {', '.join(builtin_names())}")
    return path


def builtin_names() -> list[str]:
    """Names of the configs shipped with kelpseg (``space*.yaml`` are `kelpseg tune` spaces)."""
    folder = resources.files("kelpseg") / "configs"
    return sorted(
        p.name.removesuffix(".yaml")
        for p in folder.iterdir()
        if p.name.endswith(".yaml") and not p.name.startswith("space")
    )


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


DEFAULT_CONFIG = "default"
"""The built-in config used when none is named (the 2nd-place recipe)."""


def _read_tree(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file() and p.suffix == "":
        p = builtin_config(str(path))
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{p}: {err}") from err
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return tree


def _validate(tree: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(str(err)) from err


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a config: a YAML path or built-in name (``default`` when None), then overrides.

    The file is validated first, then each ``key=value`` override is applied to the complete
    config (every default spelled out), so ``train.loss.bce=0.5`` adds a term to whatever
    loss the config has, and ``train.loss={bce: 1.0}`` replaces it. Values are parsed as YAML:
    ``train.max_epochs=3``, ``model.encoder_weights=null``, ``features.indices=[NDVI,DEMWM]``.
    """
    cfg = _validate(_read_tree(DEFAULT_CONFIG if path is None else path))
    return with_overrides(cfg, overrides)


def with_overrides(cfg: Config, overrides: list[str] | None) -> Config:
    """``cfg`` with ``section.key=value`` overrides applied (see :func:`load_config`)."""
    if not overrides:
        return cfg
    tree = cfg.model_dump(mode="json")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not YAML ({err})") from err
        _set_dotted(tree, key.strip(), value)
    return _validate(tree)


def dump_config(cfg: Config) -> str:
    """The config as YAML, every key spelled out."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flatten(cfg: Config) -> dict[str, Any]:
    """``{"train.lr": 3e-4, ...}``: the config as flat parameters (for MLflow)."""
    out: dict[str, Any] = {}
    for section, values in cfg.model_dump(mode="json").items():
        for key, value in values.items():
            if isinstance(value, dict):
                for k2, v2 in value.items():
                    out[f"{section}.{key}.{k2}"] = v2
            else:
                out[f"{section}.{key}"] = value
    return out


def apply_values(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with ``{"train.lr": 1e-3, ...}`` set (dotted keys, Python values),
    validated as a whole (:class:`ConfigError` otherwise); used by ``kelpseg tune``."""
    tree = cfg.model_dump(mode="json")
    for key, value in values.items():
        _set_dotted(tree, key, value)
    return _validate(tree)
