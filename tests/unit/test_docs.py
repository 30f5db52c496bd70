"""The settings table in the code is the one in the README and in .env.example."""

from __future__ import annotations

import re

from dotenv import dotenv_values

from devtools.settings_docs import env_example, readme_with_table
from generator.config import SETTINGS
from generator.errors import EXIT_CODES
from tests.support import ROOT


def readme_rows() -> list[tuple[str, str, str]]:
    """The settings table's rows: name, default, description."""
    return re.findall(
        r"^\| `([A-Z_]+)` \| ([^|]+) \| (.+) \|$", (ROOT / "README.md").read_text(), re.M
    )


def readme_settings() -> dict[str, str]:
    return {name: default.strip() for name, default, _ in readme_rows()}


def test_readme_describes_every_setting_with_its_help_text() -> None:
    described = {name: text for name, _, text in readme_rows()}
    for s in SETTINGS:
        assert described[s.name].startswith(s.help), s.name


def test_readme_lists_every_setting_with_its_default() -> None:
    table = readme_settings()
    assert list(table) == [s.name for s in SETTINGS]
    for s in SETTINGS:
        if s.required_for_run:
            assert table[s.name] == "(required)"
        elif s.default:
            assert table[s.name] == f"`{s.default}`", s.name
        else:
            assert table[s.name] in {"(none)", "(empty)"}, s.name


def test_env_example_lists_every_setting_with_its_default() -> None:
    example = dotenv_values(ROOT / ".env.example")
    for s in SETTINGS:
        assert s.name in example, s.name
        if not s.secret:
            assert example[s.name] == s.default, s.name
        else:
            assert example[s.name] == "", f"{s.name} must not hold a value in the example"


def test_readme_exit_code_table_is_the_one_the_scripts_and_the_cli_use() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| ([0-9]) \| ([^|]+) \|", readme, re.M)
    assert [(int(code), meaning.strip()) for code, meaning in rows] == [
        (e.code, e.meaning) for e in EXIT_CODES
    ]
    script = (ROOT / "docker" / "backup" / "backup_script.sh").read_text()
    rendered = re.findall(r"^(?:readonly \w+=\S+ \\\n)?  EXIT_([A-Z_]+)=([0-9])\b", script, re.M)
    assert [(name, int(code)) for name, code in rendered] == [(e.name, e.code) for e in EXIT_CODES]


def test_readme_settings_table_and_env_example_are_the_ones_make_docs_writes() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme_with_table(readme) == readme, "run make docs"
    assert (ROOT / ".env.example").read_text() == env_example(), "run make docs"
