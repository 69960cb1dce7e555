"""``medlsam-weights``: the checkpoint table, and verified, resumable downloads from a local HTTP
server on 127.0.0.1 started here (no outside network)."""

from __future__ import annotations

import ast
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from medlsam.cli.weights import main
from medlsam.weights import REGISTRY, demo_checkpoint

PAYLOAD = demo_checkpoint().read_bytes()  # a real checkpoint (433 kB)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    """Serves PAYLOAD at /ckpt.pth with Range support; ``drops`` cuts that many responses
    after half their bytes (the connection closes mid-file)."""

    def __init__(self, drops: int = 0, honour_range: bool = True):
        self.drops, self.honour_range, self.ranges = drops, honour_range, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802 (http.server's name)
                if self.path != "/ckpt.pth":
                    self.send_error(404)
                    return
                wanted = self.headers.get("Range")
                owner.ranges.append(wanted)
                start = 0
                if wanted and owner.honour_range:
                    start = int(wanted.split("=")[1].split("-")[0])
                    if start >= len(PAYLOAD):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"
                    )
                else:
                    self.send_response(200)
                body = PAYLOAD[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if owner.drops > 0:
                    owner.drops -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ckpt.pth"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _download(dest: Path, *extra: str) -> int:
    return main(["download", "my_medlam.pth", "--dest", str(dest), "--no-progress", *extra])


def test_download_verifies_and_renames_into_place(tmp_path, capsys):
    with _Server() as server:
        assert _download(tmp_path, "--from", server.url, "--sha256", SHA) == 0
    assert (tmp_path / "my_medlam.pth").read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_medlam.pth"]
    assert "verified" in capsys.readouterr().out
    # a second run finds the verified file and fetches nothing
    assert _download(tmp_path, "--from", "http://127.0.0.1:9/none", "--sha256", SHA) == 0


def test_dropped_connection_is_resumed_with_a_range_request(tmp_path, caplog):
    with _Server(drops=2) as server:
        assert _download(tmp_path, "--from", server.url, "--sha256", SHA) == 0
    assert (tmp_path / "my_medlam.pth").read_bytes() == PAYLOAD
    half = len(PAYLOAD) // 2
    assert server.ranges == [None, f"bytes={half}-", f"bytes={half + (len(PAYLOAD) - half) // 2}-"]
    assert "connection lost" in caplog.text


def test_a_partial_file_from_an_earlier_run_is_resumed(tmp_path):
    (tmp_path / ".my_medlam.pth.part").write_bytes(PAYLOAD[:100_000])
    with _Server() as server:
        assert _download(tmp_path, "--from", server.url, "--sha256", SHA) == 0
    assert server.ranges == ["bytes=100000-"]
    assert (tmp_path / "my_medlam.pth").read_bytes() == PAYLOAD
    assert not (tmp_path / ".my_medlam.pth.part").exists()


def test_a_server_ignoring_range_restarts_cleanly(tmp_path):
    (tmp_path / ".my_medlam.pth.part").write_bytes(b"stale bytes of another file")
    with _Server(honour_range=False) as server:
        assert _download(tmp_path, "--from", server.url, "--sha256", SHA) == 0
    assert (tmp_path / "my_medlam.pth").read_bytes() == PAYLOAD


def test_checksum_mismatch_exits_4_with_one_line_and_keeps_nothing(tmp_path, capsys):
    wrong = "0" * 64
    with _Server() as server:
        assert _download(tmp_path, "--from", server.url, "--sha256", wrong) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and SHA in err and wrong in err
    assert list(tmp_path.iterdir()) == []


def test_download_from_a_local_file(tmp_path):
    from conftest import ct_testdata_path

    source = ct_testdata_path("totalsegmentator", "example_ct_sm.nii.gz")
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    out = tmp_path / "w"
    assert (
        main(["download", "ct.nii.gz", "--from", str(source), "--sha256", sha, "--dest", str(out)])
        == 0
    )
    assert (out / "ct.nii.gz").read_bytes() == source.read_bytes()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["download", "medlam"], "no direct download link; give --from"),
        (["download", "sam_vit_b"], "no sha256 known to medlsam; give --sha256"),
        (["download", "mine.pth", "--sha256", SHA], "give --from"),
        (["download", "demo"], "ships inside medlsam"),
    ],
)
def test_refusals_are_one_line(tmp_path, capsys, argv, expected):
    assert main([*argv, "--dest", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err
    assert list(tmp_path.iterdir()) == []


def test_list_names_every_checkpoint_with_its_facts(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name, entry in REGISTRY.items():
        row = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
        assert entry.file in row and entry.licence in row and f"checkpoint/{entry.file}" in row
        assert (entry.sha256 or "unknown: give --sha256") in row  # never an invented checksum
    demo = next(line for line in out.splitlines() if line.startswith("| demo |"))
    assert SHA in demo and f"{len(PAYLOAD):,} bytes" in demo


def test_only_the_download_module_opens_network_connections():
    package = Path(__file__).resolve().parents[2] / "medlsam"
    assert (package / "download.py").is_file()
    network = {"urllib.request", "http.client", "socket", "requests", "urllib3", "httpx"}
    offenders = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n in network or n.split(".")[0] in network for n in names):
                offenders.append(path.name)
    assert set(offenders) == {"download.py"}
