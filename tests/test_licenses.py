"""Painter licenses: every known checkpoint's, the tiny presets', a local folder's (declared in the spec or
read from its model card, hostile cards included), and ``painter.require_commercial_license`` refusing a
job before any work, or letting it run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from pipeline import cli
from pipeline.preflight import PreflightError, check_painter_license, painter_licenses
from pipeline.spec import SpecError, load_spec
from transforms.painter import licenses
from transforms.painter.licenses import (
    APACHE_2,
    DIM_NON_COMMERCIAL,
    KINDS,
    KNOWN_CHECKPOINTS,
    MAX_CARD_BYTES,
    UNKNOWN,
    PainterLicense,
    painter_license,
    read_card_license,
)

DIM_IDS = ["stdKonjac/DIM-4.6B-Edit", "stdKonjac/DIM-4.6B-T2I", "stdKonjac/DIM-4.6B-Edit-Stage1"]
QWEN_IDS = [
    "Qwen/Qwen-Image-Edit-2511",
    "Qwen/Qwen-Image-Edit-2509",
    "Qwen/Qwen-Image-Edit",
    "Qwen/Qwen-Image",
]
LONGCAT_IDS = [
    "meituan-longcat/LongCat-Image-Edit",
    "meituan-longcat/LongCat-Image-Edit-Turbo",
    "meituan-longcat/LongCat-Image",
]


@pytest.mark.parametrize(
    ("kind", "checkpoint", "name", "commercial"),
    [
        *(("dim", c, DIM_NON_COMMERCIAL, False) for c in DIM_IDS),
        *(("qwen-image-edit", c, APACHE_2, True) for c in QWEN_IDS),
        *(("longcat-image-edit", c, APACHE_2, True) for c in LONGCAT_IDS),
    ],
)
def test_every_known_checkpoint_has_its_license(kind, checkpoint, name, commercial):
    found = painter_license(kind, checkpoint)
    assert (found.name, found.commercial_use) == (name, commercial)
    assert "https://" in found.source  # where the fact comes from
    assert KNOWN_CHECKPOINTS[checkpoint][0] == kind
    # The Hub matches ids case-insensitively: so does the table.
    assert painter_license(kind, checkpoint.lower()) == found


def test_the_table_holds_exactly_the_checkpoints_tested():
    assert set(KNOWN_CHECKPOINTS) == {*DIM_IDS, *QWEN_IDS, *LONGCAT_IDS}
    assert {kind for kind, _ in KNOWN_CHECKPOINTS.values()} == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_presets_carry_dimflows_own_license(kind):
    for name in ("tiny", f"tiny-{kind}"):
        found = painter_license(kind, name)
        assert (found.name, found.commercial_use) == (APACHE_2, True)
        assert "no third-party weights" in found.source and kind in found.source


def test_an_unknown_kind_is_refused_naming_it():
    with pytest.raises(ValueError, match="no license facts for painter kind 'flux'"):
        painter_license("flux", "tiny")


def test_something_that_is_no_checkpoint_is_unknown(tmp_path):
    for checkpoint in (str(tmp_path / "missing"), "gs://bucket/model", "not an id"):
        found = painter_license("dim", checkpoint)
        assert (found.name, found.commercial_use) == (UNKNOWN, None), checkpoint


def _card(folder: Path, text: str | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "README.md"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return folder


@pytest.mark.parametrize(
    ("front", "name", "commercial"),
    [
        ("license: apache-2.0", APACHE_2, True),
        ("license: Apache-2.0", APACHE_2, True),  # SPDX ids are case-insensitive
        ("license: mit\ntags: [x]", "mit", True),
        ("license: cc-by-nc-4.0", "cc-by-nc-4.0", False),
        ("license: cc-by-nc-sa-4.0", "cc-by-nc-sa-4.0", False),
        ("license: other\nlicense_name: qwen-research", "qwen-research", False),
        (
            "license: other\nlicense_name: flux-1-dev-non-commercial-license",
            "flux-1-dev-non-commercial-license",
            False,
        ),
        ("license: creativeml-openrail-m", "creativeml-openrail-m", None),  # known name, terms not judged
    ],
)
def test_a_folder_takes_its_model_cards_license(tmp_path, front, name, commercial):
    folder = _card(tmp_path / "fine-tune", f"---\n{front}\n---\n# A model\n")
    found = painter_license("dim", str(folder))
    assert (found.name, found.commercial_use) == (name, commercial)
    assert "README.md front matter" in found.source


def test_a_declared_license_wins_over_the_card_and_says_so(tmp_path):
    folder = _card(tmp_path / "fine-tune", "---\nlicense: cc-by-nc-4.0\n---\n")
    found = painter_license("qwen-image-edit", str(folder), declared=APACHE_2)
    assert found == PainterLicense(
        APACHE_2, True, "painter.license in the job spec (its model card says cc-by-nc-4.0)"
    )
    bare = painter_license("qwen-image-edit", str(tmp_path), declared="acme-internal")  # no card at all
    assert (bare.name, bare.commercial_use, bare.source) == (
        "acme-internal",
        None,
        "painter.license in the job spec",
    )


def test_a_known_checkpoint_or_preset_never_takes_a_declared_license(tmp_path):
    assert licenses.takes_declared_license("dim", str(tmp_path))
    assert licenses.takes_declared_license("dim", "someone/fine-tune")
    for kind, checkpoint in (
        ("dim", DIM_IDS[0]),
        ("dim", "tiny"),
        ("qwen-image-edit", "tiny-qwen-image-edit"),
    ):
        assert not licenses.takes_declared_license(kind, checkpoint)
    assert painter_license("dim", DIM_IDS[0], declared=APACHE_2).name == DIM_NON_COMMERCIAL


def test_an_hf_id_with_a_cached_card_takes_its_license(tmp_path, monkeypatch):
    """An HF id dimflow does not know: its card in the local HF cache (no network), else unknown."""
    from huggingface_hub import constants

    repo = tmp_path / "models--someone--fine-tune"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    _card(repo / "snapshots" / "abc123", "---\nlicense: apache-2.0\n---\n")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    found = painter_license("longcat-image-edit", "someone/fine-tune")
    assert (found.name, found.commercial_use) == (APACHE_2, True)
    assert "local HF cache" in found.source
    other = painter_license("longcat-image-edit", "someone/not-cached")
    assert (other.name, other.commercial_use) == (UNKNOWN, None)
    assert "painter.license" in other.source  # says how to declare it


def _hostile_cards(tmp_path: Path) -> dict[str, Path]:
    """Cards that must all read as unknown, each for its own reason."""
    cards = {
        "no front matter": "# Just a title\nlicense: apache-2.0\n",
        "unclosed front matter": "---\nlicense: apache-2.0\n" + "x: y\n" * 30,
        "front matter past the bound": "---\n" + "#" * (MAX_CARD_BYTES + 10) + "\nlicense: apache-2.0\n---\n",
        "huge, no front matter": "lorem ipsum " * (4 * MAX_CARD_BYTES),
        "binary": bytes(range(256)) * 1024,
        "NUL bytes": "---\nlicense: apache-2.0\n---\n".encode("utf-16"),
        "invalid YAML": "---\nlicense: [apache-2.0\n---\n",
        "deep nesting": "---\nlicense: " + "[" * 50_000 + "\n---\n",
        "no license field": "---\ntags: [a]\n---\n",
        "license a list": "---\nlicense: [apache-2.0, mit]\n---\n",
        "license a map": "---\nlicense: {name: apache-2.0}\n---\n",
        "license with spaces": "---\nlicense: apache 2.0 or whatever you like\n---\n",
        "license with control characters": '---\nlicense: "apache-2.0\\x1b[31m"\n---\n',
        "license too long": "---\nlicense: " + "a" * 200 + "\n---\n",
        "license other, no name": "---\nlicense: other\n---\n",
        "front matter not a map": "---\n- apache-2.0\n---\n",
    }
    return {reason: _card(tmp_path / f"card-{i}", text) for i, (reason, text) in enumerate(cards.items())}


def test_hostile_model_cards_read_as_unknown(tmp_path):
    for reason, folder in _hostile_cards(tmp_path).items():
        found = painter_license("dim", str(folder))
        assert (found.name, found.commercial_use) == (UNKNOWN, None), (reason, found)
        assert "painter.license" in found.source, reason


@pytest.mark.timeout(30)
def test_a_card_that_is_a_fifo_or_a_folder_is_not_read_and_never_blocks(tmp_path):
    fifo = tmp_path / "fifo-card"
    fifo.mkdir()
    os.mkfifo(fifo / "README.md")  # opening it for reading would block without O_NONBLOCK
    folder = tmp_path / "folder-card"
    (folder / "README.md").mkdir(parents=True)
    for checkpoint in (fifo, folder):
        found = painter_license("dim", str(checkpoint))
        assert (found.name, found.commercial_use) == (UNKNOWN, None)
        assert "not a regular file" in found.source


def test_the_card_read_is_bounded(tmp_path, monkeypatch):
    """Whatever the card's size, at most MAX_CARD_BYTES + 1 bytes are read; a license at its start is found."""
    body = "---\nlicense: apache-2.0\n---\n" + "z" * (20 * MAX_CARD_BYTES)
    card = _card(tmp_path / "big", body) / "README.md"
    read: list[int] = []
    real_read = os.read

    def counting_read(fd, n):
        data = real_read(fd, n)
        read.append(len(data))
        return data

    monkeypatch.setattr(licenses.os, "read", counting_read)
    assert read_card_license(card) == (APACHE_2, "")
    assert 0 < sum(read) <= MAX_CARD_BYTES + 1


