"""The grammar and parser: text -> Document of blocks and options, each with its exact line and column."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import netspec
from netspec import CfgError
from netspec.document import Call


def _options(text):
    """[(key, line, col, value_col, raw)] of every option of every block."""
    return [(o.key, o.line, o.col, o.value_col, o.raw) for b in netspec.parse(text).blocks for o in b.options]


def _error(text) -> CfgError:
    with pytest.raises(CfgError) as info:
        netspec.parse(text)
    return info.value


# ---- line ends ---------------------------------------------------------------------------------

@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_line_ends_give_the_same_positions(newline):
    text = newline.join(["[net]", "width = 32", "", "[convolutional]", "  filters=8"]) + newline
    doc = netspec.parse(text)
    assert [(b.section, b.line) for b in doc.blocks] == [("net", 1), ("convolutional", 4)]
    assert _options(text) == [("width", 2, 1, 9, "32"), ("filters", 5, 3, 11, "8")]


def test_cr_only_file_reports_errors_on_the_right_line():
    # Lark counts lines at '\n' only; without normalising, every error was on line 1.
    err = _error("[net]\rwidth=32\rbogus\r")
    assert (err.line, err.col) == (3, 6)


def test_crlf_values_do_not_keep_the_carriage_return():
    doc = netspec.parse("[net]\r\nanchors = 1,2\r\npath = a b\r\n")
    opts = doc.blocks[0].options
    assert [i.text for i in opts[0].items] == ["1", "2"]
    assert opts[1].raw == "a b"


@pytest.mark.parametrize("text", ["[net]\nwidth=32", "[net]\nwidth=32\n", "[net]\nwidth=32\n\n\n"])
def test_final_line_without_newline_and_trailing_blank_lines(text):
    assert _options(text) == [("width", 2, 1, 7, "32")]


def test_unexpected_end_of_file_points_after_the_last_character():
    err = _error("[net]\nx=f(1")
    assert (err.line, err.col) == (2, 6)
    assert "')'" in str(err)


# ---- whitespace, numbers, lists ----------------------------------------------------------------

def test_tabs_and_spaces_around_tokens():
    text = "\t[net]  \n\twidth\t=\t32\t\n  height =  64  \n"
    doc = netspec.parse(text)
    assert (doc.blocks[0].line, doc.blocks[0].col) == (1, 2)
    assert _options(text) == [("width", 2, 2, 10, "32"), ("height", 3, 3, 13, "64")]


@pytest.mark.parametrize("literal, value", [(".001", 0.001), ("1e-4", 1e-4), ("-1", -1.0), ("+2.5", 2.5),
                                            ("1E+3", 1000.0), ("5.", 5.0)])
def test_float_literals(literal, value):
    spec = netspec.build_spec(f"[net]\nwidth=8\nheight=8\nchannels=1\npower={literal}\n[maxpool]\n")
    assert spec.net.power == pytest.approx(value)
    assert [i.text for i in netspec.parse(f"[net]\nx={literal}\n").blocks[0].options[0].items] == [literal]


def test_lists_with_spaces_keep_item_positions():
    opt = netspec.parse("[net]\nanchors = 10,13,  16,30\nlayers = -1, 61\n").blocks[0].options
    assert [(i.text, i.col) for i in opt[0].items] == [("10", 11), ("13", 14), ("16", 19), ("30", 22)]
    assert [(i.text, i.col) for i in opt[1].items] == [("-1", 10), ("61", 14)]


def test_empty_list_items_are_kept_with_positions():
    items = netspec.parse("[net]\nx=1,,2,\n").blocks[0].options[0].items
    assert [(i.text, i.col) for i in items] == [("1", 3), ("", 5), ("2", 6), ("", 8)]


def test_words_and_paths_keep_inner_spaces():
    opt = netspec.parse("[net]\ntree = data/my tree.txt\n").blocks[0].options[0]
    assert opt.raw == "data/my tree.txt"
    assert len(opt.items) == 1


# ---- comments ----------------------------------------------------------------------------------

def test_comment_lines_and_inline_comments():
    text = "# top\n; also\n[net]  # the net\nfilters=64  # stem\n   ; indented\nsize=3;x\n"
    doc = netspec.parse(text)
    assert [b.section for b in doc.blocks] == ["net"]
    assert _options(text) == [("filters", 4, 1, 9, "64"), ("size", 6, 1, 6, "3")]


def test_comment_only_file_has_no_blocks():
    assert netspec.parse("# nothing\n; here\n\n").blocks == []


# ---- calls (init=) -----------------------------------------------------------------------------

def test_call_values():
    opts = netspec.parse("[net]\ninit = normal(std=0.01)\nb = kaiming_normal(0, fan_in)\nc = zeros()\n")
    items = [o.items[0] for o in opts.blocks[0].options]
    assert items[0].call == Call("normal", (), (("std", "0.01"),))
    assert (items[0].line, items[0].col, items[0].text) == (2, 8, "normal(std=0.01)")
    assert items[1].call == Call("kaiming_normal", ("0", "fan_in"), ())
    assert items[2].call == Call("zeros")


@pytest.mark.parametrize("value, col, fragment", [
    ("normal(std=0.1", 20, "expected ')' or ','"),
    ("normal(1,)", 15, "unexpected ')'"),
    ("normal(std=f(1))", 18, "unexpected '(1))'"),
])
def test_malformed_calls(value, col, fragment):
    err = _error(f"[net]\ninit={value}\n")
    assert (err.line, err.col) == (2, col)
    assert fragment in str(err)


def test_init_call_is_validated_where_written():
    with pytest.raises(CfgError) as info:
        netspec.build_spec("[net]\nwidth=8\nheight=8\nchannels=1\n[convolutional]\ninit = normal(sdt=1)\n")
    assert (info.value.line, info.value.col) == (6, 8)
    assert "did you mean 'std'" in str(info.value)


# ---- positions of blocks -----------------------------------------------------------------------

def test_block_positions():
    doc = netspec.parse("[net]\nw=1\n\n  [convolutional]\n[route]\nlayers=-1\n")
    assert [(b.section, b.line, b.col) for b in doc.blocks] == [("net", 1, 1), ("convolutional", 4, 3),
                                                                  ("route", 5, 1)]


def test_duplicate_keys_are_kept_in_order():
    block = netspec.parse("[net]\nw=1\nw=2\n").blocks[0]
    assert [o.raw for o in block.options] == ["1", "2"]
    assert block.get("w").raw == "1"  # Darknet's first-wins lookup


# ---- encodings and odd bytes -------------------------------------------------------------------

def test_utf8_bom_is_ignored(tmp_path):
    path = tmp_path / "bom.cfg"
    path.write_bytes(b"\xef\xbb\xbf[net]\nwidth=3\n")
    assert _options(path) == [("width", 2, 1, 7, "3")]
    assert _options("\ufeff[net]\nwidth=3\n") == [("width", 2, 1, 7, "3")]


def test_nul_byte_is_reported_with_its_position(tmp_path):
    path = tmp_path / "nul.cfg"
    path.write_bytes(b"[net]\nwidth=3\x00\n")
    err = _error(path)
    assert (err.path, err.line, err.col) == (str(path), 2, 8)
    assert "NUL" in str(err)


def test_non_utf8_byte_column_counts_characters(tmp_path):
    path = tmp_path / "latin1.cfg"
    path.write_bytes("[net]\nname=é".encode() + b"\xff\n")
    err = _error(path)
    # 'name=é' is 6 characters (7 bytes): the bad byte is character 7
    assert (err.line, err.col) == (2, 7)
    assert "not UTF-8" in str(err) and "0xff" in str(err)


def test_bytes_source():
    assert _options(b"[net]\nw=1\n") == [("w", 2, 1, 3, "1")]


@pytest.mark.parametrize("separator", ["\x85", "\u2028", "\x1c", "\x0c"])
def test_unicode_line_separators_do_not_shift_error_lines(separator):
    # str.splitlines() splits at these but Lark does not: errors used to be reported twice, or at a
    # line the user did not write.
    text = f"[net]\na=1{separator}b\nbogus\n"
    err = _error(text)
    lines = [p.line for p in err.problems]
    assert lines == sorted(set(lines)), [str(p) for p in err.problems]
    assert lines[-1] == 3


# ---- syntax errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, line, col, fragment", [
    ("[net]\nfilters 16\n", 2, 9, "expected '='"),
    ("[net]\n[convolutional\n", 2, 15, "expected ']'"),
    ("[net]\n[convolutional]x\n", 2, 16, "unexpected 'x'"),
    ("[net]\n=5\n", 2, 1, "unexpected '=5'"),
    ("[net]\nwidth=32=3\n", 2, 9, "unexpected '=3'"),
    ("[net]\nx=[1]\n", 2, 3, "unexpected '[1'"),
    ("[net]\nbogus\n", 2, 6, "expected '=' and a value after the key"),
    ("[net]\n[]\n", 2, 1, "empty section name"),
    ("[net]\n  [ ]\n", 2, 3, "empty section name"),
])
def test_syntax_error_positions(text, line, col, fragment):
    err = _error(text)
    assert (err.line, err.col) == (line, col), str(err)
    assert fragment in str(err)


def test_every_empty_header_is_reported_on_its_own_line():
    # an iterator over '[]'-looking lines went out of step when a '[ ]' came first
    err = _error("[net]\n[ ]\nx=1\n\t[]\n")
    assert [(p.line, p.col) for p in err.problems] == [(2, 1), (4, 2)]


def test_every_syntax_error_is_reported():
    err = _error("[net]\nbad one\nok=1\n[broken\nworse\n")
    assert [(p.line, p.col) for p in err.problems] == [(2, 5), (4, 8), (5, 6)]


def test_syntax_errors_are_capped():
    err = _error("[net]\n" + "x y\n" * 50)
    assert len(err.problems) == 20


def test_option_before_first_header():
    err = _error("width=32\n[net]\n")
    assert (err.line, err.col) == (1, 1)
    assert "before the first section header" in str(err)


def test_path_in_message(tmp_path):
    path = tmp_path / "bad.cfg"
    path.write_text("[net]\nfilters 16\n")
    err = _error(str(path))
    assert str(err).startswith(f"{path}:2:9: ")


def test_missing_file_and_directory(tmp_path):
    assert "no such file" in str(_error(str(tmp_path / "absent.cfg")))
    assert "directory" in str(_error(tmp_path))


def test_empty_text_is_an_empty_cfg_not_a_missing_file():
    assert netspec.parse("").blocks == []
    with pytest.raises(CfgError, match="no sections"):
        netspec.build_spec("")


# ---- properties --------------------------------------------------------------------------------

_KEY = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
_VALUE = st.one_of(st.integers(-10**6, 10**6).map(str),
                   st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
                   st.from_regex(r"[a-z][a-z0-9_./-]{0,10}", fullmatch=True))
_PAD = st.sampled_from(["", " ", "\t", "  ", " \t "])
_NEWLINE = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def _cfg(draw):
    """Random well-formed cfg text and, for every option, its expected (line, col, value_col, items)."""
    newline = draw(_NEWLINE)
    lines: list[str] = []
    expected = []
    for b in range(draw(st.integers(1, 4))):
        for _ in range(draw(st.integers(0, 2))):
            lines.append(draw(_PAD) + draw(st.sampled_from(["", "# note", "; note"])))
        lines.append(draw(_PAD) + f"[s{b}]" + draw(_PAD))
        for _ in range(draw(st.integers(0, 4))):
            lead, key = draw(_PAD), draw(_KEY)
            values = draw(st.lists(_VALUE, min_size=1, max_size=4))
            around = draw(_PAD)
            prefix = f"{lead}{key}{around}={around}"
            cols, pos = [], len(prefix) + 1
            body = ""
            for i, v in enumerate(values):
                sep = "" if i == 0 else "," + draw(_PAD)
                pos += len(sep)
                body += sep
                cols.append(pos)
                body += v
                pos += len(v)
            comment = draw(st.sampled_from(["", "  # c", " ;c"]))
            lines.append(prefix + body + comment)
            expected.append((key, len(lines), len(lead) + 1, cols[0], list(zip(values, cols))))
    final = draw(st.booleans())
    return newline.join(lines) + (newline if final else ""), expected


@settings(max_examples=150, deadline=None)
@given(_cfg())
def test_property_positions_round_trip(case):
    text, expected = case
    found = [(o.key, o.line, o.col, o.value_col, [(i.text, i.col) for i in o.items])
             for b in netspec.parse(text).blocks for o in b.options]
    assert found == expected


@settings(max_examples=150, deadline=None)
@given(_cfg())
def test_property_every_position_points_at_its_text(case):
    text, _ = case
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for block in netspec.parse(text).blocks:
        assert lines[block.line - 1][block.col - 1] == "["
        for opt in block.options:
            assert lines[opt.line - 1][opt.col - 1:].startswith(opt.key)
            for item in opt.items:
                assert lines[item.line - 1][item.col - 1:].startswith(item.text)


@settings(max_examples=100, deadline=None)
@given(_cfg(), st.integers(0, 10**6), st.sampled_from(["@@", "=", "[x", "a b c = ="]))
def test_property_a_bad_line_is_reported_at_its_own_line(case, seed, junk):
    text, _ = case
    lines = text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").split("\n")
    where = seed % (len(lines) + 1)
    lines.insert(where, junk)
    with pytest.raises(CfgError) as info:
        netspec.parse("\n".join(lines) + "\n")
    assert where + 1 in [p.line for p in info.value.problems]
