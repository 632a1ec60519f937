"""Dataset zips are checked entry by entry before anything is used: every refusal names what was wrong."""

from __future__ import annotations

import io
import zipfile

import pytest
from PIL import Image

from app.uploads.datasets import (
    MAX_ZIP_ENTRIES,
    DatasetInvalid,
    check_files,
    dataset_hash,
    read_zip,
)
from sdserve.contract.problems import InvalidRequest
from sdserve.trainings.requests import MAX_CAPTION_CHARS, MAX_DATASET_IMAGES


def png(side: int = 64, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def make_zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def refused(data: bytes) -> str:
    with pytest.raises(InvalidRequest) as caught:  # DatasetInvalid, or InvalidImage for a bad image
        check_files(read_zip(data, "body.file"), "body.file")
    return caught.value.detail


def test_images_pair_with_their_captions_and_hidden_files_are_skipped() -> None:
    data = make_zip({
        "set/b.png": png(colour=(0, 0, 255)), "set/b.txt": b"a sks square\n", "set/a.jpg": png(),
        "__MACOSX/set/._a.jpg": b"junk", "set/.DS_Store": b"junk", "set/": b"",
    })  # fmt: skip
    checked = check_files(read_zip(data, "f"), "f")
    assert [(c.name, c.caption) for c in checked] == [("set/a.jpg", None), ("set/b.png", "a sks square")]
    again = check_files(read_zip(data, "f"), "f")
    assert dataset_hash([(c.name, c.image.sha256, c.caption) for c in checked]) == dataset_hash(
        [(c.name, c.image.sha256, c.caption) for c in again]
    )


@pytest.mark.parametrize(
    ("name", "words"),
    [("../evil.png", "'..'"), ("/etc/x.png", "absolute"), ("C:/x.png", "absolute"), ("a\\b.png", "backslash")],
)
def test_traversal_and_absolute_names_are_refused(name: str, words: str) -> None:
    assert words in refused(make_zip({"ok.png": png(), name: png()}))


def test_a_zip_bomb_is_refused_by_its_ratio_before_it_is_read() -> None:
    data = make_zip({"a.png": png(), "b.txt": b"\0" * (30 * 1024 * 1024)})
    assert "expands" in refused(data) or "bytes" in refused(data)


def test_too_many_entries_and_too_many_images() -> None:
    assert f"at most {MAX_ZIP_ENTRIES}" in refused(make_zip({f"{i}.txt": b"x" for i in range(MAX_ZIP_ENTRIES + 1)}))
    one = png()
    assert "between" in refused(make_zip({f"{i:04d}.png": one for i in range(MAX_DATASET_IMAGES + 1)}))


def test_non_images_small_images_long_captions_and_orphan_captions() -> None:
    assert "neither an image" in refused(make_zip({"a.png": png(), "run.sh": b"echo"}))
    assert "not a PNG, JPEG or WEBP" in refused(make_zip({"a.png": b"this is not a png"}))
    assert "at least 64" in refused(make_zip({"a.png": png(side=32)}))
    long = ("w" * (MAX_CAPTION_CHARS + 1)).encode()
    assert "characters" in refused(make_zip({"a.png": png(), "a.txt": long}))
    assert "no image" in refused(make_zip({"a.png": png(), "b.txt": b"lonely"}))
    assert "between" in refused(make_zip({"empty/": b""}))
    with pytest.raises(DatasetInvalid, match="not a readable zip"):
        read_zip(b"PK\x03\x04 truncated", "f")
