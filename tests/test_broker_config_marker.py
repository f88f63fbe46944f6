"""Config overrides for test brokers by the keys users read in config/broker.toml, not only by
`broker.Config` field names: `config_for_tests` and the ``broker_config`` marker."""

from __future__ import annotations

import textwrap

import pytest
import trio
from test_plugin import _ini, _run, suite

from broker import Config, ConfigError
from broker.testing import config_for_tests, running_broker

__all__ = ["suite"]  # the pytester fixture, shared with test_plugin.py

pytest_plugins = ["pytester"]


def test_dotted_file_keys_are_taken() -> None:
    config = config_for_tests(**{"slow_consumer.policy": "drop_oldest", "limits.max_payload": 64})
    assert config.slow_consumer_policy == "drop_oldest"
    assert config.max_payload == 64
    assert (config.hosts, config.port) == (("127.0.0.1",), 0)  # still a test broker


def test_tables_are_taken_and_merge_with_dotted_keys() -> None:
    config = config_for_tests(
        toml={"slow_consumer": {"policy": "drop_newest"}, "timeouts": {"shutdown_grace": 1.5}},
        **{"limits.max_pending_messages": 8},
    )
    assert config.slow_consumer_policy == "drop_newest"
    assert config.shutdown_grace == 1.5
    assert config.max_pending_messages == 8


def test_field_names_still_work_and_apply_after_file_keys() -> None:
    assert config_for_tests(slow_consumer_policy="drop_oldest").slow_consumer_policy == (
        "drop_oldest"
    )
    config = config_for_tests(max_payload=10, **{"limits.max_payload": 20})
    assert config.max_payload == 10


def test_a_base_config_keeps_what_the_overrides_leave_alone() -> None:
    base = Config(port=6000, max_payload=2048)
    config = config_for_tests(base, **{"slow_consumer.policy": "drop_oldest"})
    assert (config.port, config.max_payload) == (6000, 2048)
    assert config.slow_consumer_policy == "drop_oldest"
    assert config_for_tests(base) is base


def test_file_keys_are_checked_as_a_file_would_be() -> None:
    with pytest.raises(ConfigError, match=r"slow_consumer\.polcy .*did you mean 'policy'"):
        config_for_tests(**{"slow_consumer.polcy": "drop_oldest"})
    with pytest.raises(ConfigError, match=r"slow_consumer\.policy must be one of"):
        config_for_tests(toml={"slow_consumer": {"policy": "sometimes"}})
    with pytest.raises(ConfigError, match="slow_consumers"):
        config_for_tests(**{"slow_consumers.policy": "drop_oldest"})
    with pytest.raises(TypeError, match="toml= takes the config file's tables"):
        config_for_tests(toml="slow_consumer.policy = 'drop_oldest'")
    with pytest.raises(TypeError, match=r"no field 'policy'.*slow_consumer\.policy"):
        config_for_tests(policy="drop_oldest")


async def test_running_broker_takes_file_keys() -> None:
    with trio.fail_after(5):
        async with running_broker(**{"limits.max_payload": 16}) as handle:
            assert handle.config.max_payload == 16


MARKER_SUITE = """
    import pytest

    pytestmark = pytest.mark.broker_config(**{"limits.max_payload": 64})


    @pytest.mark.broker_config(**{"slow_consumer.policy": "drop_oldest"})
    def test_dotted_keys(broker_thread):
        assert broker_thread.config.slow_consumer_policy == "drop_oldest"
        assert broker_thread.config.max_payload == 64  # the module's marker too


    @pytest.mark.broker_config(toml={"slow_consumer": {"policy": "drop_newest"}})
    def test_tables(broker_url, broker_thread):
        assert broker_thread.config.slow_consumer_policy == "drop_newest"


    @pytest.mark.broker_config(slow_consumer_policy="drop_newest")
    def test_field_names(broker_thread):
        assert broker_thread.config.slow_consumer_policy == "drop_newest"


    @pytest.mark.broker_config(max_payload=32)
    def test_the_closest_marker_wins_whatever_its_form(broker_thread):
        assert broker_thread.config.max_payload == 32


    @pytest.mark.broker_config(**{"slow_consumer.polcy": "drop_oldest"})
    def test_a_misspelt_key_is_an_error(broker_thread):
        pass
"""


def test_the_marker_takes_file_keys(suite: pytest.Pytester) -> None:
    _ini(suite)
    suite.makepyfile(test_marker_suite=textwrap.dedent(MARKER_SUITE))
    result = _run(suite)
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        ["*ConfigError: the test's config overrides: slow_consumer.polcy is not a known key*"]
    )
