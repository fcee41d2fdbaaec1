"""The config schema: one frozen dataclass per section, one field per key.

Each field carries its default and, in its metadata, what the validator
checks (``choices``, ``low``/``high``) and the ``doc`` that ``--help`` and
docs/configuration.md show. Nothing here reads files or checks values:
:mod:`vggtl.config.validate` does, :mod:`vggtl.config.load` builds a
:class:`Config` from YAML. A built config is immutable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from vggtl.backbones import registry
from vggtl.backbones.spec import Spec
from vggtl.data import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, RESIZE_POLICIES

NAMED_COLORS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}


def _key(default=dataclasses.MISSING, *, choices=None, low=None, high=None, doc="", **kw):
    """A config field with validation metadata; mutable defaults via ``default_factory``."""
    meta = {"choices": choices, "low": low, "high": high, "doc": doc}
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: list(value) if isinstance(value, list) else dict(value), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass(frozen=True)
class SplitConfig:
    val: float = _key(0.15, low=0.0, high=0.9, doc="fraction of each class held out for validation")
    test: float = _key(0.15, low=0.0, high=0.9, doc="fraction of each class held out for test")
    seed: int | None = _key(None, low=0, high=2**31 - 1,
                            doc="seed of the split; null = the run's seed (vary one with the other fixed)")


@dataclass(frozen=True)
class DataConfig:
    root: str = _key(doc="class-per-folder image tree, or a tree with train/ val/ test/ subfolders")
    csv: str | None = _key(None, doc="a CSV file with columns path,label[,split] (paths relative to data.root) instead of "
                                     "class folders")
    split: SplitConfig = field(default_factory=SplitConfig)
    image_size: int | None = _key(None, low=32, high=1024,
                                  doc="square input side in pixels; null = the backbone's own (224, inception_v3: 299)")
    extensions: list[str] = _key(list(IMAGE_EXTENSIONS), doc="file extensions scanned (case-insensitive)")
    background: Any = _key("white", doc="color alpha is composited over: white|black|gray or [r, g, b]")
    resize: str = _key(
        "stretch",
        choices=RESIZE_POLICIES,
        doc="stretch like Keras; center_crop the central square; pad: fit the whole image, aspect kept, padded with the background; trim_pad: crop away background margins first (clipart, product shots)",
    )
    max_pixels: int = _key(DEFAULT_MAX_PIXELS, low=1, high=DEFAULT_MAX_PIXELS, doc="images with more pixels are skipped "
                           "as decompression bombs (at most Pillow's own ceiling, the default)")


@dataclass(frozen=True)
class BackboneConfig:
    name: str = _key(registry.DEFAULT, choices=tuple(registry.ARCHITECTURES), doc="convolutional base (ImageNet-pretrained)")
    weights: str | None = _key("imagenet", doc="imagenet | path to a .h5/.weights.h5 file | null (random init)")
    layer: str | None = _key(
        None,
        doc="layer whose activations are cached; null = the backbone's top (vgg16: block5_pool); several joined bottom to top with '+' (block4_pool+block5_pool) are concatenated on the top one's grid; see README",
    )
    mirror_average: bool = _key(
        False,
        doc="features = the average of the image's and its left-right mirror image's maps (twice the extraction and prediction time; see docs/accuracy.md)",
    )
    width: float = _key(1.0, low=0.01, high=1.0, doc="fraction of every convolution's channels; below 1 (vgg16/vgg19, weights: "
                        "null only): a narrow random network for smoke tests of a pipeline (the test suite's: 0.125)")


@dataclass(frozen=True)
class CacheConfig:
    path: str = _key("experiments/cache", doc="directory holding the HDF5 feature stores")
    dtype: str = _key("float16", choices=("float16", "float32"), doc="stored feature precision")
    compression: str | None = _key(None, choices=(None, "lzf", "gzip"), doc="HDF5 chunk compression")


@dataclass(frozen=True)
class ExtractConfig:
    batch_size: int = _key(16, low=1, high=1024, doc="images per forward pass")
    workers: int = _key(2, low=1, high=64, doc="engine local: parallel image decoders; engine ray: Ray actors running the base")
    engine: str = _key(
        "local", choices=("local", "ray"),
        doc="local: this process; ray: actors on a Ray cluster (optional extra vggtl[ray]; docs/scale-out.md)",
    )
    ray_address: str | None = _key(
        None, doc="engine ray: null = start a local Ray instance in-process; auto or ray://host:port = join a running cluster"
    )
    runtime: str = _key(
        "tensorflow", choices=("tensorflow", "openvino", "onnxruntime"),
        doc="what runs the frozen base: tensorflow, or the same model converted once to openvino / onnxruntime (optional extras)",
    )
    precision: str = _key(
        "fp32", choices=("fp32", "int8"),
        doc="int8: post-training quantization of the frozen base (openvino with NNCF, onnxruntime), calibrated on training images",
    )
    calibration_images: int = _key(100, low=1, high=100_000, doc="training images the int8 quantization is calibrated on")


@dataclass(frozen=True)
class HeadConfig:
    pooling: str = _key(
        "avg",
        choices=("flatten", "avg", "max", "avgmax", "avg_sqrt", "max_sqrt", "avgmax_sqrt"),
        doc="how the 7x7x512 map becomes a vector (avgmax: both, concatenated; *_sqrt: then its square root, power normalisation)",
    )
    standardize: bool = _key(True, doc="standardize pooled features with training-set mean/variance")
    units: list[int] = _key([512], high=16384, doc="hidden Dense layer widths (relu); [] for a linear softmax")
    dropout: float = _key(0.5, low=0.0, high=0.95, doc="dropout after each hidden layer (and before the softmax)")
    l2: float = _key(1e-3, low=0.0, high=1.0, doc="L2 penalty on Dense kernels")
    probe: bool = _key(
        True, doc="average the head's probabilities with a logistic-regression probe on the same pooled features (steadier on small data)"
    )


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _key(100, low=1, high=10_000, doc="maximum epochs (early stopping usually ends sooner)")
    batch_size: int = _key(32, low=1, high=4096, doc="head training batch size")
    optimizer: str = _key("adam", choices=("adam", "sgd", "rmsprop", "adamw"), doc="optimizer")
    learning_rate: float = _key(1e-3, low=1e-7, high=10.0, doc="optimizer learning rate")
    early_stopping_patience: int = _key(
        10, low=0, high=10_000, doc="epochs without improvement of the validation cross-entropy before stopping; 0 = off"
    )
    min_delta: float = _key(
        1e-3, low=0.0, high=1.0, doc="smallest fall of the validation cross-entropy (no L2 term) that counts as an improvement"
    )
    folds: int = _key(0, low=0, high=20, doc="also cross-validate head and probe with this many stratified folds of train + val; 0 = off")
    class_weight: str = _key("balanced", choices=("balanced", "none"), doc="reweight classes by inverse frequency")
    temperature: bool = _key(
        False, doc="fit a temperature on the validation split after training and build it into the model (calibrated confidences)"
    )
    label_smoothing: float = _key(0.0, low=0.0, high=0.5, doc="label smoothing of the cross-entropy")


@dataclass(frozen=True)
class FinetuneConfig:
    blocks: int = _key(
        0, low=0, high=4, doc="top blocks/stages of the backbone to fine-tune after the head: 0 = off, 1 = VGG block5, 2 = blocks 4-5, ..."
    )
    epochs: int = _key(30, low=1, high=10_000, doc="maximum fine-tuning epochs (phase 2)")
    optimizer: str = _key("sgd", choices=("adam", "sgd", "rmsprop", "adamw"), doc="phase-2 optimizer (sgd has momentum 0.9)")
    learning_rate: float = _key(1e-4, low=1e-8, high=1.0, doc="phase-2 learning rate; keep it low")
    early_stopping_patience: int = _key(5, low=0, high=10_000, doc="phase-2 epochs without improvement of the validation cross-entropy (no L2 term); 0 = off")
    batch_size: int = _key(16, low=1, high=4096, doc="phase-2 batch size (the global batch, split across devices)")
    devices: Any = _key(
        "auto", doc="phase-2 devices: auto (every GPU when 2+, else one) or N replicas (N GPUs, or the CPU split into N logical devices)"
    )


@dataclass(frozen=True)
class AugmentConfig:
    views: int = _key(0, low=0, high=64, doc="augmented views stored per training image; 0 = off")
    horizontal_flip: bool = _key(True, doc="random left-right flip")
    vertical_flip: bool = _key(False, doc="random top-bottom flip")
    rotation: float = _key(15.0, low=0.0, high=180.0, doc="max rotation in degrees")
    zoom: float = _key(0.1, low=0.0, high=0.9, doc="max zoom in/out as a fraction")
    shear: float = _key(0.0, low=0.0, high=45.0, doc="max shear in degrees")
    width_shift: float = _key(0.1, low=0.0, high=0.9, doc="max horizontal shift as a fraction of the width")
    height_shift: float = _key(0.1, low=0.0, high=0.9, doc="max vertical shift as a fraction of the height")
    brightness: float = _key(0.1, low=0.0, high=0.9, doc="max brightness change as a fraction")


@dataclass(frozen=True)
class BaselineConfig:
    scratch: bool = _key(False, doc="also train the tutorials' small CNN from scratch on the same split, for the report")
    image_size: int = _key(64, low=16, high=512, doc="input side of the from-scratch CNN")
    epochs: int = _key(100, low=1, high=10_000, doc="maximum epochs of the from-scratch CNN")
    patience: int = _key(15, low=1, high=10_000, doc="its early-stopping patience on the validation cross-entropy")


# What `vggtl tune` searches unless `tune.space` says otherwise (measured on
# clipart8: pooling and dropout move the cross-validated accuracy most).
DEFAULT_TUNE_SPACE = {
    "head.pooling": ["avg", "max", "avgmax", "avg_sqrt", "avgmax_sqrt"],
    "head.units": [[], [256], [512], [1024]],
    "head.dropout": {"low": 0.0, "high": 0.8},
    "head.l2": {"low": 1e-5, "high": 1e-1, "log": True},
    "head.probe": [True, False],
    "train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
    "train.label_smoothing": {"low": 0.0, "high": 0.2},
}
TUNABLE_SECTIONS = ("head", "train")
TUNABLE_CLASSES = {"head": HeadConfig, "train": TrainConfig}
NOT_TUNABLE = ("train.folds",)


@dataclass(frozen=True)
class TuneConfig:
    trials: int = _key(30, low=1, high=10_000, doc="trials of `vggtl tune` (--trials)")
    folds: int = _key(5, low=2, high=20, doc="stratified folds of train + val each trial is cross-validated on")
    jobs: int = _key(0, low=0, high=64, doc="trials run in parallel processes; 0 = one per CPU core")
    seed: int | None = _key(None, low=0, high=2**31 - 1, doc="seed of the sampler; null = the run's seed")
    space: dict = _key(
        DEFAULT_TUNE_SPACE,
        doc="dotted head.*/train.* keys -> a list of choices or {low, high, log}; replaces the default space as a whole",
    )


@dataclass(frozen=True)
class SearchParam:
    """One dimension of the tuning space: ``choices``, or a ``low``..``high`` range."""

    key: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False


@dataclass(frozen=True)
class AuditConfig:
    near_duplicate: float = _key(
        0.98, low=0.0, high=1.0,
        doc="cosine similarity of avg-pooled cached features at or above which two images are near-duplicates "
            "(the leakage audit: in different splits; vggtl audit: anywhere)",
    )
    folds: int = _key(5, low=2, high=50,
                      doc="vggtl audit: folds of the out-of-fold probabilities label issues are ranked by")
    learning_curve: bool = _key(True, doc="vggtl audit: also fit a learning curve (would more images help?); "
                                "off: the audit takes a few seconds instead of tens")


@dataclass(frozen=True)
class UnknownConfig:
    keep: float | None = _key(0.95, low=0.0, high=1.0, doc="say 'unknown' for images of none of the classes: the "
                              "threshold keeps this fraction of val images (above 0, at most 1); null = off")


@dataclass(frozen=True)
class PredictConfig:
    unknown: UnknownConfig = field(default_factory=UnknownConfig)


@dataclass(frozen=True)
class OutputConfig:
    dir: str = _key("experiments", doc="where versioned artifacts are written")
    gradcam: int = _key(6, low=0, high=100, doc="report.html: the most confident test errors shown with a Grad-CAM "
                        "overlay (at the head's input, from the cached features: no pass of the base); 0 = none")


@dataclass(frozen=True)
class Config:
    name: str = _key(doc="run name; artifacts go to <output.dir>/<name>/v<N>/")
    seed: int = _key(1337, low=0, high=2**31 - 1, doc="seed for the split, initialisation and training")
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    # Not a config key: the backbone resolved from the keys above, attached once
    # by config.load / from_dict; every stage reads names, sizes and layer roles from it.
    spec: Spec | None = field(default=None, repr=False, compare=False, metadata={"derived": True})

    def to_dict(self) -> dict:
        """The config keys as plain data (what config.yaml and digests hold)."""
        return {name: _plain(getattr(self, name)) for name in key_fields(Config)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def split_seed(self) -> int:
        """The seed the split is made with: ``data.split.seed``, else ``seed``."""
        return self.seed if self.data.split.seed is None else self.data.split.seed

    @property
    def tune_seed(self) -> int:
        """The seed of the tuning sampler: ``tune.seed``, else ``seed``."""
        return self.seed if self.tune.seed is None else self.tune.seed

    def digest(self) -> str:
        """sha256 of the resolved config (stable key order)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _plain(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def key_fields(cls) -> dict[str, dataclasses.Field]:
    """The fields of ``cls`` that are config keys (derived ones such as ``Config.spec`` are not)."""
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("derived")}
