"""The CLI reference page, generated from the Typer app itself (``matrixos.cli.app``).

``markdown()`` walks every command and group of the app as Click sees it and writes one
section per command: its help, its usage line, its arguments and options with their defaults
and environment variables. The docs hook (``docs/gen/hooks.py``) puts it into
``reference/cli.md`` at build time, so the page can never drift from the code;
``python docs/gen/cli_reference.py`` prints it.
"""

from __future__ import annotations

import html
from typing import Any

import typer.main

from matrixos.cli import app

MARKER = "<!-- cli-reference -->"


def markdown() -> str:
    """The reference of every ``matrixos`` command, as Markdown."""
    root = typer.main.get_command(app)
    out: list[str] = []
    # Typer ships its own copy of Click: its classes are reached through the command objects.
    with root.context_class(root, info_name="matrixos") as ctx:
        _command(root, ctx, out, level=2)
    return "\n".join(out).rstrip() + "\n"


def _command(cmd: Any, ctx: Any, out: list[str], level: int) -> None:
    path = ctx.command_path
    out.append(f"{'#' * level} `{path}`\n")
    if cmd.help:
        out.append(_text(cmd.help) + "\n")
    pieces = " ".join(cmd.collect_usage_pieces(ctx))
    out.append(f"Usage: `{path} {pieces}`\n")
    rows = [_param_row(p, ctx) for p in cmd.get_params(ctx) if not getattr(p, "hidden", False)]
    if rows:
        out.append("| argument or option | meaning |")
        out.append("|---|---|")
        out.extend(rows)
        out.append("")
    if hasattr(cmd, "list_commands"):  # a group
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            with sub.context_class(sub, info_name=name, parent=ctx) as sub_ctx:
                _command(sub, sub_ctx, out, level=min(level + 1, 4))


def _text(help: str) -> str:
    # Click's \b marks a paragraph it must not rewrap; Markdown needs no marker.
    return "\n".join(line for line in help.strip().splitlines() if line.strip() != "\b")


def _param_row(p: Any, ctx: Any) -> str:
    record = p.get_help_record(ctx) if p.param_type_name == "option" else None
    if record is not None:  # Click's own rendering: names, metavar, help, default, env var
        names, help = record
    else:
        names, help = (p.name or "").upper(), getattr(p, "help", None) or ""
        if p.required:
            help += " [required]"
    return f"| <code>{_html(names)}</code> | {_html(_cell(help))} |"


def _cell(text: str) -> str:
    return " ".join(text.split())


def _html(text: str) -> str:
    """Safe inside a Markdown table cell: no pipe ends the cell, no bracket opens a tag."""
    return html.escape(text, quote=False).replace("|", "&#124;")


if __name__ == "__main__":
    print(markdown())
