"""Hostile manifests: every record is accounted for (one row each, none vanish), reading is bounded,
whole-file problems are refused before a run, and ``validate`` says exactly what the pipeline does.

Every payload is made here, in tmp_path. Classes: CSV quoting and field counts, delimiters, encodings,
compression (truncated, corrupt, misnamed), non-regular files, bounds (row size, file size, gzip bomb),
deep nesting; then validate == pipeline (Beam, and one end-to-end ``dimflow run``).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import lzma
import os
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
import zstandard
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipeline import cli
from pipeline.run import read_provenance
from transforms.manifest import (
    ManifestLimits,
    ManifestRefused,
    ReadManifest,
    RowOutcome,
    ValidateRows,
    match_manifest,
    read_rows,
    row_outcomes,
    validate_manifest,
)
from transforms.records import STAGE_READ, STAGE_VALIDATE

REPO = Path(__file__).resolve().parents[1]


def row(i: int | str, **extra) -> bytes:
    return json.dumps({"id": f"r{i}", "instruction": f"edit {i}", **extra}).encode()


def jsonl(count: int, start: int = 0) -> bytes:
    return b"".join(row(i) + b"\n" for i in range(start, start + count))


def csv_rows(count: int, delimiter: str = ",") -> bytes:
    lines = [f"id{delimiter}instruction"] + [f"r{i}{delimiter}edit {i}" for i in range(count)]
    return ("\n".join(lines) + "\n").encode()


def json_array(count: int) -> bytes:
    return b"[\n" + b",\n".join(row(i) for i in range(count)) + b"\n]\n"


def outcomes(pattern: str | Path, limits: ManifestLimits | None = None) -> list[RowOutcome]:
    return list(row_outcomes(str(pattern), limits))


def summary(pattern: str | Path, limits: ManifestLimits | None = None) -> list[tuple[int, str | None, bool]]:
    """(row, id, valid) per row."""
    return [(o.ref.index, o.id, o.error is None) for o in outcomes(pattern, limits)]


def refusal(pattern: str | Path, limits: ManifestLimits | None = None) -> str:
    with pytest.raises(ManifestRefused) as caught:
        validate_manifest(str(pattern), limits)
    return str(caught.value)


# --- CSV: one record per physical line ------------------------------------------------------------


def test_csv_quotes_and_field_counts_fail_their_own_line_only(tmp_path):
    lines = [
        "id,instruction,seed",
        '"r1,make it blue,1',  # quote opened in the first column
        'r2,"make it red,2',  # ... in the middle column
        'r3,paint it,"3',  # ... in the last column
        'r4,"a quote that closes',  # ... and "closes" on the next line, which is its own record
        'r5,on the next line",5',
        "r6,too,many,fields",
        "r7,too few",
        "",  # blank: skipped, keeps the numbering
        'r8,"quoted, with a comma and ""doubled"" quotes",8',
        'r9,"closed"early,9',
    ]
    path = tmp_path / "quotes.csv"
    path.write_text("\n".join(lines) + "\n")
    got = {o.ref.index: o for o in outcomes(path)}
    assert sorted(got) == [1, 2, 3, 4, 5, 6, 7, 9, 10]  # one row per data line; row N is line N+1
    assert {n for n, o in got.items() if o.error is None} == {5, 9}
    never_closed = "is never closed on this line; dimflow reads CSV one record per line: put multi-line"
    for index, column in ((1, 1), (2, 4), (3, 13), (4, 4)):
        assert got[index].error == (
            f"{path} row {index}: line {index + 1}: a quoted field opened at column {column} {never_closed} "
            "instructions in JSONL"
        )
    assert got[5].id == "r5"  # the line after an unclosed quote parses on its own
    assert got[6].error.endswith(
        "line 7: has 1 more field(s) than the header (4, not 3; an unquoted ',' inside a value?)"
    )
    assert got[7].error.endswith("line 8: has 1 fewer field(s) than the header (2, not 3; a missing field?)")
    assert got[10].error.startswith(f"{path} row 10: line 11: the quoted field opened at column 4 closes")
    (valid,) = [r for r in read_rows(str(path)) if r.ref.index == 9]
    assert valid.data == {"id": "r8", "instruction": 'quoted, with a comma and "doubled" quotes', "seed": "8"}


@pytest.mark.parametrize(("delimiter", "bom"), [(";", False), ("\t", False), ("|", True), (",", True)])
def test_csv_delimiter_is_detected_from_the_header(tmp_path, delimiter, bom):
    d = delimiter
    text = f"key{d}prompt{d}extra\r\na{d}make it blue, then green{d}\r\nb{d}x{d}y\r\n"
    path = tmp_path / "m.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    if d == ",":  # a comma inside an unquoted value is a field too many, as it must be
        assert summary(path) == [(1, None, False), (2, "b", True)]
        return
    assert summary(path) == [(1, "a", True), (2, "b", True)]
    first = next(read_rows(str(path)))
    assert first.data["prompt"] == "make it blue, then green"


@pytest.mark.parametrize(
    "header",
    ["name,instruction", "id;text", "identifier\tprompt", "", "instruction"],
)
def test_csv_header_without_needed_columns_refuses_the_file(tmp_path, header):
    path = tmp_path / "m.csv"
    path.write_text(header + ("\n" if header else "") + ("a,b\n" if header else ""))
    message = refusal(path)
    assert message.startswith(f"manifest file {path}: ")
    if header:
        shown = ", ".join(repr(c) for c in header.split(","))
        assert f"has columns [{shown}]" in message and "needs an id column ('id' or 'key')" in message
    else:
        assert "no header line" in message


def test_csv_header_naming_a_column_twice_is_refused(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,instruction,id\na,x,b\n")
    assert "names column 'id' more than once" in refusal(path)


# --- encodings -----------------------------------------------------------------------------------


WIDE = [
    ("utf-16-le", b"\xff\xfe", "UTF-16 LE", "UTF-16"),
    ("utf-16-be", b"\xfe\xff", "UTF-16 BE", "UTF-16"),
    ("utf-16-le", b"", "UTF-16 LE", "UTF-16LE"),
    ("utf-16-be", b"", "UTF-16 BE", "UTF-16BE"),
    ("utf-32-le", b"\xff\xfe\x00\x00", "UTF-32 LE", "UTF-32"),
    ("utf-32-be", b"\x00\x00\xfe\xff", "UTF-32 BE", "UTF-32"),
    ("utf-32-le", b"", "UTF-32 LE", "UTF-32LE"),
]


@pytest.mark.parametrize(("codec", "bom", "name", "iconv"), WIDE)
@pytest.mark.parametrize("kind", ["jsonl", "csv", "json.gz"])
def test_wide_encodings_refuse_the_file_naming_encoding_and_fix(tmp_path, codec, bom, name, iconv, kind):
    text = csv_rows(3).decode() if kind == "csv" else jsonl(3).decode()
    data = bom + text.encode(codec)
    path = tmp_path / f"m.{kind}"
    path.write_bytes(gzip.compress(data) if kind.endswith(".gz") else data)
    message = refusal(path)
    assert message.startswith(f"manifest file {path}: it is {name} encoded")
    assert f"iconv -f {iconv} -t UTF-8 m.{kind}" in message


def test_invalid_utf8_on_one_line_fails_that_line_only(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(row(1) + b"\n" + b'{"id": "bad", "instruction": "caf\xe9"}\n' + row(3) + b"\n")
    got = outcomes(path)
    assert [(o.ref.index, o.error is None) for o in got] == [(1, True), (2, False), (3, True)]
    assert got[1].error.startswith(f"{path} row 2: not valid UTF-8 (invalid continuation byte at byte ")


# --- compression ---------------------------------------------------------------------------------


COMPRESSIONS: dict[str, Callable[[bytes], bytes]] = {
    "gz": gzip.compress,
    "bz2": lambda data: bz2.compress(data, compresslevel=1),  # 100 kB blocks: a cut keeps whole blocks
    "xz": lzma.compress,
    "zst": lambda data: zstandard.ZstdCompressor().compress(data),
    "deflate": zlib.compress,
}


def noisy_rows(count: int, kind: str) -> bytes:
    """Rows that do not compress to nothing, so a cut halfway through the file is mid-data."""
    import random

    rng = random.Random(7)
    words = [f"{rng.getrandbits(64):x}" for i in range(count)]
    if kind == "csv":
        return ("id,instruction\n" + "".join(f"r{i},edit {w}\n" for i, w in enumerate(words))).encode()
    rows = [json.dumps({"id": f"r{i}", "instruction": f"edit {w}"}) for i, w in enumerate(words)]
    if kind == "json":
        return ("[" + ",\n".join(rows) + "]").encode()
    return ("\n".join(rows) + "\n").encode()


@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
@pytest.mark.parametrize("kind", ["jsonl", "csv", "json"])
def test_truncated_stream_keeps_good_rows_then_fails_once(tmp_path, compression, kind):
    data = COMPRESSIONS[compression](noisy_rows(30_000, kind))
    path = tmp_path / f"m.{kind}.{compression}"
    path.write_bytes(data[: len(data) * 6 // 10])
    got = outcomes(path)
    *good, last = got
    assert good and all(o.error is None for o in good)
    assert [o.id for o in good] == [f"r{i}" for i in range(len(good))]  # in order, nothing invented
    unit, position = ("element", len(good)) if kind == "json" else ("line", last.ref.index - 1)
    if kind == "csv":
        position = last.ref.index  # row N is line N+1: truncated after line N
    assert last.ref.index == len(good) + 1
    assert last.error == (
        f"{path} row {last.ref.index}: the {compressed_name(compression)} stream is truncated after "
        f"{unit} {position}; rows from here on cannot be read"
    )


def compressed_name(extension: str) -> str:
    return {"gz": "gzip", "bz2": "bzip2", "xz": "xz/lzma", "zst": "zstd", "deflate": "deflate (zlib)"}[
        extension
    ]


@pytest.mark.parametrize("kind", ["jsonl", "csv", "json"])
def test_corrupt_gzip_fails_once_at_the_corruption(tmp_path, kind):
    good = noisy_rows(50, kind)
    # A damaged CRC: every row decodes, then the check fails at the end of the member.
    bad_crc = bytearray(gzip.compress(good))
    bad_crc[-8] ^= 0xFF
    (tmp_path / f"crc.{kind}.gz").write_bytes(bytes(bad_crc))
    got = outcomes(tmp_path / f"crc.{kind}.gz")
    assert len(got) == 51 and all(o.error is None for o in got[:50])
    assert "the gzip stream is corrupt (CRC check failed" in got[50].error
    assert got[50].error.endswith("; rows from here on cannot be read")
    # Junk between two members: the first member's rows, then one failed row; the second is not read.
    if kind == "jsonl":
        (tmp_path / "junk.jsonl.gz").write_bytes(
            gzip.compress(jsonl(5)) + b"junk" * 10 + gzip.compress(jsonl(5, 5))
        )
        got = outcomes(tmp_path / "junk.jsonl.gz")
        assert [(o.ref.index, o.error is None) for o in got] == [(i, True) for i in range(1, 6)] + [
            (6, False)
        ]
        assert (
            "the gzip stream is corrupt (Not a gzipped file" in got[5].error
            and "after line 5" in got[5].error
        )


def test_concatenated_members_and_frames_are_read_whole(tmp_path):
    for extension, compress in COMPRESSIONS.items():
        path = tmp_path / f"m.jsonl.{extension}"
        path.write_bytes(compress(jsonl(3)) + compress(jsonl(3, 3)))
        assert summary(path) == [(i + 1, f"r{i}", True) for i in range(6)], extension


@pytest.mark.parametrize(
    ("name", "data", "fragment"),
    [
        (
            "plain.jsonl.gz",
            jsonl(2),
            'its name says gzip but it is not gzip-compressed (it starts with b\'{"id": "r0"',
        ),
        (
            "plain.csv.bz2",
            csv_rows(2),
            "its name says bzip2 but it is not bzip2-compressed (it starts with b'id,",
        ),
        ("plain.jsonl.xz", jsonl(2), "its name says xz/lzma but it is not xz/lzma-compressed"),
        ("plain.jsonl.zst", jsonl(2), "its name says zstd but it is not zstd-compressed"),
        ("plain.jsonl.deflate", jsonl(2), "its name says deflate (zlib) but it is not"),
        (
            "bz.jsonl.gz",
            bz2.compress(jsonl(2)),
            "its name says gzip but it is not gzip-compressed (it is bzip2-compressed)",
        ),
        ("empty.jsonl.gz", b"", "(it is empty)"),
        (
            "zipped.jsonl",
            gzip.compress(jsonl(2)),
            "its content is gzip-compressed but its name has no compression",
        ),
        ("notparquet.parquet", jsonl(2), "not a Parquet file"),
        (
            "header.csv.gz",
            gzip.compress(b"id,instruct")[:15],
            "the gzip stream is truncated before the end of the CSV header",
        ),
    ],
)
def test_mismatched_compression_refuses_the_file(tmp_path, name, data, fragment):
    path = tmp_path / name
    path.write_bytes(data)
    message = refusal(path)
    assert message.startswith(f"manifest file {path}: ") and fragment in message, message


@pytest.mark.timeout(60)  # opening a FIFO for reading blocks: a hang is the failure
def test_fifo_is_refused_without_being_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.jsonl")
    assert "is a named pipe, not a regular file" in refusal(tmp_path / "pipe.jsonl")


# --- bounds --------------------------------------------------------------------------------------


def test_overlong_records_fail_alone_and_reading_goes_on(tmp_path):
    limits = ManifestLimits(max_row_bytes=200)
    long_value = "y" * 500
    (tmp_path / "a.jsonl").write_bytes(row(1) + b"\n" + row(2, note=long_value) + b"\n" + row(3) + b"\n")
    (tmp_path / "b.csv").write_text(f"id,instruction\nc1,x\nc2,{long_value}\nc3,z\n")
    (tmp_path / "c.json").write_bytes(b"[" + row(1) + b"," + row(2, note=long_value) + b"," + row(3) + b"]")
    pq.write_table(
        pa.table({"id": ["p1", "p2", "p3"], "instruction": ["x", long_value, "z"]}), tmp_path / "d.parquet"
    )
    for name, unit in (("a.jsonl", "line"), ("b.csv", "line"), ("c.json", "element"), ("d.parquet", "row")):
        got = outcomes(tmp_path / name, limits)
        assert [(o.ref.index, o.error is None) for o in got] == [(1, True), (2, False), (3, True)], name
        assert f"{unit} is over limits.max_row_bytes=200" in got[1].error, got[1].error


def test_manifest_over_max_manifest_bytes_fails_once_where_it_stops(tmp_path):
    limits = ManifestLimits(max_manifest_bytes=1000)
    data = jsonl(100)
    (tmp_path / "a.jsonl").write_bytes(data)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "c.csv").write_bytes(csv_rows(100))
    (tmp_path / "d.json").write_bytes(json_array(100))
    pq.write_table(
        pa.table({"id": [f"p{i}" for i in range(100)], "instruction": ["x"] * 100}), tmp_path / "e.parquet"
    )
    for name in ("a.jsonl", "b.jsonl.gz", "c.csv", "d.json", "e.parquet"):
        *good, last = outcomes(tmp_path / name, limits)
        assert 10 < len(good) < 100 and all(o.error is None for o in good), name
        assert last.ref.index == len(good) + 1
        assert "is over limits.max_manifest_bytes=1000" in last.error
        assert last.error.endswith("the rest of the file is not read")


def write_gzip_bomb(path: Path, line_bytes: int, **extra) -> None:
    """A good row, one line of ``line_bytes`` compressed to almost nothing, a good row; built streaming."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"a" * (1 << 20)
    with path.open("wb") as handle:
        handle.write(compressor.compress(row("bomb-before", **extra) + b'\n{"id": "bomb", "instruction": "'))
        for _ in range(line_bytes // len(block)):
            handle.write(compressor.compress(block))
        handle.write(compressor.compress(b'"}\n' + row("bomb-after", **extra) + b"\n"))
        handle.write(compressor.flush())


@pytest.mark.timeout(300)
def test_gzip_bomb_line_fails_and_memory_stays_bounded(tmp_path):
    path = tmp_path / "bomb.jsonl.gz"
    write_gzip_bomb(path, 256 << 20)
    assert path.stat().st_size < 400_000
    child = textwrap.dedent(
        """
        import json, sys
        from transforms.manifest import row_outcomes
        print(json.dumps([[o.ref.index, o.error] for o in row_outcomes(sys.argv[1])]))
        """
    )
    # The wrapper's only child is the reader, so RUSAGE_CHILDREN is that reader's peak.
    wrapper = textwrap.dedent(
        """
        import resource, subprocess, sys
        done = subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]], capture_output=True, text=True)
        sys.stderr.write(done.stderr)
        print(done.stdout.strip())
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", wrapper, child, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows_json, peak_kib = done.stdout.strip().splitlines()
    rows = json.loads(rows_json)
    assert [index for index, _ in rows] == [1, 2, 3]
    assert rows[0][1] is None and rows[2][1] is None
    assert "line is over limits.max_row_bytes=1048576 (268435" in rows[1][1]
    assert int(peak_kib) < 400 * 1024, f"peak RSS {int(peak_kib) // 1024} MiB"


# --- nesting -------------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def test_deep_nesting_fails_before_any_parser_recurses(tmp_path):
    limits = ManifestLimits(max_nesting=32)
    lines = [
        row(1),
        b'{"id":"deep-line","instruction":"x","metadata":' + nested(300).encode() + b"}",
        b"[" * 100_000,  # far past Python's recursion limit
        b'{"id":"meta-ok","instruction":"x","metadata":' + nested(31).encode() + b"}",  # 32 levels: the bound
        b'{"id":"meta-over","instruction":"x","metadata":' + nested(32).encode() + b"}",
        b'{"id":"in-string","instruction":"' + b"[{" * 500 + b'"}',  # brackets in a string do not count
    ]
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    meta = nested(300).replace('"', '""')
    (tmp_path / "b.csv").write_text(f'id,instruction,metadata\nc1,x,"{meta}"\nc2,x,"{{""k"": 1}}"\n')
    (tmp_path / "c.json").write_bytes(
        b"[" + row("j1") + b"," + b"[" * 50_000 + b"]" * 50_000 + b"," + row("j3") + b"]"
    )
    deep_struct = 1
    for _ in range(40):
        deep_struct = {"a": deep_struct}
    pq.write_table(
        pa.table({"id": ["p1", "p2"], "instruction": ["x", "y"], "metadata": [deep_struct, None]}),
        tmp_path / "d.parquet",
    )
    got = {(Path(o.ref.file).name, o.ref.index): o for o in outcomes(tmp_path / "*", limits)}
    valid = {key for key, o in got.items() if o.error is None}
    assert valid == {
        ("a.jsonl", 1),
        ("a.jsonl", 4),
        ("a.jsonl", 6),
        ("b.csv", 2),
        ("c.json", 1),
        ("c.json", 3),
        ("d.parquet", 2),
    }
    over = "nests objects/arrays {} levels deep, over limits.max_nesting=32"
    assert got["a.jsonl", 2].error.endswith(over.format(301)) and got["a.jsonl", 2].problems[0].field is None
    assert got["a.jsonl", 3].error.endswith(over.format(100_000))
    assert got["a.jsonl", 5].error.endswith(over.format(33))
    assert got["b.csv", 1].error == f"{tmp_path / 'b.csv'} row 1, field 'metadata': " + over.format(300)
    assert got["c.json", 2].error.endswith(over.format(50_000))
    assert got["d.parquet", 1].error.endswith(over.format(41))
    # Read failures carry no parsed data, so Beam never pickles a deep structure.
    raw = {(Path(r.ref.file).name, r.ref.index): r for r in read_rows(str(tmp_path / "*"), limits)}
    for key in (("a.jsonl", 2), ("a.jsonl", 3), ("a.jsonl", 5), ("c.json", 2), ("d.parquet", 1)):
        assert raw[key].data is None, key


def test_nesting_at_the_ceiling_passes_through_beam_and_above_it_is_refused(tmp_path):
    from pipeline.spec import LimitsSpec, SpecError, load_spec

    limits = ManifestLimits(max_nesting=100)
    line = b'{"id":"deep-ok","instruction":"x","metadata":' + nested(99).encode() + b"}"
    (tmp_path / "m.jsonl").write_bytes(line + b"\n")
    found = outcomes(tmp_path / "m.jsonl", limits)
    assert [o.error for o in found] == [None]
    pipeline_outcomes(str(tmp_path / "m.jsonl"), limits, as_tuples(found))  # pickled between stages
    with pytest.raises(ValueError, match="max_nesting must be at most 100"):
        ManifestLimits(max_nesting=101)
    assert LimitsSpec(max_nesting=100).manifest_limits().max_nesting == 100
    (tmp_path / "job.yaml").write_text(
        yaml.safe_dump({"name": "n", "manifest": "m.jsonl", "output": "o", "limits": {"max_nesting": 101}})
    )
    with pytest.raises(SpecError, match="limits.max_nesting"):
        load_spec(tmp_path / "job.yaml")


def test_numbers_too_long_for_python_fail_as_rows(tmp_path):
    digits = "1" * 5000  # int() refuses more than 4300 digits with a ValueError
    (tmp_path / "a.jsonl").write_text(
        f'{{"id": "j1", "instruction": "x", "seed": {digits}}}\n' + row(2).decode() + "\n"
    )
    (tmp_path / "b.csv").write_text(
        f'id,instruction,seed,metadata\nc1,x,{digits},\nc2,x,1,"{{""k"": {digits}}}"\nc3,x,,\n'
    )
    got = {(Path(o.ref.file).name, o.ref.index): o.error for o in outcomes(tmp_path / "*")}
    assert got["a.jsonl", 1].endswith(
        "not valid JSON (Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits)"
    )
    assert "field 'seed': must be an integer from 0 to 9223372036854775807, got '1111" in got["b.csv", 1]
    assert (
        "field 'metadata': must be a JSON object, got text that is not JSON (Exceeds the limit"
        in got["b.csv", 2]
    )
    assert got["a.jsonl", 2] is None and got["b.csv", 3] is None


# --- validate == pipeline ------------------------------------------------------------------------


HOSTILE_LIMITS = ManifestLimits(max_row_bytes=4096, max_nesting=16, max_instruction_chars=100)


def write_hostile_rows(folder: Path, prefix: str = "") -> int:
    """Row-level hostile files (none refused as a whole); returns how many records they hold."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "quotes.csv").write_text(
        'id,instruction,source\nq1,"never closed,img.png\nq2,fine,img.png\nq3,x,img.png,extra\n'
        'q4,"a, b ""c""",img.png\n\nq5\n'
    )  # 6 data lines (one blank)
    meta = nested(20).replace('"', '""')  # within the default max_nesting, over HOSTILE_LIMITS'
    (folder / "meta.csv").write_text(
        f'id,instruction,source,metadata\nm1,x,img.png,"{meta}"\nm2,{"long " * 30},img.png,\n'
    )
    (folder / "semi.csv").write_text(
        "key;prompt;image_path\ns1;make it blue, then red;img.png\ns2;x;img.png\n"
    )
    data = noisy_rows(120, "jsonl").replace(b'"}', b'", "source": "img.png"}')
    compressed = gzip.compress(data)
    (folder / "cut.jsonl.gz").write_bytes(compressed[: len(compressed) // 2])
    lines = [
        row("d1", source="img.png"),
        b'{"id":"d2","instruction":"x","metadata":' + nested(40).encode() + b"}",
        row("d3", note="z" * 5000),  # over max_row_bytes
        b"{not json",
        row("d1", source="img.png"),  # duplicate id
        b"\xff\xfe bad utf-8",
    ]
    (folder / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "arr.json").write_bytes(
        b"["
        + row("a1", source="img.png")
        + b", 5, "
        + b"[" * 40
        + b"]" * 40
        + b", "
        + row("a2", source="img.png")
    )  # no closing ']'
    write_gzip_bomb(folder / "bomb.jsonl.gz", 8 << 20, source="img.png")
    cut_lines = sum(1 for o in row_outcomes(str(folder / "cut.jsonl.gz"), HOSTILE_LIMITS))
    return 5 + 2 + 2 + cut_lines + 6 + (4 + 1) + 3


def pipeline_outcomes(
    pattern: str, limits: ManifestLimits, expected: list[tuple], check_exists: bool = True
) -> None:
    """Run ReadManifest | ValidateRows and assert its (file, row, id, error) equal ``expected``."""
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        result = pipeline | ReadManifest(pattern, limits, check_exists=check_exists) | ValidateRows(limits)
        valid = result.valid | "Valid" >> beam.Map(lambda r: (r.ref.file, r.ref.index, r.id, None))
        failed = result.failed | "Failed" >> beam.Map(lambda f: (f.ref.file, f.ref.index, f.id, f.error))
        assert_that((valid, failed) | beam.Flatten(), equal_to(expected))


def as_tuples(found: list[RowOutcome]) -> list[tuple]:
    return [(o.ref.file, o.ref.index, o.id, o.error) for o in found]


def test_validate_reports_exactly_what_the_pipeline_does(tmp_path):
    total = write_hostile_rows(tmp_path)
    pattern = str(tmp_path / "*")
    found = outcomes(pattern, HOSTILE_LIMITS)
    assert len(found) == total  # every record accounted for
    stages = {
        o.ref: (STAGE_READ if o.problems and o.problems[0].field is None else STAGE_VALIDATE) for o in found
    }
    assert STAGE_READ in stages.values() and STAGE_VALIDATE in stages.values()
    by_row = {(Path(o.ref.file).name, o.ref.index): o.error for o in found}
    assert (
        "field 'metadata': nests objects/arrays 20 levels deep, over limits.max_nesting=16"
        in by_row["meta.csv", 1]
    )
    assert "over limits.max_instruction_chars=100" in by_row["meta.csv", 2]
    pipeline_outcomes(pattern, HOSTILE_LIMITS, as_tuples(found))


REFUSED: dict[str, bytes] = {
    "utf16.jsonl": "\ufeff".encode("utf-16-le") + jsonl(2).decode().encode("utf-16-le"),
    "utf32.csv": csv_rows(2).decode().encode("utf-32"),
    "noid.csv": b"name;instruction\nx;y\n",
    "plain.jsonl.gz": jsonl(2),
    "text.csv.bz2": csv_rows(2),
}


def test_refused_files_refuse_validate_and_run_alike_and_fail_as_row_zero_at_run_time(tmp_path):
    (tmp_path / "good.jsonl").write_bytes(jsonl(2))
    reasons = {}
    for name, data in REFUSED.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ManifestRefused) as caught:
            validate_manifest(str(tmp_path / name))
        with pytest.raises(ManifestRefused) as built:  # building the pipeline refuses the same way
            _ = beam.Pipeline(runner="FnApiRunner") | ReadManifest(str(tmp_path / name))
        assert str(built.value) == str(caught.value)
        assert "\n" not in str(caught.value)
        reasons[str(tmp_path / name)] = caught.value.reason
    os.mkfifo(tmp_path / "pipe.jsonl")
    reasons[str(tmp_path / "pipe.jsonl")] = match_refusal(tmp_path / "pipe.jsonl").reason
    with pytest.raises(ManifestRefused, match=r"\(and 5 more refused file\(s\)\)"):
        match_manifest(str(tmp_path / "*"))
    # Files that appear only at run time (no check when the pipeline is built): one row 0 each.
    expected = [(path, 0, None, f"{path} row 0: {reason}") for path, reason in reasons.items()]
    good = str(tmp_path / "good.jsonl")
    expected += [(good, 1, "r0", None), (good, 2, "r1", None)]
    pipeline_outcomes(str(tmp_path / "*"), ManifestLimits(), expected, check_exists=False)


def match_refusal(path: Path) -> ManifestRefused:
    with pytest.raises(ManifestRefused) as caught:
        match_manifest(str(path))
    return caught.value


# --- the command line ----------------------------------------------------------------------------


def run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
        code = cli.main(argv)
    return code, out.getvalue()


def test_validate_takes_manifest_and_every_limit_from_the_spec(tmp_path):
    (tmp_path / "images").mkdir()
    lines = [
        row(1, source="images/a.png"),
        row(2, source="/elsewhere/b.png"),  # outside limits.source_roots
        row(3, note="x" * 300),  # over limits.max_row_bytes
        b'{"id":"r4","instruction":"x","metadata":' + nested(10).encode() + b"}",  # over limits.max_nesting
        json.dumps({"id": "r5", "instruction": "y" * 60}).encode(),  # over limits.max_instruction_chars
    ]
    (tmp_path / "m.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    spec = {
        "name": "v",
        "manifest": "m.jsonl",
        "output": "out",
        "painter": {"t2i_checkpoint": "tiny"},  # r4 and r5 have no source: the job must paint them
        "limits": {
            "source_roots": ["images"],
            "max_row_bytes": 200,
            "max_nesting": 8,
            "max_instruction_chars": 50,
        },
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    code, text = run_cli(["validate", "--spec", str(tmp_path / "job.yaml")])
    assert code == cli.EXIT_BAD_INPUT
    assert "m.jsonl: 5 rows, 1 valid, 4 with problems" in text
    for fragment in (
        "outside limits.source_roots",
        "max_row_bytes=200",
        "max_nesting=8",
        "max_instruction_chars=50",
    ):
        assert fragment in text, fragment
    # The flag still overrides one limit; without --spec the defaults apply.
    code, text = run_cli(["validate", "--spec", str(tmp_path / "job.yaml"), "--max-instruction-chars", "100"])
    assert "2 valid, 3 with problems" in text
    code, text = run_cli(["validate", str(tmp_path / "m.jsonl"), "--max-instruction-chars", "40"])
    assert "5 rows, 4 valid, 1 with problems" in text  # r5 only (no roots; default row and nesting bounds)
    code, text = run_cli(["validate"])
    assert code == cli.EXIT_BAD_INPUT and "needs a manifest path or glob, or --spec" in text


@pytest.mark.slow
def test_validate_with_a_spec_checks_rows_as_the_job_will(tmp_path):
    Image.new("RGB", (16, 16), (10, 200, 30)).save(tmp_path / "green.png")
    (tmp_path / "out").mkdir()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(tmp_path / "out" / "old.png")
    rows = [
        {"id": "fine", "source": "green.png", "instruction": "x"},
        {"id": "t2i-without-checkpoint", "instruction": "a red chair"},
        {"id": "source-in-output", "source": "out/old.png", "instruction": "x"},
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "name": "j",
        "manifest": "m.jsonl",
        "output": "out",
        "painter": {"checkpoint": "tiny", "steps": 1, "resolution": 32},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    code, validated = run_cli(["validate", "--spec", str(tmp_path / "job.yaml")])
    assert code == cli.EXIT_BAD_INPUT and "3 rows, 1 valid, 2 with problems" in validated
    code, ran = run_cli(["run", str(tmp_path / "job.yaml"), "--no-progress"])
    assert code == cli.EXIT_OK, ran
    failed = {
        r["id"]: r["error"]
        for r in read_provenance(str(tmp_path / "out")).to_pylist()
        if r["status"] == "failed"
    }
    assert sorted(failed) == ["source-in-output", "t2i-without-checkpoint"]
    for error in failed.values():  # validate printed the run's own message for each
        message = error.split("field 'source': ", 1)[1]
        assert message[:60] in " ".join(validated.split()), message
    code, plain = run_cli(["validate", str(tmp_path / "m.jsonl")])  # without the job: manifest rules only
    assert code == cli.EXIT_OK and "3 rows, 3 valid" in plain


def test_validate_and_run_refuse_a_bad_file_with_the_same_line(tmp_path):
    (tmp_path / "good.jsonl").write_bytes(jsonl(2))
    (tmp_path / "bad.jsonl.gz").write_bytes(jsonl(2))
    spec = {"name": "r", "manifest": "*.jsonl*", "output": "out", "painter": {"checkpoint": "tiny"}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    code, validated = run_cli(["validate", "--spec", str(tmp_path / "job.yaml")])
    assert code == cli.EXIT_BAD_INPUT
    code, ran = run_cli(["run", str(tmp_path / "job.yaml"), "--no-progress"])
    assert code == cli.EXIT_BAD_INPUT
    line = (
        f"error: manifest file {tmp_path / 'bad.jsonl.gz'}: its name says gzip but it is not gzip-compressed"
    )
    assert [t for t in validated.splitlines() if t.startswith("error:")][0].startswith(line)
    assert [t for t in ran.splitlines() if t.startswith("error:")][0].startswith(line)
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.slow
def test_run_writes_one_provenance_row_per_record_as_validate_says(tmp_path):
    total = write_hostile_rows(tmp_path / "job")
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "job" / "img.png")
    limits = HOSTILE_LIMITS
    spec = {
        "name": "hostile-manifest",
        "manifest": "*.*s*",  # every manifest file, not img.png or job.yaml
        "output": "out",
        "painter": {"checkpoint": "tiny", "steps": 1, "resolution": 32, "batch_size": 8},
        "limits": {
            "max_row_bytes": limits.max_row_bytes,
            "max_nesting": limits.max_nesting,
            "max_instruction_chars": limits.max_instruction_chars,
        },
    }
    (tmp_path / "job" / "job.yaml").write_text(yaml.safe_dump(spec))
    assert sorted(p.name for p in (tmp_path / "job").glob(spec["manifest"])) == sorted(
        ["quotes.csv", "meta.csv", "semi.csv", "cut.jsonl.gz", "mixed.jsonl", "arr.json", "bomb.jsonl.gz"]
    )
    code, text = run_cli(["run", str(tmp_path / "job" / "job.yaml"), "--no-progress"])
    assert code == cli.EXIT_OK, text[-3000:]
    rows = read_provenance(str(tmp_path / "job" / "out")).to_pylist()
    found = outcomes(tmp_path / "job" / spec["manifest"], limits)
    assert len(rows) == len(found) == total
    # Rows that failed before becoming records: the same errors, row for row.
    early = sorted(
        (r["error"], r["error_stage"]) for r in rows if r["status"] == "failed" and r["instruction"] is None
    )
    expected = sorted(
        (o.error, STAGE_READ if o.problems[0].field is None else STAGE_VALIDATE) for o in found if o.error
    )
    assert early == expected
    # Rows validate calls valid were painted (a small source image, the tiny painter).
    assert sorted(r["id"] for r in rows if r["status"] == "ok") == sorted(
        o.id for o in found if o.error is None
    )
    assert "validate" in {r["error_stage"] for r in rows} and "read" in {r["error_stage"] for r in rows}
    code, text = run_cli(["validate", "--spec", str(tmp_path / "job" / "job.yaml")])
    assert f"{total} rows, {sum(o.error is None for o in found)} valid" in text
