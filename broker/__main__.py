"""`python -m broker` runs the same command line as the `broker` script."""

from .cli import app

app()
