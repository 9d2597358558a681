"""Hostile input on the REST endpoints: random requests, wrong keys and malicious uploads.

A real aiohttp server is driven by a real aiohttp client (and by a raw socket for requests
no client library would send). Hypothesis runs in a worker thread and hands each request to
the event loop that owns the server.

What must hold:

- no request gets a 5xx, and every request gets an answer (or, for bytes that are not
  HTTP, a clean close);
- every endpoint but ``/alive`` answers 401 "unauthorized" and nothing else to a missing,
  wrong, near-miss, non-UTF-8 or repeated key;
- the key appears in no response (status line, header or body), no server log record
  (captured at DEBUG) and nothing the shell can read;
- an upload with ``..``, absolute paths, links pointing out, devices, FIFOs, too many
  members, a truncated or garbage body, or a compression bomb is refused with a 4xx, and
  nothing outside its destination changes (the tree around it is compared before/after);
- at the end ``/alive`` says "ok" from the same process and nothing was logged at ERROR
  except aiohttp's own report of the malformed requests a test sent on purpose.
"""

from __future__ import annotations

import asyncio
import bz2
import gzip
import io
import logging
import lzma
import os
import stat
import string
import sys
import tarfile
import time
import urllib.parse
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from yarl import URL

from container_server.app import API_KEY_HEADER, ServerSettings, create_app
from events import CmdOutputChunk, CmdOutputObservation, CmdRunAction, decode_event, encode_event

KEY = "hostile-http-key-8c2e4a6f1b"
MAX_MEMBERS = 300
ENDPOINTS = ("/alive", "/server_info", "/upload", "/download", "/files", "/openapi.json", "/ws")
READ_LIMIT = 64 * 1024  # bytes of a response body worth reading (a download may be huge)
TIMEOUT = aiohttp.ClientTimeout(total=30)


# ------------------------------------------------------------------------------ fixtures


@dataclass
class Arena:
    """``root`` holds everything the server may see; uploads land under ``work``."""

    root: Path
    work: Path
    outside: Path


@pytest.fixture
def arena(tmp_path: Path) -> Arena:
    root = tmp_path / "root"
    work = root / "a" / "b" / "work"
    outside = root / "outside"
    work.mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("do not touch\n")
    (work / "hello.txt").write_text("hello\n")
    (work / "sub").mkdir()
    (work / "sub" / "nested.txt").write_text("nested\n")
    # Names and links that once turned a download or a listing into a 500.
    (work / "new\nline.txt").write_text("x")
    (work / 'quo"te.txt').write_text("x")
    (work / "dangling").symlink_to("/nonexistent/target")
    (work / "loop1").symlink_to("loop2")
    (work / "loop2").symlink_to("loop1")
    return Arena(root, work, outside)


@pytest.fixture
async def server(arena: Arena) -> AsyncIterator[TestServer]:
    settings_ = ServerSettings(
        working_dir=str(arena.work), api_key=KEY, max_upload_members=MAX_MEMBERS
    )
    srv = TestServer(create_app(settings_), host="127.0.0.1")
    await srv.start_server()
    try:
        yield srv
    finally:
        await srv.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


def capture_server_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.WARNING, logger="websockets")  # the test's client logs headers


def check_logs(records: list[logging.LogRecord], *, malformed_http_sent: bool = False) -> None:
    """No server record carries the key, and nothing unexpected was logged at ERROR.

    aiohttp's parser refuses malformed HTTP with a 400 and logs each one itself on
    ``aiohttp.server`` at ERROR ("Error handling request" with the parser's exception, the
    traceback in the message); a test that sends such requests on purpose allows exactly
    those, and nothing chained to them.
    """
    for record in records:
        if record.name.startswith("websockets."):
            continue  # the test's client, not the server
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        assert KEY not in text, record
        if record.levelno < logging.ERROR:
            continue
        deliberate = (
            malformed_http_sent
            and record.name == "aiohttp.server"
            and text.startswith("Error handling request")
            and "aiohttp.http_exceptions." in text
            and "direct cause" not in text
            and "During handling" not in text
        )
        assert deliberate, f"{record.name}: {text}"


async def check_server_alive(srv: TestServer) -> None:
    """The same process still serves: /alive is "ok", /server_info reports our pid."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.get(srv.make_url("/alive")) as r:
            assert (r.status, await r.text()) == (200, "ok")
        async with session.get(srv.make_url("/server_info"), headers={API_KEY_HEADER: KEY}) as r:
            assert r.status == 200
            assert (await r.json())["pid"] == os.getpid()


def on_loop(loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` on ``loop`` from another thread (hypothesis runs in a worker thread)."""
    asyncio.run_coroutine_threadsafe(work, loop).result(timeout=60)


def snapshot(root: Path, *, skip: Path | None = None) -> dict[str, tuple[str, object]]:
    """Every entry under ``root`` but ``skip``: kind, content or link target, mode."""
    tree: dict[str, tuple[str, object]] = {}
    for directory, dirs, files in os.walk(root):
        if skip is not None:
            dirs[:] = [d for d in dirs if Path(directory, d) != skip]
        for name in dirs + files:
            full = Path(directory, name)
            if full == skip:
                continue
            st_ = full.lstat()
            rel = str(full.relative_to(root))
            if stat.S_ISLNK(st_.st_mode):
                tree[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st_.st_mode):
                tree[rel] = ("dir", stat.S_IMODE(st_.st_mode))
            else:
                tree[rel] = ("file", (full.read_bytes(), stat.S_IMODE(st_.st_mode)))
    return tree


