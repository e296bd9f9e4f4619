"""End to end with the real ``pyhandle`` REST client against ``idnode serve`` in its own process.

pyhandle (EUDAT, from PyPI) is blocking, so these tests are plain functions. Each test homes
its own prefix with the ``idnode prefix add`` command, drives the node through pyhandle's
public methods, and re-reads what the node stored with plain HTTP requests.

Prefixes begin with a digit because pyhandle strips ``hdl:`` with ``str.lstrip``, which
removes any leading ``h``, ``d``, ``l`` or ``:`` characters rather than the literal prefix.
"""

from __future__ import annotations

import ast
import gc
import itertools
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pyhandle.handleclient import RESTHandleClient
from pyhandle.handleexceptions import (
    GenericHandleError,
    HandleAlreadyExistsException,
    HandleAuthenticationError,
    HandleNotFoundException,
)

from tests.conftest import served

Cli = Callable[..., subprocess.CompletedProcess[str]]
Connect = Callable[[str, str], RESTHandleClient]

_numbers = itertools.count(1)

# What pyhandle writes into the HS_ADMIN value of every handle it registers: the prefix's
# admin handle at index 200 (sent as the string "200") with hdl-admintool's permissions.
PYHANDLE_ADMIN_PERMISSIONS = "011111110011"


def home_prefix(cli: Cli) -> tuple[str, str]:
    """Home a fresh prefix through the operator's command; answer (prefix, secret)."""
    n = next(_numbers)
    prefix, secret = f"88.200.{n}", f"pyhandle-secret-{n}"
    done = cli("prefix", "add", prefix, "--secret", secret)
    assert done.returncode == 0, done.stderr
    return prefix, secret


def client(base_url: str, prefix: str, secret: str) -> RESTHandleClient:
    return RESTHandleClient.instantiate_with_username_and_password(
        base_url, f"300:0.NA/{prefix}", secret, HTTPS_verify=False
    )


def close(c: RESTHandleClient) -> None:
    """Close the keep-alive connections of pyhandle's private ``requests.Session``."""
    connector = c._RESTHandleClient__handlesystemconnector  # type: ignore[attr-defined]
    connector._HandleSystemConnector__session.close()


@pytest.fixture
def connect(node_process: str) -> Iterator[Connect]:
    """Factory: a pyhandle client of ``node_process`` as ``300:0.NA/<prefix>``.

    pyhandle keeps its connections open for the client's lifetime; they are closed when the
    test ends (and anything a failed instantiation left behind is collected), so that
    stopping the module's node does not wait on them.
    """
    made: list[RESTHandleClient] = []

    def make(prefix: str, secret: str) -> RESTHandleClient:
        c = client(node_process, prefix, secret)
        made.append(c)
        return c

    yield make
    for c in made:
        close(c)
    gc.collect()


def stored(base_url: str, handle: str) -> tuple[int, dict[str, Any]]:
    """What the node answers an anonymous plain GET of ``handle``."""
    r = requests.get(f"{base_url}/api/handles/{handle}", timeout=10)
    return r.status_code, r.json()


