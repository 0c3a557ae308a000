"""The layers stay visible: the core never imports fiftyone, operators never speak HTTP or
torch, and importing the core has no side effects (no fiftyone, no network clients)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_fiftyone() -> None:
    core = [p for p in (ROOT / "sam_backend").rglob("*.py") if "fiftyone_io" not in p.parts]
    assert core, "no core modules found"
    offenders = [str(p.relative_to(ROOT)) for p in core if "fiftyone" in _imports(p) or "eta" in _imports(p)]
    assert offenders == []


def test_operators_never_speak_http_or_torch() -> None:
    files = list((ROOT / "operators").rglob("*.py"))
    assert files
    banned = {"httpx", "requests", "urllib3", "torch", "transformers", "sam3"}
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & banned) for p in files if _imports(p) & banned}
    assert offenders == {}


def test_importing_the_core_loads_no_fiftyone() -> None:
    code = (
        "import sys\n"
        "import sam_backend, sam_backend.backends.fal, sam_backend.backends.base, sam_backend.emulator\n"
        "import sam_backend.synthetic, sam_backend.video, sam_backend.masks, sam_backend.cost\n"
        "from sam_backend.backends import available_backends\n"
        "assert 'fiftyone' not in sys.modules, 'fiftyone imported by the core'\n"
        "assert 'torch' not in sys.modules, 'torch imported by the core'\n"
        "print(','.join(available_backends()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert {"fal", "emulator"} <= set(out.stdout.strip().split(","))
