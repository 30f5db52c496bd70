"""``gym-backup status``: the facts of ``status.json`` (``backup_script.sh status --json``) as a
table, in colour only on a terminal. The script derives every fact; this only shows them."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

# The last run's result, as shown and coloured.
_RESULT_STYLE: Mapping[str, str] = {
    "ok": "green",
    "skipped": "yellow",
    "failed": "bold red",
    "interrupted": "bold red",
}


def human_size(size: float | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {rest // 60}m"
    if rest >= 60:
        return f"{rest // 60}m"
    return f"{rest}s"


def _when(record: Mapping[str, Any] | None) -> str:
    """A record's time as the service shows it (in its TZ)."""
    if not record:
        return "never"
    return str(record["time"])[:16].replace("T", " ")


def show(facts: Mapping[str, Any], console: Console | None = None) -> None:
    """Print the table of backup types, storage, the last drill and what needs attention."""
    console = console or Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 120)
    now = facts.get("generated_timestamp", time.time())
    table = Table(title=f"gym-backup status of {facts['backup_dir']}", title_justify="left")
    for column in ("type", "last success", "age", "size", "duration", "success", "every"):
        table.add_column(column)
    table.add_column("last run")
    for name, kind in facts["types"].items():
        success = kind.get("last_success")
        last = kind.get("last_run")
        result = last["result"] if last else "never"
        table.add_row(
            name,
            _when(success),
            human_age(now - success["timestamp"]) if success else "-",
            human_size(success["stored_bytes"]) if success else "-",
            f"{success['seconds']:.1f}s" if success and success["seconds"] is not None else "-",
            f"{kind['recent_successes']}/{kind['recent_runs']}" if kind["recent_runs"] else "-",
            human_age(kind["interval_seconds"]),
            f"[{_RESULT_STYLE.get(result, '')}]{result}[/] {_when(last)}" if last else "never",
        )
    console.print(table)
    storage = facts["storage"]
    console.print(
        f"storage: {human_size(storage['used_bytes'])} used of "
        f"{human_size(storage['size_bytes'])} ({storage['used_percent']}%), "
        f"{human_size(storage['free_bytes'])} free"
    )
    drills = [
        f"{name} {kind['last_drill']['result']} {_when(kind['last_drill'])}"
        + (f" ({kind['last_drill']['detail']})" if kind["last_drill"]["detail"] else "")
        for name, kind in facts["types"].items()
        if kind.get("last_drill")
    ]
    console.print(f"last drill: {'; '.join(drills) if drills else 'never'}")
    copies = [
        f"{name} {target['last_run']['result'] if target.get('last_run') else 'never'}"
        + (f" {_when(target['last_run'])}" if target.get("last_run") else "")
        + (f" (last ok {_when(target['last_success'])})" if target.get("last_success") else "")
        for name, target in facts.get("replicas", {}).items()
    ]
    if copies:
        console.print(f"off-site copies: {'; '.join(copies)}", markup=False)
    if facts.get("running"):
        console.print(f"running now: {facts['running']}")
    if facts["attention"]:
        console.print("[bold red]NEEDS ATTENTION:[/]")
        for item in facts["attention"]:
            console.print(f"  - {item['message']}", markup=False)
    else:
        console.print("[green]all good: nothing needs attention[/]")
