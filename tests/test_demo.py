"""`make demo` runs jobs/demo.yaml: keep it working, with the counts the README promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import cli
from pipeline.run import read_provenance

pytestmark = pytest.mark.slow

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "demo.yaml"


def test_demo_job_runs_offline(tmp_path, capsys):
    output = tmp_path / "demo-output"
    assert cli.main(["run", str(DEMO), "--no-progress", "--set", f"output={output}"]) == cli.EXIT_OK
    table = read_provenance(str(output))
    statuses = {row["id"]: row["status"] for row in table.to_pylist() if row["id"] not in (None, "mug-001")}
    assert table.num_rows == 14
    assert sorted(i for i, s in statuses.items() if s == "ok") == [
        "backpack-001",
        "lamp-001",
        "poster-001",
        "sneaker-001",
        "sneaker-002",
        "sneaker-locked",
    ]
    mug = [row for row in table.to_pylist() if row["id"] == "mug-001"]
    assert sorted(row["status"] for row in mug) == ["failed", "ok"]  # the duplicate fails, the first paints
    assert "RANDOM weights" in capsys.readouterr().err


def test_demo_mask_locks_the_shoe():
    """jobs/demo/make_samples.py's mask for row sneaker-locked: white exactly on the photo's background and
    shadow, black exactly on the shoe, at the photo's size; the committed files are what the script draws."""
    import importlib.util
    import io

    import numpy as np
    from PIL import Image

    script = importlib.util.spec_from_file_location("make_samples", DEMO.parent / "demo" / "make_samples.py")
    samples = importlib.util.module_from_spec(script)
    script.loader.exec_module(samples)
    images = DEMO.parent / "demo" / "images"
    for name, draw in (("sneaker.png", samples.sneaker), ("sneaker-mask.png", samples.sneaker_mask)):
        buffer = io.BytesIO()
        draw().save(buffer, "PNG")
        committed = Image.open(images / name)
        assert np.array_equal(np.asarray(committed), np.asarray(Image.open(buffer))), name
    photo = np.asarray(Image.open(images / "sneaker.png").convert("RGB"))
    mask = np.asarray(Image.open(images / "sneaker-mask.png"))
    assert mask.shape == photo.shape[:2] and set(np.unique(mask)) == {0, 255}
    background = {(214, 222, 230), (170, 176, 184)}  # the canvas and the shadow
    assert {tuple(int(v) for v in c) for c in photo[mask == 255]} == background
    assert not background & {tuple(int(v) for v in c) for c in photo[mask == 0]}
    rows = [
        line for line in (DEMO.parent / "demo" / "manifest.jsonl").read_text().splitlines() if "mask" in line
    ]
    assert len(rows) == 1 and '"images/sneaker-mask.png"' in rows[0] and '"sneaker-locked"' in rows[0]


def test_demo_with_aspect_preserved(tmp_path):
    """painter.aspect=preserve: 4:3 sources paint landscape at about resolution² pixels (sides on the
    tiny VAE's latent grid; 32 for the real DC-AE)."""
    from PIL import Image

    output = tmp_path / "preserve"
    argv = [
        "run",
        str(DEMO),
        "--no-progress",
        "--set",
        f"output={output}",
        "--set",
        "painter.aspect=preserve",
    ]
    assert cli.main(argv) == cli.EXIT_OK
    rows = [r for r in read_provenance(str(output)).to_pylist() if r["status"] == "ok"]
    assert len(rows) == 7
    for row in rows:
        with Image.open(row["output_uri"]) as image:
            assert image.size == (row["width"], row["height"])
        if row["mode"] == "t2i":
            assert row["width"] == row["height"] == 64
        else:
            assert row["width"] > row["height"]  # landscape, like the sources
            assert abs(row["width"] * row["height"] - 64 * 64) <= 0.1 * 64 * 64  # about resolution²


DEMO_APACHE = DEMO.with_name("demo-apache.yaml")


def test_demo_apache_job_runs_offline_with_the_tiny_qwen_painter(tmp_path, capsys):
    """jobs/demo-apache.yaml: the same manifest and counts, painted by painter.kind qwen-image-edit."""
    output = tmp_path / "demo-apache-output"
    assert cli.main(["run", str(DEMO_APACHE), "--no-progress", "--set", f"output={output}"]) == cli.EXIT_OK
    table = read_provenance(str(output))
    rows = table.to_pylist()
    assert table.num_rows == 14
    ok = [row for row in rows if row["status"] == "ok"]
    assert sorted(row["id"] for row in ok) == [
        "backpack-001",
        "lamp-001",
        "mug-001",
        "poster-001",
        "sneaker-001",
        "sneaker-002",
        "sneaker-locked",
    ]
    assert {row["painter"] for row in ok} == {"qwen-image-edit:tiny-edit", "qwen-image-edit:tiny-t2i"}
    assert {(row["steps"], row["guidance_scale"], row["width"]) for row in ok} == {(8, 4.0, 64)}
    assert "Qwen-Image-Edit's architecture at toy size with RANDOM weights" in capsys.readouterr().err
