"""Server options that guard the server itself: the API key, the Host check, the header
timeout and the socket options; real servers on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from personachat.cli import main

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[test]'")
pytest.importorskip("uvicorn", reason="the serve extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx", reason="the test extra: pip install -e '.[test]'")

from .serve_helpers import model_with_personas  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    return model_with_personas(tiny_checkpoint, tmp_path_factory.mktemp("options") / "model")


def serve(model_dir: Path, tmp_path: Path, *flags: str) -> int:
    return main(
        [
            "serve",
            *("--model", str(model_dir), "--device", "cpu", "--port", "0"),
            *("--db", str(tmp_path / "x.db"), *flags),
        ]
    )


def test_an_empty_api_key_is_an_error_not_auth_off(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PERSONACHAT_API_KEY", raising=False)
    assert serve(model_dir, tmp_path, "--api-key", "") == 2  # as from --api-key "$UNSET"
    err = capsys.readouterr().err
    assert "--api-key is empty (an unset shell variable?)" in err and "Traceback" not in err

    monkeypatch.setenv("PERSONACHAT_API_KEY", " ")
    assert serve(model_dir, tmp_path) == 2
    assert "the PERSONACHAT_API_KEY environment variable is empty" in capsys.readouterr().err
