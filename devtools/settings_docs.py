"""The settings table of README.md and the whole .env.example, written from ``SETTINGS``.

``make docs`` rewrites both after a setting is added or changed in ``generator/config.py``;
``tests/unit/test_docs.py`` fails while either differs from what this writes.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from generator.config import FILE_SUFFIX, SETTINGS, Setting

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ENV_EXAMPLE = ROOT / ".env.example"
TABLE_HEAD = "| Setting | Default | What it does |\n|---|---|---|\n"
ENV_HEADER = """\
# gym-backup settings. Copy to .env and adjust; the process environment wins over this file.
# Every setting of the service, its default, and what it does. Secrets may instead be given as
# NAME_FILE=/path (Docker secrets); setting both NAME and NAME_FILE is an error.
# Secrets are never rendered into the generated files: the scripts read them at run time.
"""


def readme_row(setting: Setting) -> str:
    """The setting's row of the README's table: name, default, what it does."""
    if setting.required_for_run:
        default = "(required)"
    elif setting.default:
        default = f"`{setting.default}`"
    else:
        default = "(none)" if setting.secret else "(empty)"
    also = f" Also `{setting.name}{FILE_SUFFIX}`." if setting.secret else ""
    return f"| `{setting.name}` | {default} | {setting.help}{also} |\n"


def env_entry(setting: Setting) -> str:
    """The setting's paragraph of .env.example: what it does, its default, the line to edit."""
    if setting.secret:
        text, lines = setting.help, [f"{setting.name}="]
        lines.append(f"# {setting.name}{FILE_SUFFIX}=/run/secrets/{setting.name.lower()}")
    else:
        shown = f"'{setting.default}'" if setting.default else "empty"
        value = setting.default or ""
        if any(c in value for c in ' \t#$"`\\'):
            value = f"'{value}'"  # as a shell reads it too (no default holds a quote of its own)
        text, lines = f"{setting.help} Default: {shown}.", [f"{setting.name}={value}"]
    comment = textwrap.wrap(text, width=97, break_long_words=False, break_on_hyphens=False)
    return "".join(f"# {line}\n" for line in comment) + "".join(f"{ln}\n" for ln in lines)


def env_example() -> str:
    """The whole .env.example."""
    return ENV_HEADER + "".join(f"\n{env_entry(s)}" for s in SETTINGS)


def readme_with_table(readme: str) -> str:
    """``readme`` with its settings table (from TABLE_HEAD to the first blank line) rewritten."""
    start = readme.index(TABLE_HEAD) + len(TABLE_HEAD)
    end = readme.index("\n\n", start) + 1
    return readme[:start] + "".join(readme_row(s) for s in SETTINGS) + readme[end:]


def main() -> int:
    README.write_text(readme_with_table(README.read_text()))
    ENV_EXAMPLE.write_text(env_example())
    print(f"wrote the settings table of {README.name} and {ENV_EXAMPLE.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
