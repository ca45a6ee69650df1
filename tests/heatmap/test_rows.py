"""format_rows: many rows from one %-template equal the row-by-row formatting."""

from __future__ import annotations

import pytest

from wsipipe.heatmap.rows import format_rows


def test_equals_row_by_row_formatting() -> None:
    cols: list[list[object]] = [[1, 22, 333], [0.5, 1e-7, float("nan")], ["a", "b%", "c"]]
    row = "%d,%.3g,%s\n"
    expected = "".join(row % r for r in zip(*cols, strict=True))
    assert format_rows(row, cols) == expected == "1,0.5,a\n22,1e-07,b%\n333,nan,c\n"
    assert format_rows("%s", [[]]) == ""


def test_unequal_columns_and_wrong_template_raise() -> None:
    with pytest.raises(ValueError, match="unequal length"):
        format_rows("%s,%s", [[1, 2], [3]])
    with pytest.raises(TypeError):  # one conversion too many for the values
        format_rows("%s,%s,%s", [[1], [2]])
