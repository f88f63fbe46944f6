"""The package version, in one place (pyproject reads it too), and the distribution's name."""

__version__ = "0.1.0"

#: The name to install under (`pip install trio-broker`): ``broker`` on PyPI is an unrelated
#: project. The import package and the command stay ``broker``. pyproject.toml's ``[project]
#: name`` must say the same (a test checks); read installed metadata under this name, e.g.
#: ``importlib.metadata.version(DISTRIBUTION_NAME)``.
DISTRIBUTION_NAME = "trio-broker"
