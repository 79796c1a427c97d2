"""Server options that guard the server itself: the API key, the Host check, the header
timeout and the socket options; real servers on 127.0.0.1."""

from __future__ import annotations

import socket
import statistics
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from personachat import ConvAIModel
from personachat.cli import build_parser, main
from personachat.serve.command import settings_from
from personachat.serve.settings import ServeError, ServeSettings

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[test]'")
pytest.importorskip("uvicorn", reason="the serve extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx", reason="the test extra: pip install -e '.[test]'")

from .serve_helpers import ThreadServer, model_with_personas  # noqa: E402


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


def test_a_port_out_of_range_is_a_one_line_error(model_dir, tmp_path, capsys):
    assert main(["serve", "--model", str(model_dir), "--port", "99999"]) == 2
    err = capsys.readouterr().err
    assert "--port 99999 is not a port" in err and "Traceback" not in err


# ---------------------------------------------------------------------- one server
@pytest.fixture(scope="module")
def model(model_dir) -> ConvAIModel:
    return ConvAIModel("gpt2", model_dir, use_cuda=False)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    """A short header timeout, and a collection window longer than it."""
    settings = ServeSettings(header_timeout=0.5, batch_window_ms=800)
    with ThreadServer(model, tmp_path_factory.mktemp("db") / "options.sqlite3", settings) as s:
        yield s


def connect(server) -> socket.socket:
    parts = urlsplit(server.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def seconds_until_closed(sock: socket.socket) -> float:
    """How long until the server closes ``sock`` (what it sends meanwhile is dropped)."""
    started = time.monotonic()
    while sock.recv(65536):
        pass
    return time.monotonic() - started


def test_a_client_slow_to_send_its_headers_is_disconnected(server):
    with connect(server) as silent:  # connects, sends nothing
        assert 0.3 < seconds_until_closed(silent) < 3
    with connect(server) as slow:  # half a request line, then nothing
        slow.sendall(b"GET /hea")
        assert seconds_until_closed(slow) < 3
    with connect(server) as kept_alive:  # one request, then half of the next
        kept_alive.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert kept_alive.recv(65536).startswith(b"HTTP/1.1 200")
        kept_alive.sendall(b"GET /health HTTP/1.1\r\nHo")
        assert seconds_until_closed(kept_alive) < 3
    assert httpx.get(server.url + "/health").status_code == 200


def test_the_header_timeout_spares_clients_in_time_and_long_replies(server):
    with connect(server) as client:  # headers in pieces, complete within the timeout
        for piece in (b"GET /health HT", b"TP/1.1\r\nHost: 127.0.0.1\r\n", b"\r\n"):
            client.sendall(piece)
            time.sleep(0.1)
        assert client.recv(65536).startswith(b"HTTP/1.1 200")
    with httpx.Client(base_url=server.url, timeout=30) as api:
        session_id = api.post("/v1/sessions").json()["id"]
        started = time.monotonic()
        # The reply waits 0.8 s in the collection window, longer than the header timeout.
        reply = api.post(f"/v1/sessions/{session_id}/messages", json={"text": "hi"})
        assert reply.status_code == 200 and time.monotonic() - started > 0.5
        again = api.post(f"/v1/sessions/{session_id}/messages", json={"text": "hi again"})
        assert again.status_code == 200  # the same kept-alive connection, still open


def test_accepted_connections_have_tcp_nodelay(server):
    """Without it each request after the first on a kept-alive connection waited ~44 ms
    for the client's delayed acknowledgement (benchmarks/keepalive_latency.py)."""
    with httpx.Client(base_url=server.url) as client:
        times = []
        for _ in range(20):
            started = time.perf_counter()
            assert client.get("/health").status_code == 200
            times.append(time.perf_counter() - started)
        options = [
            protocol.transport.get_extra_info("socket").getsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY
            )
            for protocol in server.server.server_state.connections
        ]
    assert options and all(options), options
    assert statistics.median(times[1:]) < 0.03, times


# ---------------------------------------------------------------------- the Host check
def test_a_server_on_loopback_answers_loopback_host_names_only(server):
    """DNS rebinding: a page at evil.example renamed to 127.0.0.1 sends Host: evil.example."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for host in ("localhost", "localhost:8000", "127.0.0.1:1", "[::1]:8000", "LOCALHOST."):
            assert client.get("/health", headers={"Host": host}).status_code == 200, host
        for path in ("/health", "/", "/v1/sessions/any-session-id-0000"):
            for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example"):
                response = client.get(path, headers={"Host": host})
                assert response.status_code == 421, (path, host)
                error = response.json()["error"]
                assert error["code"] == "host_not_allowed" and "--allowed-hosts" in error["message"]
        refused = client.post("/v1/sessions", headers={"Host": "evil.example"}, json={})
        assert refused.status_code == 421
        assert client.post("/v1/sessions", json={}).status_code == 201


@pytest.mark.parametrize(
    ("allowed", "answered", "refused"),
    [
        (("chat.example.com",), ["chat.example.com", "Chat.Example.com:8443"], ["localhost"]),
        (("*",), ["evil.example", "localhost"], []),
    ],
)
def test_allowed_hosts_are_configurable(model, tmp_path, allowed, answered, refused):
    settings = ServeSettings(allowed_hosts=allowed)
    with (
        ThreadServer(model, tmp_path / "hosts.sqlite3", settings) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        for host in answered:
            assert client.get("/health", headers={"Host": host}).status_code == 200, host
        for host in refused:
            assert client.get("/health", headers={"Host": host}).status_code == 421, host


def test_the_default_allowed_hosts_follow_the_listening_address():
    def settings(*flags: str) -> ServeSettings:
        return settings_from(build_parser().parse_args(["serve", "--model", "m", *flags]))

    assert settings().allowed_hosts == ("127.0.0.1", "::1", "localhost")
    assert "127.0.0.2" in settings("--host", "127.0.0.2").allowed_hosts
    assert settings("--host", "0.0.0.0").allowed_hosts == ("*",)  # names unknown: any
    assert settings("--allowed-hosts", "a.example:80,[::1]").allowed_hosts == ("a.example", "::1")
    with pytest.raises(ServeError, match="--allowed-hosts ' , ' names no host"):
        settings("--allowed-hosts", " , ")
