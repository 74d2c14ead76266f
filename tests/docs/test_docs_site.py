"""The documentation site builds with ``mkdocs build --strict`` (a warning is an error: a
broken link, a page missing from the nav, a docstring mkdocstrings cannot read), offline: the
build opens no network connection. The CLI reference it holds is generated from the Typer
app at build time, so it lists every command the CLI has."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from matrixos.cli import app

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs" / "gen"))

import cli_reference  # noqa: E402  (docs/gen is the docs' own tooling, not a package)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once for this module with every non-loopback connection refused."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    out = tmp_path_factory.mktemp("site")
    attempts: list[Any] = []
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if not str(host).startswith(("127.", "::1", "localhost", "/")):
            attempts.append(address)
            raise OSError(f"the docs build tried to reach {address}")
        return real_connect(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    try:
        config = load_config(str(ROOT / "mkdocs.yml"), site_dir=str(out), strict=True)
        build(config)
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
    assert attempts == [], f"the build made network requests: {attempts}"
    return out


def test_site_builds_strict_and_offline(site: Path) -> None:
    for page in (
        "index.html",
        "concepts/index.html",
        "how-to/analyst-psql/index.html",
        "cluster/index.html",
        "lineage/index.html",
        "reference/api/index.html",
        "reference/cli/index.html",
    ):
        assert (site / page).is_file(), page
    html = (site / "index.html").read_text()
    assert "fonts.googleapis.com" not in html  # no font request when the page is viewed


def test_api_reference_is_rendered_from_docstrings(site: Path) -> None:
    html = (site / "reference" / "api" / "index.html").read_text()
    for name in ("matrixos.connect", "Lakehouse", "lineage", "map_batches", "Table"):
        assert name in html, name
    # a docstring's own words, so the page is not just a list of names
    assert "Where <code>table</code>" in html or "Where ``table``" in html or "upstream" in html


def test_cli_reference_lists_every_command(site: Path) -> None:
    html = (site / "reference" / "cli" / "index.html").read_text()
    root = typer.main.get_command(app)
    with root.context_class(root, info_name="matrixos") as ctx:
        names = root.list_commands(ctx)  # type: ignore[attr-defined]
    assert {"sql", "ingest", "lineage", "serve", "usage"} <= set(names)
    for name in names:
        assert f"matrixos {name}" in html, name
    assert cli_reference.MARKER not in html


def test_cli_reference_follows_the_options() -> None:
    text = cli_reference.markdown()
    assert "### `matrixos lineage`" in text
    assert "--direction" in text and "--depth" in text
    assert "MATRIXOS_WAREHOUSE" in text  # env vars of options are listed
