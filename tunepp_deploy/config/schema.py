"""Typed, validated configuration.

Every YAML config is parsed into :class:`TuneppConfig`. Unknown keys are errors (``extra="forbid"``)
so a typo such as ``lamda1`` fails loudly instead of silently training with a default; wrong types
fail with the dotted key path (see :func:`tunepp_deploy.config.load.load_config`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Triple = tuple[float, float, float]
IntTriple = tuple[int, int, int]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntensityConfig(_Strict):
    """How raw voxel values become network input.

    ``ct_window`` clips Hounsfield units to ``window`` and maps them linearly to [0, 1] (the seed's
    [-175, 250] HU -> [0, 1]); ``zscore`` subtracts the foreground mean and divides by its std (MRI,
    where intensities have no absolute scale).
    """

    mode: Literal["ct_window", "zscore"] = "ct_window"
    window: tuple[float, float] = (-175.0, 250.0)

    @field_validator("window")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError("window must be (low, high) with low < high")
        return v


class AugmentConfig(_Strict):
    """Training-time augmentation (nnU-Net-like light set used by the seed's training)."""

    flip: bool = True
    rot90: bool = True
    intensity_scale: float = Field(0.1, ge=0.0)
    intensity_shift: float = Field(0.1, ge=0.0)


class DataConfig(_Strict):
    """Where the data lives, its layout, and the preprocessing that both training and inference use."""

    layout: Literal["imagesTr", "acdc"] = "imagesTr"
    root: str = "data/phantom"
    modality: Literal["ct", "mri"] = "ct"
    classes: list[str] = Field(min_length=2)
    spacing: Triple = (1.5, 1.5, 2.0)
    intensity: IntensityConfig = IntensityConfig()
    crop_size: IntTriple = (96, 96, 96)
    foreground_oversample: float = Field(0.33, ge=0.0, le=1.0)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    augment: AugmentConfig = AugmentConfig()
    cache: bool = True

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, v: Triple) -> Triple:
        if any(not (s > 0) for s in v):
            raise ValueError("spacing must be three positive numbers (mm)")
        return v

    @field_validator("crop_size")
    @classmethod
    def _positive_crop(cls, v: IntTriple) -> IntTriple:
        if any(s < 8 for s in v):
            raise ValueError("crop_size must be at least 8 voxels on every axis")
        return v

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class DropoutConfig(_Strict):
    """Monte-Carlo dropout sites.

    ``sites`` names where dropout layers sit (see ``tunepp_deploy.model`` for the names a network
    offers); ``mode`` is ``channel`` (one Bernoulli draw per channel per sample, as Dropout3d: masks
    are tiny [S, C] tensors) or ``element`` (one draw per voxel). Everything before the first site is
    deterministic and is run once per window at inference (the trunk).
    """

    sites: list[str] = Field(default_factory=lambda: ["dec2", "dec1", "dec0"])
    p: float = Field(0.1, ge=0.0, lt=1.0)
    mode: Literal["channel", "element"] = "channel"


class ModelConfig(_Strict):
    """The TUNE++ network's shape. Field meanings are documented on the network class."""

    name: Literal["tunepp"] = "tunepp"
    in_channels: int = Field(1, ge=1)
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128, 256], min_length=2)
    depths: list[int] = Field(default_factory=lambda: [3, 3, 3, 3], min_length=2)
    decoder_depths: list[int] | None = None
    stem_stride: IntTriple = (2, 2, 2)
    heads: int = Field(4, ge=1)
    proj_tokens: int = Field(64, ge=1)
    deep_supervision: bool = True
    dropout: DropoutConfig = DropoutConfig()
    topo_lambda: float = Field(1.0, ge=0.0)
    full_res_channels: int | None = Field(None, ge=1)
    # TUPA fusion gate (model/blocks/tupa.py): "learned" = free gate, the weights of every earlier
    # checkpoint; "supervised" = fed by a predicted error probability trained by loss.lambda_gate.
    gate: Literal["learned", "supervised"] = "learned"

    @model_validator(mode="after")
    def _lengths(self) -> ModelConfig:
        if len(self.widths) != len(self.depths):
            raise ValueError("model.widths and model.depths must have the same length")
        if self.decoder_depths is not None and len(self.decoder_depths) != len(self.widths) - 1:
            raise ValueError("model.decoder_depths must have len(widths) - 1 entries")
        if any(w % self.heads for w in self.widths):
            raise ValueError("every model.widths entry must be divisible by model.heads")
        return self


