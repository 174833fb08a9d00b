"""One way to assemble an ensemble for prediction.

``kelpseg predict``, ``kelpseg map``, the test predictions of ``kelpseg run``, the scene demo
and the ensemble threshold's calibration all turn checkpoints (``--model``, repeatable) and/or
a run folder (``--run``: every trained fold) into an :class:`Assembly` here: the loaded
members and every setting that changes an output, each taken from the first place that has it.

====================  ============  ===========================  ======================  ================================
setting               flag          ``-c`` / ``--set`` config    run folder              otherwise
====================  ============  ===========================  ======================  ================================
threshold             --threshold   ``--set predict.threshold``  tuned for these         the config's ``predict.threshold``
                                                                 members and weights     (``-c``, else the first member's)
weights, vote, TTA,   --weights...  ``predict.*``                                        the first member's config
precision, batch
postprocess                         ``postprocess.*``                                    the first member's config
====================  ============  ===========================  ======================  ================================

The run's tuned threshold (:func:`kelpseg.infer.run_folder.tuned_threshold`) is used for an
ensemble only when it was tuned for the same members and weights; otherwise the single
models' out-of-fold threshold, and the assembly's ``notes`` say why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from kelpseg.config import (
    Config,
    PostprocessConfig,
    apply_values,
    load_config,
    with_overrides,
)
from kelpseg.infer.errors import AssembleError

PREDICT_FLAGS = ("weights", "vote", "tta", "precision", "probabilities", "proba_format", "spread")
"""``predict`` config keys a command-line flag may set (``None`` = not given)."""


@dataclass
class Assembly:
    """Loaded members and the settings they predict with (see the module notes)."""

    models: list[Any]
    checkpoints: list[Path]
    cfg: Config
    """The config in force: the ``predict`` and ``postprocess`` sections with flags applied."""
    weights: np.ndarray
    threshold: float
    threshold_source: str
    precision: str
    batch_size: int
    run: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def vote(self) -> str:
        return self.cfg.predict.vote

    @property
    def tta(self) -> str:
        return self.cfg.predict.tta

    @property
    def postprocess(self) -> PostprocessConfig | None:
        """The post-processing in force, None when every step is off."""
        post = self.cfg.postprocess
        return None if post == PostprocessConfig() else post

    @property
    def device(self) -> Any:
        from kelpseg.infer.checkpoint import member_device

        return member_device(self.models[0])

    @cached_property
    def model_hash(self) -> str:
        """Hash of the members' weights (outputs record which models made them)."""
        from kelpseg.infer.checkpoint import model_hash

        return model_hash(self.models)

    def engine(self, *, spread: bool = False, slices: int = 1):
        """The ensemble engine (:class:`kelpseg.infer.ensemble.Members`) of these settings."""
        from kelpseg.infer.ensemble import PRECISIONS, Members

        return Members(
            self.models,
            self.weights,
            precision=PRECISIONS[self.precision],
            tta=self.tta,
            vote=self.vote,
            threshold=self.threshold,
            spread=spread,
            slices=slices,
        )

    @property
    def cut(self) -> float:
        """What the combined value is compared with: the threshold (soft vote) or half the
        weighted members (hard vote)."""
        return 0.5 if self.vote == "hard" else self.threshold

    def settings(self) -> dict[str, Any]:
        """Every setting of the assembly that changes an output (for fingerprints)."""
        post = self.postprocess
        return {
            "weights": [float(v) for v in self.weights],
            "vote": self.vote,
            "precision": self.precision,
            "tta": self.tta,
            "threshold": self.threshold,
            **({"postprocess": post.model_dump()} if post is not None else {}),
        }

    def describe(self) -> str:
        """One line for the user: members, weights, threshold and where it came from."""
        n = len(self.models)
        who = (
            f"{n} members ({self.cfg.predict.weights} weights, {self.vote} vote)"
            if n > 1
            else ("1 model")
        )
        return f"{who}, threshold {self.threshold:g} from {self.threshold_source}"


def _given(overrides: Sequence[str] | None) -> set[str]:
    return {o.split("=", 1)[0].strip() for o in overrides or []}


