"""The Handle protocol front-end (resolver.handle_server) over real UDP and TCP sockets,
against a real node and PostgreSQL; and ``idnode resolve --via``."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from registry.errors import ConfigError
from registry.site import Site
from registry.store import Store, create_pool
from resolver import handle_client as client
from resolver import handle_codec as wire
from resolver import handle_server
from resolver.app import node_registry
from resolver.config import Config
from resolver.metrics import Metrics
from resolver.pipeline import Stage
from tests.conftest import ROOT, RunningNode, Tenant, free_port, node_config, running

VALUES = [
    {"index": 1, "type": "URL", "data": "https://example.com/p/1"},
    {"index": 2, "type": "EMAIL", "data": "ops@example.com"},
    {"index": 3, "type": "SECRET", "data": "kept", "permissions": "1100"},
    {"index": 100, "type": "HS_ADMIN", "data": {"format": "admin", "value": {
        "handle": "0.NA/88.118.8", "index": 200, "permissions": "011111111111"}}},
]  # fmt: skip


class Wired:
    def __init__(self, node: RunningNode, port: int) -> None:
        self.node = node
        self.port = port

    async def udp(self, message: bytes, timeout: float = 5.0) -> bytes:
        return await client.exchange_udp("127.0.0.1", self.port, message, timeout)

    async def ask(self, handle: str, **kw: Any) -> client.Response:
        return await client.query("127.0.0.1", self.port, handle, **kw)

    def count(self, transport: str, opcode: str, result: str) -> float:
        labels = {"transport": transport, "opcode": opcode, "result": result}
        value = self.node.metrics.registry.get_sample_value("idnode_handle_requests_total", labels)
        return value or 0.0


@pytest.fixture
async def wired(db_url: str, tmp_path: Path, key_dir: Path) -> AsyncIterator[Wired]:
    port = free_port()
    async with running(db_url, tmp_path, key_dir, handle_port=port, handle_idle_timeout=0.5) as n:
        yield Wired(n, port)


async def put(node: RunningNode, t: Tenant, suffix: str, values: list[Any]) -> str:
    handle = t.handle(suffix)
    async with node.session.put(node.api(handle), json={"values": values}, headers=t.auth) as r:
        assert r.status in (200, 201), await r.text()
    return handle


@pytest.fixture
async def record(wired: Wired, tenant: Callable[..., Awaitable[Tenant]]) -> str:
    return await put(wired.node, await tenant(), "WIRE1", VALUES)


async def test_resolve_over_udp_public_values_only(wired: Wired, record: str) -> None:
    answer = await wired.ask(record)
    assert answer.header.response_code == 1 and answer.handle == record
    assert [v["index"] for v in answer.values] == [1, 2, 100]  # 3 is not public
    async with wired.node.session.get(wired.node.api(record)) as r:
        http = (await r.json())["values"]
    assert answer.values == http  # the same JSON as the HTTP API, through the binary form
    assert wired.count("udp", "1", "1") == 1


async def test_resolve_over_tcp_with_filters(wired: Wired, record: str) -> None:
    by_type = await wired.ask(record, types=["email"], tcp=True)
    assert [v["index"] for v in by_type.values] == [2]
    by_index = await wired.ask(record, indexes=[1, 100], tcp=True)
    assert [v["index"] for v in by_index.values] == [1, 100]
    either = await wired.ask(record, indexes=[1], types=["HS_ADMIN"])
    assert [v["index"] for v in either.values] == [1, 100]
    assert either.values[1]["data"]["value"]["permissions"] == "011111111111"
    assert wired.count("tcp", "1", "1") == 2


@pytest.mark.parametrize(
    ("handle", "kw", "code"),
    [
        ("{prefix}/NOPE", {}, 100),
        ("{record}", {"types": ["NOSUCHTYPE"]}, 200),
        ("{record}", {"indexes": [3]}, 200),  # private: as if absent
        ("99.999.1/x", {}, 301),
        ("no-slash", {}, 102),
    ],
)
async def test_error_codes(
    wired: Wired, record: str, handle: str, kw: dict[str, Any], code: int
) -> None:
    text = handle.format(prefix=record.split("/")[0], record=record)
    for tcp in (False, True):
        answer = await wired.ask(text, tcp=tcp, **kw)
        assert answer.header.response_code == code, answer.message
        assert answer.message


async def test_truncated_udp_answer_and_tcp_fallback(
    wired: Wired, tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    big = await put(
        wired.node, await tenant(), "BIG", [{"index": 1, "type": "URL", "data": "x" * 700}]
    )
    message = client.resolution_request(big, request_id=9)
    raw = await wired.udp(message)
    assert len(raw) <= wire.MAX_UDP and raw[2] & wire.ENV_TRUNCATED
    truncated = client.decode_response(raw)
    assert truncated.header.response_code == 1 and truncated.values == []
    answer = await wired.ask(big)  # UDP, then TCP as the flag asks
    assert answer.values[0]["data"]["value"] == "x" * 700
    assert not answer.envelope.flags & wire.ENV_TRUNCATED


def _garbage(good: bytes) -> list[bytes]:
    rng = random.Random(7)
    out = [
        b"",
        b"\x02",
        good[:19],
        good[:30],
        good[:-10],
        bytes(rng.randrange(256) for _ in range(200)),
    ]
    for _ in range(40):
        raw = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        out.append(bytes(raw))
    return out


async def test_garbage_never_stops_the_server(wired: Wired, record: str) -> None:
    good = client.resolution_request(record, request_id=1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for junk in _garbage(good):
            sock.sendto(junk, ("127.0.0.1", wired.port))
    finally:
        sock.close()
    answer = client.decode_response(await wired.udp(good))
    assert answer.header.response_code == 1 and len(answer.values) == 3
    assert wired.count("udp", "other", "dropped") >= 2  # shorter than an envelope: not answered


def _request(**changes: Any) -> bytes:
    raw = bytearray(client.resolution_request("88.118.8/x", request_id=5))
    for at, value in changes.values():
        raw[at : at + len(value)] = value
    return bytes(raw)


@pytest.mark.parametrize(
    ("message", "code", "text"),
    [
        (_request(op=(20, struct.pack(">I", 104))), 5, "opcode 104 is not offered"),
        (_request(op=(20, struct.pack(">I", 77))), 5, "opcode 77"),
        (_request(flag=(2, b"\x82")), 4, "compressed"),
        (_request(flag=(2, b"\x42")), 4, "encrypted"),
        (_request(cert=(28, struct.pack(">I", wire.FLAG_CERT))), 5, "signed or encrypted"),
        (_request(version=(0, b"\x05")), 4, "protocol version 5"),
        (_request(length=(16, struct.pack(">I", 10**6))), 4, "over 262144"),
        (_request(body=(40, struct.pack(">I", 9999))), 4, "body length 9999"),
        (_request(count=(58, struct.pack(">I", 2**31))), 4, "index count"),
    ],
)
async def test_unsupported_and_malformed_get_clear_errors(
    wired: Wired, message: bytes, code: int, text: str
) -> None:
    answer = client.decode_response(await wired.udp(message))
    assert answer.header.response_code == code
    assert answer.envelope.request_id == 5
    assert text in answer.message


async def test_responses_are_never_answered(wired: Wired) -> None:
    raw = bytearray(client.resolution_request("88.118.8/x", request_id=5))
    raw[24:28] = struct.pack(">I", 1)  # responseCode 1: a response, not a request
    with pytest.raises(TimeoutError):
        await wired.udp(bytes(raw), timeout=0.3)
    assert wired.count("udp", "1", "dropped") == 1


async def test_site_info(wired: Wired) -> None:
    answer = await wired.ask("/", opcode=wire.OC_GET_SITE_INFO)
    assert answer.header.response_code == 1 and answer.site is not None
    interfaces = answer.site.servers[0].interfaces
    assert {(i.protocol, i.port) for i in interfaces} == {(0, wired.port), (1, wired.port)}
    assert answer.site.primary and answer.header.serial == answer.site.serial_number


async def test_tcp_several_messages_then_idle_close(wired: Wired, record: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", wired.port)
    try:
        for rid in (1, 2, 3):
            writer.write(client.resolution_request(record, request_id=rid, indexes=[rid]))
        answers = [client.decode_response(await client.read_message(reader)) for _ in range(3)]
        assert sorted(a.envelope.request_id for a in answers) == [1, 2, 3]
        assert {a.header.response_code for a in answers} == {1, 200}  # index 3 is private
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed after 0.5 s quiet
    finally:
        writer.close()


async def test_tcp_oversized_message_is_refused_and_closed(wired: Wired) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", wired.port)
    try:
        writer.write(_request(length=(16, struct.pack(">I", 10**7))))
        answer = client.decode_response(await client.read_message(reader))
        assert answer.header.response_code == 4 and "over 262144" in answer.message
        assert await asyncio.wait_for(reader.read(), 3) == b""
    finally:
        writer.close()


async def test_trailing_fields_are_ignored(wired: Wired, record: str) -> None:
    raw = bytearray(client.resolution_request(record, request_id=4, indexes=[1]))
    raw += b"sdk-extra"
    raw[16:20] = struct.pack(">I", len(raw) - 20)
    answer = client.decode_response(await wired.udp(bytes(raw)))
    assert [v["index"] for v in answer.values] == [1]


async def test_overload_answers_too_busy(
    db_url: str, tmp_path: Path, key_dir: Path, tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    port = free_port()
    async with running(db_url, tmp_path, key_dir, handle_port=port, handle_max_inflight=1) as n:
        t = await tenant()
        messages = [client.resolution_request(t.handle(f"M{i}"), request_id=i) for i in range(20)]
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        class Collect(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                answers.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(Collect, remote_addr=("127.0.0.1", port))
        try:
            for m in messages:  # misses all: the first one's lookup is still in flight
                transport.sendto(m)
            codes = [
                client.decode_response(
                    await asyncio.wait_for(answers.get(), 5)
                ).header.response_code
                for _ in messages
            ]
        finally:
            transport.close()
        assert 3 in codes and 100 in codes
        sample = n.metrics.registry.get_sample_value(
            "idnode_handle_requests_total", {"transport": "udp", "opcode": "1", "result": "3"}
        )
        assert sample == codes.count(3)


async def idnode(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "resolver.cli", *args, cwd=ROOT, env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_resolve_via_handle(wired: Wired, record: str) -> None:
    via = f"handle://127.0.0.1:{wired.port}"
    code, out, err = await idnode("resolve", "--via", via, record, "--type", "URL")
    assert code == 0, err
    doc = orjson.loads(out)
    assert doc["responseCode"] == 1 and [v["index"] for v in doc["values"]] == [1]
    code, out, _ = await idnode("resolve", "--via", via, record, "--index", "2", "--tcp")
    assert [v["type"] for v in orjson.loads(out)["values"]] == ["EMAIL"]
    code, out, _ = await idnode("resolve", "--via", via, record + "-no")
    assert code == 1 and orjson.loads(out)["responseCode"] == 100


async def test_cli_resolve_bad_input() -> None:
    code, _, err = await idnode("resolve", "--via", "http://127.0.0.1:1", "88.1/x")
    assert code == 1 and "handle://HOST:PORT" in err
    silent = f"handle://127.0.0.1:{free_port()}"
    code, _, err = await idnode("resolve", "--via", silent, "88.1/x", "--timeout", "0.5")
    assert code == 2 and "no answer" in err


@pytest.mark.parametrize(
    ("var", "text"),
    [
        ("IDNODE_HANDLE_PORT", "70000"),
        ("IDNODE_HANDLE_PORT", "-1"),
        ("IDNODE_HANDLE_MAX_INFLIGHT", "0"),
        ("IDNODE_HANDLE_IDLE_TIMEOUT", "0"),
    ],
)
def test_bad_settings_name_the_variable(var: str, text: str) -> None:
    with pytest.raises(ConfigError, match=var):
        Config.from_env({var: text})


async def test_off_or_taken_port_leaves_http_serving(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    stage = cast(Stage, None)  # never reached: nothing listens
    assert await handle_server.start(Config(handle_port=0), stage, metrics) is None
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no SO_REUSEPORT: excludes us
    taken.bind(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        assert await handle_server.start(Config(handle_port=port), stage, metrics) is None
    finally:
        taken.close()
    assert "cannot listen on 127.0.0.1" in caplog.text


async def test_oversized_datagrams(wired: Wired, record: str) -> None:
    long_handle = await wired.ask("88.118.8/" + "x" * 3000)
    assert long_handle.header.response_code == 102 and "2048" in long_handle.message
    junk = bytearray(os.urandom(60_000))
    junk[0], junk[16:20], junk[24:28] = 2, struct.pack(">I", 59_980), bytes(4)
    answer = client.decode_response(await wired.udp(bytes(junk)))
    assert answer.header.response_code in (4, 5) and answer.message
    padded = bytearray(client.resolution_request(record, request_id=3) + bytes(50_000))
    padded[16:20] = struct.pack(">I", len(padded) - 20)
    assert (await wired.udp(bytes(padded)))[27] == 1  # the padding is ignored


async def test_site_info_is_the_site_the_homed_prefixes_publish(
    fresh_db: str, tmp_path: Path, key_dir: Path
) -> None:
    """With IDNODE_ADVERTISE_URL, get-site-info and the HS_SITE of a homed prefix's record
    describe one site: the HTTP interface and the Handle protocol over TCP and UDP."""
    port = free_port()
    settings: dict[str, Any] = {"handle_port": port, "advertise_url": "http://192.0.2.10:8000"}
    async with running(fresh_db, tmp_path, key_dir, **settings) as node:
        pool = await create_pool(fresh_db, max_size=1)
        try:
            registry = node_registry(node_config(key_dir, **settings), Store(pool))
            assert await registry.home_prefix("88.300.12", "s3cret")
        finally:
            await pool.close()
        answer = await client.query("127.0.0.1", port, "/", opcode=wire.OC_GET_SITE_INFO)
        assert answer.site is not None
        (server,) = answer.site.servers
        assert {(i.protocol, i.port) for i in server.interfaces} == {
            (2, 8000),
            (1, port),
            (0, port),
        }
        assert server.address == bytes(12) + bytes([192, 0, 2, 10])
        async with node.session.get(node.api("0.NA/88.300.12"), params={"type": "HS_SITE"}) as r:
            assert r.status == 200, await r.text()
            (published,) = (await r.json())["values"]
        assert Site.from_json(published["data"]["value"]) == answer.site
