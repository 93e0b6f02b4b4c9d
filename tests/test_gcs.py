"""gs:// offline: the emulator fake, and the manifest/image code reading and writing through it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import apache_beam as beam
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from tests.fakes.gcs import DEFAULT_BUCKET, download, gcs_emulator, list_names, upload
from transforms.images import decode_image, write_output
from transforms.manifest import ManifestLimits, ReadManifest, ValidateRows, validate_manifest
from transforms.sources import SourceError, read_bounded

BUCKET = DEFAULT_BUCKET


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    with gcs_emulator(tmp_path_factory.mktemp("gcs")) as env:
        yield env


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (7, 5), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_env_recipe(gcs):
    assert set(gcs) == {
        "STORAGE_EMULATOR_HOST",
        "NO_GCE_CHECK",
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_APPLICATION_CREDENTIALS",
    }
    assert gcs["STORAGE_EMULATOR_HOST"].startswith("http://127.0.0.1:")
    adc = json.loads(open(gcs["GOOGLE_APPLICATION_CREDENTIALS"]).read())
    assert adc["type"] == "authorized_user" and adc["expiry"].startswith("2099")


def test_fresh_process_reads_gs_without_a_credentials_stall(gcs):
    upload(BUCKET, "stall/probe.txt", b"probe")
    code = textwrap.dedent(
        """
        import sys, time
        from apache_beam.io.filesystems import FileSystems
        start = time.perf_counter()
        with FileSystems.open(sys.argv[1]) as handle:
            data = handle.read()
        print(data.decode(), round(time.perf_counter() - start, 3))
        """
    )
    uri = f"gs://{BUCKET}/stall/probe.txt"
    done = subprocess.run(
        [sys.executable, "-c", code, uri], capture_output=True, text=True, timeout=120
    )  # env inherited
    assert done.returncode == 0, done.stderr[-2000:]
    text, seconds = done.stdout.split()
    assert text == "probe"
    assert float(seconds) < 5.0, f"gs:// open took {seconds}s: credentials lookup stalled?"


def test_read_manifest_from_gs(gcs):
    upload(BUCKET, "job/images/red.png", _png())
    rows = [
        {"id": "a", "instruction": "make it blue", "source": "images/red.png"},
        {"id": "b", "instruction": "a cat"},
        {"id": "a", "instruction": "again"},
    ]
    upload(BUCKET, "job/part-1.jsonl", ("\n".join(json.dumps(r) for r in rows) + "\n").encode())
    upload(BUCKET, "job/part-2.csv", b"key,prompt,image_path\nc,x,../job/images/red.png\n")
    pattern = f"gs://{BUCKET}/job/part-*"
    one = f"gs://{BUCKET}/job/part-1.jsonl"
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        result = pipeline | ReadManifest(pattern) | ValidateRows(ManifestLimits(max_instruction_chars=100))
        assert_that(
            result.valid | "Valid" >> beam.Map(lambda r: (r.id, r.source)),
            equal_to(
                [
                    ("a", f"gs://{BUCKET}/job/images/red.png"),
                    ("b", None),
                    ("c", f"gs://{BUCKET}/job/images/red.png"),
                ]
            ),
            label="valid",
        )
        assert_that(
            result.failed | "Failed" >> beam.Map(lambda f: f.error),
            equal_to([f"{one} row 3, field 'id': duplicate id 'a' (first at {one} row 1)"]),
            label="failed",
        )
    report = validate_manifest(pattern)
    assert (report.rows, report.valid, report.failed) == (4, 3, 1)


def test_read_manifest_gs_no_match(gcs):
    with pytest.raises(FileNotFoundError, match="matches no files"):
        validate_manifest(f"gs://{BUCKET}/absent/*.jsonl")


def test_read_bounded_on_gs(gcs):
    data = _png()
    uri = upload(BUCKET, "src/red.png", data)
    assert read_bounded(uri, len(data)) == data
    assert decode_image(read_bounded(uri, 10_000), max_pixels=100).size == (7, 5)
    with pytest.raises(
        SourceError, match=rf"source is {len(data)}\+ bytes, over limits.max_image_bytes={len(data) - 1}"
    ):
        read_bounded(uri, len(data) - 1)
    with pytest.raises(SourceError, match=f"source not found: gs://{BUCKET}/src/nope.png"):
        read_bounded(f"gs://{BUCKET}/src/nope.png", 100)


def test_write_output_to_gs(gcs):
    key = "fedcba9876543210" * 4
    uri = write_output(f"gs://{BUCKET}/out", "row-1", key, "png", b"image-bytes")
    assert uri == f"gs://{BUCKET}/out/images/row-1/fedcba9876543210.png"
    assert list_names(BUCKET, "out/") == ["out/images/row-1/fedcba9876543210.png"]  # no temp objects
    assert download(BUCKET, "out/images/row-1/fedcba9876543210.png") == b"image-bytes"
    assert FileSystems.exists(uri)


def test_emulator_as_a_child_process(tmp_path):
    with gcs_emulator(tmp_path, bucket="other-bucket", mode="process", patch_environ=False) as env:
        endpoint = env["STORAGE_EMULATOR_HOST"]
        upload("other-bucket", "x.txt", b"hello", endpoint=endpoint)
        assert download("other-bucket", "x.txt", endpoint=endpoint) == b"hello"