def test_a_card_cut_inside_a_character_still_reads(tmp_path):
    head = "---\nlicense: apache-2.0\n---\n"
    pad = "é" * MAX_CARD_BYTES  # two bytes each: the bound falls inside one of them or not, either way
    for extra in ("", "x"):
        card = _card(tmp_path / f"utf8{extra}", head + extra + pad) / "README.md"
        assert read_card_license(card) == (APACHE_2, "")


# --- the job spec and preflight -------------------------------------------------------------------


def _spec(tmp_path: Path, **painter) -> Path:
    job = tmp_path / "job"
    job.mkdir(exist_ok=True)
    (job / "manifest.jsonl").write_text(json.dumps({"id": "a", "instruction": "a red chair"}) + "\n")
    spec = {
        "name": "licenses",
        "manifest": "manifest.jsonl",
        "output": str(tmp_path / "out"),
        "painter": {"checkpoint": "tiny", "t2i_checkpoint": "tiny", "steps": 1, "resolution": 32, **painter},
    }
    (job / "job.yaml").write_text(yaml.safe_dump(spec))
    return job / "job.yaml"


def test_spec_license_fields_default_and_validate(tmp_path):
    spec = load_spec(_spec(tmp_path))
    assert spec.painter.license is None and spec.painter.require_commercial_license is False
    assert load_spec(_spec(tmp_path, license=" Apache-2.0 ")).painter.license == APACHE_2
    for bad in ("apache 2.0", "", "x" * 65, "apache\u202e-2.0"):
        with pytest.raises(SpecError, match="painter.license"):
            load_spec(_spec(tmp_path, license=bad))
    with pytest.raises(SpecError, match="painter.require_commercial_license"):
        load_spec(_spec(tmp_path, require_commercial_license="sometimes"))


