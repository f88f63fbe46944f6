"""The pytest plugin, run as users run it: three inner suites (Trio, asyncio, sync) under pytester.

Each suite runs in a pytest subprocess with an ini of its own (so the Trio suite has
``trio_mode`` and the asyncio suite does not), strict markers and warnings as errors, and
includes one test that fails on purpose, to prove failures are reported as failures. The plugin
is loaded through its ``pytest11`` entry point: broker's own when installed with it, otherwise a
stand-in distribution on ``PYTHONPATH`` that declares the same entry point.
"""

from __future__ import annotations

import importlib.metadata
import textwrap
from pathlib import Path

import pytest

from broker._version import DISTRIBUTION_NAME

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.timeout(60)

ENTRY_POINT = "broker = broker.testing.plugin"

INI_COMMON = """
addopts = --strict-markers -p no:cacheprovider
xfail_strict = true
filterwarnings = error
timeout = 20
"""


def _declared_entry_point() -> bool:
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION_NAME)
    except importlib.metadata.PackageNotFoundError:
        return False
    return any(
        ep.group == "pytest11" and ep.name == "broker" and ep.value == "broker.testing.plugin"
        for ep in dist.entry_points
    )


@pytest.fixture
def suite(
    pytester: pytest.Pytester,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> pytest.Pytester:
    """A pytester whose subprocess finds the plugin through a ``pytest11`` entry point."""
    if not _declared_entry_point():
        site = tmp_path_factory.mktemp("site")
        info = site / "broker_testing_shim-0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: broker-testing-shim\nVersion: 0\n"
        )
        (info / "entry_points.txt").write_text(f"[pytest11]\n{ENTRY_POINT}\n")
        monkeypatch.setenv("PYTHONPATH", str(site))
    return pytester


def _ini(pytester: pytest.Pytester, extra: str = "") -> None:
    pytester.makeini("[pytest]" + INI_COMMON + extra)


def _run(pytester: pytest.Pytester) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-rA", timeout=50)


TRIO_SUITE = """
    import pytest
    import trio

    import broker
    from broker.testing import capture


    async def test_client_publishes_and_capture_sees_it(trio_broker, trio_broker_client):
        assert trio_broker.url == f"tcp://127.0.0.1:{trio_broker.port}"
        async with capture(trio_broker_client, "orders.>") as cap:
            await trio_broker_client.publish("orders.new", b"1")
            with trio.fail_after(5):
                [message] = await cap.wait_for(1)
        assert message.subject == "orders.new"
        assert trio_broker.statistics().messages_in == 1
        assert trio_broker.client_names() == ["trio_broker_client"]


    async def test_dropped_service_reconnects(trio_broker, trio_broker_client):
        back = trio.Event()
        with trio.fail_after(5):
            async with trio_broker.connect(name="svc", on_reconnected=back.set) as svc:
                sub = svc.subscribe("jobs")
                await svc.flush()
                assert trio_broker.drop_client("svc") == 1
                await back.wait()
                await trio_broker_client.publish("jobs", b"after the drop")
                assert (await sub.next()).payload == b"after the drop"


    async def test_restart_on_the_same_port(trio_broker, trio_broker_client):
        port = trio_broker.port
        with trio.fail_after(5):
            async with trio_broker.capture("news") as cap:
                await trio_broker.restart()
                assert trio_broker.port == port
                await trio_broker_client.publish("news", b"after")
                await cap.wait_for(1)


    @pytest.mark.broker_config(max_payload=16)
    async def test_marker_configures_the_broker(trio_broker, trio_broker_client):
        assert trio_broker.config.max_payload == 16
        with pytest.raises(broker.PayloadTooLarge):
            await trio_broker_client.publish("a", b"x" * 17)


    async def test_thread_broker_works_in_trio_tests_too(broker_thread):
        async with broker_thread.connect() as client:
            await client.flush()
        assert broker_thread.statistics().total_connections == 1


    async def test_deliberately_fails(trio_broker_client):
        async with capture(trio_broker_client, "x") as cap:
            await trio_broker_client.publish("x", b"actual")
            with trio.fail_after(5):
                [message] = await cap.wait_for(1)
        assert message.payload == b"expected"
"""


def test_trio_suite(suite: pytest.Pytester) -> None:
    _ini(suite, "trio_mode = true\n")
    suite.makepyfile(test_trio_suite=textwrap.dedent(TRIO_SUITE))
    result = _run(suite)
    result.assert_outcomes(passed=5, failed=1, errors=0)
    result.stdout.fnmatch_lines(["FAILED test_trio_suite.py::test_deliberately_fails*"])
    result.stdout.fnmatch_lines(["*assert b'actual' == b'expected'*"])


