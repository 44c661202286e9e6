"""The CLI side and the daemon side stay apart.

The daemon (zerodown.control) never imports the CLI (zerodown.cli); the CLI
reaches the daemon through the admin API client, and imports of control/
only what both ends agree on (wire.py) and, for `serve`, the daemon itself.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import zerodown

SRC = Path(zerodown.__file__).parent
# What zerodown.cli may import from zerodown.control, and why.
CLI_MAY_IMPORT = {
    "zerodown.control.wire",  # the admin API's shared numbers and names
    "zerodown.control.daemon",  # `zerodown serve` runs the daemon in-process
    "zerodown.control.dataplanes",  # `zerodown render` shows what the daemon would render
}


def imports(package: str) -> dict[str, set[str]]:
    """Every zerodown module each module of `package` imports, at any depth of its code."""
    found: dict[str, set[str]] = {}
    for path in sorted((SRC / package).glob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[path.name] = {name for name in names if name.startswith("zerodown")}
    return found


def test_the_daemon_side_never_imports_the_cli() -> None:
    found = imports("control")
    assert len(found) >= 10
    assert {
        m: [n for n in names if n.startswith("zerodown.cli")] for m, names in found.items()
    } == {m: [] for m in found}


def test_the_cli_imports_of_the_daemon_side_only_the_wire_contract_and_the_daemon() -> None:
    found = imports("cli")
    assert len(found) >= 10
    used = {
        name
        for names in found.values()
        for name in names
        if name.startswith("zerodown.control.") and name.count(".") == 2
    }
    assert used <= CLI_MAY_IMPORT, used - CLI_MAY_IMPORT
    assert "zerodown.control.wire" in used


def test_the_wire_contract_needs_nothing_but_the_standard_library() -> None:
    assert imports("control")["wire.py"] == set()


def test_the_client_loads_without_typer_or_the_server() -> None:
    # zerodown.demo and zerodown.verify import the client: it must not pull in
    # the typer app and every verb, nor the daemon's FastAPI and uvicorn.
    code = (
        "import sys, zerodown.cli.client; "
        "print(sorted(m for m in ('typer', 'fastapi', 'uvicorn', 'zerodown.cli.app') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