def assert_contained(dest: Path) -> None:
    """Nothing under ``dest`` is, or leads to, anything outside it."""
    if not dest.exists():
        return
    real = os.path.realpath(dest)
    for entry in dest.rglob("*"):
        # A link to the destination itself (e.g. "a" -> "a/..") stays inside it.
        resolved = os.path.realpath(entry)
        assert resolved == real or resolved.startswith(real + os.sep), entry
        mode = entry.lstat().st_mode
        assert stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode), entry


def leaks_key(status_line: str, headers: Any, body: bytes) -> bool:
    blob = status_line + "".join(f"{k}: {v}\n" for k, v in headers.items())
    return KEY in blob or KEY.encode() in body


# ------------------------------------------------------------------------------ random requests

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE")
KEY_VARIANTS = (
    "correct",
    "lowercase_header_name",
    "missing",
    "empty",
    "wrong",
    "one_char_off",
    "prefix",
    "suffix",
    "unicode",
    "twice_correct",
    "correct_then_wrong",
    "wrong_then_correct",
    "as_bearer",
)
AUTHORIZED = frozenset({"correct", "lowercase_header_name"})
ABSOLUTE_PATHS = (
    "/",
    "/etc",
    "/etc/passwd",
    "/proc/self/status",
    "/proc/kcore",
    "/sys/kernel/mm/transparent_hugepage",
    "/dev/null",
    "/dev/zero",
    "/dev/stdin",
    "/nonexistent",
    "////",
    "/./.",
    "/tmp/../etc",
)
TRICKY_NAMES = (
    "hello.txt",
    "sub",
    "sub/nested.txt",
    "new\nline.txt",
    'quo"te.txt',
    "dangling",
    "loop1",
    ".",
    "..",
    "",
    "\x00",
    "a\x00b",
    "\udcff",
    "ünï/cödé",
    "%2e%2e",
    "~",
    "$HOME",
    "a" * 300,
    "/".join(["d" * 250] * 20),
)


def key_headers(variant: str, *, position: int = 0, char: str = "x") -> list[tuple[str, str]]:
    """The API-key headers for one variant (a list: a header may be repeated)."""
    near = KEY[:position] + (char if char != KEY[position] else "#") + KEY[position + 1 :]
    return {
        "correct": [(API_KEY_HEADER, KEY)],
        "lowercase_header_name": [(API_KEY_HEADER.lower(), KEY)],
        "missing": [],
        "empty": [(API_KEY_HEADER, "")],
        "wrong": [(API_KEY_HEADER, "wrong-key")],
        "one_char_off": [(API_KEY_HEADER, near)],
        "prefix": [(API_KEY_HEADER, KEY[:-1])],
        "suffix": [(API_KEY_HEADER, KEY + "0")],
        "unicode": [(API_KEY_HEADER, KEY[:-1] + "é")],
        "twice_correct": [(API_KEY_HEADER, KEY), (API_KEY_HEADER, KEY)],
        "correct_then_wrong": [(API_KEY_HEADER, KEY), (API_KEY_HEADER, "wrong")],
        "wrong_then_correct": [(API_KEY_HEADER, "wrong"), (API_KEY_HEADER, KEY)],
        "as_bearer": [("Authorization", f"Bearer {KEY}"), ("Cookie", f"session={KEY}")],
    }[variant]


@dataclass(frozen=True)
class Request:
    method: str
    raw_path: str  # already percent-encoded, sent as it is
    query: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...]
    key: str
    key_position: int
    key_char: str
    body: str  # "none", "bytes", "large", "chunked", "gzip"
    body_bytes: bytes
    huge_header: int  # > 0: a header value of this many bytes (over aiohttp's 8190 limit)


header_names = st.text(
    alphabet=string.ascii_letters + string.digits + "-_!#$%&'*+.^`|~", min_size=1, max_size=20
).filter(
    lambda n: (
        n.lower() not in {API_KEY_HEADER.lower(), "host", "content-length", "transfer-encoding"}
    )
)
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
)


@st.composite
def raw_paths(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from((*ENDPOINTS, "/", "/nope", "/alive/x", "/files/x")))
    decoration = draw(
        st.sampled_from(
            (
                "none",
                "none",
                "dotdot_prefix",
                "encoded_dotdot",
                "double_slash",
                "dot_segment",
                "trailing_slash",
                "nul",
                "encoded_name",
                "random_suffix",
            )
        )
    )
    if decoration == "dotdot_prefix":
        return "/.." * draw(st.integers(1, 4)) + base
    if decoration == "encoded_dotdot":
        return "/%2e%2e" + base
    if decoration == "double_slash":
        return "/" + base
    if decoration == "dot_segment":
        return "/." + base
    if decoration == "trailing_slash":
        return base + "/"
    if decoration == "nul":
        return base + "%00"
    if decoration == "encoded_name":
        return "/" + "".join(f"%{ord(c):02x}" for c in base[1:])
    if decoration == "random_suffix":
        return base + urllib.parse.quote(draw(st.text(max_size=20)))
    return base


