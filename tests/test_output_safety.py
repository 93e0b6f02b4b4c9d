"""Nothing is written outside the output: symlinks planted inside the output tree are refused, not followed."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from PIL import Image

from pipeline import cli
from pipeline.run import read_provenance
from transforms.storage import UnsafeOutputError, check_output_folders, write_atomic


@pytest.fixture
def outside(tmp_path):
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "victim.png").write_bytes(b"original")
    return folder


def test_a_symlinked_folder_below_the_root_is_refused(tmp_path, outside):
    root = tmp_path / "out"
    (root / "images").mkdir(parents=True)
    (root / "images" / "row-1").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeOutputError, match="row-1 is a symlink"):
        write_atomic(str(root / "images" / "row-1" / "key.png"), b"x", "image/png", root=str(root))
    assert sorted(os.listdir(outside)) == ["victim.png"]


def test_a_symlinked_top_folder_is_refused(tmp_path, outside):
    root = tmp_path / "out"
    root.mkdir()
    (root / "images").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeOutputError):
        write_atomic(str(root / "images" / "a" / "b.png"), b"x", "image/png", root=str(root))
    assert sorted(os.listdir(outside)) == ["victim.png"]


def test_a_symlink_at_the_final_name_is_refused_and_its_target_untouched(tmp_path, outside):
    root = tmp_path / "out"
    (root / "images" / "row-1").mkdir(parents=True)
    (root / "images" / "row-1" / "key.png").symlink_to(outside / "victim.png")
    with pytest.raises(UnsafeOutputError, match="is a symlink"):
        write_atomic(str(root / "images" / "row-1" / "key.png"), b"x", "image/png", root=str(root))
    assert (outside / "victim.png").read_bytes() == b"original"
    assert os.listdir(root / "images" / "row-1") == ["key.png"]  # no temp file left behind


def test_a_file_where_a_folder_belongs_is_refused(tmp_path):
    root = tmp_path / "out"
    (root / "images").mkdir(parents=True)
    (root / "images" / "row-1").write_bytes(b"a file")
    with pytest.raises(UnsafeOutputError, match="not a folder"):
        write_atomic(str(root / "images" / "row-1" / "key.png"), b"x", "image/png", root=str(root))


@pytest.mark.parametrize("target", ["../escape.png", "/elsewhere/x.png", "."])
def test_paths_that_leave_the_root_are_refused(tmp_path, target):
    root = tmp_path / "out"
    with pytest.raises(UnsafeOutputError, match="not below the output"):
        write_atomic(os.path.join(str(root), target), b"x", "image/png", root=str(root))
    assert not (tmp_path / "escape.png").exists()


def test_the_root_itself_may_be_a_link(tmp_path):
    real = tmp_path / "real-out"
    real.mkdir()
    (tmp_path / "out").symlink_to(real, target_is_directory=True)
    write_atomic(
        str(tmp_path / "out" / "images" / "a" / "k.png"), b"data", "image/png", root=str(tmp_path / "out")
    )
    assert (real / "images" / "a" / "k.png").read_bytes() == b"data"


def test_object_store_paths_must_stay_below_the_root():
    with pytest.raises(UnsafeOutputError):
        write_atomic("gs://bucket/other/x.png", b"x", "image/png", root="gs://bucket/out")
    with pytest.raises(UnsafeOutputError):
        write_atomic("gs://bucket/out/../x.png", b"x", "image/png", root="gs://bucket/out")


def test_check_output_folders_finds_links_and_files(tmp_path, outside):
    root = tmp_path / "out"
    (root / "provenance").mkdir(parents=True)
    check_output_folders(str(root), ["provenance/run=1", "images"])  # absent folders are fine
    (root / "provenance" / "run=1").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeOutputError, match="is a symlink"):
        check_output_folders(str(root), ["provenance/run=1"])
    (root / "runs").write_bytes(b"")
    with pytest.raises(UnsafeOutputError, match="not a folder"):
        check_output_folders(str(root), ["runs"])


def _job(tmp_path) -> tuple:
    job = tmp_path / "job"
    job.mkdir()
    Image.new("RGB", (40, 32), (10, 120, 200)).save(job / "blue.png")
    rows = [
        {"id": "planted", "source": "blue.png", "instruction": "make the background white"},
        {"id": "fine", "source": "blue.png", "instruction": "add a soft shadow"},
    ]
    (job / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "name": "planted",
        "manifest": "manifest.jsonl",
        "output": "out",
        "painter": {"checkpoint": "tiny", "steps": 1, "resolution": 32},
    }
    (job / "job.yaml").write_text(yaml.safe_dump(spec))
    return job, job / "out"


@pytest.mark.slow
def test_a_planted_image_folder_fails_its_row_and_writes_nothing_outside(tmp_path, outside, capsys):
    job, out = _job(tmp_path)
    (out / "images").mkdir(parents=True)
    (out / "images" / "planted").symlink_to(outside, target_is_directory=True)
    assert cli.main(["run", str(job / "job.yaml"), "--no-progress"]) == cli.EXIT_OK
    rows = {r["id"]: r for r in read_provenance(str(out)).to_pylist()}
    assert rows["fine"]["status"] == "ok"
    assert (rows["planted"]["status"], rows["planted"]["error_stage"]) == ("failed", "write")
    assert "UnsafeOutputError" in rows["planted"]["error"] and "is a symlink" in rows["planted"]["error"]
    assert sorted(os.listdir(outside)) == ["victim.png"]


@pytest.mark.slow
@pytest.mark.parametrize("planted", ["provenance", "runs", "blueprints"])
def test_a_planted_table_folder_refuses_the_run(tmp_path, outside, capsys, planted):
    job, out = _job(tmp_path)
    out.mkdir()
    (out / planted).symlink_to(outside, target_is_directory=True)
    assert cli.main(["run", str(job / "job.yaml"), "--no-progress"]) == cli.EXIT_BAD_INPUT
    assert "is a symlink" in capsys.readouterr().err
    assert sorted(os.listdir(outside)) == ["victim.png"]