def test_licenses_by_mode_without_the_requirement(tmp_path):
    spec = load_spec(_spec(tmp_path, checkpoint=DIM_IDS[0], t2i_checkpoint="tiny"))
    found = check_painter_license(spec)  # not required: no refusal, whatever the license
    assert {mode: f.name for mode, f in found.items()} == {"edit": DIM_NON_COMMERCIAL, "t2i": APACHE_2}


def _refusal(spec_path: Path, *overrides: str) -> str:
    with pytest.raises(PreflightError) as caught:
        check_painter_license(load_spec(spec_path, list(overrides)))
    return str(caught.value)


def test_a_non_commercial_checkpoint_is_refused_naming_kind_checkpoint_license_and_field(tmp_path):
    message = _refusal(_spec(tmp_path, checkpoint=DIM_IDS[0], require_commercial_license=True))
    for part in (
        "painter.require_commercial_license",
        "painter kind 'dim'",
        "painter.checkpoint",
        DIM_IDS[0],
    ):
        assert part in message
    assert f"license {DIM_NON_COMMERCIAL!r}, which does not allow commercial use" in message


def test_the_text_to_image_checkpoint_is_checked_too(tmp_path):
    message = _refusal(_spec(tmp_path, t2i_checkpoint=DIM_IDS[1], require_commercial_license=True))
    assert f"painter.t2i_checkpoint {DIM_IDS[1]!r}" in message and DIM_NON_COMMERCIAL in message