def path_values(work: Path, root: Path, *, writes: bool) -> st.SearchStrategy[str]:
    """?path= values: anything for reads; for uploads only destinations inside ``root``."""
    names = st.sampled_from(TRICKY_NAMES) | st.text(max_size=30)
    traversal = st.builds(
        lambda ups, name: "../" * ups + name, st.integers(0, 6 if not writes else 3), names
    )
    values = traversal | names
    if not writes:
        return values | st.sampled_from(ABSOLUTE_PATHS)

    def inside(value: str) -> str:
        # The server writes where an upload says; the fuzz keeps it inside the arena.
        resolved = os.path.normpath(os.path.join(work, value))
        ok = resolved.startswith(f"{root}{os.sep}") and "\x00" not in value and value
        return value if ok else "fuzz-upload"

    return values.map(inside)


@st.composite
def requests(draw: st.DrawFn, work: Path, root: Path) -> Request:
    # One in ten an invented method (aiohttp's parser refuses most of them outright).
    invented = draw(st.integers(0, 9)) == 0
    method = draw(
        st.text(alphabet=string.ascii_uppercase, min_size=1, max_size=8)
        if invented
        else st.sampled_from(METHODS)
    )
    raw_path = draw(raw_paths())
    writes = method not in ("GET", "HEAD")
    query: list[tuple[str, str]] = []
    if draw(st.booleans()):
        query.append(("path", draw(path_values(work, root, writes=writes))))
    if draw(st.booleans()):
        query.append(("client_id", draw(st.text(max_size=300))))
    query.extend(draw(st.lists(st.tuples(st.text(max_size=8), st.text(max_size=20)), max_size=2)))
    if writes:
        # An extra ?path= can win over the checked one: keep extra keys off "path".
        query = [(k, v) for i, (k, v) in enumerate(query) if k != "path" or i == 0]
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=4))
    body = draw(st.sampled_from(("none", "none", "bytes", "large", "chunked", "gzip")))
    return Request(
        method=method,
        raw_path=raw_path,
        query=tuple(query),
        headers=tuple(headers),
        key=draw(st.sampled_from(KEY_VARIANTS)),
        key_position=draw(st.integers(0, len(KEY) - 1)),
        key_char=draw(st.characters(min_codepoint=0x21, max_codepoint=0x7E)),
        body=body,
        body_bytes=draw(st.binary(max_size=600)),
        huge_header=draw(st.sampled_from((0,) * 15 + (9000, 70_000))),
    )


@dataclass
class HttpTally:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    unauthorized_checked: int = 0
    failures: list[str] = field(default_factory=list)  # 5xx or no answer: server crashes


async def chunked_body(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 97):
        yield data[start : start + 97]


