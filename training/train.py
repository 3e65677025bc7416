"""The training run, in the order the recipe reads: data sources, model, fit, fine-tune, threshold, export.

Longer than this project's 200-line guide on purpose: the recipe reads top to bottom as the Keras examples do
(sources, datasets, fit, --init, export and card), one run in one place.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from appliance.seeing.card import LABELS, Crop
from appliance.seeing.classifier import MaskClassifier
from training import label, report
from training.augment import batches
from training.data import (
    CropSet,
    DataError,
    class_weights,
    content_hash,
    file_hash,
    fold_incorrect,
    load_crops,
    load_scene_crops,
    stratified_split,
)
from training.export import export, not_masked
from training.model import build_model, unfreeze_top

log = logging.getLogger(__name__)

# A door's labelled crops are few beside the shared sources (tens against thousands): unweighted they would not move
# the model. By default each door's crops together weigh this share of all the training weight (at least 1 each),
# so the door counts and the shared sources still hold most of it (the gate checks they did not slip).
DOOR_SHARE = 0.25
# --init: a few epochs of the head, gently: minutes on a laptop CPU. At 1e-4 the night door of
# tests/test_learn_loop.py cost the scenes-ilc validation part's FNR 0.034 -> 0.046; at 3e-5, 0.039 (within the gate).
INIT_EPOCHS, INIT_LEARNING_RATE = 3, 3e-5
# The float model --init starts from must give the door's int8 model's p on real crops, to within this on average
# (a recovered one is ~0.004 off; another model's checkpoint is tenths off). Decisions are not compared: the door's
# own crops sit next to the threshold by design, where quantization alone flips a few.
MAX_INIT_P_DIFFERENCE = 0.03


@dataclass
class TrainConfig:
    data: Path | list[Path]  # crop folders (with_mask/, without_mask/[, incorrect_mask/]) and scene labels.csv files
    out: Path
    base_weights: str = "imagenet"
    test_data: Path | None = None
    input_size: int = 224
    alpha: float = 1.0
    epochs: int = 20
    fine_tune_epochs: int = 0
    fine_tune_layers: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-4
    fine_tune_learning_rate: float = 1e-5
    val_fraction: float = 0.2
    seed: int = 42
    patience: int = 3
    threshold: float | None = None  # None: chosen by the door's rule on the first scene source's validation part
    threshold_scenes: Path | None = None  # a scene set to choose it on instead (its validation part), not trained on
    crop_margin: float = Crop().margin
    # Faces cut aligned by their five landmarks (Crop.align): crop folders by YuNet's landmarks on each crop, scene
    # sets by those of the detection paired with each labelled face; the card then tells the door to cut so too.
    crop_align: bool = False
    # A scene set's faces cut from its labelled boxes, the detector's, or both (training.data.SCENE_BOXES). With the
    # detector's, the validation parts are cut from the detector's boxes too (its faces the detector does not find,
    # from their labelled boxes): the threshold is then chosen on what the door sees.
    scene_boxes: str = "labelled"
    calibration_samples: int = 300
    io_dtype: str = "int8"
    float16: bool = False
    model_name: str = "mask_classifier.tflite"
    classes: int | None = None  # 2 folds incorrect_mask into without_mask; None: 3 when the data has that class
    augment: bool = True
    class_weight_power: float | None = None  # 1: inverse-frequency class weights; 0.5: their square root;
    # None: the --init model's (its card's training config), else 1
    # The int8 parity gate. Only smoke runs on a handful of crops lower it (their unsure models put many crops next
    # to the threshold); a model to ship meets the default, and the card records the gate it met.
    min_agreement: float = 0.99
    # Fine-tuning: the model to start from (the door's .tflite with its card, or a model.keras) instead of ImageNet,
    # and each source's weight per crop by name (a door's default: DOOR_SHARE of the whole training weight).
    init: Path | None = None
    weights: dict[str, float] = field(default_factory=dict)
    # Masks worn under the nose, made from the training parts (training/synth.py): one more source of this many.
    made_incorrect: int = 0
    sources: list[dict] = field(default_factory=list, repr=False)  # filled in by the run: what each source gave

    @property
    def data_list(self) -> list[Path]:
        return [Path(d) for d in (self.data if isinstance(self.data, list | tuple) else [self.data])]


@dataclass
class Source:
    """One data source's contribution: its train and validation crops and what the card records of it."""

    name: str
    train: CropSet
    val: CropSet
    info: dict
    skipped: list[str] = field(default_factory=list)


