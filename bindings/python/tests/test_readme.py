"""The README's Python examples run as written, with and without the optional packages, and write
the files they say they write."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

from conftest import MODELS

README = Path(__file__).resolve().parents[1] / "README.md"

# Each run hides some optional packages: a None entry in sys.modules makes their import fail.
SETUPS = {
    "no Pillow, no numpy": ["PIL", "PIL.Image", "numpy"],
    "numpy without Pillow": ["PIL", "PIL.Image"],
    "everything installed": [],
}


def test_readme_examples_run(tmp_path: Path) -> None:
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)
    assert blocks, "no ```python blocks in README.md"
    script = "\n".join(blocks)
    runs: List[Tuple[str, Path, "subprocess.Popen[str]"]] = []
    for setup, hidden in SETUPS.items():
        cwd = tmp_path / f"run{len(runs)}"
        cwd.mkdir()
        (cwd / "models").symlink_to(MODELS)  # the examples use paths relative to the repository
        prelude = f"import sys\nsys.modules.update(dict.fromkeys({hidden!r}))\n"
        proc = subprocess.Popen([sys.executable, "-c", prelude + script], cwd=cwd, env=dict(os.environ),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs.append((setup, cwd, proc))
    for setup, cwd, proc in runs:
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        assert proc.returncode == 0, f"README examples failed ({setup}):\n{err}"
        written = sorted(p.name for p in cwd.iterdir() if p.suffix == ".png")
        assert written == ["fox.png", "fox_00.png", "fox_01.png"], (setup, written)
        for name in written:
            assert (cwd / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", (setup, name)
