"""The layering in ARCHITECTURE.md, checked: bridge ⟂ textual and console; console sees only the wire format."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The console may use the wire format, and Twilio's segment-counting rules (pure, no I/O) so the composer's counter
# is the very function the bridge uses: two copies could disagree about what a customer is billed.
CONSOLE_MAY_IMPORT = {"bridge.protocol", "bridge.segments"}
HEADLESS = [
    "console.cache",
    "console.client",
    "console.stream",
    "console.config",
    "console.phones",
    "console.text",
    "console.times",
]


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_bridge_never_imports_textual_or_console() -> None:
    for path in (ROOT / "bridge").rglob("*.py"):
        bad = {name for name in imports(path) if name.split(".")[0] in ("textual", "console", "rich")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_console_uses_only_the_wire_format_of_the_bridge() -> None:
    def allowed(name: str) -> bool:
        # "bridge" alone comes with `from bridge import protocol`, which also yields "bridge.protocol".
        return name == "bridge" or name in CONSOLE_MAY_IMPORT or name.rsplit(".", 1)[0] in CONSOLE_MAY_IMPORT

    for path in (ROOT / "console").rglob("*.py"):
        bad = {name for name in imports(path) if name.split(".")[0] == "bridge" and not allowed(name)}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)} from the bridge"


def test_headless_console_modules_do_not_load_textual() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {name}\n" for name in HEADLESS)
        + "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'starlette', 'uvicorn'))\n"
        + "print(','.join(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"headless modules pulled in: {done.stdout.strip()}"
