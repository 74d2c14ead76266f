"""The fenced code blocks of the README and docs/, and a driver that runs one page's blocks.

A block is run unless the line just above its fence is ``<!-- not run: REASON -->`` (or its
fence carries ``title="not run: REASON"``). What runs, per language:

- ``python``: executed in one namespace per page, in order;
- ``ipython``: notebook cells (magics such as ``%%sql``), run by one IPython shell per page;
- ``bash``/``sh``/``shell``/``console``: ``bash -euo pipefail``, ``matrixos`` on the PATH;
- ``sql``: ``matrixos sql``, one statement (ending a line with ``;``) at a time, in DuckDB's
  dialect unless the fence says ``title="dialect: X"``.

A page that holds ``<!-- docs-test: serve -->`` gets a running ``matrixos serve`` on its
warehouse (free ports; ``$MATRIXOS_URL``, ``$PGHOST`` and ``$PGPORT`` point at it), as a reader
would have started it in another terminal.

Every page runs in a fresh temporary folder as its working directory, with
``MATRIXOS_WAREHOUSE`` set to ``./warehouse`` there and ``$MATRIXOS_HOME`` private; blocks of
one page share that folder and warehouse, in order, and shell blocks share one environment
(what one exports, the next sees), as in one terminal. ``text`` blocks (syntax summaries, output,
diagrams) are not code and are not run; a fence without a language is an error, so no code
hides in one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNNABLE = {"python": "python", "ipython": "ipython", "bash": "shell", "sh": "shell",
            "shell": "shell", "console": "shell", "sql": "sql"}  # fmt: skip
NOT_CODE = {"text", "json", "yaml", "toml", "ini", "http", "mermaid", "csv", "dockerfile"}
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(?P<reason>.+?)\s*-->\s*$")
_TITLE_NOT_RUN = re.compile(r'title="not run:\s*(?P<reason>[^"]+)"')
SERVE = "<!-- docs-test: serve -->"
_DIALECT = re.compile(r'title="dialect:\s*(?P<dialect>[\w-]+)"')


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    language: str
    info: str
    code: str
    not_run: str | None  # the reason, when marked

    @property
    def kind(self) -> str | None:
        """``python``, ``shell`` or ``sql`` for code that runs; None for text."""
        return RUNNABLE.get(self.language)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def dialect(self) -> str | None:
        m = _DIALECT.search(self.info)
        return m.group("dialect") if m else None


def pages() -> list[Path]:
    """README.md and every page under docs/ (not the generator's folder)."""
    docs = sorted(p for p in (ROOT / "docs").rglob("*.md") if "gen" not in p.parts)
    return [ROOT / "README.md", *docs]


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order."""
    lines = page.read_text().splitlines()
    rel = str(page.relative_to(ROOT))
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, info = m.group("fence"), m.group("info").strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        language = info.split()[0].lower() if info else ""
        above = lines[start - 1] if start > 0 else ""
        marked = _NOT_RUN.match(above) or _TITLE_NOT_RUN.search(info)
        out.append(
            Block(
                page=rel,
                line=start + 1,
                language=language,
                info=info,
                code="\n".join(body) + "\n",
                not_run=marked.group("reason") if marked else None,
            )
        )
    return out


def driver(page_blocks: list[Block], *, serve: bool = False) -> str:
    """A Python program that runs the blocks of one page in order (see the module doc), and
    stops at the first that fails, naming it; with ``serve``, beside a ``matrixos serve``."""
    steps = [
        (b.where, b.kind, b.code, b.dialect)
        for b in page_blocks
        if b.kind is not None and b.not_run is None
    ]
    return f"""
import atexit, os, re, subprocess, sys, time, traceback, urllib.request
STEPS = {steps!r}

if {serve!r}:
    import matrixos as mx
    from matrixos.cluster.services import free_port  # below the ephemeral range
    mx.connect(os.environ["MATRIXOS_WAREHOUSE"]).close()
    http, pg = free_port(), free_port()
    log = open("serve.log", "w")
    server = subprocess.Popen(["matrixos", "serve", "--port", str(http), "--pg-port", str(pg)],
                              stdout=log, stderr=subprocess.STDOUT)
    def stop():
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    atexit.register(stop)
    os.environ.update(MATRIXOS_URL=f"http://127.0.0.1:{{http}}", PGHOST="127.0.0.1", PGPORT=str(pg))
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{{http}}/healthz", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                print(open("serve.log").read())
                sys.exit("matrixos serve did not start")
            time.sleep(0.2)

namespace = {{"__name__": "__main__"}}
for where, kind, code, dialect in STEPS:
    print(f"--- {{where}} ({{kind}})", flush=True)
    if kind == "python":
        try:
            exec(compile(code, where, "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            print(f"FAILED {{where}}", flush=True)
            sys.exit(1)
        continue
    if kind == "ipython":
        from IPython.core.interactiveshell import InteractiveShell
        for cell in code.split("\\n# %%\\n"):  # "# %%" separates cells within a block
            outcome = InteractiveShell.instance().run_cell(cell)
            if not outcome.success:
                print(f"FAILED {{where}}: {{outcome.error_in_exec or outcome.error_before_exec}}")
                sys.exit(1)
        continue
    if kind == "shell":  # one terminal: what a block exports, the next one sees
        runs = [["bash", "-euo", "pipefail", "-c", code + "\\nenv -0 > .docs-env\\n"]]
    else:  # one statement at a time, as a reader pastes them (each ends a line with ";")
        statements = [q for q in re.split(r";[ \\t]*(?:--[^\\n]*)?(?:\\n|$)", code) if q.strip()]
        extra = ["--dialect", dialect] if dialect else []
        runs = [["matrixos", "sql", q, *extra] for q in statements]
    for argv in runs:
        done = subprocess.run(argv)
        if done.returncode != 0:
            print(f"FAILED {{where}}: exit status {{done.returncode}}", flush=True)
            sys.exit(1)
    if kind == "shell":
        with open(".docs-env", "rb") as f:
            pairs = [p.split(b"=", 1) for p in f.read().split(b"\\0") if b"=" in p]
        os.environ.clear()
        os.environ.update({{k.decode(): v.decode() for k, v in pairs}})
"""