class LossConfig(_Strict):
    """Loss weights. Total = Dice + CE + lambda1 L_topo + lambda2 L_unc + lambda3 L_cal + lambda4 L_hier."""

    lambda1: float = Field(0.3, ge=0.0)
    lambda2: float = Field(0.2, ge=0.0)
    lambda3: float = Field(0.1, ge=0.0)
    lambda4: float = Field(0.15, ge=0.0)
    w_b: float = Field(1.0, ge=0.0)
    w_j: float = Field(2.0, ge=0.0)
    w_a: float = Field(3.0, ge=0.0)
    topo_sigma: float = Field(2.0, gt=0.0)
    unc_samples: int = Field(8, ge=1)
    # What lambda1 weighs (docs/topology_loss.md): "voxel" = the seed's CE x (1 + w_b B + w_j J + w_a A);
    # "component" = CE x (1 + w_b B + w_j J) + w_a x (one unit per anomalous component, whatever its
    # size); "persistence" = a cubical persistent-homology loss with the truth crop's Betti numbers.
    topo_mode: Literal["voxel", "component", "persistence"] = "voxel"
    # lambda1 is 0 for the first topo_warmup_epochs epochs (learn the organs first, then their topology).
    topo_warmup_epochs: int = Field(0, ge=0)
    # persistence mode: PH of the probability maps average-pooled by this factor. 1 (exact above a
    # 1e-3 floor) took 0.15 s per B=2 48x48x32 step on trained maps; 2x pooling is 3x faster but its
    # gradient's cosine with the full one is 0.5-0.7 (docs/persistence_loss.md)
    ph_downsample: int = Field(1, ge=1)
    # soft clDice (Shit et al. 2021) on this label (e.g. the phantoms' tube, 4), weighted by cldice_weight.
    cldice_class: int | None = Field(None, ge=1)
    cldice_weight: float = Field(0.0, ge=0.0)
    # Weight of the supervised TUPA gates' error-prediction term (losses/gate.py); no effect unless
    # model.gate is "supervised".
    lambda_gate: float = Field(0.1, ge=0.0)


class TrainConfig(_Strict):
    """Optimisation schedule (AdamW, linear warm-up, cosine or poly decay)."""

    epochs: int = Field(100, ge=1)
    iters_per_epoch: int = Field(250, ge=1)
    batch_size: int = Field(2, ge=1)
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_epochs: int = Field(1, ge=0)
    schedule: Literal["cosine", "poly"] = "cosine"
    grad_clip: float = Field(12.0, gt=0.0)
    amp: bool = True
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    val_every: int = Field(1, ge=1)


class InferConfig(_Strict):
    """Sliding-window Monte-Carlo inference defaults (each can be overridden on the CLI)."""

    window: IntTriple | None = None
    overlap: float = Field(0.5, ge=0.0, lt=1.0)
    samples: int = Field(25, ge=1)
    seed: int = 0
    max_batch: int = Field(8, ge=1)
    memory_gb: float = Field(4.0, gt=0.0)


class TuneppConfig(_Strict):
    """A whole experiment: data, network, losses, training and inference defaults."""

    name: str
    data: DataConfig
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    infer: InferConfig = InferConfig()

    @model_validator(mode="after")
    def _gate_has_a_loss(self) -> TuneppConfig:
        if self.model.gate == "supervised" and self.loss.lambda_gate == 0:
            raise ValueError("model.gate 'supervised' needs loss.lambda_gate > 0 (nothing else trains its error head)")
        return self

    @property
    def window(self) -> IntTriple:
        """The inference window: explicit, else the training crop."""
        return self.infer.window or self.data.crop_size