def test_an_unknown_license_is_refused_and_says_how_to_declare_one(tmp_path):
    folder = tmp_path / "fine-tune"
    folder.mkdir()
    message = _refusal(_spec(tmp_path, checkpoint=str(folder), require_commercial_license=True))
    assert "license 'unknown', which is not known to allow it" in message
    assert "declare the folder's license with painter.license" in message


def test_a_card_with_a_non_commercial_license_is_refused(tmp_path):
    folder = _card(tmp_path / "fine-tune", "---\nlicense: cc-by-nc-4.0\n---\n")
    message = _refusal(_spec(tmp_path, checkpoint=str(folder), require_commercial_license=True))
    assert "license 'cc-by-nc-4.0', which does not allow commercial use" in message


def test_a_declared_license_of_unknown_terms_is_refused(tmp_path):
    folder = tmp_path / "fine-tune"
    folder.mkdir()
    spec = _spec(tmp_path, checkpoint=str(folder), license="acme-internal", require_commercial_license=True)
    assert "license 'acme-internal', which is not known to allow it" in _refusal(spec)


def test_commercially_usable_checkpoints_are_accepted(tmp_path):
    folder = tmp_path / "fine-tune"
    folder.mkdir()
    carded = _card(tmp_path / "carded", "---\nlicense: apache-2.0\n---\n")
    for painter in (
        {},  # the tiny presets
        {"checkpoint": str(folder), "license": "Apache-2.0"},
        {"checkpoint": str(carded), "t2i_checkpoint": str(folder), "license": "mit"},
    ):
        spec = load_spec(_spec(tmp_path, require_commercial_license=True, **painter))
        found = check_painter_license(spec)
        assert set(found) == {"edit", "t2i"} and all(f.commercial_use for f in found.values()), painter
    # The declared license goes to every folder; where a card says otherwise, the source says so.
    assert {m: f.name for m, f in found.items()} == {"edit": "mit", "t2i": "mit"}
    assert found["edit"].source == "painter.license in the job spec (its model card says apache-2.0)"


def test_a_declared_license_no_checkpoint_takes_is_refused(tmp_path):
    message = str(_refusal(_spec(tmp_path, checkpoint=DIM_IDS[0], license=APACHE_2)))
    assert message.startswith("painter.license: 'apache-2.0' applies only to local checkpoint folders")
    assert DIM_IDS[0] in message and "'tiny'" in message


def test_a_design_run_paints_nothing_and_needs_no_license(tmp_path):
    spec = load_spec(
        _spec(tmp_path, checkpoint=DIM_IDS[0], require_commercial_license=True), ["stage=design"]
    )
    assert painter_licenses(spec) == {} and check_painter_license(spec) == {}


@pytest.mark.timeout(120)
def test_dimflow_run_refuses_before_any_work(tmp_path, capsys):
    """Exit 2, one error line naming the field, nothing under the output; the refusal comes before the
    checkpoint is looked for (HF_HUB_OFFLINE: a fingerprint of the DIM id would fail differently)."""
    spec = _spec(tmp_path, checkpoint=DIM_IDS[0], require_commercial_license=True)
    code = cli.main(["run", str(spec), "--no-progress"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT, err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "painter.require_commercial_license" in line and DIM_NON_COMMERCIAL in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("run=*"))


def test_read_card_license_reports_a_missing_card(tmp_path):
    assert read_card_license(tmp_path / "README.md") == (None, "no README.md")


def test_every_registered_painter_kind_has_license_facts_and_back():
    """kinds.py (what can paint) and licenses.py (what its pixels may be used for) name the same kinds, and
    each kind's default checkpoints are known checkpoints of that kind."""
    from transforms.painter import kinds as registry

    assert set(registry.KIND_NAMES) == set(KINDS)
    for name, kind in registry.KINDS.items():
        for checkpoint in (kind.checkpoint, kind.t2i_checkpoint):
            if checkpoint is not None:
                assert KNOWN_CHECKPOINTS[checkpoint][0] == name, checkpoint
        assert painter_license(name, "tiny").name == APACHE_2
