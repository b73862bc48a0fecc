"""The engine never imports the TUI toolkit: minillm must stay usable and readable without it."""

import subprocess
import sys


def test_engine_does_not_import_textual():
    code = ("import sys, minillm, minillm.cli, minillm.engine.llm, minillm.model.transformer; "
            "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith(('textual.', 'tui.')) or m == 'tui'); "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
