"""MkDocs hooks (``hooks:`` in mkdocs.yml): the CLI reference is generated at build time.

``reference/cli.md`` holds a marker that is replaced by ``cli_reference.markdown()`` (the
commands as the installed Typer app defines them), so no stale copy is ever checked in.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import cli_reference  # a sibling module, found through the path above


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if cli_reference.MARKER in markdown:
        return markdown.replace(cli_reference.MARKER, cli_reference.markdown())
    return markdown
