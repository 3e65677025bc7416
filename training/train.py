"""The training run, in the order the recipe reads: data, model, fit, fine-tune, evaluate, export."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from appliance.card import LABELS, Crop
from appliance.classifier import MaskClassifier
from training import report
from training.data import augmentation, class_weights, content_hash, load_crops, stratified_split
from training.export import export
from training.model import build_model, unfreeze_top

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: Path
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
    threshold: float = 0.5
    crop_margin: float = Crop().margin
    calibration_samples: int = 300
    io_dtype: str = "int8"
    float16: bool = False
    model_name: str = "mask_classifier.tflite"


def _strategy():
    """All visible GPUs through MirroredStrategy when there are any; the CPU otherwise."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        log.info("training on %d GPU(s)", len(gpus))
        return tf.distribute.MirroredStrategy()
    log.info("training on the CPU")
    return tf.distribute.get_strategy()


def _datasets(cfg: TrainConfig, train_x, train_y, val_x, val_y):
    import tensorflow as tf

    aug = augmentation()
    train = (
        tf.data.Dataset.from_tensor_slices((train_x, train_y))
        .shuffle(len(train_y), seed=cfg.seed, reshuffle_each_iteration=True)
        .batch(cfg.batch_size)
        .map(lambda x, y: (aug(tf.cast(x, tf.float32), training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    val = tf.data.Dataset.from_tensor_slices((tf.cast(val_x, tf.float32), val_y)).batch(64)
    return train, val


def _fit(model, cfg: TrainConfig, train, val, epochs: int, lr: float, weights: dict) -> dict:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True)
    history = model.fit(train, validation_data=val, epochs=epochs, class_weight=weights, callbacks=[stop], verbose=1)
    return history.history


def train(cfg: TrainConfig) -> dict:
    """Train, evaluate and export; returns the summary also saved as `report.json` in `cfg.out`."""
    import keras

    started = time.monotonic()
    keras.utils.set_random_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    crops = load_crops(cfg.data, cfg.input_size)
    log.info("%s: %d crops %s, %d skipped", cfg.data, len(crops), crops.counts(), len(crops.skipped))
    if cfg.test_data:
        train_set, val_set = crops, load_crops(cfg.test_data, cfg.input_size)
    else:
        train_idx, val_idx = stratified_split(crops.labels, cfg.val_fraction, cfg.seed)
        train_set, val_set = crops.subset(train_idx), crops.subset(val_idx)
    weights = class_weights(train_set.labels)

    with _strategy().scope():
        model = build_model(cfg.input_size, cfg.alpha, cfg.base_weights)
    train_ds, val_ds = _datasets(cfg, train_set.images, train_set.labels, val_set.images, val_set.labels)
    histories = [_fit(model, cfg, train_ds, val_ds, cfg.epochs, cfg.learning_rate, weights)]
    if cfg.fine_tune_epochs > 0:
        unfreeze_top(model, cfg.fine_tune_layers)
        histories.append(_fit(model, cfg, train_ds, val_ds, cfg.fine_tune_epochs, cfg.fine_tune_learning_rate,
                              weights))
    model.save(out / "model.keras")

    float_p = model.predict(val_set.images.astype(np.float32), batch_size=64, verbose=0)[:, 1]
    rng = np.random.default_rng(cfg.seed)
    calib = train_set.images[rng.choice(len(train_set), min(cfg.calibration_samples, len(train_set)), replace=False)]
    training_info = {
        "data": str(cfg.data),
        "data_sha256": content_hash(crops),
        "counts": crops.counts(),
        "skipped": len(crops.skipped),
        "train_counts": train_set.counts(),
        "validation_counts": val_set.counts(),
        "validation": str(cfg.test_data) if cfg.test_data else f"stratified {cfg.val_fraction:.0%}, seed {cfg.seed}",
        "base": f"MobileNetV2 alpha {cfg.alpha}, ImageNet ({Path(cfg.base_weights).name})",
        "epochs_run": [len(h["loss"]) for h in histories],
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
    }
    model_path = out / cfg.model_name
    card, parity = export(model, model_path, calib, val_set.images, val_set.labels,
                          threshold=cfg.threshold, crop=Crop(margin=cfg.crop_margin), training=training_info,
                          io_dtype=cfg.io_dtype)
    tflite_p = MaskClassifier(model_path).predict(val_set.images)
    validation = report.crop_metrics(tflite_p, val_set.labels, cfg.threshold)
    table = report.threshold_table(tflite_p, val_set.labels)
    card = replace(card, metrics={**card.metrics, "validation": {k: validation[k] for k in
                                                                 ("accuracy", "tnr", "fnr", "roc_auc", "n")}})
    card.save(model_path.with_suffix(".json"))
    if cfg.float16:
        export(model, out / cfg.model_name.replace(".tflite", "_fp16.tflite"), calib, val_set.images,
               val_set.labels, threshold=cfg.threshold, crop=Crop(margin=cfg.crop_margin), training=training_info,
               float16=True)

    report.plot_history(histories, out / "curves.png")
    report.plot_confusion(validation["confusion"], out / "confusion.png")
    report.plot_roc({"float keras": (float_p, val_set.labels), "int8 tflite": (tflite_p, val_set.labels)},
                    out / "roc.png")
    summary = {
        "model": str(model_path),
        "seconds": round(time.monotonic() - started, 1),
        "validation_float": report.crop_metrics(float_p, val_set.labels, cfg.threshold),
        "validation_tflite": validation,
        "parity": parity.__dict__,
        "skipped_files": crops.skipped,
        "labels": list(LABELS),
    }
    report.save_json(out / "report.json", summary)
    report.save_json(out / "thresholds.json", table)
    print(report.print_table(table))
    return summary
