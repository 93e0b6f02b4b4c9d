"""A small job with good and bad rows, shared by the end-to-end tests (local, gs://, multi-process)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import yaml
from PIL import Image

# id -> (expected status, expected error_stage or None, substring of the error or None)
EXPECTED: dict[str | None, tuple[str, str | None, str | None]] = {
    "red-png": ("ok", None, None),
    "blue-jpg": ("ok", None, None),
    "rotated-exif": ("ok", None, None),
    "same-source-other-seed": ("ok", None, None),
    "alias-columns": ("ok", None, None),
    "missing-file": ("failed", "fetch", "not found"),
    "corrupt": ("failed", "fetch", None),
    "text-to-image": ("ok", None, None),
    "blank-instruction": ("failed", "validate", "'instruction'"),
    "bad-seed": ("failed", "validate", "'seed'"),
    "../escape": ("failed", "validate", "'id'"),
}
# Rows whose failure is checked by row position rather than id.
DUPLICATE_ID = "red-png"
NOT_JSON_LINE = "{this is not json"


def _png(color: tuple[int, int, int], size=(48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(color: tuple[int, int, int], size=(40, 48), orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", size, color)
    image.paste((255, 255, 255), (0, 0, size[0] // 2, size[1] // 4))
    kwargs = {}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(buffer, format="JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def source_files() -> dict[str, bytes]:
    return {
        "images/red.png": _png((200, 30, 30)),
        "images/blue.jpg": _jpeg((30, 60, 200)),
        "images/rotated.jpg": _jpeg((30, 160, 60), orientation=6),
        "images/corrupt.png": b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 8,
    }


def manifest_lines() -> list[str]:
    rows = [
        {"id": "red-png", "source": "images/red.png", "instruction": "make the background white", "seed": 1},
        {"id": "blue-jpg", "source": "images/blue.jpg", "instruction": "put it on a wooden table"},
        {"id": "rotated-exif", "source": "images/rotated.jpg", "instruction": "add soft shadow", "seed": 3},
        {
            "id": "same-source-other-seed",
            "source": "images/red.png",
            "instruction": "make the background white",
            "seed": 2,
            "metadata": {"sku": "R-1"},
        },
        {"key": "alias-columns", "image_path": "images/blue.jpg", "prompt": "a longer instruction " * 5},
        {"id": "missing-file", "source": "images/nope.png", "instruction": "x"},
        {"id": "corrupt", "source": "images/corrupt.png", "instruction": "x"},
        {"id": "text-to-image", "instruction": "a red chair in a bright studio", "seed": 5},
        {"id": "blank-instruction", "source": "images/red.png", "instruction": "  "},
        {"id": "bad-seed", "source": "images/red.png", "instruction": "x", "seed": "seven"},
        {"id": "../escape", "source": "images/red.png", "instruction": "x"},
        {"id": DUPLICATE_ID, "source": "images/blue.jpg", "instruction": "second use of an id"},
    ]
    return [json.dumps(row) for row in rows] + [NOT_JSON_LINE]


@dataclass
class Case:
    spec_path: Path
    output: str
    rows: int  # manifest rows, the not-JSON line included


def write_case(
    directory: Path,
    output: str,
    manifest_dir: str,
    put: Callable[[str, bytes], None],
    extra: dict | None = None,
) -> Case:
    """Write sources + manifest with ``put(relative_name, data)`` and a job spec into ``directory``."""
    for name, data in source_files().items():
        put(name, data)
    lines = manifest_lines()
    put("manifest.jsonl", ("\n".join(lines) + "\n").encode())
    spec = {
        "name": "e2e",
        "manifest": f"{manifest_dir}/manifest.jsonl",
        "output": output,
        "painter": {
            "checkpoint": "tiny",
            "t2i_checkpoint": "tiny",
            "steps": 3,
            "resolution": 64,
            "batch_size": 2,
        },
    }
    for section, values in (extra or {}).items():
        if isinstance(values, dict):
            spec.setdefault(section, {}).update(values)
        else:
            spec[section] = values
    spec_path = directory / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    return Case(spec_path=spec_path, output=output, rows=len(lines))


def local_case(directory: Path, **extra) -> Case:
    """``write_case`` on the local filesystem: sources, manifest and spec in ``directory``, output in ``out``."""
    directory.mkdir(parents=True, exist_ok=True)

    def put(name: str, data: bytes) -> None:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return write_case(directory, str(directory / "out"), str(directory), put, extra or None)


def check_statuses(table: pa.Table, painter_kind: str = "dim") -> None:
    """Every manifest row once, with the expected status / stage / error (painted by ``painter_kind``)."""
    rows = table.to_pylist()
    assert len(rows) == len(manifest_lines())
    by_id: dict[str | None, list[dict]] = {}
    for row in rows:
        by_id.setdefault(row["id"], []).append(row)
    for row_id, (status, stage, fragment) in EXPECTED.items():
        if row_id == DUPLICATE_ID:
            continue
        (row,) = by_id[row_id]
        assert (row["status"], row["error_stage"]) == (status, stage), row
        if fragment:
            assert fragment in row["error"], row["error"]
    first, second = sorted(by_id[DUPLICATE_ID], key=lambda r: r["status"] != "ok")
    assert first["status"] == "ok" and first["source_uri"].endswith("red.png")
    assert second["status"] == "failed" and second["error_stage"] == "validate"
    assert "duplicate id" in second["error"]
    not_json = [r for r in rows if r["error"] and "JSON" in r["error"] and r["id"] is None]
    assert len(not_json) == 1 and not_json[0]["status"] == "failed"
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 6
    for row in ok:
        assert row["width"] == row["height"] == 64
        assert row["painter"] and row["checkpoint_sha256"] and row["render_key"]
        assert row["output_uri"].endswith(f"images/{row['id']}/{row['render_key'][:16]}.png")
        assert row["blueprint"] == row["instruction"] and row["designer"] == "none"
    # The painter's weights license, on every row whose mode is known (ok and failed alike): the tiny presets'.
    for row in rows:
        assert row["painter_license"] == ("apache-2.0" if row["mode"] else None), row
    assert {r["status"] for r in rows if r["painter_license"]} == {"ok", "failed"}
    t2i = by_id["text-to-image"][0]
    assert t2i["mode"] == "t2i" and t2i["source_uri"] is None and t2i["painter"] == f"{painter_kind}:tiny-t2i"
    assert {r["mode"] for r in ok if r["id"] != "text-to-image"} == {"edit"}
    assert len({r["checkpoint_sha256"] for r in ok}) == 2  # one edit and one t2i checkpoint
    rotated = by_id["rotated-exif"][0]
    assert (rotated["source_width"], rotated["source_height"]) == (48, 40)  # EXIF orientation applied
    assert by_id["blue-jpg"][0]["seed"] == 233  # painter.seed default
    assert json.loads(by_id["same-source-other-seed"][0]["metadata"]) == {"sku": "R-1"}


def run_case(case) -> tuple[dict, pa.Table, str]:
    """Run ``case`` through the CLI, the way users start it, expecting success: its run record, its
    provenance table and what the console printed."""
    import contextlib

    from pipeline import cli
    from pipeline.run import read_provenance

    console = io.StringIO()
    with contextlib.redirect_stderr(console):
        exit_code = cli.main(["run", str(case.spec_path), "--no-progress"])
    assert exit_code == cli.EXIT_OK, console.getvalue()
    (record_path,) = (Path(case.output) / "runs").glob("*.json")
    record = json.loads(record_path.read_text())
    return record, read_provenance(case.output, record["run_id"]), console.getvalue()


def check_kind_end_to_end(directory: Path, kind: str, guidance_scale: float) -> None:
    """The shared manifest through painter ``kind``'s tiny checkpoints (2 steps) by the CLI on the embedded
    runner: every row's status, the kind's painter names, the kind's default guidance, apache-2.0 licenses,
    output bytes matching their recorded sha256."""
    import hashlib

    from apache_beam.io.filesystems import FileSystems

    case = local_case(directory, painter={"kind": kind, "steps": 2})
    record, table, _console = run_case(case)
    check_statuses(table, painter_kind=kind)  # painter_license apache-2.0 on every row whose mode is known
    ok = [row for row in table.to_pylist() if row["status"] == "ok"]
    assert {row["painter"] for row in ok if row["mode"] == "edit"} == {f"{kind}:tiny-edit"}
    assert {(row["guidance_scale"], row["steps"], row["dtype"], row["device"]) for row in ok} == {
        (guidance_scale, 2, "float32", "cpu")
    }
    for row in ok:
        with FileSystems.open(row["output_uri"]) as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == row["output_sha256"]
    assert record["spec"]["painter"]["kind"] == kind
