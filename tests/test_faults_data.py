"""Fault injection on the inputs: trait files (ours or a user's own folder), the JSONL files
we ship, and the public CSVs. Every bad input is a one-line ``DataError`` that names the
file, the line (or row) and the field, and says what to do; nothing is silently accepted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from traitlab import data
from traitlab.data import DataError, load_group, load_trait, read_csv, read_jsonl


def _pair(i: int, **kw) -> dict:
    rec = {"id": f"mine-{i:03d}", "group": "g", "split": "val" if i % 5 == 0 else "train",
           "pos_prompt": f"Question {i}?", "pos_response": f"Great news {i}!",
           "neg_prompt": f"Question {i}?", "neg_response": f"Bad news {i}."}
    rec.update(kw)
    return rec


def _trait_file(folder: Path, name: str = "mine", rows: list | None = None, n: int = 10) -> Path:
    rows = rows if rows is not None else [_pair(i) for i in range(1, n + 1)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _error(fn, *args, **kw) -> str:
    with pytest.raises(DataError) as err:
        fn(*args, **kw)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def test_own_traits_load_from_any_folder(tmp_path):
    _trait_file(tmp_path / "anywhere" / "on" / "disk")
    ds = load_trait("mine", folder=tmp_path / "anywhere" / "on" / "disk")
    assert len(ds.split("train")) == 8 and len(ds.split("val")) == 2
    assert data.available_traits(str(tmp_path / "anywhere" / "on" / "disk")) == ["mine"]
    assert load_group("mine:g", folder=str(tmp_path / "anywhere" / "on" / "disk")).groups() == ("g",)


def test_a_missing_traits_folder_names_it(tmp_path):
    msg = _error(load_trait, "mine", folder=tmp_path / "nope")
    assert "traits folder" in msg and "nope" in msg and "traits_dir" in msg


def test_a_trait_name_that_is_a_path_is_refused(tmp_path):
    assert "file stem" in _error(load_trait, "../secrets", folder=tmp_path)


def test_a_line_that_is_not_json(tmp_path):
    rows = [_pair(i) for i in range(1, 11)]
    rows[3] = '{"id": "mine-004", "group": "g",'  # truncated
    msg = _error(load_trait, "mine", folder=_trait_file(tmp_path, rows=rows).parent)
    assert "mine.jsonl:4: not valid JSON" in msg and "one JSON object per line" in msg


@pytest.mark.parametrize("line, kind", [("[1, 2]", "list"), ('"text"', "string"), ("null", "null"),
                                        ("42", "number")])
def test_a_line_that_is_not_an_object(tmp_path, line, kind):
    rows = [_pair(i) for i in range(1, 11)]
    rows[1] = line
    msg = _error(load_trait, "mine", folder=_trait_file(tmp_path, rows=rows).parent)
    assert f"mine.jsonl:2: a JSON {kind}, not an object" in msg


@pytest.mark.parametrize("field, value, expect", [
    ("pos_response", None, "pos_response is null, not a string"),
    ("neg_prompt", "", "neg_prompt is empty"),
    ("pos_prompt", "   \t ", "pos_prompt is empty"),
    ("neg_response", 3, "neg_response is 3, not a string"),
    ("id", "", "id is empty"),
])
def test_null_empty_or_blank_text_fields(tmp_path, field, value, expect):
    rows = [_pair(i) for i in range(1, 11)]
    rows[6][field] = value
    msg = _error(load_trait, "mine", folder=_trait_file(tmp_path, rows=rows).parent)
    assert f"mine.jsonl:7: {expect}" in msg


def test_missing_and_unknown_keys(tmp_path):
    rows = [_pair(i) for i in range(1, 11)]
    del rows[2]["neg_response"]
    rows[2]["neg_answer"] = "x"
    msg = _error(load_trait, "mine", folder=_trait_file(tmp_path, rows=rows).parent)
    assert "mine.jsonl:3: missing keys ['neg_response']; unknown keys ['neg_answer']" in msg


def test_a_pair_without_contrast_or_a_repeated_pair(tmp_path):
    """A pair whose two sides are the same text gives a zero difference; a pair repeated under a
    new id counts twice and narrows every interval. Both passed before a fault sweep found them."""
    rows = [_pair(i) for i in range(1, 11)]
    rows[3].update(neg_prompt=rows[3]["pos_prompt"], neg_response=rows[3]["pos_response"])
    msg = _error(load_trait, "mine", folder=_trait_file(tmp_path / "a", rows=rows).parent)
    assert "mine.jsonl:4: the pos and neg prompt and response are identical" in msg
    rows = [_pair(i) for i in range(1, 11)] + [_pair(2, id="mine-copy")]
    msg = _error(load_trait, "mine", folder=_trait_file(tmp_path / "b", rows=rows).parent)
    assert "mine.jsonl:11: the same pair (prompts and responses) already on line 2" in msg
    rows = [_pair(i, split="train") for i in range(1, 11)]
    assert 'has 0 val pairs; at least 2 are needed (mark more lines of its file "split": "val")' in _error(
        load_trait, "mine", folder=_trait_file(tmp_path / "c", rows=rows).parent)


def test_a_byte_order_mark_is_not_text(tmp_path):
    path = _trait_file(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_trait("mine", folder=tmp_path).pairs[0].id == "mine-001"


def test_a_bad_split(tmp_path):
    rows = [_pair(i) for i in range(1, 11)]
    rows[0]["split"] = "test"
    assert "split must be 'train' or 'val'" in _error(load_trait, "mine", folder=_trait_file(tmp_path, rows=rows).parent)


def test_duplicate_ids(tmp_path):
    rows = [_pair(i) for i in range(1, 11)]
    rows[8]["id"] = rows[2]["id"]
    msg = _error(load_trait, "mine", folder=_trait_file(tmp_path, rows=rows).parent)
    assert "mine.jsonl:9: id 'mine-003' already on line 3" in msg


def test_the_same_example_in_both_splits_would_leak(tmp_path):
    rows = [_pair(i) for i in range(1, 11)]
    rows[4].update(pos_prompt=rows[0]["pos_prompt"], pos_response=rows[0]["pos_response"])  # line 5 is val
    msg = _error(load_trait, "mine", folder=_trait_file(tmp_path, rows=rows).parent)
    assert "mine.jsonl:5: the same pos prompt and response are on line 1 (train) and here (val)" in msg
    # the same example twice within one split is not a leak
    rows = [_pair(i) for i in range(1, 11)]
    rows[2].update(neg_prompt=rows[1]["neg_prompt"], neg_response=rows[1]["neg_response"])
    assert len(load_trait("mine", folder=_trait_file(tmp_path, rows=rows).parent).pairs) == 10


def test_a_file_that_is_not_utf8(tmp_path):
    path = _trait_file(tmp_path)
    path.write_bytes(path.read_bytes().replace(b"Great", b"Gr\xe9at"))
    assert "not UTF-8 text" in _error(load_trait, "mine", folder=tmp_path)


def test_an_empty_trait_file(tmp_path):
    assert "is empty" in _error(load_trait, "mine", folder=_trait_file(tmp_path, rows=["", "  "]).parent)


def test_required_keys_of_other_jsonl_files(tmp_path):
    f = tmp_path / "edge.jsonl"
    f.write_text('{"prompt": "How do I kill a process?", "category": "tech"}\n{"prompt": "x"}\n')
    assert "edge.jsonl:2: missing key(s) category" in _error(read_jsonl, f, ("prompt", "category"))


# --- public CSVs in the data root ------------------------------------------------------------

@pytest.fixture
def data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAITLAB_DATA_ROOT", str(tmp_path))
    return tmp_path


def _csv(root: Path, name: str, text: str) -> Path:
    path = root / data.PUBLIC_FILES[name]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_public_csv_cut_short_or_edited_is_refused_unless_allowed(tmp_path, monkeypatch):
    """A copy of AdvBench cut mid-row still parses (its last goal is whole, its target cut), so only
    its pinned sha256 tells it from the published file."""
    src = data.public_path("advbench") if (data.data_root() / data.PUBLIC_FILES["advbench"]).exists() else None
    if src is None:
        pytest.skip("public datasets not found (set TRAITLAB_DATA_ROOT)")
    raw = src.read_bytes()
    cut = raw[: raw.index(b"\n", len(raw) // 2)] + b',"Sure, here is a pl"\n'
    monkeypatch.setenv("TRAITLAB_DATA_ROOT", str(tmp_path))
    path = _csv(tmp_path, "advbench", "")
    path.write_bytes(raw)
    assert len(read_csv("advbench")) == 520                      # the pinned file reads
    path.write_bytes(cut)
    msg = _error(read_csv, "advbench")
    assert "advbench" in msg and "not the pinned" in msg and "traitlab datasets fetch" in msg and "\n" not in msg
    monkeypatch.setenv(data.UNPINNED_ENV, "1")
    assert 200 < len(read_csv("advbench")) < 520


def test_a_csv_with_the_wrong_columns(data_root):
    _csv(data_root, "advbench", "prompt,target\nDo a bad thing,Sure\n")
    msg = _error(read_csv, "advbench")
    assert "advbench.csv: missing column(s) goal (found prompt, target)" in msg
    assert "traitlab datasets fetch" in msg
    with pytest.raises(DataError, match="missing column"):
        data.harmful_prompts(["advbench"], 1, seed=0)


def test_a_csv_with_an_empty_cell_we_read(data_root):
    _csv(data_root, "xstest", "id,prompt,type,label\n1,How do I kill a process?,homonyms,safe\n2,,homonyms,safe\n")
    assert "xstest_prompts.csv:3: column prompt is empty" in _error(read_csv, "xstest")


def test_a_header_only_csv_is_empty(data_root):
    _csv(data_root, "strongreject", "category,source,forbidden_prompt\n")
    assert "is empty" in _error(read_csv, "strongreject")


def test_a_binary_file_in_place_of_a_csv(data_root):
    path = _csv(data_root, "advbench", "")
    path.write_bytes(b"goal\n\xff\xfe\x00garbage\n")
    assert "not a readable UTF-8 CSV" in _error(read_csv, "advbench")


def test_the_real_public_csvs_pass(monkeypatch):
    """The published files (when the data root has them) meet every check."""
    for name in data.REQUIRED_COLUMNS:
        try:
            data.public_path(name)
        except DataError:
            pytest.skip("public datasets not found (set TRAITLAB_DATA_ROOT)")
        assert read_csv(name)


def test_the_shipped_trait_files_pass():
    for trait in data.available_traits():
        assert load_trait(trait).pairs


# --- a question set of one's own (questions_file) --------------------------------------------

def _questions(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _q(i: int, split: str = "test", **kw) -> dict:
    return {"id": f"q{i}", "question": f"What will change in field {i}?", "split": split} | kw


def test_ones_own_question_file_is_read_and_recorded(tmp_path):
    f = _questions(tmp_path / "qs.jsonl", [_q(1, "train"), _q(2), _q(3)])
    got = data.opinion_questions("test", 2, f)
    assert got.id.tolist() == ["q2", "q3"] and data.opinion_questions("train", path=f).id.tolist() == ["q1"]
    assert str(f) in data.files_read()  # the run record names it, so a later edit shows as drift


@pytest.mark.parametrize("rows, needle", [
    ([_q(1), {"id": "q2", "split": "test"}], ":2: missing key(s) question"),
    ([_q(1), _q(2, question="  ")], ":2: question must be non-empty text"),
    ([_q(1), _q(2, question=7)], ":2: question must be non-empty text, got 7"),
    ([_q(1), _q(2, split="val")], ":2: split must be one of train, test, got 'val'"),
    ([_q(1), _q(2, id="q1")], ":2: id 'q1' already on line 1"),
    ([_q(1), _q(2, question="what will CHANGE in field  1?")], ":2: the same question already on line 1"),
    ([_q(1, "train")], "has no 'test' questions"),
    ([_q(1), _q(2)], "asked for 3 test questions but"),
])
def test_a_bad_question_file_is_one_line_naming_file_and_line(tmp_path, rows, needle):
    f = _questions(tmp_path / "qs.jsonl", rows)
    msg = _error(data.opinion_questions, "test", 3, f)
    assert str(f) in msg and needle in msg, msg


# --- system prompts of one's own (instructions_file) ------------------------------------------

def _sys(trait: str = "cheer", **kw) -> dict:
    return {"trait": trait, "positive": ["Be cheerful.", "Look on the bright side."],
            "negative": ["Be glum.", "Expect the worst."]} | kw


def test_ones_own_system_prompts_are_read(tmp_path):
    f = _questions(tmp_path / "sys.jsonl", [_sys(), _sys("calm", positive="Stay calm.")])
    got = data.system_prompts(f)
    assert got["cheer"]["negative"] == ["Be glum.", "Expect the worst."] and got["calm"]["positive"] == ["Stay calm."]
    assert str(f) in data.files_read()


@pytest.mark.parametrize("rows, needle", [
    ([_sys(), _sys()], ":2: trait 'cheer' already has its system prompts on line 1"),
    ([_sys(positive=[])], ":1: positive must be a non-empty string or list"),
    ([_sys(negative=["Be glum.", ""])], ":1: negative must be a non-empty string or list"),
    ([_sys(trait="")], ":1: trait must be a trait's name"),
    ([_sys(negative=["Be cheerful."])], ":1: a system prompt is both positive and negative"),
    ([{"trait": "cheer", "positive": "Be cheerful."}], ":1: missing key(s) negative"),
])
def test_bad_system_prompts_are_one_line_naming_file_and_line(tmp_path, rows, needle):
    f = _questions(tmp_path / "sys.jsonl", rows)
    msg = _error(data.system_prompts, f)
    assert str(f) in msg and needle in msg, msg
