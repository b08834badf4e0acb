"""The README's Python examples run as written, with and without the optional packages, and write
the files they say they write. The remote example talks to a local fake OpenAI server, found
through the DG_OPENAI_* variables the README tells users to set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

from conftest import MODELS
from fake_openai import FakeOpenAI

README = Path(__file__).resolve().parents[1] / "README.md"

# Each run hides some optional packages: a None entry in sys.modules makes their import fail.
SETUPS = {
    "no Pillow, no numpy": ["PIL", "PIL.Image", "numpy"],
    "numpy without Pillow": ["PIL", "PIL.Image"],
    "everything installed": [],
}


KEY = "sk-readme-0123456789"


def test_readme_examples_run(tmp_path: Path) -> None:
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)
    assert blocks, "no ```python blocks in README.md"
    script = "\n".join(blocks)
    server = FakeOpenAI()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DG_OPENAI_", "DG_GEMINI_"))}
    env.update(DG_OPENAI_BASE_URL=server.url, DG_OPENAI_API_KEY=KEY)
    try:
        _run_everywhere(tmp_path, script, env)
    finally:
        server.close()
    # One remote image per run; the request the README refuses (a seed) is never sent.
    assert len(server.received) == len(SETUPS)
    for request in server.received:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        body = request.json()
        assert (body["model"], body["quality"]) == ("gpt-image-1", "low") and "negative_prompt" not in body


def _run_everywhere(tmp_path: Path, script: str, env: Dict[str, str]) -> None:
    runs: List[Tuple[str, Path, "subprocess.Popen[str]"]] = []
    for setup, hidden in SETUPS.items():
        cwd = tmp_path / f"run{len(runs)}"
        cwd.mkdir()
        (cwd / "models").symlink_to(MODELS)  # the examples use paths relative to the repository
        prelude = f"import sys\nsys.modules.update(dict.fromkeys({hidden!r}))\n"
        proc = subprocess.Popen([sys.executable, "-c", prelude + script], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs.append((setup, cwd, proc))
    for setup, cwd, proc in runs:
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        assert proc.returncode == 0, f"README examples failed ({setup}):\n{err}"
        # what the remote example's comments say it prints
        assert "openai gpt-image-1 ['negative_prompt']" in out, (setup, out)
        assert "seed" in out.splitlines()[-1], (setup, out)
        written = sorted(p.name for p in cwd.iterdir() if p.suffix == ".png")
        assert written == ["fox.png", "fox_00.png", "fox_01.png", "fox_edit.png", "remote_fox.png"], (setup, written)
        assert "['fox_edit.png']" in out and "INVALID_ARG invalid argument: strength must be in (0, 1], got 1.5" in out, (setup, out)
        for name in written:
            assert (cwd / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", (setup, name)