def _crop(cfg: TrainConfig) -> Crop:
    """The crop the run cuts its faces with, and its card tells the door to."""
    return Crop(margin=cfg.crop_margin, align=cfg.crop_align)


def _crop_source(path: Path, cfg: TrainConfig) -> Source:
    crops = load_crops(path, cfg.input_size, cfg.crop_align)
    if cfg.test_data:
        train_set, val_set = crops, load_crops(cfg.test_data, cfg.input_size, cfg.crop_align)
        how = f"validation from {cfg.test_data}"
    else:
        train_idx, val_idx = stratified_split(crops.labels, cfg.val_fraction, cfg.seed)
        train_set, val_set = crops.subset(train_idx), crops.subset(val_idx)
        how = f"stratified {cfg.val_fraction:.0%}, seed {cfg.seed}"
    info = {"kind": "crops", "path": str(path), "sha256": content_hash(crops), "counts": crops.counts(),
            "skipped": len(crops.skipped), "split": how}
    if cfg.crop_align:
        info["aligned"] = crops.aligned  # the others (no usable landmarks found on the crop) stay padded crops
    return Source(path.name, train_set, val_set, info, crops.skipped)


def _scene_source(path: Path, cfg: TrainConfig) -> Source:
    from training.splits import DEFAULT_SEED, DEFAULT_VAL_FRACTION, split_scenes

    train_photos, val_photos = split_scenes(path)
    crop = _crop(cfg)
    train_set = load_scene_crops(path, train_photos, cfg.input_size, crop, cfg.scene_boxes)
    val_set = load_scene_crops(path, val_photos, cfg.input_size, crop, _val_boxes(cfg))
    photos = sorted(train_photos + val_photos)
    info = {"kind": "scenes", "path": str(path),
            "sha256": file_hash([path, *map(Path, photos)]),  # the labels file, then every photo in name order
            "counts": CropSet.concat([train_set, val_set]).counts(), "photos": len(photos),
            "train_photos": len(train_photos), "validation_photos": len(val_photos),
            "skipped": len(train_set.skipped) + len(val_set.skipped),
            "split": f"by photo and near-duplicate group (training.splits), {DEFAULT_VAL_FRACTION:.0%} of photos, "
                     f"seed {DEFAULT_SEED}",
            "crop": crop.to_dict(), "boxes": {"train": cfg.scene_boxes, "validation": _val_boxes(cfg)}}
    if crop.align:
        info["aligned"] = (train_set.aligned or 0) + (val_set.aligned or 0)  # the others: no paired detection
    if (path.parent / label.STATE_FILE).is_file():
        info["kind"] = "door"  # labels the labelling page wrote: a door's own crops, held-back part for the gate
    return Source(path.parent.name, train_set, val_set, info, train_set.skipped + val_set.skipped)


def _val_boxes(cfg: TrainConfig) -> str:
    return "labelled" if cfg.scene_boxes == "labelled" else "detected"


def _made_source(cfg: TrainConfig, train: CropSet) -> Source:
    """`cfg.made_incorrect` under-nose masks made from the other sources' training parts (never validation)."""
    from training.synth import under_nose

    made = under_nose(train, cfg.made_incorrect, cfg.seed)
    info = {"kind": "made", "how": "training.synth.under_nose: an unmasked training face wearing a masked one's "
                                   "mask under the nose, aligned by YuNet's landmarks",
            "sha256": hashlib.sha256(made.images.tobytes()).hexdigest(), "counts": made.counts(),
            "requested": cfg.made_incorrect, "seed": cfg.seed, "split": "training only", "train_counts": made.counts(),
            "validation_counts": {k: 0 for k in made.counts()}}
    return Source("made", made, made.subset(np.array([], int)), info)


def sources_hash(sources: list[Source]) -> str:
    """One sha256 naming the whole training data: over each source's name and sha256, in the order given."""
    return hashlib.sha256("".join(f"{s.name}\0{s.info['sha256']}\n" for s in sources).encode()).hexdigest()


def load_sources(cfg: TrainConfig) -> list[Source]:
    sources = []
    for path in cfg.data_list:
        if path.suffix.lower() == ".csv":
            if not path.is_file():
                raise DataError(f"{path}: scene labels not found")
            source = _scene_source(path, cfg)
        else:
            source = _crop_source(path, cfg)
        source.info.update(train_counts=source.train.counts(), validation_counts=source.val.counts())
        log.info("%s: train %s, validation %s", path, source.info["train_counts"], source.info["validation_counts"])
        sources.append(source)
    if not sources:
        raise DataError("no data source given")
    return sources


