"""Reading a store's files whole from a local path, an ``http(s)://`` URL or a ``pipe:`` command.

Every read from a server or a command has a *stall timeout*: a source that sends nothing for
that many seconds (a server stopped mid-response, a command waiting on a dead mount) raises
``StalledRead`` instead of hanging its reader, and with it a training job, forever. A slow
source that keeps sending is never cut off: the clock restarts with every block that arrives.
Local paths are read directly (a hung network file system is the kernel's to time out; read
such a store through ``pipe:cat`` to have the stall timeout apply).

``pipe:COMMAND`` runs ``COMMAND`` in a shell and reads its standard output (WebDataset's
convention, e.g. ``pipe:aws s3 cp s3://bucket/store/shard-000000.tar -``); a non-zero exit
status is an error. Other URL schemes are refused with that advice.
"""

from __future__ import annotations

import http.client
import os
import re
import selectors
import signal
import subprocess
import time
import urllib.error
import urllib.request

from .errors import StoreError

__all__ = ["DEFAULT_STALL_TIMEOUT", "StalledRead", "read_location", "read_store_file"]

DEFAULT_STALL_TIMEOUT = 60.0  # seconds without a byte before a read gives up
_BLOCK = 1 << 20
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class StalledRead(TimeoutError):
    """No data arrived for the stall timeout."""

    def __init__(self, seconds: float):
        super().__init__(f"stalled: no data arrived for {seconds:g} s (the stall timeout)")


def read_location(location: str, *, stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> bytes:
    """All bytes at ``location``.

    Raises ``FileNotFoundError`` (no such file, HTTP 404), ``StalledRead``, or ``OSError``
    with a one-line reason for anything else.
    """
    if stall_timeout <= 0:
        raise ValueError(f"stall timeout must be > 0 seconds, got {stall_timeout}")
    if location.startswith("pipe:"):
        return _read_pipe(location[len("pipe:") :], stall_timeout)
    scheme = _SCHEME.match(location)
    if scheme is None:
        with open(location, "rb") as f:
            return f.read()
    name = scheme.group(1).lower()
    if name in ("http", "https"):
        return _read_http(location, stall_timeout)
    if name == "file":
        with open(location[len("file://") :], "rb") as f:
            return f.read()
    raise OSError(
        f"unsupported location scheme {name}://; use a local path, http(s):// or "
        f"pipe:COMMAND (a command that writes the file to its standard output)"
    )


def read_store_file(
    location: str, error: type[StoreError], stall_timeout: float, missing: str = "no such file"
) -> bytes:
    """``read_location``, every failure raised as ``error(location, problem)`` (the store's
    ``ManifestError`` or ``ShardError``), ``missing`` being the problem of a missing file."""
    try:
        return read_location(location, stall_timeout=stall_timeout)
    except FileNotFoundError:
        raise error(location, missing) from None
    except StalledRead as err:
        raise error(location, str(err)) from None
    except OSError as err:
        raise error(location, f"cannot be read: {err}") from None


def _read_http(url: str, stall_timeout: float) -> bytes:
    # The socket timeout bounds every single receive, i.e. the time without progress.
    try:
        with urllib.request.urlopen(url, timeout=stall_timeout) as response:
            blocks = []
            while block := response.read(_BLOCK):
                blocks.append(block)
            return b"".join(blocks)
    except urllib.error.HTTPError as err:
        if err.code == 404:
            raise FileNotFoundError(f"HTTP 404 {err.reason}") from None
        raise OSError(f"HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise StalledRead(stall_timeout) from None
        raise OSError(f"cannot connect: {err.reason}") from None
    except TimeoutError:
        raise StalledRead(stall_timeout) from None
    except http.client.IncompleteRead as err:
        raise OSError(f"the connection closed after {len(err.partial)} bytes") from None
    except http.client.HTTPException as err:
        raise OSError(f"bad HTTP response: {err!r}") from None


def _read_pipe(command: str, stall_timeout: float) -> bytes:
    """Standard output of ``command``; the end of its standard error goes into the error
    message. Only standard output counts as progress."""
    proc = subprocess.Popen(
        command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + stall_timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, out)
        selector.register(proc.stderr, selectors.EVENT_READ, err)
        while selector.get_map():
            ready = selector.select(timeout=max(deadline - time.monotonic(), 0))
            if time.monotonic() >= deadline and not any(k.data is out for k, _ in ready):
                _kill(proc)
                raise StalledRead(stall_timeout)
            for key, _ in ready:
                block = os.read(key.fd, _BLOCK)
                if not block:
                    selector.unregister(key.fileobj)
                elif key.data is out:
                    out.extend(block)
                    deadline = time.monotonic() + stall_timeout
                else:
                    err.extend(block)
                    del err[: max(len(err) - 4096, 0)]  # keep the end
    proc.stdout.close()
    proc.stderr.close()
    try:
        status = proc.wait(timeout=stall_timeout)
    except subprocess.TimeoutExpired:  # output closed, but the command lingers
        _kill(proc)
        raise StalledRead(stall_timeout) from None
    if status != 0:
        said = err.decode("utf-8", "replace").strip().splitlines()
        raise OSError(
            f"command {command!r} exited with status {status}" + (f": {said[-1]}" if said else "")
        )
    return bytes(out)


def _kill(proc: subprocess.Popen) -> None:
    """Stop the shell of a ``pipe:`` command and everything it started."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