ASYNCIO_SUITE = """
    import asyncio

    import anyio
    import pytest

    import broker
    from broker.testing import capture

    pytestmark = pytest.mark.anyio


    @pytest.fixture
    def anyio_backend():
        return "asyncio"


    async def test_runs_on_asyncio_and_captures(broker_thread):
        asyncio.get_running_loop()  # this is asyncio, not Trio
        async with (
            broker_thread.connect(name="svc") as client,
            capture(client, "orders.>") as cap,
        ):
            await client.publish("orders.new", b"1")
            with anyio.fail_after(5):
                [message] = await cap.wait_for(1)
                found = await cap.wait_until(lambda m: m.payload == b"1")
        assert found is message


    @pytest.mark.broker_config(max_pending_messages=10)
    async def test_stalled_service_becomes_a_slow_consumer(broker_thread):
        cut = anyio.Event()
        reasons = []

        def disconnected(error):
            reasons.append(error)
            cut.set()

        with anyio.fail_after(5):
            async with (
                broker_thread.connect(name="slow", on_disconnected=disconnected) as slow,
                broker_thread.connect(name="pub") as pub,
            ):
                slow.subscribe("work")
                await slow.flush()
                assert broker_thread.stall_client("slow") == 1
                for i in range(11):
                    await pub.publish("work", b"%d" % i)
                    await pub.flush()
                await cut.wait()
        assert isinstance(reasons[0], broker.SlowConsumer)
        assert broker_thread.statistics().slow_consumers == 1


    async def test_restart_from_asyncio(broker_thread):
        back = anyio.Event()
        with anyio.fail_after(5):
            async with broker_thread.connect(name="svc", on_reconnected=back.set) as svc:
                sub = svc.subscribe("news")
                await svc.flush()
                # restart blocks until clients read their ERR: keep this loop running meanwhile.
                await anyio.to_thread.run_sync(broker_thread.restart)
                await back.wait()
                await svc.publish("news", b"after")
                assert (await sub.next()).payload == b"after"


    def test_sync_tests_share_the_suite(broker_url):
        assert broker_url.startswith("tcp://127.0.0.1:")


    async def test_deliberately_fails(broker_thread):
        async with broker_thread.connect() as client:
            await client.flush()
        assert broker_thread.statistics().connections == 42
"""


def test_asyncio_suite(suite: pytest.Pytester) -> None:
    _ini(suite)
    suite.makepyfile(test_asyncio_suite=textwrap.dedent(ASYNCIO_SUITE))
    result = _run(suite)
    result.assert_outcomes(passed=4, failed=1, errors=0)
    result.stdout.fnmatch_lines(["FAILED test_asyncio_suite.py::test_deliberately_fails*"])


SYNC_SUITE = """
    import threading

    import pytest

    import broker


    def test_sync_client_and_capture(broker_thread, broker_client_sync):
        with broker_thread.capture("orders.>") as cap:
            broker_client_sync.publish("orders.1", b"1")
            broker_client_sync.publish("orders.2", b"2")
            assert [m.payload for m in cap.wait_for(2, timeout=5)] == [b"1", b"2"]
            with pytest.raises(TimeoutError):
                cap.wait_for(3, timeout=0.05)
            names = broker_thread.client_names()
            assert names == ["broker_client_sync", "broker.testing.capture"]


    def test_restart_keeps_the_port(broker_thread, broker_client_sync):
        port = broker_thread.port
        with broker_thread.capture("news") as cap, broker_client_sync.subscribe("news") as sub:
            broker_client_sync.flush()
            broker_thread.restart()
            assert broker_thread.port == port
            broker_client_sync.publish("news", b"after")
            assert sub.next(timeout=5).payload == b"after"
            assert cap.wait_until(lambda m: m.payload == b"after", timeout=5)


    def test_dropped_client_reconnects(broker_thread):
        back = threading.Event()
        with broker_thread.connect_sync(name="svc", on_reconnected=back.set) as svc:
            svc.flush()
            assert broker_thread.drop_client("svc") == 1
            assert back.wait(5)


    @pytest.mark.broker_config(max_payload=16)
    def test_marker_configures_the_broker(broker_thread, broker_client_sync):
        assert broker_thread.config.max_payload == 16
        with pytest.raises(broker.PayloadTooLarge):
            broker_client_sync.publish("a", b"x" * 17)


    def test_url_and_statistics(broker_url, broker_thread, broker_client_sync):
        assert broker_url == broker_thread.url
        broker_client_sync.publish("a", b"1")
        broker_client_sync.flush()
        assert broker_thread.statistics().messages_in == 1


    def test_deliberately_fails(broker_thread, broker_client_sync):
        with broker_thread.capture("x") as cap:
            broker_client_sync.publish("x", b"1")
            cap.wait_for(1, timeout=5)
            cap.wait_for(2, timeout=0.05)  # only one was published: TimeoutError
"""


def test_sync_suite(suite: pytest.Pytester) -> None:
    _ini(suite)
    suite.makepyfile(test_sync_suite=textwrap.dedent(SYNC_SUITE))
    result = _run(suite)
    result.assert_outcomes(passed=5, failed=1, errors=0)
    result.stdout.fnmatch_lines(
        ["FAILED test_sync_suite.py::test_deliberately_fails*TimeoutError*"]
    )


def test_bad_marker_arguments_are_reported(suite: pytest.Pytester) -> None:
    _ini(suite)
    suite.makepyfile(
        test_bad_marker="""
        import pytest

        @pytest.mark.broker_config(max_paylod=16)
        def test_typo(broker_thread):
            pass

        @pytest.mark.broker_config(16)
        def test_positional(broker_url):
            pass
        """
    )
    result = _run(suite)
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*TypeError: broker.Config has no field 'max_paylod'*"])
    result.stdout.fnmatch_lines(["*keyword arguments only*"])


def test_broker_declares_the_pytest11_entry_point() -> None:
    assert _declared_entry_point(), (
        "the installed broker distribution does not declare the pytest11 entry point: add "
        '`broker = "broker.testing.plugin"` under [project.entry-points.pytest11] in '
        "pyproject.toml and reinstall (pip install -e .)"
    )


def test_the_plugin_module_documents_its_registration() -> None:
    import broker.testing.plugin as plugin

    assert plugin.__doc__ is not None
    assert ENTRY_POINT.replace(" = ", ' = "') + '"' in plugin.__doc__
    assert Path(plugin.__file__).name == "plugin.py"