def by_index(body: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {v["index"]: v for v in body["values"]}


def admin_value(prefix: str) -> dict[str, Any]:
    return {
        "format": "admin",
        "value": {
            "handle": f"0.NA/{prefix}",
            "index": 200,
            "permissions": PYHANDLE_ADMIN_PERMISSIONS,
        },
    }


def string(value: str) -> dict[str, str]:
    return {"format": "string", "value": value}


def server_answer(exc: GenericHandleError) -> tuple[int, dict[str, Any]]:
    assert exc.response is not None
    return exc.response.status_code, json.loads(exc.response.content)


# --- instantiation ---------------------------------------------------------------------------


def test_instantiation_checks_the_admin_handle(cli: Cli, connect: Connect) -> None:
    prefix, secret = home_prefix(cli)
    c = connect(prefix, secret)
    # pyhandle's own read of the admin handle works through the same client
    record = c.retrieve_handle_record_json(f"0.NA/{prefix}")
    assert record is not None
    assert record["responseCode"] == 1 and record["handle"] == f"0.NA/{prefix}"
    # the secret is not public: only the HS_ADMIN naming the admin identity and the
    # node's own public key are shown
    shown = [(v["index"], v["type"]) for v in record["values"]]
    assert shown == [(100, "HS_ADMIN"), (301, "HS_PUBKEY")]
    assert record["values"][0]["data"]["value"] == {
        "handle": f"0.NA/{prefix}",
        "index": 300,
        "permissions": "111111111111",
    }


def test_instantiation_for_a_prefix_homed_nowhere_fails(connect: Connect) -> None:
    # as a Handle.Net server answers for a prefix it does not hold: 400, "not responsible"
    with pytest.raises(GenericHandleError) as caught:
        connect("88.200.999999", "whatever")
    status, answer = server_answer(caught.value)
    assert (status, answer["responseCode"], answer["handle"]) == (400, 301, "0.NA/88.200.999999")


# --- the whole life of a handle --------------------------------------------------------------


def test_register_retrieve_modify_delete(node_process: str, cli: Cli, connect: Connect) -> None:
    prefix, secret = home_prefix(cli)
    c = connect(prefix, secret)
    handle = f"{prefix}/life-1"
    location = "https://example.org/data/1"

    assert c.retrieve_handle_record_json(handle) is None
    assert (
        c.register_handle(
            handle, location, checksum="md5:0123abcd", overwrite=False, EMAIL="ops@zürich.example"
        )
        == handle
    )

    # what the node stored: pyhandle's HS_ADMIN at 100, URL at 1, the others from 2 up
    status, body = stored(node_process, handle)
    assert status == 200
    assert body["responseCode"] == 1 and body["handle"] == handle
    values = by_index(body)
    assert sorted(values) == [1, 2, 3, 100]
    assert (values[1]["type"], values[1]["data"]) == ("URL", string(location))
    assert (values[2]["type"], values[2]["data"]) == ("EMAIL", string("ops@zürich.example"))
    assert (values[3]["type"], values[3]["data"]) == ("CHECKSUM", string("md5:0123abcd"))
    assert (values[100]["type"], values[100]["data"]) == ("HS_ADMIN", admin_value(prefix))
    assert all(v["ttl"] == 86400 and v["timestamp"].endswith("Z") for v in body["values"])

    # pyhandle's three readers see exactly that
    assert c.retrieve_handle_record_json(handle) == body
    assert c.retrieve_handle_record_json(handle, auth=True) == body
    assert c.retrieve_handle_record(handle) == {
        "URL": location,
        "EMAIL": "ops@zürich.example",
        "CHECKSUM": "md5:0123abcd",
        "HS_ADMIN": str(values[100]["data"]["value"]),
    }
    flat_admin = c.retrieve_handle_record(handle)["HS_ADMIN"]
    assert ast.literal_eval(flat_admin) == admin_value(prefix)["value"]
    assert c.get_value_from_handle(handle, "URL") == location
    assert c.get_value_from_handle(handle, "CHECKSUM") == "md5:0123abcd"
    assert c.get_value_from_handle(handle, "NOT_THERE") is None
    # reading a single index goes through ?index=
    only_url = c.retrieve_handle_record_json(handle, indices=[1])
    assert only_url["values"] == [values[1]]

    # modify one value and add a key in the same call (PUT ?index=1&index=4&overwrite=true),
    # a second later so that new timestamps can be told from old ones
    time.sleep(1.1)
    assert c.modify_handle_value(handle, URL="https://example.org/data/1-moved", NOTE="moved") == (
        handle
    )
    status, body = stored(node_process, handle)
    assert status == 200
    after = by_index(body)
    assert sorted(after) == [1, 2, 3, 4, 100]
    assert (after[1]["type"], after[1]["data"]) == (
        "URL",
        string("https://example.org/data/1-moved"),
    )
    assert after[1]["ttl"] == 86400
    assert after[1]["timestamp"] > values[1]["timestamp"]
    assert (after[4]["type"], after[4]["data"], after[4]["ttl"]) == ("NOTE", string("moved"), 86400)
    # the values pyhandle did not touch are exactly as they were, timestamps included
    for index in (2, 3, 100):
        assert after[index] == values[index]
    assert c.get_value_from_handle(handle, "URL") == "https://example.org/data/1-moved"

    # a key added with an explicit ttl keeps it
    assert c.modify_handle_value(handle, ttl=3600, LICENSE="CC-BY-4.0") == handle
    _, body = stored(node_process, handle)
    after = by_index(body)
    assert (after[5]["type"], after[5]["data"], after[5]["ttl"]) == (
        "LICENSE",
        string("CC-BY-4.0"),
        3600,
    )

    # delete one value (DELETE ?index=3)
    assert c.delete_handle_value(handle, "CHECKSUM") == handle
    _, body = stored(node_process, handle)
    assert sorted(by_index(body)) == [1, 2, 4, 5, 100]
    assert c.get_value_from_handle(handle, "CHECKSUM") is None
    # several keys at once (DELETE ?index=4&index=5)
    assert c.delete_handle_value(handle, ["NOTE", "LICENSE"]) == handle
    _, body = stored(node_process, handle)
    assert [(v["index"], v["type"]) for v in sorted(body["values"], key=lambda v: v["index"])] == [
        (1, "URL"),
        (2, "EMAIL"),
        (100, "HS_ADMIN"),
    ]
    # a key the record does not have: pyhandle sends nothing and answers None
    assert c.delete_handle_value(handle, "CHECKSUM") is None

    # delete the handle
    assert c.delete_handle(handle) == handle
    status, body = stored(node_process, handle)
    assert (status, body["responseCode"], body["handle"]) == (404, 100, handle)
    assert c.retrieve_handle_record_json(handle) is None
    assert c.retrieve_handle_record(handle) is None
    with pytest.raises(HandleNotFoundException):
        c.get_value_from_handle(handle, "URL")
    with pytest.raises(HandleNotFoundException):
        c.modify_handle_value(handle, URL="https://example.org/gone")
    with pytest.raises(HandleNotFoundException):
        c.delete_handle_value(handle, "URL")
    with pytest.raises(HandleNotFoundException) as caught:
        c.delete_handle(handle)
    assert caught.value.response.status_code == 404
    answer = caught.value.response.json()
    assert (answer["responseCode"], answer["handle"]) == (100, handle)


def test_retrieve_handle_record_shows_hs_admin_as_handle_net_does(
    node_process: str, cli: Cli, connect: Connect
) -> None:
    """pyhandle flattens HS_ADMIN with ``str(dict)``, so the key order of the answer shows.

    CNRI's server answers an admin value as ``{"handle", "index", "permissions"}`` (REST-API.txt
    of the Handle.Net proxy; DESIGN.md lists the same order).
    """
    prefix, secret = home_prefix(cli)
    c = connect(prefix, secret)
    handle = f"{prefix}/admin-order"
    c.register_handle(handle, "https://example.org/admin-order")
    raw = requests.get(f"{node_process}/api/handles/{handle}?index=100", timeout=10).text
    assert f'"value":{{"handle":"0.NA/{prefix}","index":200,"permissions":"011111110011"}}' in raw
    assert c.retrieve_handle_record(handle)["HS_ADMIN"] == (
        f"{{'handle': '0.NA/{prefix}', 'index': 200, 'permissions': '011111110011'}}"
    )


def test_register_handle_kv_and_json(node_process: str, cli: Cli, connect: Connect) -> None:
    prefix, secret = home_prefix(cli)
    c = connect(prefix, secret)

    kv = f"{prefix}/kv"
    assert c.register_handle_kv(kv, URL="https://example.org/kv", TITLE="A title") == kv
    status, body = stored(node_process, kv)
    assert status == 200
    assert {i: (v["type"], v["data"]) for i, v in by_index(body).items()} == {
        1: ("URL", string("https://example.org/kv")),
        2: ("TITLE", string("A title")),
        100: ("HS_ADMIN", admin_value(prefix)),
    }

    js = f"{prefix}/json"
    entries = [
        {"index": 1, "type": "URL", "data": "https://example.org/json"},
        {"index": 7, "type": "DESCRIPTION", "data": {"format": "string", "value": "seven"}},
        {"index": 8, "type": "BLOB", "data": {"format": "base64", "value": "AAEC"}, "ttl": 60},
    ]
    assert c.register_handle_json(js, entries) == js
    status, body = stored(node_process, js)
    assert status == 200
    assert {i: (v["type"], v["data"], v["ttl"]) for i, v in by_index(body).items()} == {
        1: ("URL", string("https://example.org/json"), 86400),
        7: ("DESCRIPTION", string("seven"), 86400),
        8: ("BLOB", {"format": "base64", "value": "AAEC"}, 60),
        100: ("HS_ADMIN", admin_value(prefix), 86400),
    }
    assert c.retrieve_handle_record(js) == {
        "URL": "https://example.org/json",
        "DESCRIPTION": "seven",
        "BLOB": "AAEC",
        "HS_ADMIN": str(by_index(body)[100]["data"]["value"]),
    }


def test_generate_and_register_handle(node_process: str, cli: Cli, connect: Connect) -> None:
    prefix, secret = home_prefix(cli)
    c = connect(prefix, secret)
    handle = c.generate_and_register_handle(prefix, "https://example.org/minted", checksum="c1")
    assert handle.startswith(f"{prefix}/") and len(handle) == len(prefix) + 1 + 36
    status, body = stored(node_process, handle)
    assert status == 200 and body["handle"] == handle
    assert {i: (v["type"], v["data"]) for i, v in by_index(body).items()} == {
        1: ("URL", string("https://example.org/minted")),
        2: ("CHECKSUM", string("c1")),
        100: ("HS_ADMIN", admin_value(prefix)),
    }
    # a second one gets a different name
    other = c.generate_and_register_handle(prefix, "https://example.org/minted")
    assert other != handle
    assert stored(node_process, other)[0] == 200


def test_handles_match_case_insensitively(node_process: str, cli: Cli, connect: Connect) -> None:
    prefix, secret = home_prefix(cli)
    c = connect(prefix, secret)
    assert c.register_handle(f"{prefix}/MixedCase", "https://example.org/mixed") == (
        f"{prefix}/MixedCase"
    )
    # pyhandle insists the answer names the handle as it asked for it
    assert c.get_value_from_handle(f"{prefix}/mixedcase", "URL") == "https://example.org/mixed"
    with pytest.raises(HandleAlreadyExistsException):
        c.register_handle(f"{prefix}/MIXEDCASE", "https://example.org/other")
    assert c.delete_handle(f"{prefix}/MIXEDcase") == f"{prefix}/MIXEDcase"
    assert stored(node_process, f"{prefix}/MixedCase")[0] == 404


# --- conflicts -------------------------------------------------------------------------------


def test_register_existing_handle(node_process: str, cli: Cli, connect: Connect) -> None:
    prefix, secret = home_prefix(cli)
    c = connect(prefix, secret)
    handle = f"{prefix}/taken"
    c.register_handle(handle, "https://example.org/first", EXTRA="one")
    _, before = stored(node_process, handle)

    with pytest.raises(HandleAlreadyExistsException):
        c.register_handle(handle, "https://example.org/second", overwrite=False)
    with pytest.raises(HandleAlreadyExistsException):
        c.register_handle_kv(handle, URL="https://example.org/second")
    assert stored(node_process, handle) == (200, before)

    # overwrite=True replaces the whole record (PUT ?overwrite=true)
    assert c.register_handle(handle, "https://example.org/second", overwrite=True) == handle
    status, body = stored(node_process, handle)
    assert status == 200
    after = by_index(body)
    assert {i: (v["type"], v["data"]) for i, v in after.items()} == {
        1: ("URL", string("https://example.org/second")),
        100: ("HS_ADMIN", admin_value(prefix)),
    }


def test_add_handle_value_does_not_overwrite(node_process: str, cli: Cli, connect: Connect) -> None:
    prefix, secret = home_prefix(cli)
    c = connect(prefix, secret)
    handle = f"{prefix}/add"
    c.register_handle(handle, "https://example.org/add")

    # a new key: PUT ?index=2&overwrite=false
    assert c.add_handle_value(handle, COMMENT="first") == handle
    _, body = stored(node_process, handle)
    assert by_index(body)[2]["data"] == string("first")

    # an existing key: the node refuses to overwrite value 2
    with pytest.raises(GenericHandleError) as caught:
        c.add_handle_value(handle, COMMENT="second")
    status, answer = server_answer(caught.value)
    assert (status, answer["responseCode"], answer["handle"]) == (409, 201, handle)
    _, after = stored(node_process, handle)
    assert after == body


# --- authentication and authorisation ---------------------------------------------------------


def test_wrong_password_is_refused(node_process: str, cli: Cli, connect: Connect) -> None:
    prefix, secret = home_prefix(cli)
    good = connect(prefix, secret)
    existing = f"{prefix}/kept"
    good.register_handle(existing, "https://example.org/kept")
    _, before = stored(node_process, existing)

    # pyhandle only checks that the admin handle exists when it starts, not the password
    bad = connect(prefix, secret + "-wrong")
    with pytest.raises(HandleAuthenticationError) as caught:
        bad.register_handle(f"{prefix}/never", "https://example.org/never")
    assert caught.value.response.status_code == 401
    assert caught.value.response.json()["responseCode"] == 402
    assert stored(node_process, f"{prefix}/never")[0] == 404

    with pytest.raises(HandleAuthenticationError):
        bad.modify_handle_value(existing, URL="https://example.org/hijacked")
    with pytest.raises(HandleAuthenticationError):
        bad.delete_handle_value(existing, "URL")
    with pytest.raises(HandleAuthenticationError):
        bad.delete_handle(existing)
    assert stored(node_process, existing) == (200, before)


def test_other_tenants_prefix_is_refused(node_process: str, cli: Cli, connect: Connect) -> None:
    mine, my_secret = home_prefix(cli)
    theirs, their_secret = home_prefix(cli)
    me = connect(mine, my_secret)
    them = connect(theirs, their_secret)
    their_handle = f"{theirs}/private"
    them.register_handle(their_handle, "https://example.org/theirs")
    _, before = stored(node_process, their_handle)

    # authenticated, but not an administrator there: 403 with responseCode 400
    with pytest.raises(GenericHandleError) as caught:
        me.register_handle(f"{theirs}/intruder", "https://example.org/intruder")
    status, answer = server_answer(caught.value)
    assert (status, answer["responseCode"]) == (403, 400)
    assert stored(node_process, f"{theirs}/intruder")[0] == 404

    with pytest.raises(GenericHandleError) as caught:
        me.modify_handle_value(their_handle, URL="https://example.org/hijacked")
    assert server_answer(caught.value)[0] == 403
    with pytest.raises(GenericHandleError) as caught:
        me.delete_handle_value(their_handle, "URL")
    assert server_answer(caught.value)[0] == 403
    with pytest.raises(GenericHandleError) as caught:
        me.delete_handle(their_handle)
    assert server_answer(caught.value)[0] == 403
    assert stored(node_process, their_handle) == (200, before)

    # and the owner still can
    assert them.delete_handle(their_handle) == their_handle


# --- stopping the node ------------------------------------------------------------------------


def test_node_stops_promptly_while_a_pyhandle_client_is_connected(
    db_url: str, cli: Cli, tmp_path: Path
) -> None:
    """A long-lived pyhandle client keeps an idle keep-alive connection open; SIGTERM must
    still stop the node at once, not after the grace period meant for requests in flight."""
    prefix, secret = home_prefix(cli)
    with served(db_url, tmp_path) as (url, proc):
        c = client(url, prefix, secret)
        try:
            handle = f"{prefix}/idle"
            assert c.register_handle(handle, "https://example.org/idle") == handle
            assert c.get_value_from_handle(handle, "URL") == "https://example.org/idle"
            started = time.monotonic()
            proc.terminate()
            assert proc.wait(timeout=30) == 0
            stopped_after = time.monotonic() - started
            assert stopped_after < 5, f"node took {stopped_after:.1f}s to stop after SIGTERM"
        finally:
            close(c)


def test_search_handle(cli: Cli, connect: Connect) -> None:
    prefix, secret = home_prefix(cli)
    c = connect(prefix, secret)
    first, second = f"{prefix}/found-1", f"{prefix}/found-2"
    assert c.register_handle(first, "https://search.example.org/pyh/1", CHECKSUM="aa") == first
    assert c.register_handle(second, "https://search.example.org/pyh/2", CHECKSUM="bb") == second
    assert sorted(c.search_handle("https://search.example.org/pyh/*")) == [first, second]
    assert c.search_handle(URL="https://search.example.org/pyh/*", CHECKSUM="bb") == [second]
    assert c.search_handle(URL="https://search.example.org/nothing") == []
    assert c.search_handle(URL="https://search.example.org/pyh/*", prefix="99.999") == []
