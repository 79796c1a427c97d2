"""``personachat serve`` from the command line: restarts on the same database (the CLI in a
subprocess, killed outright) and options refused in one line.
"""

from __future__ import annotations

import platform
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from personachat import ConvAIModel
from personachat.cli import main

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[test]'")
pytest.importorskip("uvicorn", reason="the serve extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx", reason="the test extra: pip install -e '.[test]'")

from .serve_helpers import (  # noqa: E402
    AUTH,
    KEY,
    SETTINGS,
    ThreadServer,
    model_with_personas,
    new_session,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from serve_load import start_server  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    return model_with_personas(tiny_checkpoint, tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def model(model_dir) -> ConvAIModel:
    return ConvAIModel("gpt2", model_dir, use_cuda=False)


# ---------------------------------------------------------------------- the CLI, restarts
def test_restart_continues_the_conversation(model_dir, model, tmp_path):
    """The CLI server (API key from the environment) is killed outright; a new server on
    the same database has the conversation and continues it."""
    db = tmp_path / "sessions.sqlite3"
    process, url = start_server(model_dir, db, env={"PERSONACHAT_API_KEY": KEY})
    try:
        assert httpx.get(url + "/v1/sessions/any-session-id-000000").status_code == 401
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as api:
            session_id = new_session(api, ["i work as a nurse ."])
            first = api.post(f"/v1/sessions/{session_id}/messages", json={"text": "hi"}).json()
    finally:
        process.send_signal(signal.SIGKILL)  # no clean shutdown
        process.wait(timeout=30)

    with (
        ThreadServer(model, db, SETTINGS) as again,
        httpx.Client(base_url=again.url, headers=AUTH, timeout=30) as api,
    ):
        session = api.get(f"/v1/sessions/{session_id}").json()
        assert session["personality"] == ["i work as a nurse ."]
        assert session["messages"] == first["messages"]
        second = api.post(f"/v1/sessions/{session_id}/messages", json={"text": "and you ?"})
        assert [m["seq"] for m in second.json()["messages"]] == [3, 4]


def test_cli_reports_a_taken_port_in_one_line(model_dir, tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code = main(
            [
                "serve",
                "--model",
                str(model_dir),
                "--device",
                "cpu",
                "--port",
                str(taken.getsockname()[1]),
                "--db",
                str(tmp_path / "x.db"),
            ]
        )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("personachat serve: error: cannot listen on 127.0.0.1:")
    assert "Traceback" not in err and "--port" in err


def test_cli_rejects_bad_server_options_in_one_line(model_dir, tmp_path, capsys):
    code = main(
        [
            "serve",
            "--model",
            str(model_dir),
            "--device",
            "cpu",
            "--port",
            "0",
            "--db",
            str(tmp_path / "x.db"),
            "--max-batch-size",
            "0",
        ]
    )
    assert code == 2
    assert "--max-batch-size must be a number >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--threads", "--prefill-threads"])
def test_cli_rejects_zero_threads_in_one_line(model_dir, tmp_path, capsys, flag):
    code = main(
        [
            "serve",
            "--model",
            str(model_dir),
            "--device",
            "cpu",
            "--port",
            "0",
            "--db",
            str(tmp_path / "x.db"),
            flag,
            "0",
        ]
    )
    assert code == 2
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's mallopt",
)
def test_the_server_process_can_keep_freed_memory_for_reuse():
    # In a child process: the setting is process-wide, and this one runs the rest of the suite.
    check = (
        "from personachat.serve.command import keep_freed_memory; "
        "import sys; sys.exit(0 if keep_freed_memory() is True else 1)"
    )
    assert subprocess.run([sys.executable, "-c", check], timeout=60).returncode == 0