def _strategy():
    """All visible GPUs through MirroredStrategy when there are any; the CPU otherwise."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        log.info("training on %d GPU(s)", len(gpus))
        return tf.distribute.MirroredStrategy()
    log.info("training on the CPU")
    return tf.distribute.get_strategy()


def _datasets(cfg: TrainConfig, train_x, train_y, train_w, val_x, val_y):
    """Training batches (x, y, weight per crop: its class weight times its source's) and the validation set."""
    import tensorflow as tf

    s = cfg.input_size
    epoch = iter(range(10**6))  # a new seed per epoch: each epoch sees new augmentations in a new order
    index = np.arange(len(train_y))

    def generate():
        # batches() shuffles and augments and passes its labels through: given indices, it tells which crops
        for x, idx in batches(train_x, index, cfg.batch_size, cfg.seed * 1000 + next(epoch), cfg.augment):
            yield x, train_y[idx], train_w[idx].astype(np.float32)

    n_batches = -(-len(train_y) // cfg.batch_size)
    train = (tf.data.Dataset.from_generator(generate, output_signature=(
        tf.TensorSpec((None, s, s, 3), tf.float32), tf.TensorSpec((None,), tf.int64),
        tf.TensorSpec((None,), tf.float32)))
        .apply(tf.data.experimental.assert_cardinality(n_batches))  # Keras then knows an epoch's length
        .prefetch(4))
    val = tf.data.Dataset.from_tensor_slices((tf.cast(val_x, tf.float32), val_y)).batch(64)
    return train, val


def _fit(model, cfg: TrainConfig, train, val, epochs: int, lr: float) -> dict:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True)
    history = model.fit(train, validation_data=val, epochs=epochs, callbacks=[stop], verbose=2)
    return history.history


def source_weights(cfg: TrainConfig, sources: list[Source]) -> dict[str, float]:
    """Each source's weight per crop: as `cfg.weights` names it, else 1, and for a door's labels DOOR_SHARE of the
    whole training weight (at least 1 per crop)."""
    names = [s.name for s in sources]
    for name, w in cfg.weights.items():
        if name not in names:
            raise DataError(f"--weight {name}={w}: no data source is named {name!r} (sources: {', '.join(names)})")
        if not 0 < w <= 1000:
            raise DataError(f"--weight {name}={w}: must be above 0 and at most 1000")
    out = {s.name: float(cfg.weights.get(s.name, 1.0)) for s in sources}
    doors = [s for s in sources if s.info["kind"] == "door" and s.name not in cfg.weights]
    fixed = sum(out[s.name] * len(s.train) for s in sources if s not in doors)
    for door in doors:
        # door crops x w = share x (fixed + all doors' weight): with one door, w = share / (1 - share) x fixed / n
        out[door.name] = round(max(1.0, DOOR_SHARE / (1 - DOOR_SHARE) * fixed / (len(doors) * len(door.train))), 3)
    return out


def _sample_weights(sources: list[Source], per_source: dict[str, float], train_y: np.ndarray,
                    class_w: dict[int, float]) -> np.ndarray:
    w = np.concatenate([np.full(len(s.train), per_source[s.name]) for s in sources])
    return w * np.array([class_w[int(y)] for y in train_y])


def _threshold_source(sources: list[Source]) -> Source | None:
    """The door threshold is chosen on the first scene source's validation part: real photos, cut as the
    appliance cuts them. Never on a door's labels: their held-back part is a few dozen faces, and the gate's."""
    return next((s for s in sources if s.info["kind"] == "scenes"), None)


def _validation_source(cfg: TrainConfig) -> Source:
    """--threshold-scenes: only the validation part of a scene set (split by photo), to choose the threshold on. A
    fine-tune chooses on the part the door's model chose on, without training on all of that set again."""
    from training.splits import split_scenes

    path = Path(str(cfg.threshold_scenes))
    if not path.is_file():
        raise DataError(f"--threshold-scenes {path}: scene labels not found")
    _, val_photos = split_scenes(path)
    val = load_scene_crops(path, val_photos, cfg.input_size, _crop(cfg), _val_boxes(cfg))
    return Source(path.parent.name, val, val, {"kind": "scenes", "path": str(path)})


def _prepare(cfg: TrainConfig):
    """Sources, the concatenated train and validation crops, the labels the model learns, and its class count."""
    if cfg.threshold_scenes is not None and not Path(cfg.threshold_scenes).is_file():  # before hours of training
        raise DataError(f"--threshold-scenes {cfg.threshold_scenes}: scene labels not found")
    if cfg.made_incorrect < 0:
        raise DataError(f"--made-incorrect {cfg.made_incorrect}: must be 0 or more")
    sources = load_sources(cfg)
    real_incorrect = any((s.train.labels == LABELS.index("incorrect_mask")).any() for s in sources)
    if cfg.made_incorrect > 0 and not real_incorrect and cfg.classes != 2 and cfg.init is None:
        # A third class learned from made faces alone, and never validated on a real one: refuse it.
        raise DataError(f"--made-incorrect {cfg.made_incorrect}: no data source has real incorrect_mask faces to "
                        "validate the made ones on (add a scene set that has them, or --classes 2)")
    if cfg.made_incorrect > 0:
        sources.append(_made_source(cfg, CropSet.concat([s.train for s in sources])))
    train_set = CropSet.concat([s.train for s in sources])
    val_set = CropSet.concat([s.val for s in sources])
    has_incorrect = bool((train_set.labels == LABELS.index("incorrect_mask")).any())
    n_classes = cfg.classes or (3 if has_incorrect else 2)
    if n_classes not in (2, 3):
        raise DataError(f"--classes {n_classes}: must be 2 or 3")
    if n_classes == 3 and not has_incorrect and cfg.init is None:  # a 3-class model to start from keeps its head
        raise DataError("--classes 3: no training source has incorrect_mask faces")
    # Labels the model learns; evaluation always keeps the true three classes, so folding is measured the same way.
    train_y = train_set.labels if n_classes == 3 else fold_incorrect(train_set.labels)
    val_y = val_set.labels if n_classes == 3 else fold_incorrect(val_set.labels)
    return sources, train_set, val_set, train_y, val_y, n_classes


def train(cfg: TrainConfig) -> dict:
    """Train, evaluate and export; returns the summary also saved as `report.json` in `cfg.out`."""
    import keras

    started = time.monotonic()
    keras.utils.set_random_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    init = None
    with _strategy().scope():
        if cfg.init is not None:
            init = start_from(cfg)
            cfg = replace(cfg, **init.fixes)
    if cfg.class_weight_power is None:
        cfg = replace(cfg, class_weight_power=(init.info.get("class_weight_power") or 1.0) if init else 1.0)
    sources, train_set, val_set, train_y, val_y, n_classes = _prepare(cfg)
    weights = class_weights(train_y, cfg.class_weight_power or 1.0)
    per_source = source_weights(cfg, sources)
    for s in sources:
        s.info["weight"] = per_source[s.name]
    log.info("%d training crops, %d validation crops, %d classes, class weights %s, source weights %s",
             len(train_set), len(val_set), n_classes, weights, per_source)

    if init is not None:
        model = init.model
        init.check(val_set)
    else:
        with _strategy().scope():
            model = build_model(cfg.input_size, cfg.alpha, cfg.base_weights, n_classes)
    train_ds, val_ds = _datasets(cfg, train_set.images, train_y, _sample_weights(sources, per_source, train_y, weights),
                                 val_set.images, val_y)
    histories = [_fit(model, cfg, train_ds, val_ds, cfg.epochs, cfg.learning_rate)]
    if cfg.fine_tune_epochs > 0:
        unfreeze_top(model, cfg.fine_tune_layers)
        histories.append(_fit(model, cfg, train_ds, val_ds, cfg.fine_tune_epochs, cfg.fine_tune_learning_rate))
    model.save(out / "model.keras")
    return _finish(cfg, model, sources, train_set, val_set, weights, n_classes, histories, started,
                   init=init.info if init else None)


@dataclass
class Init:
    """The model `--init` starts from: the Keras network, how it was had, and what the run must take from it."""

    model: Any  # a keras.Model (keras is imported only where training runs)
    info: dict
    fixes: dict  # TrainConfig fields the model decides (input size, classes, crop margin)
    door_model: Path | None = None  # the int8 model it stands for, when it came from one

    def check(self, crops: CropSet, limit: int = 500) -> None:
        """The float model must decide as the door's int8 model does (at its threshold) on real crops."""
        if self.door_model is None:
            return
        door = MaskClassifier(self.door_model)
        images = crops.images[np.linspace(0, len(crops) - 1, min(limit, len(crops))).astype(int)]
        p_float = not_masked(self.model.predict(images.astype(np.float32), batch_size=64, verbose=0))
        p_door = door.predict(images)
        agreement = float(((p_float >= door.threshold) == (p_door >= door.threshold)).mean())
        difference = float(np.abs(p_float - p_door).mean())
        self.info.update(agreement=round(agreement, 4), mean_abs_p_difference=round(difference, 4),
                         checked_on=len(images))
        log.info("--init %s: the float model's p is %.4f off the int8 model's on average, same decision on %.2f%% "
                 "of %d validation crops", self.door_model, difference, 100 * agreement, len(images))
        if difference > MAX_INIT_P_DIFFERENCE:
            raise DataError(f"--init {self.door_model}: the float model to start from is {difference:.3f} off its p "
                            f"on average over {len(images)} crops (at most {MAX_INIT_P_DIFFERENCE}): it is not "
                            "this model")


def start_from(cfg: TrainConfig) -> Init:
    """The model of `--init`: a model.keras, or a .tflite with its card. For a .tflite, the Keras checkpoint its
    card records (written beside it by `mask-train train`, sha256-checked) when it is there, else the network with
    the int8 model's own weights put back (training.export.keras_from_tflite)."""
    import keras

    from appliance.seeing.card import card_path_for, load_card
    from training.export import keras_from_tflite

    path = Path(str(cfg.init))
    if not path.is_file():
        raise FileNotFoundError(f"--init {path}: no such file (give the door's .tflite, its card beside it, or a "
                                "model.keras)")
    fixes: dict = {}
    door_model = None
    if path.suffix == ".keras":
        model = keras.models.load_model(path, compile=False)
        info: dict[str, Any] = {"from": str(path), "sha256": file_hash([path]), "weights": "Keras checkpoint"}
    elif path.suffix == ".tflite":
        card = load_card(card_path_for(path))
        if file_hash([path]) != card.sha256:
            raise DataError(f"--init {path}: its sha256 is not its card's")
        if cfg.classes is not None and cfg.classes != len(card.labels):
            raise DataError(f"--init {path}: it has {len(card.labels)} classes, not --classes {cfg.classes}")
        door_model = path
        fixes.update(crop_margin=card.crop.margin, crop_align=card.crop.align)  # its inputs are cut so
        if cfg.crop_align != card.crop.align:
            log.warning("--init %s: its card says crop.align %s: this run cuts its faces so too", path,
                        str(card.crop.align).lower())
        kept = card.training.get("keras") or {}
        checkpoint = path.with_name(str(kept.get("file", ""))) if kept else None
        # The class weighting it was trained with: fine-tuning under another would pull it toward other classes.
        info = {"from": str(path), "sha256": card.sha256, "threshold": card.threshold,
                "class_weight_power": card.training.get("config", {}).get("class_weight_power")}
        if checkpoint and checkpoint.is_file() and file_hash([checkpoint]) == kept.get("sha256"):
            model = keras.models.load_model(checkpoint, compile=False)
            info.update(weights=f"its Keras checkpoint {checkpoint.name} (sha256 {kept['sha256']})")
        else:
            model = keras_from_tflite(path)  # every weight is the door model's: no ImageNet file needed
            info.update(weights="recovered from the int8 model (dequantized kernels and biases, batch norms folded)")
    else:
        raise DataError(f"--init {path}: not a .tflite or .keras file")
    n_out = int(model.output_shape[-1])
    if cfg.classes is not None and cfg.classes != n_out:
        raise DataError(f"--init {path}: it has {n_out} classes, not --classes {cfg.classes}")
    fixes.update(input_size=int(model.input_shape[1]), classes=n_out)
    log.info("fine-tuning from %s (%s)", path, info["weights"])
    return Init(model, info, fixes, door_model)


def export_trained(cfg: TrainConfig, keras_path: Path) -> dict:
    """Export, evaluate and card a float model that `train` saved (its model.keras), on the same data sources:
    for a new calibration or threshold without training again. The card records where the model came from."""
    import keras

    started = time.monotonic()
    keras.utils.set_random_seed(cfg.seed)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    if not Path(keras_path).is_file():
        raise FileNotFoundError(f"--keras {keras_path}: no such file")
    _same_made_data(cfg, Path(keras_path))
    model = keras.models.load_model(keras_path, compile=False)
    cfg = replace(cfg, input_size=int(model.input_shape[1]))
    sources, train_set, val_set, train_y, _, n_classes = _prepare(cfg)
    if int(model.output_shape[-1]) != n_classes:
        raise DataError(f"--keras {keras_path}: {model.output_shape[-1]} outputs, but the data give {n_classes} "
                        "classes (set --classes)")
    train_info = Path(keras_path).with_name("report.json")
    histories = []
    if train_info.is_file():
        import json

        histories = json.loads(train_info.read_text()).get("histories", [])
    if cfg.class_weight_power is None:
        cfg = replace(cfg, class_weight_power=1.0)
    weights = class_weights(train_y, cfg.class_weight_power or 1.0)
    for s in sources:
        s.info["weight"] = source_weights(cfg, sources)[s.name]
    return _finish(cfg, model, sources, train_set, val_set, weights, n_classes, histories, started,
                   exported_from=str(keras_path))


def _same_made_data(cfg: TrainConfig, keras_path: Path) -> None:
    """Made masks depend on --made-incorrect and --seed: an export given others would card data the model never
    saw. The run's own card beside its model.keras says what it was trained with."""
    import json

    card = keras_path.with_name(cfg.model_name).with_suffix(".json")
    if not card.is_file():
        return
    was = (json.loads(card.read_text()).get("training") or {}).get("config") or {}
    made = was.get("made_incorrect", 0)
    for key, then, now in (("made-incorrect", made, cfg.made_incorrect), ("seed", was.get("seed"), cfg.seed)):
        if (made or cfg.made_incorrect) and then is not None and then != now:
            raise DataError(f"--keras {keras_path}: trained with --{key} {then}, not {now}: give the same to "
                            "export the data it was trained on")


def _finish(cfg: TrainConfig, model, sources: list[Source], train_set: CropSet, val_set: CropSet, weights: dict,
            n_classes: int, histories: list[dict], started: float, exported_from: str | None = None,
            init: dict | None = None) -> dict:
    out = Path(cfg.out)
    float_probs = model.predict(val_set.images.astype(np.float32), batch_size=64, verbose=0)
    float_p = not_masked(float_probs)
    rng = np.random.default_rng(cfg.seed)
    calib = train_set.images[rng.choice(len(train_set), min(cfg.calibration_samples, len(train_set)), replace=False)]
    chooser = _threshold_source(sources) if cfg.threshold_scenes is None else _validation_source(cfg)
    choice: dict = {}

    def pick_threshold(classifier: MaskClassifier) -> float:
        if cfg.threshold is not None:
            choice.update(rule=f"given: --threshold {cfg.threshold}")
            return cfg.threshold
        if chooser is None and init and init.get("threshold") is not None:
            choice.update(threshold=init["threshold"], rule="the --init model's: no scene source to choose on")
            return init["threshold"]
        if chooser is None:
            # Crop folders hold near-duplicates across the split: a threshold fitted on them would only be fitted
            # to them. Without real photos to choose on, keep the neutral 0.5.
            choice.update(threshold=0.5, rule="0.5: no scene source to choose on (the door's rule needs real "
                                              "photos: lowest FNR with TNR >= 0.97 on a scene validation part)")
            return 0.5
        choice.update(report.choose_threshold(classifier.predict(chooser.val.images), chooser.val.labels),
                      source=f"{chooser.name} validation part")
        return choice["threshold"]

    training_info = {
        "sources": [{"name": s.name, **s.info} for s in sources],
        "data_sha256": sources_hash(sources),
        "train_counts": train_set.counts(),
        "validation_counts": val_set.counts(),
        "classes": n_classes,
        "class_weights": {LABELS[k]: round(v, 4) for k, v in weights.items()},
        "augmentation": "training.augment (geometric, neighbour, erase, colour, low light, blur, down-up, jpeg)"
        if cfg.augment else "none",
        "base": f"fine-tuned from {init['from']}" if init else
        f"MobileNetV2 alpha {cfg.alpha}, ImageNet ({Path(cfg.base_weights).name})",
        "init": init,
        "source_weights": {s.name: s.info.get("weight", 1.0) for s in sources},
        "epochs_run": [len(h["loss"]) for h in histories],
        "exported_from": exported_from,
        # The float model the int8 one was made from: `--init` of this model fine-tunes from exactly these weights.
        "keras": _checkpoint(Path(exported_from) if exported_from else out / "model.keras", out),
        "config": {k: [str(x) for x in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v
                   for k, v in asdict(cfg).items() if k != "sources"},
    }
    if len(sources) == 1 and sources[0].info["kind"] == "crops":  # the single-folder card fields, as before
        training_info.update(data=str(cfg.data_list[0]), data_sha256=sources[0].info["sha256"],
                             counts=sources[0].info["counts"], skipped=sources[0].info["skipped"],
                             validation=sources[0].info["split"])
    model_path = out / cfg.model_name
    card, parity = export(model, model_path, calib, val_set.images, val_set.labels,
                          threshold=pick_threshold, crop=_crop(cfg), training=training_info,
                          io_dtype=cfg.io_dtype, min_agreement=cfg.min_agreement)
    tflite = MaskClassifier(model_path)
    threshold = card.threshold
    tflite_probs = tflite.predict_all(val_set.images)
    tflite_p = tflite.not_masked(tflite_probs)
    validation = report.crop_metrics(tflite_p, val_set.labels, threshold, tflite_probs, card.labels)
    per_source = {}
    tables = {}
    for s in sources:
        if s.info["kind"] == "made":  # training only: no validation part
            continue
        probs = tflite.predict_all(s.val.images)
        p = tflite.not_masked(probs)
        per_source[s.name] = {k: v for k, v in report.crop_metrics(p, s.val.labels, threshold, probs, card.labels)
                              .items() if k not in ("report",)}
        tables[s.name] = report.threshold_table(p, s.val.labels)
    keep = ("accuracy", "tnr", "fnr", "incorrect_stopped", "roc_auc", "n")
    card = replace(card, metrics={
        **card.metrics,
        "threshold_choice": choice,
        "validation": {k: validation[k] for k in keep},
        "validation_by_source": {name: {k: m[k] for k in (*keep, "confusion", "confusion_labels")}
                                 for name, m in per_source.items()},
    })
    card.save(model_path.with_suffix(".json"))
    if cfg.float16:
        export(model, out / cfg.model_name.replace(".tflite", "_fp16.tflite"), calib, val_set.images,
               val_set.labels, threshold=threshold, crop=_crop(cfg), training=training_info,
               float16=True, min_agreement=cfg.min_agreement)

    if histories:
        report.plot_history(histories, out / "curves.png")
    report.plot_confusion(validation["confusion"], out / "confusion.png", validation["confusion_labels"])
    report.plot_roc({"float keras": (float_p, val_set.labels), "int8 tflite": (tflite_p, val_set.labels)},
                    out / "roc.png")
    summary = {
        "model": str(model_path),
        "seconds": round(time.monotonic() - started, 1),
        "threshold": threshold,
        "threshold_choice": choice,
        "validation_float": report.crop_metrics(float_p, val_set.labels, threshold, float_probs, card.labels),
        "validation_tflite": validation,
        "validation_by_source": per_source,
        "parity": parity.__dict__,
        "skipped_files": [k for s in sources for k in s.skipped],
        "labels": list(card.labels),
        "histories": [{k: [float(v) for v in vs] for k, vs in h.items()} for h in histories],
    }
    report.save_json(out / "report.json", summary)
    report.save_json(out / "thresholds.json", tables)
    print(f"threshold {threshold} ({choice.get('rule', '')}; {choice.get('source', '')})")
    if choice.get("met") is False:
        log.warning("threshold %s: no threshold catches %s of the validation part's unmasked faces", threshold,
                    report.MIN_TNR)
    elif choice.get("incorrect_met") is False:
        log.warning("threshold %s: no threshold keeps %s of the incorrectly worn masks stopped at FNR <= %s; chosen "
                    "by TNR alone", threshold, report.MIN_INCORRECT, report.MAX_FNR)
    for name, table in tables.items():
        print(f"validation part of {name}, int8 model, by threshold:")
        print(report.print_table(table))
    return summary


def _checkpoint(keras_path: Path, out: Path) -> dict | None:
    """{file, sha256} of the Keras checkpoint when it sits in the output folder (a card names files beside it)."""
    if not keras_path.is_file() or keras_path.resolve().parent != out.resolve():
        return None
    return {"file": keras_path.name, "sha256": file_hash([keras_path])}
