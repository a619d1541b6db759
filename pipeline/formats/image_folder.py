"""Data format `image_folder`: <root>/<class name>/<image>, decoded with Pillow, converted to the
colour mode and resized to the size in params. Class names are the folder names, in sorted order,
unless params give them. An image that cannot be decoded stops the stage, or is skipped and
reported, as `data.image_folder.unreadable` says.

The images are the files named *.png, *.jpg, *.jpeg, *.gif, *.webp, *.bmp, *.tif, *.tiff (any case),
in the class folder or below it; an animated GIF, WebP or PNG, or a multi-page TIFF, gives its first
frame. Hidden files and folders (a name starting with `.`: macOS's .DS_Store and AppleDouble `._x.png`)
and Windows' Thumbs.db and desktop.ini are not examples. The EXIF orientation (a phone's rotation)
is applied. Pixels become 8 bits: 16-bit images (Pillow's I;16 and 16-bit RGB/RGBA) keep their high
byte, 32-bit integer images (I) are read as 16-bit, float images (F) as 0..1; alpha is dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError, first_line
from pipeline.formats.base import Decoded, Part, Scan
from pipeline.formats.folders import class_files, is_example

NAME = "image_folder"
KIND = "image"  # the kind of data it yields (pipeline/kinds.py)
EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")


DECODE_IN_PROCESSES = True  # decoding and resizing are the work: prepare spreads them over every core
IMAGES_PER_CHUNK = 64  # a chunk is ~10-50 ms of decoding: enough to outweigh handing it to a worker


def scan(raw_dir: Path, section) -> Scan:
    """Every image file's class (its folder) and path; nothing is decoded yet."""
    names, labels, keys = list_images(raw_dir, section.train, section.class_names)
    parts = {"train": Part("train", labels, keys)}
    if section.test:
        _, labels, keys = list_images(raw_dir, section.test, names)
        parts["test"] = Part("test", labels, keys)
    height, width = section.image_size
    return Scan(parts, names, (height, width, 1 if section.color_mode == "grayscale" else 3), KIND)


def list_images(raw_dir: Path, folder: str, class_names: list[str] | None) -> tuple[list[str], np.ndarray, list]:
    """Class names, each image's label and its path relative to `raw_dir`, class by class, sorted."""
    return class_files(raw_dir, folder, class_names, EXTENSIONS, "data.image_folder", "image")


def is_image_file(path: Path, folder: Path) -> bool:
    """Whether `path`, found under `folder`, is an example (the predictor lists folders with it)."""
    return is_example(path, folder, EXTENSIONS)


def chunks(raw_dir: Path, section, scan: Scan, part: str, start: int = 0, stop: int | None = None):
    """(position, image paths relative to the raw directory), IMAGES_PER_CHUNK at a time."""
    keys = scan.parts[part].keys
    stop = len(keys) if stop is None else min(stop, len(keys))
    step = min(IMAGES_PER_CHUNK, scan.chunk_examples())
    for position in range(start, stop, step):
        yield position, keys[position : min(position + step, stop)]


def decode_options(section, scan: Scan) -> dict:
    return {"size": tuple(section.image_size), "color_mode": section.color_mode, "unreadable": section.unreadable}


def decode(payload: list[str], raw_dir: Path, options: dict) -> Decoded:
    """The images of `payload` (paths relative to `raw_dir`) decoded, converted and resized; an
    undecodable one stops prepare with one line, or is skipped and named (`unreadable: skip`)."""
    height, width = options["size"]
    channels = 1 if options["color_mode"] == "grayscale" else 3
    images = np.empty((len(payload), height, width, channels), dtype=np.uint8)
    skipped: list[tuple[int, str]] = []
    kept = 0
    for offset, key in enumerate(payload):
        path = Path(raw_dir) / key
        try:
            images[kept] = load_image(path, options["size"], options["color_mode"])
        except UnreadableImage as exc:
            if options["unreadable"] == "fail":
                raise PipelineError(
                    f"{path}: unreadable image ({exc}); set data.image_folder.unreadable: skip to leave such files out"
                ) from None
            skipped.append((offset, key))
            continue
        kept += 1
    return Decoded(images[:kept], skipped)


class UnreadableImage(OSError):
    """An image Pillow cannot or must not decode (corrupt, truncated, or a decompression bomb)."""


def load_image(path: Path, size: tuple[int, int], color_mode: str) -> np.ndarray:
    """One image as (height, width, channels) uint8, the one decoder prepare and the predictor share.

    Raises UnreadableImage (an OSError) when undecodable. An image declaring more pixels than
    Pillow's MAX_IMAGE_PIXELS (~89 M, a decompression bomb: a small file that would inflate to
    gigabytes) is refused from its header, before any pixel is decoded."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return _decode(image, size, color_mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(f"decompression bomb refused: {first_line(exc)}") from None
    except UnidentifiedImageError:
        raise UnreadableImage("not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors for corrupt and truncated files
        raise UnreadableImage(f"{type(exc).__name__}: {first_line(exc)}") from None


def _decode(image, size: tuple[int, int], color_mode: str) -> np.ndarray:
    from PIL import ExifTags, Image, ImageOps

    # A phone's rotation, before anything is resized; read first, so that the usual image (no
    # orientation, or 1) is not copied by exif_transpose.
    if image.getexif().get(ExifTags.Base.Orientation, 1) in (2, 3, 4, 5, 6, 7, 8):
        image = ImageOps.exif_transpose(image)
    image = _eight_bits(image)
    mode = "L" if color_mode == "grayscale" else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _eight_bits(image):
    """`image` in a mode of 8 bits per channel, scaled, where Pillow's own convert would clip: it
    maps I;16, I and F to L by clipping at 255 (a 16-bit scan would come out white). 16-bit values
    keep their high byte, as Pillow's decoder does for 16-bit RGB; I is read as 16-bit; F as 0..1.
    Palette images go through RGBA, which carries a transparency Pillow would otherwise warn about."""
    from PIL import Image

    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        grey = np.asarray(image).astype(np.int64)
        return Image.fromarray((np.clip(grey, 0, 65535) >> 8).astype(np.uint8))
    if mode == "F":
        grey = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        return Image.fromarray(np.round(np.clip(grey, 0.0, 1.0) * 255).astype(np.uint8))
    if mode in ("P", "PA"):
        return image.convert("RGBA")
    return image
