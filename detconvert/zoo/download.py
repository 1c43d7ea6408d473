"""Safe model-zoo downloads into a local cache, and ``resolve_weights`` for every weight argument.

What can go wrong with a 2018 URL, and what this module does about it:

* the host moved (S3 -> dl.fbaipublicfiles.com broke Detectron.pytorch's instructions): the base URL
  is configurable, ``$DETCONVERT_MODEL_BASE`` (an http(s)/file URL or a local mirror folder);
* the connection drops: the transfer is retried and resumed with an HTTP ``Range`` request (or
  restarted when the server ignores it); a short body is never mistaken for a complete file;
* the server answers with an error page (``invalid load key '<'`` later) or the file is cut
  (``pickle data was truncated``): the result is sniffed before it enters the cache and rejected;
* the checksum is known (``sha256`` in the catalogue, or the ``<url>.md5sum`` file Detectron
  publishes beside each file, which ``detectron/utils/io.py:assert_cache_file_is_ok`` checks): it
  is verified;
* two processes fetch the same file: an exclusive ``fcntl`` lock per entry serialises them, and the
  file only appears under its final name by an atomic rename after verification.

A failed download deletes its temp file: the cache holds complete, verified files only.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from detconvert.errors import DetconvertError, DownloadError, PathLike, WeightFileError
from detconvert.zoo.catalogue import Catalogue, ZooEntry, load_catalogue

try:  # POSIX only; elsewhere the atomic rename alone keeps the cache consistent
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

ENV_CACHE = "DETCONVERT_CACHE"
ENV_MODEL_BASE = "DETCONVERT_MODEL_BASE"
ENV_OFFLINE = "DETCONVERT_OFFLINE"

_CHUNK = 1 << 20
_USER_AGENT = "detconvert (+https://github.com/facebookresearch/Detectron model zoo)"


class _Retryable(Exception):
    """A transfer problem worth another attempt (dropped connection, short body, 5xx)."""


class _Rejected(Exception):
    """The downloaded bytes failed verification."""


def default_cache_dir() -> Path:
    """``$DETCONVERT_CACHE``, else ``$XDG_CACHE_HOME/detconvert``, else ``~/.cache/detconvert``."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "detconvert"


def model_base_url(catalogue: Optional[Catalogue] = None) -> str:
    """``$DETCONVERT_MODEL_BASE`` (a URL, or a local mirror folder), else the catalogue's default host."""
    env = os.environ.get(ENV_MODEL_BASE, "").strip()
    if not env:
        return (catalogue or load_catalogue()).default_base_url
    if "://" not in env:  # a folder mirroring the zoo's layout
        return Path(env).expanduser().resolve().as_uri()
    return env.rstrip("/")


def cached_file(entry: ZooEntry, cache_dir: Optional[PathLike] = None) -> Path:
    """Where ``entry`` lives in the cache (whether or not it is there yet)."""
    return Path(cache_dir or default_cache_dir()) / entry.file_name


def _offline_from_env() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("", "0", "false", "no")


# --------------------------------------------------------------------------------------------
# verification


def sniff_weight_bytes(head: bytes, tail: bytes) -> Optional[str]:
    """Why the bytes cannot be a Detectron weight file, or None when they may be one.

    A cheap check on the first and last bytes only: Detectron writes pickle protocol 2
    (``detectron/utils/io.py:save_object``), which starts with ``\\x80\\x02`` (we accept protocols
    2-5) and, like every pickle, ends with the STOP opcode ``.``.
    """
    if not head:
        return "an empty file"
    if head.lstrip()[:1] == b"<":
        return "an HTML/XML page, not a weight file (the server sent an error or login page)"
    if head[:1] != b"\x80" or head[1:2] not in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return f"not a pickle (starts with {head[:8]!r})"
    if tail[-1:] != b".":
        return "a truncated pickle (it does not end with the pickle STOP opcode)"
    return None


def _sniff_file(path: Path) -> Optional[str]:
    with open(path, "rb") as f:
        head = f.read(64)
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
        tail = f.read(1)
    return sniff_weight_bytes(head, tail)


def _reader_check(path: Path) -> Optional[str]:
    """The full reader's verdict (``detconvert.io.weights.load_weights``) when that module exists.

    It parses the whole pickle with the restricted unpickler, so it also catches corruption in the
    middle of the file; None when it accepts the file (or is not available in this build).
    """
    try:
        from detconvert.io.weights import load_weights  # written in parallel (issue: weight reader)
    except ImportError:
        return None
    try:
        load_weights(path)
    except WeightFileError as exc:
        return exc.message
    return None


