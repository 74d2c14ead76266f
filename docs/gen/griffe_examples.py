"""A Griffe extension for the API reference: a docstring's ``Example:`` section (the form the
codebase uses, see STYLE.md) is read as Google style's ``Examples:``, so its ``>>>`` lines
render as code instead of Markdown (where ``[('a', 0)]`` would be taken for a link)."""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj: Any, **_: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
