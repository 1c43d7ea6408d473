"""Model-zoo downloads against a local HTTP server that misbehaves on purpose.

The server (127.0.0.1, a free port) serves a small synthetic Detectron-format weight file (pickle
protocol 2 of ``{'blobs': {...float32...}, 'cfg': str}``, written here) for every ``.pkl`` path,
in one of several modes: honest, HTML error page, truncated, dropping the connection once, ignoring
Range, slow. After every case the cache must hold complete files only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import pickle
import sys
import threading
import time
import types
from pathlib import Path
from typing import List

import numpy as np
import pytest

from detconvert import cli
from detconvert.errors import DownloadError, WeightFileError
from detconvert.zoo import download
from detconvert.zoo.catalogue import load_catalogue
from detconvert.zoo.download import fetch, resolve_weights, sniff_weight_bytes

ENTRY_NAME = "e2e_mask_rcnn_R-101-FPN_2x"
FAST = dict(retry_wait=0.01, timeout=10.0, progress=False, deep_check=False)


def _detector_payload() -> bytes:
    rng = np.random.default_rng(8)
    blobs = {
        "conv1_w": rng.standard_normal((64, 3, 7, 7)).astype(np.float32),
        "res_conv1_bn_s": np.ones(64, np.float32),
        "fpn_inner_res5_2_sum_w": rng.standard_normal((256, 2048, 1, 1)).astype(np.float32) * 0.01,
        "cls_score_w": rng.standard_normal((81, 1024)).astype(np.float32),
    }
    return pickle.dumps({"blobs": blobs, "cfg": "MODEL:\n  TYPE: generalized_rcnn\n  NUM_CLASSES: 81\n"}, protocol=2)


def _imagenet_payload() -> bytes:
    rng = np.random.default_rng(50)
    blobs = {"conv1_w": rng.standard_normal((64, 3, 7, 7)).astype(np.float32), "res_conv1_bn_s": np.ones(64, np.float32)}
    return pickle.dumps(blobs, protocol=2)


PAYLOAD = _detector_payload()  # ~2.5 MB: several read chunks, yet fast
HTML = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not here</body></html>\n"


class _ZooHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        server = self.server
        with server.lock:
            server.requests.append((self.path, self.headers.get("Range")))
            count = sum(1 for p, _ in server.requests if p == self.path)
        if self.path.endswith(".md5sum"):
            if server.md5sum is None:
                return self._send(404, b"no such file", "text/plain")
            return self._send(200, f"{server.md5sum}  model_final.pkl\n".encode(), "text/plain")
        mode, payload = server.mode, server.payload
        if mode == "html":
            return self._send(200, HTML, "text/html")
        if mode == "404":
            return self._send(404, HTML, "text/html")
        if mode == "honest_truncated":
            return self._send(200, server.truncated, "application/octet-stream")
        if mode == "truncate_always":
            return self._send(200, payload, "application/octet-stream", cut=len(payload) // 2)
        if mode == "drop_once" and count == 1:
            return self._send(200, payload, "application/octet-stream", cut=len(payload) // 3)
        if mode == "drop_once_no_range" and count == 1:
            return self._send(200, payload, "application/octet-stream", cut=len(payload) // 3)
        start = self._range_start()
        if start and mode != "drop_once_no_range":
            return self._send(206, payload, "application/octet-stream", start=start)
        self._send(200, payload, "application/octet-stream", slow=(mode == "slow"))

    def _range_start(self) -> int:
        value = self.headers.get("Range") or ""
        return int(value[len("bytes=") : -1]) if value.startswith("bytes=") and value.endswith("-") else 0

    def _send(self, code, body, ctype, cut=None, start=0, slow=False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) - start))
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        data = body[start:cut]
        if slow:
            for i in range(0, len(data), len(data) // 10 + 1):
                self.wfile.write(data[i : i + len(data) // 10 + 1])
                self.wfile.flush()
                time.sleep(0.02)
        else:
            self.wfile.write(data)
        if cut is not None:  # drop the connection with the body unfinished
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)


class _ZooServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _ZooHandler)
        self.lock = threading.Lock()
        self.requests: List[tuple] = []
        self.mode = "ok"
        self.payload = PAYLOAD
        cut = len(PAYLOAD) - 1000
        while PAYLOAD[cut - 1 : cut] == b".":  # the truncated copy must not end in the STOP opcode by chance
            cut -= 1
        self.truncated = PAYLOAD[:cut]
        self.md5sum = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/detectron"

    def file_requests(self) -> List[tuple]:
        return [r for r in self.requests if r[0].endswith(".pkl")]


@pytest.fixture()
def server():
    srv = _ZooServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture()
def entry():
    return load_catalogue().get(ENTRY_NAME)


def cache_contents(cache: Path) -> List[str]:
    """Every file in the cache except the lock files (which hold no data)."""
    if not cache.exists():
        return []
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file() and p.parent.name != ".locks")


def test_success_with_checksum(server, cache, entry):
    entry = dataclasses.replace(entry, sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD))
    path = fetch(entry, cache_dir=cache, base_url=server.base_url, **{**FAST, "deep_check": True})
    assert path == cache / f"{ENTRY_NAME}.pkl"
    assert path.read_bytes() == PAYLOAD
    assert cache_contents(cache) == [f"{ENTRY_NAME}.pkl"]
    # the URL asked for is the catalogue's path with ':' percent-encoded, under the base
    assert server.file_requests()[0][0] == "/detectron/" + entry.url(server.base_url).split("/detectron/", 1)[1]
    assert "%3A" in server.file_requests()[0][0]
    # a second fetch is served from the cache, without a request
    before = len(server.requests)
    assert fetch(entry, cache_dir=cache, base_url=server.base_url, **FAST) == path
    assert len(server.requests) == before


def test_wrong_checksum_is_rejected_and_deleted(server, cache, entry):
    entry = dataclasses.replace(entry, sha256="0" * 64)
    with pytest.raises(DownloadError, match="sha256 .* does not match"):
        fetch(entry, cache_dir=cache, base_url=server.base_url, **FAST)
    assert cache_contents(cache) == []


def test_published_md5sum_is_verified(server, cache, entry):
    server.md5sum = hashlib.md5(b"something else").hexdigest()
    with pytest.raises(DownloadError, match="md5 .* does not match the published"):
        fetch(entry, cache_dir=cache, base_url=server.base_url, **FAST)
    assert cache_contents(cache) == []
    server.md5sum = hashlib.md5(PAYLOAD).hexdigest()
    assert fetch(entry, cache_dir=cache, base_url=server.base_url, **FAST).read_bytes() == PAYLOAD


def test_truncated_response_fails_after_retries(server, cache, entry):
    server.mode = "truncate_always"
    with pytest.raises(DownloadError, match=r"failed after 3 attempts: connection closed after \d+ of \d+ bytes"):
        fetch(entry, cache_dir=cache, base_url=server.base_url, retries=2, **FAST)
    assert len(server.file_requests()) == 3
    assert cache_contents(cache) == []


def test_honestly_served_truncated_pickle_is_rejected(server, cache, entry):
    server.mode = "honest_truncated"
    with pytest.raises(DownloadError, match="truncated pickle"):
        fetch(entry, cache_dir=cache, base_url=server.base_url, **FAST)
    assert cache_contents(cache) == []


def test_truncated_pickle_ending_in_stop_byte_is_caught_by_the_reader(server, cache, entry):
    """The cheap sniff only sees the last byte; the weight reader parses the whole pickle."""
    pytest.importorskip("detconvert.io.weights", reason="the weight reader (detconvert.io.weights) is not in this build")
    server.mode = "honest_truncated"
    server.truncated = PAYLOAD[:-5000] + b"."
    with pytest.raises(DownloadError, match="truncated"):
        fetch(entry, cache_dir=cache, base_url=server.base_url, **{**FAST, "deep_check": True})
    assert cache_contents(cache) == []


def test_html_error_page_is_rejected(server, cache, entry):
    server.mode = "html"
    with pytest.raises(DownloadError, match="HTML/XML page, not a weight file"):
        fetch(entry, cache_dir=cache, base_url=server.base_url, **FAST)
    assert cache_contents(cache) == []


def test_http_404_names_the_url_and_the_base_variable(server, cache, entry):
    server.mode = "404"
    with pytest.raises(DownloadError, match="HTTP 404.*DETCONVERT_MODEL_BASE") as info:
        fetch(entry, cache_dir=cache, base_url=server.base_url, **FAST)
    assert info.value.source.startswith(server.base_url)
    assert len(server.file_requests()) == 1  # a 404 is not retried
    assert cache_contents(cache) == []


def test_dropped_connection_is_resumed_with_range(server, cache, entry):
    server.mode = "drop_once"
    path = fetch(entry, cache_dir=cache, base_url=server.base_url, **FAST)
    assert path.read_bytes() == PAYLOAD
    ranges = [r for _, r in server.file_requests()]
    assert ranges == [None, f"bytes={len(PAYLOAD) // 3}-"]
    assert cache_contents(cache) == [f"{ENTRY_NAME}.pkl"]


def test_dropped_connection_restarts_when_server_ignores_range(server, cache, entry):
    server.mode = "drop_once_no_range"
    path = fetch(entry, cache_dir=cache, base_url=server.base_url, **FAST)
    assert path.read_bytes() == PAYLOAD  # not the first third twice
    assert len(server.file_requests()) == 2
    assert cache_contents(cache) == [f"{ENTRY_NAME}.pkl"]


def test_leftover_of_a_killed_run_is_resumed(server, cache, entry):
    cache.mkdir()
    third = len(PAYLOAD) // 3
    (cache / f".{ENTRY_NAME}.pkl.part").write_bytes(PAYLOAD[:third])  # what a SIGKILL leaves behind
    assert fetch(entry, cache_dir=cache, base_url=server.base_url, **FAST).read_bytes() == PAYLOAD
    assert [r for _, r in server.file_requests()] == [f"bytes={third}-"]
    assert cache_contents(cache) == [f"{ENTRY_NAME}.pkl"]


def test_interrupt_mid_download_leaves_nothing(server, cache, entry, monkeypatch):
    def interrupted(url, part, timeout, on_progress):
        part.write_bytes(PAYLOAD[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "_transfer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch(entry, cache_dir=cache, base_url=server.base_url, **FAST)
    assert cache_contents(cache) == []


def test_concurrent_downloads_of_one_entry_download_once(server, cache, entry):
    server.mode = "slow"
    results, errors = [], []

    def worker():
        try:
            results.append(fetch(entry, cache_dir=cache, base_url=server.base_url, **FAST))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert results == [cache / f"{ENTRY_NAME}.pkl"] * 2
    assert len(server.file_requests()) == 1  # the second waited on the lock, then found the file
    assert results[0].read_bytes() == PAYLOAD
    assert cache_contents(cache) == [f"{ENTRY_NAME}.pkl"]


def test_offline_without_cached_file_says_what_is_missing(server, cache, entry):
    with pytest.raises(DownloadError) as info:
        fetch(entry, offline=True, cache_dir=cache, base_url=server.base_url, **FAST)
    message = str(info.value)
    assert str(cache / f"{ENTRY_NAME}.pkl") in message and "offline" in message
    assert f"detconvert zoo fetch {ENTRY_NAME}" in message
    assert server.requests == []
    assert cache_contents(cache) == []


def test_offline_with_cached_file_uses_it(server, cache, entry):
    cache.mkdir()
    (cache / f"{ENTRY_NAME}.pkl").write_bytes(PAYLOAD)
    assert fetch(entry, offline=True, cache_dir=cache, base_url=server.base_url, **FAST).read_bytes() == PAYLOAD
    assert server.requests == []


def test_bad_file_saved_in_the_cache_is_replaced_online_and_reported_offline(server, cache, entry):
    cache.mkdir()
    (cache / f"{ENTRY_NAME}.pkl").write_bytes(HTML)
    with pytest.raises(DownloadError, match="cached file is unusable: an HTML/XML page"):
        fetch(entry, offline=True, cache_dir=cache, base_url=server.base_url, **FAST)
    assert fetch(entry, cache_dir=cache, base_url=server.base_url, **FAST).read_bytes() == PAYLOAD
    assert cache_contents(cache) == [f"{ENTRY_NAME}.pkl"]


def test_reader_verdict_rejects_the_download(server, cache, entry, monkeypatch):
    """With ``deep_check`` the weight reader (detconvert.io.weights.load_weights) has the last word."""

    def load_weights(path):
        raise WeightFileError("blob 'conv1_w' is cut short", path)

    monkeypatch.setitem(sys.modules, "detconvert.io.weights", types.SimpleNamespace(load_weights=load_weights))
    with pytest.raises(DownloadError, match="blob 'conv1_w' is cut short"):
        fetch(entry, cache_dir=cache, base_url=server.base_url, **{**FAST, "deep_check": True})
    assert cache_contents(cache) == []


@pytest.mark.parametrize(
    "head, tail, reason",
    [
        (b"", b"", "empty"),
        (b"  <?xml version='1.0'?><Error>AccessDenied", b">", "HTML/XML page"),
        (b"PK\x03\x04", b"\x00", "not a pickle"),
        (b"\x80\x02}q\x00", b"\x00", "truncated pickle"),
        (b"\x80\x02}q\x00", b".", None),
    ],
)
def test_sniff(head, tail, reason):
    verdict = sniff_weight_bytes(head, tail)
    assert (verdict is None) if reason is None else (reason in verdict)


def test_cli_fetch_and_resolve_weights_through_env(server, cache, monkeypatch, capsys):
    server.payload = _imagenet_payload()
    monkeypatch.setenv(download.ENV_MODEL_BASE, server.base_url)
    monkeypatch.setenv(download.ENV_CACHE, str(cache))
    assert cli.main(["zoo", "fetch", "R-50", "--retries", "0"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(cache / "R-50.pkl")
    assert server.file_requests()[0][0] == "/detectron/ImageNetPretrained/MSRA/R-50.pkl"
    # resolve_weights: a zoo name -> the cached file; an existing path -> itself
    assert resolve_weights("MSRA/R-50.pkl", offline=True) == cache / "R-50.pkl"
    assert resolve_weights(cache / "R-50.pkl") == cache / "R-50.pkl"


def test_cli_offline_missing_is_one_line_exit_2(cache, monkeypatch, capsys):
    monkeypatch.setenv(download.ENV_CACHE, str(cache))
    assert cli.main(["zoo", "fetch", "35861858", "--offline"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"detconvert zoo: error: {ENTRY_NAME}: offline and not in the cache")
    assert "\n" not in err and "Traceback" not in err
    assert cache_contents(cache) == []


def test_resolve_weights_rejects_unknown_names(tmp_path):
    with pytest.raises(WeightFileError, match="no such file"):
        resolve_weights(tmp_path / "missing.pkl")
    with pytest.raises(Exception, match="did you mean e2e_mask_rcnn_R-101-FPN_2x"):
        resolve_weights("e2e_mask_rcnn_R101-FPN_2x", offline=True)


def test_local_mirror_folder_as_model_base(tmp_path, monkeypatch):
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    (mirror / "ImageNetPretrained" / "MSRA").mkdir(parents=True)
    (mirror / "ImageNetPretrained" / "MSRA" / "R-50.pkl").write_bytes(_imagenet_payload())
    monkeypatch.setenv(download.ENV_MODEL_BASE, str(mirror))
    catalogue = load_catalogue()
    path = fetch(catalogue.get("R-50"), cache_dir=cache, **FAST)
    assert path.read_bytes() == _imagenet_payload()
    with pytest.raises(DownloadError, match="not found in the local mirror"):
        fetch(catalogue.get("R-101"), cache_dir=cache, **FAST)
    assert cache_contents(cache) == ["R-50.pkl"]