def _file_digests(path: Path) -> "tuple[str, str]":
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


def _published_md5(url: str, timeout: float) -> Optional[str]:
    """The ``<url>.md5sum`` Detectron publishes beside each file; None when absent or unreadable."""
    try:
        with urllib.request.urlopen(_request(url + ".md5sum"), timeout=timeout) as resp:
            text = resp.read(4096).decode("ascii", "replace")
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError):
        return None
    match = re.match(r"\s*([0-9a-fA-F]{32})(\s|$)", text)
    return match.group(1).lower() if match else None


def _verify(path: Path, entry: ZooEntry, url: str, timeout: float, check_md5sum: bool, deep_check: bool) -> None:
    """Check size, content, checksums; raise :class:`_Rejected` saying why ``path`` is not the file we want."""
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        raise _Rejected(f"size {size} bytes, the catalogue says {entry.size}")
    reason = _sniff_file(path)
    if reason:
        raise _Rejected(reason)
    sha256, md5 = _file_digests(path)
    if entry.sha256 and sha256 != entry.sha256.lower():
        raise _Rejected(f"sha256 {sha256} does not match the catalogue's {entry.sha256}")
    if check_md5sum:
        published = _published_md5(url, timeout)
        if published and md5 != published:
            raise _Rejected(f"md5 {md5} does not match the published {url}.md5sum ({published})")
    if deep_check:
        reason = _reader_check(path)
        if reason:
            raise _Rejected(reason)


# --------------------------------------------------------------------------------------------
# transfer


def _request(url: str, start: int = 0) -> urllib.request.Request:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return request


