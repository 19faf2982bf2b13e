import subprocess
import sys

import sbi_lens


def test_every_public_name_resolves():
    for name in sbi_lens.__all__:
        assert getattr(sbi_lens, name) is not None


def test_cli_help_is_quick_to_import():
    """`sbi-lens --help` must not import sbi or lenstronomy."""
    code = "import sys, sbi_lens.cli; print('sbi' in sys.modules, 'lenstronomy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_python_dash_m_runs_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "sbi_lens", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"sbi-lens {sbi_lens.__version__}"
