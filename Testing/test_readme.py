"""The README's Python example runs as written (on a tiny random bundle in place of the demo model, to stay
fast; the demo bundle itself is exercised by test_demo.py and the main job)."""

import re
from pathlib import Path

from Testing.tiny_models import make_tiny_bundle

README = Path(__file__).parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    bundle = make_tiny_bundle(tmp_path / "bundle")
    monkeypatch.chdir(tmp_path)
    code = blocks[0].replace('"GenerateCTLib/models/demo"', repr(str(bundle)))
    assert code != blocks[0], "the example no longer loads the demo bundle"
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "ct.nii.gz").stat().st_size > 0
    assert "(9, 32, 32)" in capsys.readouterr().out
