from __future__ import annotations

from pathlib import Path

import pytest

from wsipipe.errors import ConfigError, StoreError
from wsipipe.labels.table import check_cohort, read_labels_csv, training_splits


def _csv(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "labels.csv"
    p.write_text(text)
    return p


def test_parse_and_split(tmp_path: Path) -> None:
    p = _csv(
        tmp_path,
        "slide_id,label,split\na,tumor,train\nb,normal,train\nc,tumor,val\nd,normal,val\ne,,test\n",
    )
    t = read_labels_csv(p)
    assert t.classes == ("normal", "tumor")
    assert [(r.slide_id, r.label) for r in t.records] == [
        ("a", 1),
        ("b", 0),
        ("c", 1),
        ("d", 0),
        ("e", -1),
    ]
    train, val = training_splits(t)
    assert [r.slide_id for r in train] == ["a", "b"] and [r.slide_id for r in val] == ["c", "d"]


def test_numeric_and_explicit_class_order(tmp_path: Path) -> None:
    p = _csv(tmp_path, "slide_id,label,split\na,10,train\nb,2,train\nc,1,val\n")
    assert read_labels_csv(p).classes == ("1", "2", "10")
    assert read_labels_csv(p, classes=("10", "2", "1")).records[0].label == 0


def test_all_row_problems_in_one_message(tmp_path: Path) -> None:
    p = _csv(
        tmp_path,
        "slide_id,label,split\n../evil,tumor,train\na,tumor,train\na,normal,val\n"
        ",tumor,val\nb,cancer,train\n",
    )
    with pytest.raises(ConfigError) as err:
        read_labels_csv(p, classes=("normal", "tumor"))
    msg = str(err.value)
    assert "\n" not in msg and "4 problem(s)" in msg
    for part in (
        "line 2",
        "'../evil'",
        "line 4",
        "repeats line 3",
        "line 5: empty slide_id",
        "line 6",
        "'cancer'",
    ):
        assert part in msg


def test_missing_columns_and_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing column"):
        read_labels_csv(_csv(tmp_path, "id,label\na,b\n"))
    with pytest.raises(ConfigError, match="not found"):
        read_labels_csv(tmp_path / "nope.csv")


def test_training_splits_errors(tmp_path: Path) -> None:
    p = _csv(
        tmp_path,
        "slide_id,label,split\na,tumor,train\nb,tumor,train\nc,,val\nd,normal,val\ne,normal,test\n",
    )
    with pytest.raises(ConfigError) as err:
        training_splits(read_labels_csv(p))
    msg = str(err.value)
    assert "single class 'tumor'" in msg and "line 4 'c': label missing" in msg
    no_split = _csv(tmp_path, "slide_id,label\na,x\nb,y\n")
    with pytest.raises(ConfigError, match="split"):
        training_splits(read_labels_csv(no_split))


def test_folds(tmp_path: Path) -> None:
    p = _csv(tmp_path, "slide_id,label,fold\na,x,0\nb,y,0\nc,x,1\nd,y,1\ne,x,2\nf,y,2\ng,x,\n")
    t = read_labels_csv(p)
    train, val = training_splits(t, fold=1)
    assert [r.slide_id for r in val] == ["c", "d"]
    assert [r.slide_id for r in train] == ["a", "b", "e", "f"]  # g has no fold: held out
    with pytest.raises(ConfigError, match="fold 7 has no slides"):
        training_splits(t, fold=7)


def test_check_cohort_lists_every_missing_store(tmp_path: Path) -> None:
    p = _csv(tmp_path, "slide_id,label,split\na,x,train\nb,y,train\nc,x,val\n")
    t = read_labels_csv(p)

    def locate(sid: str) -> str:
        if sid != "b":
            raise StoreError(f"no store {sid}.h5 in /data")
        return sid

    with pytest.raises(ConfigError) as err:
        check_cohort(t, t.records, locate)
    msg = str(err.value)
    assert "2 problem(s)" in msg and "line 2 'a'" in msg and "line 4 'c'" in msg
    assert "wsipipe tile" in msg


CASE_CSV = (
    "slide_id,label,split\na,Normal,train\nb, normal ,train\nc,tumor,train\n"
    "d,normal,val\ne,tumor,val\n"
)


def test_labels_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    p = _csv(tmp_path, CASE_CSV)
    with pytest.raises(ConfigError) as err:
        read_labels_csv(p)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{p}: label values")
    assert "'Normal' (line 2) and 'normal' (lines 3, 5) differ only in case" in msg
    assert "3 separate classes" in msg and "--classes Normal,normal,tumor" in msg


def test_surrounding_whitespace_never_splits_a_class(tmp_path: Path) -> None:
    p = _csv(tmp_path, CASE_CSV.replace("a,Normal", "a,normal\t"))
    t = read_labels_csv(p)
    assert t.classes == ("normal", "tumor")
    assert [r.label_name for r in t.records[:2]] == ["normal", "normal"]


def test_explicit_classes_keep_case_variants_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = _csv(tmp_path, CASE_CSV)
    t = read_labels_csv(p, classes=("Normal", "normal", "tumor"))
    assert [r.label for r in t.records] == [0, 1, 2, 1, 2]
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "'Normal'" in err and "differ only in case" in err
    with pytest.raises(ConfigError, match=r"label 'Normal' is not one of \['normal', 'tumor'\] "
                       r"\(did you mean 'normal'\?\)"):  # fmt: skip
        read_labels_csv(p, classes=("normal", "tumor"))
