"""Output folders: new, empty or the command's own; never someone else's; one writer."""

import os
import subprocess
import sys

import pytest

from sbi_lens.output_folder import LOCK_NAME, OutputFolderError, claim_output_folder


def test_new_empty_and_own_folders_are_accepted(tmp_path):
    with claim_output_folder(tmp_path / "new", "report") as folder:
        (folder / "report.md").write_text("first")
        assert (folder / LOCK_NAME).read_text() == str(os.getpid())
    assert not (folder / LOCK_NAME).exists(), "the lock is released"
    with claim_output_folder(folder, "report"):  # its own folder: written again
        (folder / "report.md").write_text("second")
    (tmp_path / "empty").mkdir()
    with claim_output_folder(tmp_path / "empty", "model"):
        pass


def test_a_users_files_are_never_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.md").write_text("my notes")
    with pytest.raises(OutputFolderError, match="is not empty and was not made by sbi-lens"):
        with claim_output_folder(tmp_path / "mine", "report"):
            pass
    assert (tmp_path / "mine" / "report.md").read_text() == "my notes"
    with claim_output_folder(tmp_path / "model", "model"):
        pass
    with pytest.raises(OutputFolderError, match="holds sbi-lens model output"):
        with claim_output_folder(tmp_path / "model", "report", argument="out_dir"):
            pass
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        with claim_output_folder(tmp_path / "file", "report"):
            pass


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path):
    folder = tmp_path / "out"
    with claim_output_folder(folder, "inference"):
        with pytest.raises(OutputFolderError, match="being written by another sbi-lens run"):
            with claim_output_folder(folder, "inference"):
                pass
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    (folder / LOCK_NAME).write_text(finished.stdout.strip())  # its process has ended
    with claim_output_folder(folder, "inference"):
        assert (folder / LOCK_NAME).read_text() == str(os.getpid())


def test_a_read_only_folder_is_one_line(tmp_path, monkeypatch):
    """As root (CI) nothing is read-only, so the refusal of the file system is simulated."""

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(OutputFolderError, match=r"out='.*ro': folder is not writable"):
        with claim_output_folder(tmp_path / "ro", "report"):
            pass
