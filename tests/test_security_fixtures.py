"""The pytest plugin's security support: services tested against the production rules."""

from __future__ import annotations

import pytest

from broker import Client
from broker.errors import AuthFailed, PermissionDenied
from broker.sync import SyncClient
from broker.testing import BrokerThread, RunningBroker, TestCertificates

SERVICE_AUTH = {
    "auth": {
        "users": [
            {"user": "svc", "password": "pw", "permissions": {"publish": ["svc.>"]}},
        ]
    }
}


@pytest.mark.broker_config(toml=SERVICE_AUTH)
@pytest.mark.broker_client(user="svc", password="pw")
def test_sync_fixtures_log_in_with_the_marker_credentials(
    broker_thread: BrokerThread, broker_client_sync: SyncClient
) -> None:
    with broker_thread.capture("svc.>") as capture:
        broker_client_sync.publish("svc.x", b"1")
        [message] = capture.wait_for(1, timeout=5)
        assert message.payload == b"1"
    broker_client_sync.publish("other", b"x")
    with pytest.raises(PermissionDenied):
        broker_client_sync.flush(raise_refused=True)


@pytest.mark.broker_tls(verify=True)
@pytest.mark.broker_config(toml={"auth": {"users": [{"user": "client"}]}})
async def test_tls_marker_serves_tls_and_the_fixture_client_presents_a_certificate(
    trio_broker: RunningBroker,
    trio_broker_client: Client,
    broker_certificates: TestCertificates,
) -> None:
    assert trio_broker.url.startswith("tls://")
    sub = trio_broker_client.subscribe("t")
    await trio_broker_client.publish("t", b"over tls, as user client")
    assert (await sub.next()).payload == b"over tls, as user client"
    # The same CA's "orders" certificate is valid, but names no user of this broker.
    with pytest.raises(AuthFailed):
        async with trio_broker.connect(**broker_certificates.client_options("orders")):
            pass
