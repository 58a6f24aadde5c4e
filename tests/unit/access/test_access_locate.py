"""certwright.access.locate: lines of rules, keys and array items in TOML text."""

from __future__ import annotations

import tomllib

import pytest

from certwright.access.locate import locate

TEXT = "\n".join(
    [
        "version = 1  # [[rule]] in a comment is not a header",  # 1
        'title = """',  # 2
        "[[rule]]",  # 3
        'name = "not a rule: inside a multi-line string" ""\\""""',  # 4
        "names = [\'\'\'",  # 5
        "[[rule]]",  # 6
        "\'\'\']",  # 7
        "",  # 8
        "[[rule]]",  # 9
        'name = "a \\" [[rule]]"',  # 10
        'paths = [ "/x", { y = "[[rule]]" }, [',  # 11
        '  "/nested",',  # 12
        '], "/z" ]',  # 13
        "[[ rule ]]",  # 14
        "\"name\" = \'b\'",  # 15
        "methods = [",  # 16
        "  # a comment line",  # 17
        '  "GET",',  # 18
        "",  # 19
        '  "POST",  # trailing',  # 20
        "]",  # 21
        "",
    ]
)


def test_locations_skip_strings_comments_and_nesting():
    tomllib.loads(TEXT)  # the scanner's precondition: valid TOML
    where = locate(TEXT)
    assert sorted(where.top) == ["names", "title", "version"]
    assert (where.top_line("version"), where.top_line("title"), where.top_line("names")) == (1, 2, 5)
    first, second = where.rules
    assert (first.line, first.key_line("name"), first.key_line("paths")) == (9, 10, 11)
    assert first.keys["paths"].items == [11, 11, 11, 13]
    assert (second.line, second.key_line("name"), second.key_line("methods")) == (14, 15, 16)
    assert second.keys["methods"].items == [18, 20]
    assert second.item_line("methods", 5) == 16  # out of range: the key's line
    assert second.key_line("roles") == 14  # absent: the header's line


def test_crlf_line_endings():
    text = 'version = 1\r\n\r\n[[rule]]\r\nname = "a"\r\nroles = [\r\n  "x",\r\n  "y",\r\n]\r\n'
    tomllib.loads(text)
    where = locate(text)
    assert where.rules[0].line == 3
    assert where.rules[0].keys["roles"].items == [6, 7]


def test_rule_written_as_a_value_is_noticed():
    where = locate('version = 1\nrule = [{ name = "a" }]\n')
    assert where.rule_as_value
    assert where.top_line("rule") == 2


@pytest.mark.parametrize("text", ["[[", "a = ]", '"unterminated', "= = =", "[x\n", "a = [1, {", "\x00"])
def test_never_raises_on_text_tomllib_would_refuse(text):
    locate(text)  # returns whatever it found
