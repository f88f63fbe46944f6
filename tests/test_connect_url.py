"""Where `connect` goes with no URL ($BROKER_URL, as the command line), and what it says when
nothing answers there."""

from __future__ import annotations

import pytest
import trio

import broker
from broker import ConnectionClosed, sync
from broker.client import DEFAULT_URL, URL_ENV
from broker.client.options import resolve_url
from broker.testing import BrokerThread

HINT = "Is `broker serve` running there, and is the URL right?"


def test_no_url_means_broker_url_else_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (URL_ENV, DEFAULT_URL) == ("BROKER_URL", "tcp://127.0.0.1:5878")
    monkeypatch.delenv(URL_ENV, raising=False)
    assert resolve_url(None) == ("127.0.0.1", 5878)
    monkeypatch.setenv(URL_ENV, "")  # empty counts as unset, as for the command line
    assert resolve_url(None) == ("127.0.0.1", 5878)
    monkeypatch.setenv(URL_ENV, "tcp://[::1]:6000")
    assert resolve_url(None) == ("::1", 6000)
    assert resolve_url("localhost:7000") == ("localhost", 7000)  # a URL given wins
    monkeypatch.setenv(URL_ENV, "http://example:80")
    with pytest.raises(ValueError, match=r"^\$BROKER_URL: broker URLs use the tcp scheme"):
        resolve_url(None)
    with pytest.raises(ValueError, match=r"^\$BROKER_URL"):
        broker.connect()
    with pytest.raises(ValueError, match=r"^\$BROKER_URL"):
        sync.connect()


async def test_both_clients_connect_to_broker_url(monkeypatch: pytest.MonkeyPatch) -> None:
    with BrokerThread() as handle:
        monkeypatch.setenv(URL_ENV, handle.url)
        with trio.fail_after(5):
            async with broker.connect(name="from-env") as client:
                await client.flush()
                assert client.url == handle.url
            client_sync = await trio.to_thread.run_sync(lambda: sync.connect(name="sync-env"))
            with client_sync:
                await trio.to_thread.run_sync(client_sync.flush)
                assert client_sync.url == handle.url
        assert handle.statistics().total_connections == 2


async def unused_port() -> int:
    """A loopback port nothing listens on (it did a moment ago, so it is not reserved)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port: int = listeners[0].socket.getsockname()[1]
    for listener in listeners:
        await listener.aclose()
    return port


async def test_an_unreachable_broker_says_what_to_check() -> None:
    port = await unused_port()
    url = f"tcp://127.0.0.1:{port}"
    with trio.fail_after(5):
        with pytest.raises(ConnectionClosed) as caught:
            async with broker.connect(url):
                pass
        message = str(caught.value)
        assert message.startswith(f"cannot connect to {url}: ")
        assert message.endswith(HINT)
        with pytest.raises(ConnectionClosed) as caught:
            await trio.to_thread.run_sync(lambda: sync.connect(url))
        assert str(caught.value).startswith(f"cannot connect to {url}: ")
        assert str(caught.value).endswith(HINT)
