"""A batch's integer keys take a shortcut into the audit log (audit.log._exact_ints): the value
written must be exactly what the item-by-item conversion writes, at the edges of the exact range
and with bools or other types mixed in."""

from __future__ import annotations

from typing import Any

import pytest

from retention.audit import log
from retention.audit.log import SAFE_INT, canonical, to_log_value


def _item_by_item(value: list[Any]) -> list[Any]:
    return [to_log_value(v) for v in value]


@pytest.mark.parametrize("keys", [
    [1, 2, 3],
    [SAFE_INT, -SAFE_INT, 0],
    [SAFE_INT + 1, 5],       # one past the exact range: written as text
    [-SAFE_INT - 1],
    [1, True, 2],            # a bool is not a key
    [1, "2", 3],
    (7, 8),
])
def test_the_shortcut_writes_what_the_item_by_item_conversion_writes(keys: list[Any]) -> None:
    shortcut = to_log_value({"keys": keys})["keys"]
    assert canonical(shortcut) == canonical(_item_by_item(list(keys)))
    assert [type(v) for v in shortcut] == [type(v) for v in _item_by_item(list(keys))]


def test_the_shortcut_is_taken_only_for_exact_ints() -> None:
    assert log._exact_ints([1, SAFE_INT, -SAFE_INT])
    assert not log._exact_ints([1, SAFE_INT + 1])
    assert not log._exact_ints([1, True])
    assert not log._exact_ints([])
    # The caller's list is copied, not shared with the entry.
    keys = [1, 2]
    assert to_log_value(keys) is not keys
