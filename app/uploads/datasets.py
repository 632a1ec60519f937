"""Training datasets: a zip (or loose files) checked once at the gateway, stored as PNGs and a manifest.

A dataset is images, each with an optional caption in a same-name ``.txt`` file beside it. Nothing is ever
extracted to disk; still, every entry is checked before a byte of it is used, and a bad dataset is refused
with 422 and leaves nothing stored:

* the archive: at most ``MAX_DATASET_BYTES``; at most ``MAX_ZIP_ENTRIES`` entries; declared uncompressed
  sizes at most ``MAX_DATASET_UNCOMPRESSED`` in all and ``MAX_UPLOAD_BYTES`` an image; a compression ratio of
  at most ``MAX_ZIP_RATIO`` (a zip bomb); no encrypted entries; reads are bounded by the declared sizes;
* names: no absolute paths, drive letters, ``..`` parts, backslashes or control characters;
* files: images (PNG, JPEG, WEBP, with every check of an input image, at least ``MIN_TRAINING_IMAGE_SIDE``
  a side) and UTF-8 captions of at most ``MAX_CAPTION_CHARS``; anything else is refused by name (hidden files
  and ``__MACOSX/`` are skipped); a caption without an image is refused; at least ``MIN_DATASET_IMAGES`` and at
  most ``MAX_DATASET_IMAGES`` images.

The stored form (under a prefix: ``uploads/<id>/`` for a dataset upload, ``inputs/<job>/dataset/`` for one
sent with a training): ``0000.png``, ``0001.png``, ... and ``dataset.json`` (``DatasetManifest``).
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

from pydantic import BaseModel

from app.uploads.images import DecodedImage, decode_image
from sdserve.contract.limits import MAX_UPLOAD_BYTES
from sdserve.contract.problems import FieldError, InvalidRequest
from sdserve.storage.base import ObjectStore, check_key
from sdserve.trainings.requests import (
    MAX_CAPTION_CHARS,
    MAX_DATASET_IMAGES,
    MIN_DATASET_IMAGES,
    MIN_TRAINING_IMAGE_SIDE,
)

MAX_DATASET_BYTES = 100 * 1024 * 1024
"""Largest dataset zip (or multipart dataset), in bytes."""
MAX_DATASET_UNCOMPRESSED = 512 * 1024 * 1024
"""Most bytes a dataset zip may hold uncompressed, in all."""
MAX_ZIP_ENTRIES = 2 * MAX_DATASET_IMAGES + 64
"""Most entries (files and folders) in a dataset zip."""
MAX_ZIP_RATIO = 100
"""Largest uncompressed / compressed size of a dataset zip (and of any entry over 1 MiB)."""
MAX_CAPTION_BYTES = 4 * MAX_CAPTION_CHARS
"""Largest caption file, in bytes (UTF-8)."""
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
ZIP_MAGIC = b"PK\x03\x04"


class DatasetInvalid(InvalidRequest):
    """A dataset that cannot be used; ``field`` names the part of the request it came in."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", errors=[FieldError(field, reason)])


class DatasetItem(BaseModel):
    """One stored image of a dataset."""

    key: str
    name: str
    caption: str | None
    width: int
    height: int
    sha256: str


class DatasetManifest(BaseModel):
    """``dataset.json``: the images in order, their captions, and one hash of it all."""

    sha256: str
    count: int
    images: list[DatasetItem]


@dataclass(frozen=True)
class CheckedImage:
    name: str
    image: DecodedImage
    caption: str | None


def is_zip(data: bytes) -> bool:
    return data[:4] == ZIP_MAGIC


def _check_name(name: str, field: str) -> PurePosixPath:
    if "\\" in name or "\x00" in name or any(ord(c) < 32 for c in name):
        raise DatasetInvalid(field, f"entry {name!r}: backslashes and control characters are not allowed")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise DatasetInvalid(field, f"entry {name!r}: absolute paths are not allowed")
    path = PurePosixPath(name)
    if ".." in path.parts:
        raise DatasetInvalid(field, f"entry {name!r}: '..' is not allowed in a name")
    return path


def _skipped(path: PurePosixPath) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in path.parts)


