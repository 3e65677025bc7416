"""Augmentation aimed at the faces the old model got wrong on real photos: colour and hue shifts (pink and printed
masks), blur, low light and gamma, JPEG artefacts, downscale-upscale (small far faces), random erasing (hands,
phones, other people in front of a face) that never hides the mouth-and-nose region, and a neighbour's face at the
crop border (crowds). Numpy and OpenCV on uint8 RGB crops, one crop at a time, so it runs beside the training step.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np

# Where mouth and nose sit in a crop, as fractions of its side (x1, y1, x2, y2). A labelled face box spans about
# 0.12..0.88 of the appliance's square crop (15% margin); nose and mouth take about 25%..75% across and 40%..90% down
# the box, which is 0.31..0.69 across and 0.42..0.81 down the crop: the region below is that, grown a little for
# crops of other tightness (the mask-crops folders are cut closer).
MOUTH_NOSE = (0.25, 0.38, 0.75, 0.90)


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def geometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small rotation, zoom and shift, and a horizontal flip: faces stay where the crop puts them."""
    s = img.shape[0]
    angle = rng.uniform(-15, 15)
    scale = rng.uniform(0.9, 1.12)
    m = cv2.getRotationMatrix2D((s / 2, s / 2), angle, scale)
    m[:, 2] += rng.uniform(-0.06, 0.06, 2) * s
    out = cv2.warpAffine(img, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out[:, ::-1].copy() if rng.random() < 0.5 else out


def neighbour(img: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A strip of another face at the left or right border, as in a crowd; it stops short of the mouth region."""
    s = img.shape[0]
    width = int(rng.uniform(0.10, MOUTH_NOSE[0]) * s)
    if width < 2:
        return img
    other = cv2.resize(other, (s, s)) if other.shape[0] != s else other
    out = img.copy()
    if rng.random() < 0.5:
        out[:, :width] = other[:, s - width:]  # the right half of the neighbour sits at our left
    else:
        out[:, s - width:] = other[:, :width]
    return out


def colour(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hue (small, or now and then any shift: a blue mask becomes a pink one), saturation, brightness, contrast."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.int16)
    shift = rng.integers(0, 180) if rng.random() < 0.2 else rng.integers(-10, 11)
    hsv[..., 0] = (hsv[..., 0] + shift) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    out = (out - 128.0) * rng.uniform(0.7, 1.3) + 128.0 + rng.uniform(-30, 30)
    return np.clip(out, 0, 255).astype(np.uint8)


def low_light(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Darker by a gamma of 1.5..3, with sensor noise, as at night or indoors."""
    out = 255.0 * (img.astype(np.float32) / 255.0) ** rng.uniform(1.5, 3.0)
    out += rng.normal(0, rng.uniform(1, 8), img.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Out of focus (Gaussian) or moving (a line kernel at a random angle)."""
    k = int(rng.choice([3, 5, 7]))
    if rng.random() < 0.5:
        return cv2.GaussianBlur(img, (k, k), 0)
    line = np.zeros((k, k), np.float32)
    line[k // 2] = 1.0 / k
    kernel = cv2.warpAffine(line, cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1.0),
                            (k, k))
    kernel = (kernel / max(float(kernel.sum()), 1e-6)).astype(np.float32)
    return cv2.filter2D(img, -1, kernel)


def down_up(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A far face: shrunk to 16..56 px and blown back up."""
    s = img.shape[0]
    small = int(rng.integers(16, 57))
    tiny = cv2.resize(img, (small, small), interpolation=cv2.INTER_AREA)
    return cv2.resize(tiny, (s, s), interpolation=cv2.INTER_LINEAR)


def jpeg(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Web and stream compression at quality 15..60."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(15, 61))])
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else None
    return img if decoded is None else decoded


def erase(img: np.ndarray, rng: np.random.Generator, tries: int = 30) -> np.ndarray:
    """A rectangle of noise or one colour (a hand, a phone, a shoulder) placed anywhere except over mouth and nose:
    hiding those would turn a masked face into one whose mask nobody could see, under a "with_mask" label."""
    s = img.shape[0]
    for _ in range(tries):
        area = rng.uniform(0.04, 0.15) * s * s
        aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
        w, h = int(np.sqrt(area * aspect)), int(np.sqrt(area / aspect))
        if not (2 <= w < s and 2 <= h < s):
            continue
        x, y = int(rng.integers(0, s - w)), int(rng.integers(0, s - h))
        if _overlaps((x / s, y / s, (x + w) / s, (y + h) / s), MOUTH_NOSE):
            continue
        out = img.copy()
        if rng.random() < 0.5:
            out[y:y + h, x:x + w] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        else:
            out[y:y + h, x:x + w] = rng.integers(0, 256, 3, dtype=np.uint8)
        return out
    return img


# (probability, step): applied in this order, each independently.
STEPS = (
    (0.15, "neighbour"),
    (0.25, "erase"),
    (0.8, "colour"),
    (0.2, "low_light"),
    (0.2, "blur"),
    (0.25, "down_up"),
    (0.3, "jpeg"),
)


def augment(img: np.ndarray, rng: np.random.Generator, pool: np.ndarray | None = None) -> np.ndarray:
    """One augmented copy of an RGB uint8 crop; `pool` holds other crops to borrow a neighbour from."""
    out = geometric(img, rng)
    for p, step in STEPS:
        if rng.random() >= p:
            continue
        if step == "neighbour":
            if pool is not None and len(pool):
                out = neighbour(out, pool[rng.integers(0, len(pool))], rng)
        else:
            out = globals()[step](out, rng)
    return out


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
            enabled: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of shuffled, augmented (x float32, y int64) batches; each call to a new epoch reshuffles."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        x = np.stack([augment(images[j], rng, images) if enabled else images[j] for j in idx]).astype(np.float32)
        yield x, labels[idx]
