"""`xsell loadtest` and `xsell loadtest requests`: a bad number exits 2 naming its flag,
before any process starts or any file is written (not a traceback, not a silent default);
a report or request file that cannot be written is named with its flag; the files are
written where the flags say. The runs drive a real gRPC health server for 0.3 s."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from xsell.cli import main

from ..conftest import unused_port


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--concurrency", "0"), ("--connections", "-1")],
)
def test_loadtest_refuses_a_bad_count(flag, value, capsys):
    args = ["loadtest", "--address", f"127.0.0.1:{unused_port()}", "--target", "health",
            "--duration", "1", "--connect-timeout", "0.5", "--quiet", flag, value]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert f"argument {flag}: " in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value"),
    [("-n", "0"), ("--cart-size", "0"), ("--cart-size", "-1"), ("--max-cart", "0"),
     ("--limit", "-1"), ("--period-days", "-5")],
)  # fmt: skip
def test_requests_refuses_a_bad_count(flag, value, synthetic_dir, tmp_path, capsys):
    out = tmp_path / "mix.jsonl"
    with pytest.raises(SystemExit) as info:
        main(["loadtest", "requests", "--events", str(synthetic_dir / "events.csv"),
              "--out", str(out), flag, value])  # fmt: skip
    assert info.value.code == 2
    assert "argument " in (err := capsys.readouterr().err) and flag in err
    assert not out.exists()


@pytest.fixture(scope="module")
def health_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.mark.parametrize("flag", ["--json", "--png"])
def test_a_report_path_that_cannot_be_written_is_named(flag, health_server, tmp_path):
    """A --json or --png below a file: a message naming the flag, not a traceback."""
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "report"
    with pytest.raises(SystemExit) as info:
        main(["loadtest", "--address", health_server, "--target", "health", "--concurrency", "1",
              "--duration", "0.3", "--warmup", "0", "--quiet", flag, str(path)])  # fmt: skip
    assert str(info.value.code).startswith(f"xsell loadtest: {flag} {path}: ")


def test_report_files_are_written_where_named(health_server, tmp_path, capsys):
    """The paths printed are the files written, with or without an extension."""
    json_path, png_path = tmp_path / "report", tmp_path / "plots"
    code = main(["loadtest", "--address", health_server, "--target", "health", "--concurrency", "1",
                 "--duration", "0.3", "--warmup", "0", "--quiet", "--json", str(json_path),
                 "--png", str(png_path)])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert f"report: {json_path}" in out and f"plots: {png_path}" in out
    assert json_path.read_text().startswith("{")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_request_file_that_cannot_be_written_is_named(synthetic_dir, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["loadtest", "requests", "--events", str(synthetic_dir / "events.csv"),
              "--out", str(tmp_path), "-n", "5"])  # fmt: skip
    assert str(info.value.code).startswith(f"xsell loadtest requests: --out {tmp_path}: ")
    assert not list(tmp_path.parent.glob(f"{tmp_path.name}.tmp"))  # no half-written file left