def _transfer(url: str, part: Path, timeout: float, on_progress: Callable[[int, Optional[int]], None]) -> None:
    """One attempt: append to ``part`` from where it ends (HTTP Range), or restart it.

    Raises:
        _Retryable: the connection failed or closed before Content-Length bytes arrived.
        DownloadError: the server says the file is not there (4xx).
    """
    have = part.stat().st_size if part.exists() else 0
    try:
        response = urllib.request.urlopen(_request(url, have), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:  # our partial file is no prefix of theirs: start over
            part.unlink()
            raise _Retryable("the server refused to resume; restarting") from None
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(
            f"HTTP {exc.code} {exc.reason} (if the model zoo moved, point {ENV_MODEL_BASE} at its new host)", url
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, FileNotFoundError):  # a file:// mirror without this file
            raise DownloadError("not found in the local mirror", url) from None
        raise _Retryable(f"cannot connect: {reason}") from None
    with response:
        status = getattr(response, "status", None)
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        mode, start = "wb", 0  # a 200 answer to a Range request: the server restarts from byte 0
        if have and status == 206:
            match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != have:
                part.unlink()
                raise _Retryable("the server resumed at another offset; restarting")
            mode, start = "ab", have
        expected = None if length is None else start + length
        on_progress(start, expected)
        received = start
        with open(part, mode) as f:
            try:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    received += len(chunk)
                    on_progress(received, expected)
            except (OSError, http.client.HTTPException) as exc:
                raise _Retryable(f"connection lost after {received} bytes ({exc.__class__.__name__})") from None
    # http.client returns b'' (not an error) when the peer closes early: compare with Content-Length.
    if expected is not None and received < expected:
        raise _Retryable(f"connection closed after {received} of {expected} bytes")


@contextlib.contextmanager
def _entry_lock(cache_dir: Path, entry: ZooEntry) -> Iterator[None]:
    """Exclusive per-entry lock (``<cache>/.locks/<name>.lock``) held while downloading."""
    lock_dir = cache_dir / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{entry.name}.lock", "a") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"detconvert: waiting for another download of {entry.name} to finish", file=sys.stderr)
                fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _progress_bar(entry: ZooEntry, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=None, unit="B", unit_scale=True, unit_divisor=1024, desc=entry.name, disable=not enabled, leave=False
    )


def fetch(
    entry: ZooEntry,
    *,
    offline: bool = False,
    cache_dir: Optional[PathLike] = None,
    base_url: Optional[str] = None,
    retries: int = 3,
    retry_wait: float = 1.0,
    timeout: float = 60.0,
    progress: Optional[bool] = None,
    check_md5sum: bool = True,
    deep_check: bool = True,
) -> Path:
    """The path of ``entry`` in the cache, downloading and verifying it first if needed.

    Args:
        entry: the catalogue entry.
        offline: never touch the network; raise if the file is not cached.
        cache_dir: default :func:`default_cache_dir`.
        base_url: default :func:`model_base_url`.
        retries: further attempts after a failed transfer (each resumes where the last stopped).
        retry_wait: seconds before the first retry (doubled each time).
        timeout: socket timeout in seconds.
        progress: show a tqdm bar; default: when stderr is a terminal.
        check_md5sum: also verify against ``<url>.md5sum`` when the server publishes one.
        deep_check: also parse the file with the weight reader when it is available.

    Returns:
        The cached file.

    Raises:
        DownloadError: offline and missing, not found on the server, or failed verification
            (the downloaded bytes are deleted).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cached_file(entry, cache)
    # Only verified files are renamed into place, but a user may have saved one there by hand
    # (the offline message suggests it): the cheap sniff catches a saved error page.
    if final.is_file() and _sniff_file(final) is None:
        return final
    base = base_url or model_base_url()
    url = entry.url(base)
    if offline or _offline_from_env():
        if final.is_file():
            raise DownloadError(f"offline, and the cached file is unusable: {_sniff_file(final)}; delete it", final)
        raise DownloadError(
            f"offline and not in the cache: {final} is missing (run `detconvert zoo fetch {entry.name}` "
            f"where the network is reachable, or save {url} there)",
            entry.name,
        )
    cache.mkdir(parents=True, exist_ok=True)
    with _entry_lock(cache, entry):
        if final.is_file():
            if _sniff_file(final) is None:  # another process finished it while we waited for the lock
                return final
            final.unlink()  # a bad file saved by hand: replace it
        # A fixed temp name, only touched under the lock; a leftover from a killed run is resumed.
        part = cache / f".{entry.file_name}.part"
        show = sys.stderr.isatty() if progress is None else progress
        try:
            with _progress_bar(entry, show) as bar:

                def on_progress(done: int, total: Optional[int]) -> None:
                    if bar.total != total:
                        bar.reset(total=total)
                    bar.update(done - bar.n)

                _download_with_retries(url, part, timeout, retries, retry_wait, on_progress)
            try:
                _verify(part, entry, url, timeout, check_md5sum, deep_check)
            except _Rejected as exc:
                raise DownloadError(f"download of {entry.name} failed verification: {exc}; deleted it", url) from None
            os.chmod(part, 0o644)
            os.replace(part, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
    return final


def _download_with_retries(
    url: str,
    part: Path,
    timeout: float,
    retries: int,
    retry_wait: float,
    on_progress: Callable[[int, Optional[int]], None],
) -> None:
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout, on_progress)
            return
        except _Retryable as exc:
            if attempt == retries:
                raise DownloadError(f"download failed after {retries + 1} attempts: {exc}", url) from None
            time.sleep(retry_wait * (2**attempt))


def fetch_name(name: str, *, offline: bool = False, **kwargs) -> Path:
    """:func:`fetch` of the catalogue entry ``name`` (short name, model id, config path ...)."""
    return fetch(load_catalogue().get(name), offline=offline, **kwargs)


def resolve_weights(name_or_path: Union[str, PathLike], offline: bool = False, **fetch_kwargs) -> Path:
    """Turn any weight argument into a local file: an existing path, or a model-zoo name fetched to the cache.

    Use it wherever a weight file is accepted (``detconvert weights``, ``inspect``,
    ``--load_detectron``). An existing file is returned as is (a ``.yaml`` config path is looked up
    in the catalogue instead); otherwise ``name_or_path`` may be a short name
    (``e2e_mask_rcnn_R-101-FPN_2x``), a model id (``35861858``), a zoo config path or an ImageNet
    name (``R-50``), which are downloaded (or, ``offline``, taken from the cache only).

    Raises:
        WeightFileError: a path that does not exist and is no zoo name.
        DetconvertError / DownloadError: see :meth:`Catalogue.get` and :func:`fetch`.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    is_config = path.suffix.lower() in (".yaml", ".yml")
    if path.exists() and not is_config:
        return path  # a folder or an odd file is reported by the reader, in one place
    catalogue = load_catalogue()
    entry = catalogue.find(text)
    if entry is None:
        if is_config:
            raise DetconvertError("this config has no model-zoo weights; pass a weight file", text)
        if "/" in text or os.sep in text or path.suffix.lower() in (".pkl", ".pth", ".safetensors"):
            raise WeightFileError("no such file (and not a model-zoo name; see `detconvert zoo list`)", text)
        catalogue.get(text)  # raises with close matches
    return fetch(entry, offline=offline, **fetch_kwargs)
