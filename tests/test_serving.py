"""`attnkit serve`: the JSON API, its bounds and errors, and the web page, on a tiny trained run."""

from __future__ import annotations

import http.client
import json
import socket
import threading

import pytest
from conftest import assert_one_line_error

from attnkit.errors import UserError
from attnkit.serving.server import Limits, make_server


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import run_cli, tiny_training

    root = tmp_path_factory.mktemp("serve")
    done = run_cli("data", "synth", "--out", str(root / "data"), "--size", "300")
    assert done.returncode == 0, done.stderr
    d = root / "data"
    done = run_cli(
        "train", *tiny_training(d, root / "run", "train.max_steps=2", "decode.max_len_b=8")
    )
    assert done.returncode == 0, done.stderr
    return root / "run"


@pytest.fixture(scope="module")
def server(run_dir):
    server = make_server(
        run_dir, port=0, limits=Limits(max_request_bytes=2000, max_lines=3), quiet=True
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _request(server, method, path, body=None, headers=None):
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=60)
    if isinstance(body, dict | list):
        body = json.dumps(body)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    kind = response.getheader("Content-Type")
    return response.status, json.loads(data) if kind.startswith("application/json") else data


def test_it_listens_on_localhost_by_default(server):
    assert server.server_address[0] == "127.0.0.1"


def test_a_line_in_gives_a_line_out_and_a_list_gives_a_list(server):
    status, answer = _request(server, "POST", "/translate", {"text": "The dog sees the cat."})
    assert status == 200 and isinstance(answer["translations"], str)
    status, answer = _request(
        server, "POST", "/translate", {"text": ["A cat.", "", "A dog."], "beam": 2}
    )
    assert status == 200
    lines = answer["translations"]
    assert len(lines) == 3 and lines[1] == ""


def test_the_service_answers_as_the_translator_does(server, run_dir):
    from attnkit.generation.translator import Translator

    lines = ["The young woman sees the small dogs.", "A man reads."]
    expected = Translator.from_run(run_dir).translate_text(lines)
    assert _request(server, "POST", "/translate", {"text": lines})[1]["translations"] == expected


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"txt": "x"}, 400, '"text"'),
        ({"text": "x", "beams": 2}, 400, "unknown field"),
        ({"text": 3}, 400, "string"),
        ({"text": ["a", "b", "c", "d"]}, 400, "at most 3"),
        ({"text": "a\nb"}, 400, "line break"),
        ({"text": "a", "beam": 0}, 400, "beam"),
        ({"text": "a", "beam": 10**6}, 400, "beam"),
        ({"text": "a", "beam": True}, 400, "beam"),
        ("{not json", 400, "not JSON"),
        ({"text": "x" * 3000}, 413, "at most 2,000"),
    ],
)
def test_bad_requests_get_a_4xx_and_a_reason(server, body, status, says):
    got, answer = _request(server, "POST", "/translate", body)
    assert got == status
    assert says in answer["error"]


def test_invalid_utf8_and_a_missing_length_are_refused(server):
    status, answer = _request(server, "POST", "/translate", b'{"text": "\xff"}')
    assert status == 400 and "UTF-8" in answer["error"]
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=30) as raw:
        raw.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 411 " in raw.recv(4096).split(b"\r\n")[0]


def test_page_health_and_unknown_paths(server):
    status, page = _request(server, "GET", "/")
    assert status == 200 and b"/translate" in page
    status, health = _request(server, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["max_lines"] == 3
    assert _request(server, "GET", "/nope")[0] == 404
    assert _request(server, "POST", "/nope", {"text": "a"})[0] == 404


def test_a_port_in_use_is_a_user_error(server, run_dir):
    with pytest.raises(UserError, match="cannot listen"):
        make_server(run_dir, port=server.server_address[1])


def test_serve_command_errors_are_one_line(cli, tmp_path, run_dir):
    assert_one_line_error(cli("serve", str(tmp_path / "missing")), "missing")
    assert_one_line_error(cli("serve", str(run_dir), "--max-lines", "0"), "--max-lines")


def test_a_failure_inside_the_model_is_a_500_and_the_server_goes_on(server, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(server.service.translator, "translate_text", broken)
    status, answer = _request(server, "POST", "/translate", {"text": "A cat."})
    assert status == 500 and answer == {"error": "internal error"}
    assert "boom" in capsys.readouterr().err
    monkeypatch.undo()
    assert _request(server, "POST", "/translate", {"text": "A cat."})[0] == 200
