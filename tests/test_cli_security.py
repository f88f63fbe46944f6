"""The security flags of the command line: `broker passwd`, and the client commands against a
broker with [auth] and [tls], run as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.auth import Authenticator, Credentials, Identity, is_bcrypt_hash
from broker.cli import EXIT_UNREACHABLE, EXIT_USAGE, app
from broker.config import AuthConfig, PermissionsConfig, RulesConfig, UserConfig
from broker.testing import BrokerThread, make_certificates

pytestmark = pytest.mark.timeout(60)

ENV = {key: value for key, value in os.environ.items() if key != "BROKER_URL"}


def test_passwd_reads_stdin_and_prints_a_hash_that_checks() -> None:
    result = CliRunner().invoke(app, ["passwd", "--cost", "4"], input="s3cret\n")
    assert result.exit_code == 0, result.output
    hashed = result.stdout.strip()
    assert is_bcrypt_hash(hashed) and hashed.startswith("$2b$04$")
    auth = Authenticator(AuthConfig(users=(UserConfig(user="a", password=hashed),)))
    assert isinstance(auth.check(Credentials(user="a", password="s3cret")), Identity)


@pytest.mark.parametrize("password", ["", "x" * 73])
def test_passwd_refuses_what_bcrypt_cannot_hash(password: str) -> None:
    result = CliRunner().invoke(app, ["passwd", "--cost", "4"], input=password + "\n")
    assert result.exit_code == EXIT_USAGE
    assert "error:" in result.output


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env or ENV,
        check=False,
    )


def test_client_commands_with_user_password_and_tls(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path, clients=())
    auth = AuthConfig(
        users=(
            UserConfig(
                user="orders",
                password="orders-pw",
                permissions=PermissionsConfig(publish=RulesConfig(allow=("orders.>",))),
            ),
        )
    )
    with BrokerThread(
        auth=auth,
        tls=certificates.tls_config(),
        client_options={
            "user": "orders",
            "password": "orders-pw",
            "tls_ca_file": certificates.ca_file,
        },
    ) as handle:
        url = handle.url
        assert url.startswith("tls://")
        tls = ("--tls-ca", certificates.ca_file)
        with handle.capture("orders.>") as capture:
            done = run(
                "pub",
                "orders.new",
                "x",
                "--url",
                url,
                "--user",
                "orders",
                *tls,
                env={**ENV, "BROKER_PASSWORD": "orders-pw"},
            )
            assert done.returncode == 0, done.stderr
            [message] = capture.wait_for(1, timeout=10)
            assert message.payload == b"x"
        # In the URL, too.
        with_url = url.replace("tls://", "tls://orders:orders-pw@")
        assert run("pub", "orders.x", "y", "--url", with_url, *tls).returncode == 0
        denied = run("pub", "billing.x", "y", "--url", with_url, *tls)
        assert denied.returncode == EXIT_UNREACHABLE
        assert "permission denied" in denied.stderr
        wrong = run(
            "pub", "orders.x", "y", "--url", url, "--user", "orders", "--password", "no", *tls
        )
        assert wrong.returncode == EXIT_UNREACHABLE
        assert "authentication failed" in wrong.stderr
        untrusted = run("pub", "orders.x", "y", "--url", with_url)
        assert untrusted.returncode == EXIT_UNREACHABLE


def test_check_config_does_not_print_secrets(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(
        '[auth]\ntoken = "tok-secret"\n[[auth.users]]\nuser = "a"\npassword = "pw-secret"\n'
    )
    result = CliRunner().invoke(app, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert "secret" not in result.output
    assert 'auth.token = "<redacted>"' in result.output
