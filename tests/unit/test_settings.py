"""One settings object, from SDSERVE_ variables, documented in the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sdserve.secrets import url_signing_key
from sdserve.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_environment_prefix_and_lists(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SDSERVE_PORT", "9001")
    monkeypatch.setenv("SDSERVE_WORKER_MODELS", "tiny, sd15")
    monkeypatch.setenv("SDSERVE_DATA_DIR", str(tmp_path))
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.port == 9001
    assert s.worker_models == ["tiny", "sd15"]
    assert s.objects_dir == tmp_path / "objects"
    assert s.models_dir == tmp_path / "models"


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="redis_url"):
        Settings(redis_url="http://x", _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="key_prefix"):
        Settings(key_prefix="Has Spaces", _env_file=None)  # type: ignore[call-arg]


def test_signing_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    first = url_signing_key(s)
    assert first == url_signing_key(Settings(data_dir=tmp_path, _env_file=None))  # type: ignore[call-arg]
    assert len(first) >= 32
    assert (tmp_path / "url-signing.key").stat().st_mode & 0o777 == 0o600
    explicit = Settings(data_dir=tmp_path, url_signing_secret="s3cret", _env_file=None)  # type: ignore[arg-type, call-arg]
    assert url_signing_key(explicit) == b"s3cret"


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `SDSERVE_([A-Z0-9_]+)` \|", readme, flags=re.MULTILINE))
    fields = {name.upper() for name in Settings.model_fields}
    assert fields - documented == set(), "settings missing from the README"
    assert documented - fields == set(), "README documents settings that do not exist"