def assemble(
    members: Sequence[str | Path | Any] = (),
    run: Path | None = None,
    *,
    config: str | Path | Config | None = None,
    overrides: Sequence[str] | None = None,
    flags: dict[str, Any] | None = None,
    threshold: float | None = None,
    batch_size: int | None = None,
    postprocess: PostprocessConfig | None = None,
    dices: Sequence[float | None] | None = None,
    device: str | None = None,
    all_folds: bool = False,
) -> Assembly:
    """Checkpoints (paths, or members already loaded) and/or a run folder -> an :class:`Assembly`.

    Args:
        members: Checkpoints (``.ckpt``, or the XGBoost baseline's ``model.json``) or loaded
            members (anything with ``predict_proba``, ``device`` and ``cfg``).
        run: A ``kelpseg train``/``run`` folder: its trained folds join the members, its tuned
            threshold is used when it fits; when ``kelpseg run`` chose its best fold alone
            (``metrics.json``), only that fold, at the threshold ``run`` used.
        config: Config (file, built-in name or object) for the ``predict`` and ``postprocess``
            settings; default: the first member's own.
        overrides: ``--set`` overrides on top of it.
        flags: ``predict`` keys given on the command line (:data:`PREDICT_FLAGS`; None = not
            given); they win over the config.
        threshold: An explicit decision threshold in [0, 1].
        batch_size: An explicit batch size (else ``predict.batch_for`` the members' device).
        postprocess: Replaces the config's ``postprocess`` section.
        dices: Validation Dice of each member in ``members`` (for ``dice`` weights).
        device: Where to load members given as paths (default: a GPU when there is one).
        all_folds: Every trained fold of ``run`` even when ``run`` chose its best fold alone.

    Raises:
        AssembleError: no member, a bad threshold or batch size, members on several devices.
        kelpseg.config.ConfigError: a bad config or flag value (naming the key).
        kelpseg.infer.checkpoint.CheckpointError: a member that cannot be loaded.
        kelpseg.infer.ensemble.EnsembleError: weights that do not fit the members.
        kelpseg.infer.run_folder.RunFolderError: a run folder without trained folds.
    """
    from kelpseg.infer.checkpoint import load_member, member_device
    from kelpseg.infer.ensemble import default_precision, member_weights
    from kelpseg.infer.run_folder import run_checkpoints, run_choice, tuned_threshold

    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise AssembleError(f"--threshold must be in [0, 1], got {threshold}")
    if batch_size is not None and batch_size < 1:
        raise AssembleError(f"--batch-size must be at least 1, got {batch_size}")
    items = list(members)
    scores: list[float | None] = list(dices) if dices is not None else [None] * len(items)
    if len(scores) != len(items):
        raise AssembleError(f"{len(scores)} validation Dice values for {len(items)} members")
    notes: list[str] = []
    chosen = run_choice(run) if run is not None and not all_folds else None
    if run is not None:
        more, more_dice = run_checkpoints(run)
        if chosen is not None:
            keep = [i for i, ck in enumerate(more) if ck.resolve() == chosen.checkpoint.resolve()]
            more, more_dice = [more[i] for i in keep], [more_dice[i] for i in keep]
            if not more:  # the run folder's folds were retrained since
                more, more_dice = [chosen.checkpoint], [None]
            notes.append(
                f"{run}: `kelpseg run` chose the best fold alone ({chosen.reason}); "
                "--all-folds predicts with the ensemble of every fold"
            )
        items, scores = items + list(more), scores + list(more_dice)
    if not items:
        raise AssembleError("give a model: --model CKPT (repeatable) or --run OUT")
    paths = [Path(m) if isinstance(m, str | Path) else None for m in items]
    models = [
        load_member(m, device) if p is not None else m for m, p in zip(items, paths, strict=True)
    ]
    dev = member_device(models[0])
    if any(member_device(m) != dev for m in models):
        raise AssembleError("all members of an ensemble must be on one device")

    if isinstance(config, Config):
        base = config
    elif config is not None:
        base = load_config(config)
    else:
        base = models[0].cfg
    cfg = with_overrides(base.model_copy(deep=True), list(overrides or []))
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    unknown = set(given) - set(PREDICT_FLAGS)
    if unknown:
        raise AssembleError(f"not a prediction flag: {', '.join(sorted(unknown))}")
    cfg = apply_values(cfg, {f"predict.{k}": v for k, v in given.items()}) if given else cfg
    if postprocess is not None:
        cfg.postprocess = postprocess
    pc = cfg.predict
    spec = pc.weights
    if len(models) == 1 and "weights" not in given:
        spec = "equal"  # a config's numbers are for its ensemble; one model needs none
    weights = member_weights(len(models), spec, scores)
    explicit = _given(overrides)
    if threshold is not None:
        value, source = float(threshold), "--threshold"
    elif "predict.threshold" in explicit:
        value, source = pc.threshold, "--set predict.threshold"
    elif chosen is not None and len(models) == 1:
        value, source = chosen.threshold, f"{run}/metrics.json (the threshold `run` used)"
    else:
        tuned = tuned_threshold(run, weights, pc.vote, pc.tta) if run is not None else None
        if tuned is not None:
            value, source = tuned.value, tuned.source
            notes += [tuned.note] if tuned.note else []
        else:
            value = pc.threshold
            source = (
                "the config's predict.threshold"
                if config is not None
                else ("the checkpoint's predict.threshold")
            )
            own = {getattr(m.cfg.predict, "threshold", None) for m in models}
            if config is None and len(own) > 1:
                source = "the first member's predict.threshold (members disagree)"
    precision = pc.precision or default_precision(dev)
    if precision != "fp32" and any(hasattr(m, "session") for m in models):
        raise AssembleError(f"--precision {precision}: ONNX members run fp32 only")
    return Assembly(
        models=models,
        checkpoints=[p or Path(f"<member {i}>") for i, p in enumerate(paths)],
        cfg=cfg,
        weights=weights,
        threshold=float(value),
        threshold_source=source,
        precision=precision,
        batch_size=int(batch_size or pc.batch_for(dev.type)),
        run=run,
        notes=notes,
    )
