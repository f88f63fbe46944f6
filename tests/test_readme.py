"""The README's testing examples run as written, in a project with no pytest configuration.

Each fenced ``python`` block under "Testing services against a real broker" is copied, as it
stands in README.md, into a test module of an empty temporary directory, and pytest runs there
in a subprocess (this interpreter, so broker and its plugin are installed) with no ini file, as
a user who copied them would run them. So the README and this test cannot drift apart.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_plugin import ENTRY_POINT, _declared_entry_point

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "## Testing services against a real broker"

pytestmark = pytest.mark.timeout(120)


def readme_snippets(text: str) -> list[str]:
    """The fenced python blocks of the README's testing section, in order."""
    start = text.index(HEADING)
    end = text.find("\n## ", start + len(HEADING))
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"^```python\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)


def test_the_snippets_are_found() -> None:
    snippets = readme_snippets(README.read_text())
    assert len(snippets) >= 5
    assert all("def test_" in snippet for snippet in snippets), "each block is a test module"


def test_the_readme_testing_examples_pass_as_written(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    snippets = readme_snippets(README.read_text())
    project = tmp_path / "project"
    project.mkdir()
    for number, snippet in enumerate(snippets, 1):
        (project / f"test_readme_{number}.py").write_text(snippet)
    expected = sum(
        len(re.findall(r"^(?:async )?def test_", snippet, re.MULTILINE)) for snippet in snippets
    )

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "BROKER_"))}
    if not _declared_entry_point():
        # A bare checkout on PYTHONPATH: stand in for the installed entry point (test_plugin).
        site = tmp_path_factory.mktemp("site")
        info = site / "broker_testing_shim-0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: broker-testing-shim\nVersion: 0\n"
        )
        (info / "entry_points.txt").write_text(f"[pytest11]\n{ENTRY_POINT}\n")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error", "-rA"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"rootdir: {project}" in output
    assert "configfile:" not in output, "the examples must need no pytest configuration"
    assert re.search(rf"\b{expected} passed\b", output), output
    assert " warning" not in output, output
