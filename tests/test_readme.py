"""The README's Python example runs as written (at a smaller size)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert "from sbi_lens import" in code and "from sbi_lens." not in code  # top level only
    small = (
        code.replace("prior.sample((1000,))", "prior.sample((64,))")
        .replace("max_num_epochs=5", "max_num_epochs=1")
        .replace("sample_batched((1000,)", "sample_batched((20,)")
    )
    assert small.count("64,") >= 1 and "max_num_epochs=1" in small
    namespace: dict = {}
    exec(compile(small, str(README), "exec"), namespace)
    assert tuple(namespace["samples"].shape) == (20, 10, 4)