async def send_request(
    session: aiohttp.ClientSession, srv: TestServer, req: Request, tally: HttpTally
) -> None:
    query = list(req.query)
    url = URL(f"http://127.0.0.1:{srv.port}{req.raw_path}", encoded=True)
    if query:
        url = url.with_query(query)
    headers = list(req.headers) + key_headers(req.key, position=req.key_position, char=req.key_char)
    if req.huge_header:
        headers.append(("X-Huge", "h" * req.huge_header))
    data: Any = None
    if req.body == "bytes":
        data = req.body_bytes
    elif req.body == "large":
        data = io.BytesIO(
            (req.body_bytes or b"\x01") * (3 * 1024 * 1024 // max(len(req.body_bytes), 1))
        )
    elif req.body == "chunked":
        data = chunked_body(req.body_bytes)
    elif req.body == "gzip":
        data = gzip.compress(req.body_bytes)
        headers.append(("Content-Encoding", "gzip"))
    tally.requests += 1
    try:
        async with session.request(req.method, url, headers=headers, data=data) as r:
            body = await r.content.read(READ_LIMIT)
            status, response_headers = r.status, r.headers
    except aiohttp.ClientResponseError as exc:
        # aiohttp's client refuses some answers it cannot parse; the status still counts.
        status, response_headers, body = exc.status, exc.headers or {}, b""
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        if req.huge_header or req.body == "large":
            # The server may answer 400/401 before reading all we send, then close.
            tally.statuses[0] += 1
            return
        tally.failures.append(f"no answer to {req!r}: {exc!r}")
        return
    tally.statuses[status] += 1
    if status >= 500:
        tally.failures.append(f"{status} for {req!r}: {body[:200]!r}")
    assert not leaks_key(str(status), response_headers, body), req
    if req.huge_header:
        assert status in (400, 431), (status, req)
        return
    if req.method not in METHODS and status == 400:
        return  # aiohttp's parser refuses methods it does not know, before any handler
    if req.key in AUTHORIZED:
        return
    reached_alive = "alive" in urllib.parse.unquote(req.raw_path) and (
        (status == 200 and body in (b"ok", b"")) or status == 405
    )
    if not reached_alive:
        assert status == 401, (status, body[:200], req)
        assert body in (b"unauthorized", b""), body[:200]  # empty for HEAD
        tally.unauthorized_checked += 1


HTTP_EXAMPLES = 700


async def test_random_requests_never_5xx(
    server: TestServer, arena: Arena, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    capture_server_logs(caplog)
    before = snapshot(arena.root)
    loop = asyncio.get_running_loop()
    tally = HttpTally()

    @settings(
        max_examples=HTTP_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(req=requests(arena.work, arena.root))
    def example(req: Request) -> None:
        on_loop(loop, send_request(http, server, req, tally))

    started = time.monotonic()
    await asyncio.to_thread(example)
    elapsed = time.monotonic() - started
    print(
        f"\nrandom HTTP: {tally.requests} requests in {elapsed:.1f} s; statuses "
        f"{dict(sorted(tally.statuses.items()))}; {tally.unauthorized_checked} checked as 401; "
        f"crashes {len(tally.failures)}"
    )
    assert tally.failures == []
    assert tally.requests >= HTTP_EXAMPLES
    assert tally.unauthorized_checked > HTTP_EXAMPLES // 4
    assert set(tally.statuses) >= {200, 400, 401, 404}
    # Random bodies are no tars: at most an empty archive made an empty directory.
    after = snapshot(arena.root)
    assert before == {k: v for k, v in after.items() if k in before}
    assert all(after[k][0] == "dir" for k in set(after) - set(before)), set(after) - set(before)
    await check_server_alive(server)
    check_logs(caplog.records, malformed_http_sent=True)


# ------------------------------------------------------------------------------ raw HTTP


#: Well-formed header lines with hostile values.
RAW_HEADERS = (
    b"Host: x",
    b"Content-Length: 5",
    b"Content-Length: 5\r\nContent-Length: 6",
    b"Content-Length: -1",
    b"Content-Length: 99999999999999999999",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: chunked\r\nContent-Length: 3",
    b"Transfer-Encoding: gzip, chunked",
    b"Content-Encoding: gzip",
    b"X-Session-API-Key: \xff\xfe\xfd",
    b"X-Session-API-Key: " + KEY.encode() + b"\xc3",
    b"X-Session-API-Key: " + KEY.encode() + b"\r\nX-Session-API-Key: " + KEY.encode(),
    b"X-Session-API-Key: " + KEY.encode()[:-1],
    b"Upgrade: websocket\r\nConnection: Upgrade",
)
#: Header lines that break the grammar.
BROKEN_HEADERS = (b" folded: continuation", b"NoColon", b": empty-name", b"X-Bin: \x01\x02\x7f")


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """Bytes on the wire that a client library would never send.

    Half of them keep a well-formed request line (so that they reach the key check with
    odd headers and bodies); the other half break the request line as well.
    """
    well_formed_line = draw(st.booleans())
    if well_formed_line:
        method = draw(st.sampled_from((b"GET", b"POST", b"DELETE")))
        target = draw(st.sampled_from((b"/alive", b"/server_info", b"/upload?path=raw", b"/ws")))
        version = draw(st.sampled_from((b"HTTP/1.1", b"HTTP/1.0")))
        eol = b"\r\n"
    else:
        method = draw(st.sampled_from((b"GET", b"get", b"G\x00T", b"", b"PRI", b"\x16\x03\x01")))
        target = draw(
            st.sampled_from(
                (b"*", b"http://evil/alive", b"/\xff\xfe", b"/a b", b"/" + b"a" * 9000, b"")
            )
            | st.binary(max_size=30)
        )
        version = draw(st.sampled_from((b"HTTP/1.1", b"HTTP/2.0", b"HTTP/1.1x", b"", b"http/1.1")))
        eol = draw(st.sampled_from((b"\r\n", b"\n", b"\r")))
    headers = draw(
        st.lists(
            st.sampled_from(RAW_HEADERS)
            if well_formed_line
            else st.sampled_from(RAW_HEADERS + BROKEN_HEADERS) | st.binary(max_size=40),
            max_size=3,
        )
    )
    # Bytes after a complete request are a second, pipelined one; aiohttp answers a parse
    # error there with one 400 for both, so a well-formed request carries a body only when
    # it declares one.
    declares_body = any(b"Content-Length" in h or b"Transfer-Encoding" in h for h in headers)
    body = (
        draw(
            st.sampled_from(
                (b"", b"hello", b"zz\r\nabc\r\n0\r\n\r\n", b"ffffffffffffffff\r\nx", b"0\r\n\r\n")
            )
            | st.binary(max_size=40)
        )
        if declares_body or not well_formed_line
        else b""
    )
    return eol.join([method + b" " + target + b" " + version, *headers]) + eol + eol + body


#: Sent when a raw request gets no answer at once: completes a short Content-Length or
#: chunked body, so that the server answers rather than waits (aiohttp drops a half-closed
#: connection, and a parse error in pipelined bytes would replace the first answer).
RAW_TAIL = b"\r\n0\r\n\r\n" + b" " * 16


async def raw_exchange(port: int, data: bytes, *, wait: float = 2.0) -> bytes:
    """Send ``data``, return the first response line (b"" if closed, b"pending" if none)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    line = asyncio.ensure_future(reader.readline())
    try:
        writer.write(data)
        await writer.drain()
        try:
            done, _ = await asyncio.wait([line], timeout=0.3)
            if not done:
                writer.write(RAW_TAIL)
                await asyncio.wait_for(asyncio.shield(line), wait)
            return line.result()
        except ConnectionError:
            return b""
        except TimeoutError:
            return b"pending"
    finally:
        line.cancel()
        writer.close()


RAW_EXAMPLES = 60
RAW_BATCH = 6  # sent side by side: a request the server waits on costs one wait


async def test_raw_malformed_requests_never_5xx(
    server: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    capture_server_logs(caplog)
    loop = asyncio.get_running_loop()
    statuses: Counter[bytes] = Counter()

    async def one(data: bytes) -> None:
        line = await raw_exchange(server.port, data, wait=1.0)
        status = line.split(b" ")[1] if line.startswith(b"HTTP/") else line or b"closed"
        statuses[status] += 1
        # No raw request carries a valid key: none gets past the key check (200/405 is /alive).
        allowed = (b"closed", b"pending", b"200", b"400", b"401", b"405", b"431")
        assert status in allowed, (data, line)

    async def batch(requests: list[bytes]) -> None:
        await asyncio.gather(*(one(data) for data in requests))

    @settings(
        max_examples=RAW_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests=st.lists(raw_requests(), min_size=RAW_BATCH, max_size=RAW_BATCH))
    def example(requests: list[bytes]) -> None:
        on_loop(loop, batch(requests))

    await asyncio.to_thread(example)
    print(f"\nraw HTTP: {sum(statuses.values())} requests; statuses {dict(statuses)}")
    assert sum(statuses.values()) >= RAW_EXAMPLES * RAW_BATCH
    assert statuses[b"400"] > 0
    assert statuses[b"401"] > 0
    await check_server_alive(server)
    check_logs(caplog.records, malformed_http_sent=True)


# ------------------------------------------------------------------------------ auth


PROTECTED = (
    ("GET", "/server_info"),
    ("GET", "/files?path=."),
    ("GET", "/download?path=hello.txt"),
    ("POST", "/upload?path=up"),
    ("GET", "/openapi.json"),
    ("GET", "/ws"),
    ("GET", "/nonexistent"),
    ("DELETE", "/files"),
    ("GET", "/alive/"),
)
WRONG_KEYS = tuple(k for k in KEY_VARIANTS if k not in AUTHORIZED)


async def test_every_endpoint_but_alive_answers_401_to_every_wrong_key(
    server: TestServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    capture_server_logs(caplog)
    checked = 0
    for method, target in PROTECTED:
        for variant in WRONG_KEYS:
            positions = range(len(KEY)) if variant == "one_char_off" else (0,)
            for position in positions:
                url = server.make_url(target)
                headers = key_headers(variant, position=position, char="Z")
                async with http.request(method, url, headers=headers, data=b"x" * 10) as r:
                    body = await r.read()
                    assert (r.status, body) == (401, b"unauthorized"), (method, target, variant)
                    assert not leaks_key(r.reason or "", r.headers, body)
                checked += 1
        async with http.request(
            method, server.make_url(target), headers={API_KEY_HEADER: KEY}
        ) as r:
            assert r.status != 401, (method, target)
    assert checked == len(PROTECTED) * (len(WRONG_KEYS) - 1 + len(KEY))
    # /alive needs no key, with or without one.
    for variant in KEY_VARIANTS:
        async with http.get(server.make_url("/alive"), headers=key_headers(variant)) as r:
            assert (r.status, await r.text()) == (200, "ok")
    check_logs(caplog.records)


async def test_key_in_the_query_string_is_not_accepted(
    server: TestServer, http: aiohttp.ClientSession
) -> None:
    # Not part of the log check: a client that puts the key in a URL has published it
    # itself (an access log, where enabled, records URLs).
    for method, target in PROTECTED:
        url = server.make_url(target).update_query(api_key=KEY, **{API_KEY_HEADER: KEY})
        async with http.request(method, url) as r:
            assert (r.status, await r.read()) == (401, b"unauthorized"), (method, target)


@pytest.mark.parametrize(
    "header",
    [
        b"X-Session-API-Key: \xff\xfe",  # not UTF-8: once a 500
        b"X-Session-API-Key: " + KEY.encode()[:-1] + b"\xe9",  # latin-1 near miss
        b"X-Session-API-Key: " + KEY.encode() + b"\r\nX-Session-API-Key: " + KEY.encode(),
        b"X-Session-API-Key: " + KEY.encode() + b", " + KEY.encode(),
        b"X-Session-API-Key:",
        b"X-Session-API-Key : " + KEY.encode(),  # whitespace before the colon is illegal
    ],
)
async def test_raw_key_headers_are_refused(
    server: TestServer, caplog: pytest.LogCaptureFixture, header: bytes
) -> None:
    capture_server_logs(caplog)
    line = await raw_exchange(
        server.port, b"GET /server_info HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n"
    )
    assert line.startswith(b"HTTP/1."), line
    assert line.split(b" ")[1] in (b"400", b"401"), line
    await check_server_alive(server)
    check_logs(caplog.records, malformed_http_sent=True)


@pytest.mark.parametrize("variant", WRONG_KEYS)
async def test_websocket_handshake_refuses_wrong_keys(server: TestServer, variant: str) -> None:
    url = f"ws://127.0.0.1:{server.port}/ws?client_id=intruder"
    with pytest.raises(InvalidStatus) as info:
        await connect(url, additional_headers=key_headers(variant, position=3))
    assert info.value.response.status_code == 401
    assert KEY.encode() not in info.value.response.body


async def test_key_in_the_server_environment_never_reaches_the_shell(
    arena: Arena, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Even with the key left in the server's environment, the agent's shell never sees it."""
    capture_server_logs(caplog)
    monkeypatch.setenv("SESSION_API_KEY", KEY)
    srv = TestServer(create_app(ServerSettings(working_dir=str(arena.work), api_key=KEY)))
    await srv.start_server()
    try:
        # Counts, not dumps: a long environment would be cut in the middle of the output.
        fragment = KEY[:14]  # enough to find the key, not the key itself (commands are echoed)
        probe = (
            "printf 'k=%s\\n' \"$SESSION_API_KEY\"; "
            f"env | grep -c -F {fragment}; grep -c -a -F {fragment} /proc/self/environ; "
            "grep -c -a SESSION_API_KEY /proc/self/environ"
        )
        async with await connect(
            f"ws://127.0.0.1:{srv.port}/ws?client_id=snoop",
            additional_headers={API_KEY_HEADER: KEY},
            max_size=None,
        ) as ws:
            await ws.send(encode_event(CmdRunAction(probe, id=1)))
            frames: list[bytes] = []
            while True:
                raw = await asyncio.wait_for(ws.recv(), 30)
                frames.append(raw.encode() if isinstance(raw, str) else raw)
                event = decode_event(frames[-1])
                if event.cause == 1 and not isinstance(event, CmdOutputChunk):
                    break
    finally:
        await srv.close()
    assert isinstance(event, CmdOutputObservation)
    assert event.content.split() == ["k=", "0", "0", "0"], event.content
    assert all(KEY.encode() not in frame for frame in frames)
    check_logs(caplog.records)


REPO = Path(__file__).resolve().parents[2]


async def test_key_is_not_readable_from_the_server_process(tmp_path: Path) -> None:
    """The real entry point: the agent's shell must not find the key in its parent."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "container_server",
        "--port",
        "0",
        "--working-dir",
        str(tmp_path),
        env={**os.environ, "SESSION_API_KEY": KEY},
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        url = line.split()[-1].replace("http://", "ws://") + "/ws?client_id=snoop"
        async with await connect(url, additional_headers={API_KEY_HEADER: KEY}) as ws:
            probe = (
                "env; tr '\\0' '\\n' < /proc/$PPID/environ; tr '\\0' '\\n' < /proc/$PPID/cmdline"
            )
            await ws.send(encode_event(CmdRunAction(probe, id=1)))
            seen = b""
            while True:
                raw = await asyncio.wait_for(ws.recv(), 30)
                seen += raw.encode() if isinstance(raw, str) else raw
                event = decode_event(raw)
                if event.cause == 1 and not isinstance(event, CmdOutputChunk):
                    break
        assert b"PATH=" in seen
        assert KEY.encode() not in seen
    finally:
        process.terminate()
        await process.wait()


# ------------------------------------------------------------------------------ uploads


def make_tar(build: Callable[[tarfile.TarFile], None], *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        build(tar)
    return buffer.getvalue()


def add_file(tar: tarfile.TarFile, name: str, data: bytes = b"pwned\n", **attrs: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for attr, value in attrs.items():
        setattr(info, attr, value)
    tar.addfile(info, io.BytesIO(data))


def add_entry(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.devmajor, info.devminor = 1, 3
    tar.addfile(info)


def malicious(outside: Path) -> dict[str, Callable[[tarfile.TarFile], None]]:
    target = str(outside / "secret.txt")
    return {
        "dot-dot": lambda t: add_file(t, "../escaped.txt"),
        "deep dot-dot": lambda t: add_file(t, "../../../../../outside/deep.txt"),
        "nested dot-dot": lambda t: add_file(t, "a/b/../../../escaped.txt"),
        "dot-dot directory": lambda t: add_entry(t, "../newdir", tarfile.DIRTYPE),
        "absolute path": lambda t: add_file(t, str(outside / "abs.txt")),
        "absolute /etc": lambda t: add_file(t, "/etc/hostile-upload-test"),
        "pax path override": lambda t: add_file(
            t, "innocent.txt", pax_headers={"path": "../pax-escaped.txt"}
        ),
        "gnu long name": lambda t: make_gnu_longname(t),
        "symlink absolute": lambda t: add_entry(t, "esc", tarfile.SYMTYPE, str(outside)),
        "symlink to /etc/passwd": lambda t: add_entry(t, "pw", tarfile.SYMTYPE, "/etc/passwd"),
        "symlink relative out": lambda t: add_entry(t, "esc", tarfile.SYMTYPE, "../../../outside"),
        "symlink then file through it": lambda t: (
            add_entry(t, "esc", tarfile.SYMTYPE, "../../../outside"),
            add_file(t, "esc/through.txt"),
        ),
        "symlink inside then file through it": lambda t: (
            add_entry(t, "ln", tarfile.SYMTYPE, "real"),
            add_file(t, "real/ok.txt", b"fine"),
            add_file(t, "ln/through.txt"),
        ),
        "symlink chain": lambda t: (
            add_entry(t, "l", tarfile.SYMTYPE, "s/.."),
            add_entry(t, "s", tarfile.SYMTYPE, "."),
        ),
        "hardlink absolute": lambda t: add_entry(t, "hl", tarfile.LNKTYPE, target),
        "hardlink to /etc/passwd": lambda t: add_entry(t, "hl", tarfile.LNKTYPE, "/etc/passwd"),
        "hardlink relative out": lambda t: add_entry(
            t, "hl", tarfile.LNKTYPE, "../../../outside/secret.txt"
        ),
        "hardlink then write": lambda t: (
            add_entry(t, "hl", tarfile.LNKTYPE, "../../../outside/secret.txt"),
            add_file(t, "hl", b"overwritten"),
        ),
        "character device": lambda t: add_entry(t, "null", tarfile.CHRTYPE),
        "block device": lambda t: add_entry(t, "disk", tarfile.BLKTYPE),
        "fifo": lambda t: add_entry(t, "pipe", tarfile.FIFOTYPE),
        "too many members": lambda t: [add_file(t, f"m{i}", b"") for i in range(MAX_MEMBERS + 1)],
    }


def make_gnu_longname(tar: tarfile.TarFile) -> None:
    # A GNU ././@LongLink member carrying a name with '..' (tarfile writes it for GNU_FORMAT).
    info = tarfile.TarInfo("x/" * 60 + "../" * 70 + "longname-escaped.txt")
    info.size = 5
    tar.addfile(info, io.BytesIO(b"pwned"))


MALICIOUS_KINDS = sorted(malicious(Path("/x")))


async def post_upload(
    http: aiohttp.ClientSession, srv: TestServer, dest: str, body: Any, **headers: str
) -> tuple[int, str]:
    async with http.post(
        srv.make_url("/upload"),
        params={"path": dest},
        data=body,
        headers={API_KEY_HEADER: KEY, **headers},
    ) as r:
        text = await r.text()
        assert KEY not in text
        return r.status, text


async def check_refused(
    http: aiohttp.ClientSession, srv: TestServer, arena: Arena, name: str, body: Any, **headers: str
) -> str:
    """Upload ``body`` to work/``name``: a 4xx, nothing changed outside the destination."""
    dest = arena.work / name
    before = snapshot(arena.root, skip=dest)
    status, text = await post_upload(http, srv, name, body, **headers)
    assert 400 <= status < 500, (status, text)
    assert snapshot(arena.root, skip=dest) == before
    assert_contained(dest)
    assert not Path("/etc/hostile-upload-test").exists()
    return text


@pytest.mark.parametrize("kind", MALICIOUS_KINDS)
async def test_malicious_upload_is_refused(
    server: TestServer,
    arena: Arena,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    capture_server_logs(caplog)
    fmt = tarfile.GNU_FORMAT if kind == "gnu long name" else tarfile.PAX_FORMAT
    archive = make_tar(malicious(arena.outside)[kind], fmt=fmt)
    text = await check_refused(http, server, arena, "up", archive)
    assert text.startswith("refused"), text
    await check_server_alive(server)
    check_logs(caplog.records)


@pytest.mark.parametrize(
    "kind",
    [
        "empty body",
        "random bytes",
        "zip",
        "half a header",
        "cut in the data",
        "gzip garbage",
        "bz2 garbage",
        "xz cut",
        "zero-length gzip",
    ],
)
async def test_garbage_and_truncated_uploads_are_refused(
    server: TestServer,
    arena: Arena,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    capture_server_logs(caplog)
    valid = make_tar(
        lambda t: (add_file(t, "one.txt", b"1" * 700), add_file(t, "two.txt", b"2" * 5000))
    )
    body = {
        "empty body": b"",
        "random bytes": os.urandom(3000),
        "zip": b"PK\x03\x04" + os.urandom(200),
        "half a header": valid[:300],
        "cut in the data": valid[: 1024 + 512 + 2000],
        "gzip garbage": b"\x1f\x8b\x08\x00" + os.urandom(500),
        "bz2 garbage": b"BZh9" + os.urandom(500),
        "xz cut": lzma.compress(valid)[:60],
        "zero-length gzip": gzip.compress(b""),
    }[kind]
    await check_refused(http, server, arena, "junk", body)
    # The destination is created only once a tar header was read; a member cut short is removed.
    dest = arena.work / "junk"
    assert not dest.exists() or sorted(p.name for p in dest.iterdir()) in ([], ["one.txt"])
    await check_server_alive(server)
    check_logs(caplog.records)


BOMB_BYTES = 160 * 1024 * 1024  # past the 64 MiB slack, so the ratio is what refuses it


def bomb(compress: Callable[[], Any]) -> bytes:
    """A tar with one member of BOMB_BYTES zeros, compressed by ``compress()``'s object."""
    header = tarfile.TarInfo("zeros.bin")
    header.size = BOMB_BYTES
    compressor = compress()
    parts = [compressor.compress(header.tobuf(format=tarfile.PAX_FORMAT))]
    block = bytes(1024 * 1024)
    parts.extend(compressor.compress(block) for _ in range(BOMB_BYTES // len(block)))
    parts.append(compressor.compress(bytes(1024)))  # end-of-archive blocks
    parts.append(compressor.flush())
    return b"".join(parts)


BOMBS: dict[str, Callable[[], Any]] = {
    "gzip": lambda: zlib.compressobj(9, wbits=31),
    "bzip2": lambda: bz2.BZ2Compressor(9),
    "xz": lambda: lzma.LZMACompressor(),
}


@pytest.mark.parametrize("kind", [*sorted(BOMBS), "gzip as Content-Encoding"])
async def test_compression_bomb_is_refused(
    server: TestServer,
    arena: Arena,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    capture_server_logs(caplog)
    body = bomb(BOMBS[kind.split()[0]])
    assert len(body) < BOMB_BYTES // 150
    headers = {"Content-Encoding": "gzip"} if "Content-Encoding" in kind else {}
    text = await check_refused(http, server, arena, "bomb", body, **headers)
    assert "compression bomb" in text, text
    # The member being written when the bomb was noticed is gone, not left at 64+ MiB.
    assert list((arena.work / "bomb").iterdir()) == []
    await check_server_alive(server)
    check_logs(caplog.records)


async def test_compressed_uploads_that_are_not_bombs_extract(
    server: TestServer, arena: Arena, http: aiohttp.ClientSession
) -> None:
    """The bomb check is not eager: 32 MiB of zeros (under the slack) and `cat a.gz b.gz`."""
    zeros = make_tar(lambda t: add_file(t, "zeros.bin", bytes(32 * 1024 * 1024)))
    status, text = await post_upload(http, server, "zeros", gzip.compress(zeros, 9))
    assert status == 200, text
    assert (arena.work / "zeros" / "zeros.bin").stat().st_size == 32 * 1024 * 1024
    archive = make_tar(
        lambda t: (add_file(t, "one.txt", b"1" * 3000), add_file(t, "two.txt", b"2" * 3000))
    )
    cut = 2048  # the first member's header and data, in one gzip member; the rest in another
    body = gzip.compress(archive[:cut]) + gzip.compress(archive[cut:])
    status, text = await post_upload(http, server, "concat", body)
    assert status == 200, text
    assert (arena.work / "concat" / "two.txt").read_bytes() == b"2" * 3000


async def test_member_limit_is_inclusive(
    server: TestServer, arena: Arena, http: aiohttp.ClientSession
) -> None:
    archive = make_tar(lambda t: [add_file(t, f"m{i}", b"") for i in range(MAX_MEMBERS)])
    status, text = await post_upload(http, server, "many", archive)
    assert status == 200, text
    assert len(list((arena.work / "many").iterdir())) == MAX_MEMBERS


async def test_download_of_odd_paths_is_clean(
    server: TestServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Paths that once gave a 500 or a 200 with a broken stream."""
    capture_server_logs(caplog)
    headers = {API_KEY_HEADER: KEY}
    expected = {
        "dangling": 404,
        "loop1": 400,
        "new\nline.txt": 200,
        'quo"te.txt': 200,
        "a" * 5000: 404,
    }
    for path, status in expected.items():
        async with http.get(
            server.make_url("/download"), params={"path": path}, headers=headers
        ) as r:
            body = await r.read()
            assert r.status == status, (path, r.status, body[:200])
        if status == 200:
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                assert tar.getnames() == [path]
    for path, status in {"loop1": 400, "a" * 5000: 400, "/".join(["d" * 250] * 20): 400}.items():
        async with http.get(server.make_url("/files"), params={"path": path}, headers=headers) as r:
            assert r.status == status, (path, r.status)
    sysfs = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if sysfs.exists():  # announces 4096 bytes, holds fewer: once a broken stream
        async with http.get(
            server.make_url("/download"), params={"path": str(sysfs)}, headers=headers
        ) as r:
            assert r.status == 200
            body = await r.read()
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            member = tar.getmembers()[0]
            data = tar.extractfile(member)
            assert data is not None
            assert data.read().rstrip(b"\x00") == sysfs.read_bytes()
    await check_server_alive(server)
    check_logs(caplog.records)


async def test_client_leaving_mid_download_is_quiet(
    server: TestServer, arena: Arena, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    capture_server_logs(caplog)
    (arena.work / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    for _ in range(5):
        async with http.get(
            server.make_url("/download"), params={"path": "big.bin"}, headers={API_KEY_HEADER: KEY}
        ) as r:
            assert r.status == 200
            await r.content.read(1000)
    await asyncio.sleep(0.2)  # let the server notice the resets
    await check_server_alive(server)
    check_logs(caplog.records)


# ------------------------------------------------------------------------------ random tars

COMPONENTS = ("a", "b", "..", ".", "", "c.txt", "ü", "/")
TAR_KINDS = (
    tarfile.REGTYPE,
    tarfile.DIRTYPE,
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.CHRTYPE,
    tarfile.FIFOTYPE,
    tarfile.CONTTYPE,
)


@st.composite
def tar_members(draw: st.DrawFn) -> tuple[str, bytes, str]:
    name = "/".join(draw(st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4)))
    kind = draw(st.sampled_from(TAR_KINDS))
    link = "/".join(draw(st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4)))
    if draw(st.booleans()):
        link = draw(st.sampled_from(("/etc/passwd", "/tmp", "../../../outside/secret.txt", link)))
    return name, kind, link


def random_tar(members: list[tuple[str, bytes, str]]) -> bytes:
    def build(tar: tarfile.TarFile) -> None:
        for name, kind, link in members:
            if kind in (tarfile.REGTYPE, tarfile.CONTTYPE):
                info = tarfile.TarInfo(name)
                info.type = kind
                info.size = 4
                tar.addfile(info, io.BytesIO(b"data"))
            else:
                add_entry(tar, name, kind, link)

    return make_tar(build)


TAR_EXAMPLES = 150


async def test_random_tars_never_escape(
    server: TestServer, arena: Arena, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    capture_server_logs(caplog)
    loop = asyncio.get_running_loop()
    outcomes: Counter[int] = Counter()
    dests = iter(range(10**6))
    holder = str((arena.work / "rt").relative_to(arena.root))

    async def one(members: list[tuple[str, bytes, str]]) -> None:
        name = f"rt/{next(dests)}"
        dest = arena.work / name
        before = snapshot(arena.root, skip=dest)
        status, text = await post_upload(http, server, name, random_tar(members))
        outcomes[status] += 1
        assert status in (200, 400), (status, text)
        after = snapshot(arena.root, skip=dest)
        # Only the destination (and the "rt" directory holding it) may be new.
        after.pop(holder, None)
        before.pop(holder, None)
        assert after == before
        assert_contained(dest)

    @settings(
        max_examples=TAR_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(members=st.lists(tar_members(), min_size=1, max_size=6))
    @example(members=[("a", tarfile.SYMTYPE, "a/..")])  # a link to the destination itself
    def upload_random_tar(members: list[tuple[str, bytes, str]]) -> None:
        on_loop(loop, one(members))

    await asyncio.to_thread(upload_random_tar)
    print(f"\nrandom tars: {sum(outcomes.values())} uploads; statuses {dict(outcomes)}")
    assert outcomes[200] > 0
    assert outcomes[400] > 0
    await check_server_alive(server)
    check_logs(caplog.records)
