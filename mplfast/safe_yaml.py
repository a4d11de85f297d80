"""YAML for user input (``--config FILE``, ``--set KEY=VALUE``): plain data only, bounded size.

``yaml.safe_load`` already constructs no Python objects (``!!python/object`` and friends are
refused), but three inputs still escape it as something other than ``yaml.YAMLError``:

* deep nesting (``[[[[...``): PyYAML's composer recurses, so ~1,000 levels is a
  ``RecursionError``; here nesting deeper than ``MAX_DEPTH`` is a ``YAMLError``;
* values its constructors reject with a ``ValueError`` (``2001-13-45`` matches the implicit
  timestamp pattern, then ``datetime`` refuses month 13; ``!!float abc``);
* aliases (``*a``) that reuse one anchored list many times ("billion laughs"): cheap to load,
  but copying the result (``dataclasses.asdict``) expands it exponentially; here a document
  whose expanded size exceeds ``MAX_NODES`` is a ``YAMLError``.

:func:`load` raises only ``yaml.YAMLError`` (or returns plain data), so callers keep one
``except yaml.YAMLError``.
"""
from __future__ import annotations

from typing import IO, Any

import yaml

MAX_DEPTH = 64
MAX_NODES = 100_000


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that counts nesting while composing (before any recursion limit)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size_ok(obj: Any) -> bool:
    """Whether ``obj`` has at most MAX_NODES nodes with shared references counted each time."""
    stack, n = [obj], 0
    while stack:
        o = stack.pop()
        n += 1
        if n > MAX_NODES:
            return False
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set)):
            stack.extend(o)
    return True


def load(stream: str | bytes | IO[str] | IO[bytes]) -> Any:
    """Parse one YAML document into plain data (dict/list/str/int/float/bool/None/date);
    ``yaml.YAMLError`` for anything malformed, too deep or too large once aliases expand."""
    loader = _Loader(stream)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError:
        raise
    except Exception as e:  # noqa: BLE001 - a constructor that fails on odd input (ValueError,
        # AttributeError of `!!timestamp x`, RecursionError, ...): malformed YAML all the same
        raise yaml.YAMLError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    finally:
        loader.dispose()
    if not _expanded_size_ok(data):
        raise yaml.YAMLError(f"more than {MAX_NODES} values once aliases (*name) are expanded")
    return data