def read_zip(data: bytes, field: str) -> list[tuple[str, bytes]]:
    """The files of a dataset zip, every entry checked before it is read."""
    if len(data) > MAX_DATASET_BYTES:
        raise DatasetInvalid(field, f"the dataset is {len(data):,} bytes; the limit is {MAX_DATASET_BYTES:,}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise DatasetInvalid(field, f"not a readable zip file ({exc})") from None
    if len(infos) > MAX_ZIP_ENTRIES:
        raise DatasetInvalid(field, f"the zip has {len(infos)} entries; at most {MAX_ZIP_ENTRIES}")
    declared = sum(info.file_size for info in infos)
    if declared > MAX_DATASET_UNCOMPRESSED:
        raise DatasetInvalid(
            field, f"the zip holds {declared:,} bytes uncompressed; at most {MAX_DATASET_UNCOMPRESSED:,}"
        )
    if declared > MAX_ZIP_RATIO * max(len(data), 1):
        raise DatasetInvalid(field, f"the zip expands {declared / max(len(data), 1):.0f}x; at most {MAX_ZIP_RATIO}x")
    files: list[tuple[str, bytes]] = []
    for info in infos:
        path = _check_name(info.filename, field)
        if info.is_dir() or _skipped(path):
            continue
        if info.flag_bits & 0x1:
            raise DatasetInvalid(field, f"entry {info.filename!r} is encrypted")
        limit = MAX_CAPTION_BYTES if path.suffix.lower() == ".txt" else MAX_UPLOAD_BYTES
        if info.file_size > limit:
            raise DatasetInvalid(field, f"entry {info.filename!r} is {info.file_size:,} bytes; at most {limit:,}")
        if info.file_size > 1024 * 1024 and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
            raise DatasetInvalid(field, f"entry {info.filename!r} expands more than {MAX_ZIP_RATIO}x")
        try:
            with archive.open(info) as handle:
                content = handle.read(info.file_size + 1)  # never more than it declared
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as exc:
            raise DatasetInvalid(field, f"entry {info.filename!r} cannot be read ({exc})") from None
        if len(content) > info.file_size:
            raise DatasetInvalid(field, f"entry {info.filename!r} is larger than it declares")
        files.append((str(path), content))
    return files


def check_files(files: list[tuple[str, bytes]], field: str) -> list[CheckedImage]:
    """Pair images with their captions and check every one; the images sorted by name."""
    images: dict[str, tuple[str, bytes]] = {}
    captions: dict[str, tuple[str, str]] = {}
    for name, content in files:
        path = _check_name(name, field)
        if _skipped(path):
            continue
        stem = str(path.with_suffix(""))
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            if stem in images:
                raise DatasetInvalid(field, f"two images are named {stem!r} (one caption could not tell them apart)")
            images[stem] = (name, content)
        elif suffix == ".txt":
            try:
                text = content.decode("utf-8-sig").strip()
            except UnicodeDecodeError:
                raise DatasetInvalid(field, f"caption {name!r} is not UTF-8 text") from None
            if len(text) > MAX_CAPTION_CHARS:
                raise DatasetInvalid(field, f"caption {name!r} has {len(text)} characters; at most {MAX_CAPTION_CHARS}")
            captions[stem] = (name, text)
        else:
            raise DatasetInvalid(field, f"entry {name!r} is neither an image (PNG, JPEG, WEBP) nor a .txt caption")
    orphans = sorted(name for stem, (name, _) in captions.items() if stem not in images)
    if orphans:
        raise DatasetInvalid(field, f"caption {orphans[0]!r} has no image of the same name")
    if not MIN_DATASET_IMAGES <= len(images) <= MAX_DATASET_IMAGES:
        raise DatasetInvalid(
            field, f"the dataset has {len(images)} images; between {MIN_DATASET_IMAGES} and {MAX_DATASET_IMAGES}"
        )
    checked: list[CheckedImage] = []
    for stem in sorted(images):
        name, content = images[stem]
        decoded = decode_image(content, field=f"{field}[{name}]", kind="image")
        if min(decoded.width, decoded.height) < MIN_TRAINING_IMAGE_SIDE:
            raise DatasetInvalid(
                field, f"image {name!r} is {decoded.width}x{decoded.height}; each side must be at least "
                f"{MIN_TRAINING_IMAGE_SIDE}",
            )  # fmt: skip
        caption = captions.get(stem, (None, ""))[1] or None
        checked.append(CheckedImage(name=name, image=decoded, caption=caption))
    return checked


def dataset_hash(items: list[tuple[str, str, str | None]]) -> str:
    """One hash of (name, image sha256, caption) in order: two datasets with the same hash train the same."""
    digest = hashlib.sha256()
    for name, sha, caption in items:
        digest.update(f"{name}\x00{sha}\x00{caption or ''}\n".encode())
    return digest.hexdigest()


def store_dataset(store: ObjectStore, prefix: str, checked: list[CheckedImage]) -> DatasetManifest:
    """Write the images as PNGs and the manifest under ``prefix``; the manifest."""
    items: list[DatasetItem] = []
    for i, entry in enumerate(checked):
        key = check_key(f"{prefix}/{i:04d}.png")
        store.put(key, entry.image.png(), "image/png")
        items.append(
            DatasetItem(
                key=key, name=entry.name, caption=entry.caption, width=entry.image.width,
                height=entry.image.height, sha256=entry.image.sha256,
            )
        )  # fmt: skip
    manifest = DatasetManifest(
        sha256=dataset_hash([(i.name, i.sha256, i.caption) for i in items]), count=len(items), images=items
    )
    store.put(check_key(f"{prefix}/dataset.json"), manifest.model_dump_json().encode(), "application/json")
    return manifest


def manifest_key(prefix: str) -> str:
    return check_key(f"{prefix}/dataset.json")
