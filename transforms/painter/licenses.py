"""The license of a painter's weights: what a job may do with the pixels it paints.

Every provenance row names it (``painter_license``), and ``painter.require_commercial_license`` refuses a
job whose checkpoints are not known to allow commercial use. Facts about the released checkpoints are
written down here with where they come from; a local folder (a fine-tune, a mirror) takes the license the
job spec declares (``painter.license``) or, failing that, the ``license:`` field of its model card's front
matter (``README.md``, as Hugging Face model cards carry it). Anything else is ``unknown``, which never
counts as allowing commercial use.

Kinds are plain strings here (this module imports no painter), so it knows every kind's checkpoints
without loading any of them.
"""

from __future__ import annotations

import codecs
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml

UNKNOWN = "unknown"
DIM_NON_COMMERCIAL = "dim-non-commercial"
APACHE_2 = "apache-2.0"
KINDS = ("dim", "qwen-image-edit", "longcat-image-edit")
TINY = "tiny"

# A model card's front matter is at its start; past this many bytes it is not read (a hostile card may
# be huge, binary or a FIFO: the read is bounded and never blocks).
MAX_CARD_BYTES = 64 * 1024
CARD_FILE = "README.md"
# License names as Hugging Face metadata spells them (SPDX ids, lower case) or a license's own short name.
LICENSE_NAME = re.compile(r"[a-z0-9][a-z0-9.+_-]{0,63}")
_HF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
# Hugging Face's own pattern for a card's YAML block (huggingface_hub.repocard.REGEX_YAML_BLOCK).
_FRONT_MATTER = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")


@dataclass(frozen=True)
class PainterLicense:
    """``name``: SPDX id or the license's short name (``unknown`` when not known); ``commercial_use``:
    True / False, or None when not known; ``source``: where the fact comes from."""

    name: str
    commercial_use: bool | None
    source: str


# Licenses whose terms we know: may their outputs be used commercially? Licenses not listed are unknown
# (None), including ones with use restrictions we do not judge (OpenRAIL and the like).
COMMERCIAL_USE: dict[str, bool] = {
    APACHE_2: True,
    "mit": True,
    "bsd-2-clause": True,
    "bsd-3-clause": True,
    "cc0-1.0": True,
    "cc-by-4.0": True,
    DIM_NON_COMMERCIAL: False,
    "qwen-research": False,  # Qwen Research License Agreement (Qwen2.5-VL-3B-Instruct's card: license_name)
    "flux-1-dev-non-commercial-license": False,  # FLUX.1 [dev] / Kontext [dev] cards
}


def commercial_use(name: str) -> bool | None:
    """Whether a license allows commercial use: True / False where known, else None."""
    if name.startswith("cc-by-nc"):  # every Creative Commons NonCommercial variant and version
        return False
    return COMMERCIAL_USE.get(name)


_DIM = PainterLicense(
    DIM_NON_COMMERCIAL,
    False,
    "https://github.com/showlab/DIM#license: the weights build on Qwen2.5-VL-3B-Instruct (Qwen Research "
    "License Agreement: research, non-commercial) and SANA1.5-1.6B (NVIDIA license, non-commercial); "
    "its dataset is CC BY-NC 4.0",
)


def _apache(card: str, repo: str) -> PainterLicense:
    return PainterLicense(APACHE_2, True, f"{repo}; model card https://huggingface.co/{card}")


_QWEN_REPO = (
    "https://github.com/QwenLM/Qwen-Image#license-agreement (Qwen-Image is licensed under Apache 2.0)"
)
_LONGCAT_REPO = (
    "https://github.com/meituan-longcat/LongCat-Image#license-agreement "
    "(LongCat-Image is licensed under Apache 2.0)"
)

# HF id -> (kind, license) of the released checkpoints dimflow knows.
KNOWN_CHECKPOINTS: dict[str, tuple[str, PainterLicense]] = {
    "stdKonjac/DIM-4.6B-Edit": ("dim", _DIM),
    "stdKonjac/DIM-4.6B-T2I": ("dim", _DIM),
    "stdKonjac/DIM-4.6B-Edit-Stage1": ("dim", _DIM),
    **{
        f"Qwen/{name}": ("qwen-image-edit", _apache(f"Qwen/{name}", _QWEN_REPO))
        for name in ("Qwen-Image-Edit-2511", "Qwen-Image-Edit-2509", "Qwen-Image-Edit", "Qwen-Image")
    },
    **{
        f"meituan-longcat/{name}": ("longcat-image-edit", _apache(f"meituan-longcat/{name}", _LONGCAT_REPO))
        for name in ("LongCat-Image-Edit", "LongCat-Image-Edit-Turbo", "LongCat-Image")
    },
}
_KNOWN_BY_FOLDED = {name.casefold(): value for name, value in KNOWN_CHECKPOINTS.items()}


def tiny_license(kind: str) -> PainterLicense:
    """The ``tiny`` presets hold no third-party weights: random weights that dimflow's own code (Apache-2.0)
    draws for the kind's model classes at toy size, with a tokenizer trained by dimflow on a fixed text."""
    return PainterLicense(
        APACHE_2,
        True,
        f"tiny {kind} preset: random weights and tokenizer made by dimflow's code (Apache-2.0), "
        "no third-party weights",
    )


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(
            f"no license facts for painter kind {kind!r} (known: {', '.join(KINDS)}); "
            "add its checkpoints to transforms/painter/licenses.py"
        )


def is_tiny(kind: str, checkpoint: str) -> bool:
    return checkpoint in (TINY, f"{TINY}-{kind}")


def known_checkpoint(checkpoint: str) -> PainterLicense | None:
    """The license of a released checkpoint dimflow knows (HF ids match case-insensitively, as on the Hub)."""
    found = _KNOWN_BY_FOLDED.get(checkpoint.casefold())
    return found[1] if found else None


def takes_declared_license(kind: str, checkpoint: str) -> bool:
    """Does ``painter.license`` apply to this checkpoint? Only where dimflow knows no license of its own:
    a local folder, or an HF id it does not know (a known checkpoint cannot be relabelled)."""
    _check_kind(kind)
    if is_tiny(kind, checkpoint):
        return False
    if _is_folder(checkpoint):
        return True
    return known_checkpoint(checkpoint) is None


def painter_license(kind: str, checkpoint: str, declared: str | None = None) -> PainterLicense:
    """The license of ``checkpoint`` painted by painter ``kind``.

    In order: the ``tiny`` presets; a local folder (``declared``, else its model card); a released
    checkpoint dimflow knows; an HF id whose model card is in the local Hugging Face cache (``declared``
    first); otherwise ``unknown``. Reads at most ``MAX_CARD_BYTES`` of one file and never the network.
    """
    _check_kind(kind)
    if declared is not None and not LICENSE_NAME.fullmatch(declared):
        raise ValueError(f"painter.license {declared!r} is not a license name such as apache-2.0")
    if is_tiny(kind, checkpoint):
        return tiny_license(kind)
    if _is_folder(checkpoint):
        return _with_card(Path(checkpoint).expanduser() / CARD_FILE, declared, f"folder {checkpoint}")
    known = known_checkpoint(checkpoint)
    if known is not None:
        return known
    if _HF_ID.fullmatch(checkpoint):
        return _with_card(_cached_card(checkpoint), declared, f"HF id {checkpoint} (local HF cache)")
    return PainterLicense(
        UNKNOWN, None, f"{checkpoint!r} is neither a tiny preset, a local folder, nor an HF id"
    )


def _is_folder(checkpoint: str) -> bool:
    try:
        return Path(checkpoint).expanduser().is_dir()
    except (OSError, ValueError):
        return False


def _cached_card(repo_id: str) -> Path | None:
    """The model card of ``repo_id`` if the local Hugging Face cache holds it (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, CARD_FILE)
    except Exception:  # a malformed id or cache folder: the card is simply not there
        return None
    return Path(found) if isinstance(found, str) else None


def _with_card(card: Path | None, declared: str | None, what: str) -> PainterLicense:
    """The declared license, else the card's; the source says which, and what the card says if it differs."""
    name, note = read_card_license(card) if card is not None else (None, f"no {CARD_FILE}")
    if declared is not None:
        card_says = f" (its model card says {name})" if name and name != declared else ""
        return PainterLicense(
            declared, commercial_use(declared), f"painter.license in the job spec{card_says}"
        )
    if name is None:
        return PainterLicense(UNKNOWN, None, f"{what}: {note}; declare it with painter.license")
    return PainterLicense(name, commercial_use(name), f"{what}: {CARD_FILE} front matter (license: {name})")


def read_card_license(card: Path) -> tuple[str | None, str]:
    """(license name, why not) from a model card's YAML front matter: ``license``, or ``license_name`` where
    ``license: other`` (Hugging Face's convention for licenses without an SPDX id).

    Bounded and non-blocking: only a regular file is read (a FIFO is opened non-blocking and refused), at
    most ``MAX_CARD_BYTES``; anything not UTF-8, without front matter, or with a license value that is not
    a plain short name gives (None, the reason).
    """
    try:
        data = _read_bounded(card)
    except FileNotFoundError:
        return None, f"no {CARD_FILE}"
    except OSError as exc:
        return None, f"{CARD_FILE} unreadable ({type(exc).__name__}: {exc})"
    if data is None:
        return None, f"{CARD_FILE} is not a regular file"
    cut = len(data) > MAX_CARD_BYTES
    try:  # a cut file may end inside a character: the incremental decoder leaves that tail out
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(data[:MAX_CARD_BYTES], final=not cut)
    except UnicodeDecodeError:
        return None, f"{CARD_FILE} is not UTF-8 text"
    match = _FRONT_MATTER.match(text)
    if match is None:
        return None, f"{CARD_FILE} has no YAML front matter" + (
            f" in its first {MAX_CARD_BYTES} bytes" if cut else ""
        )
    try:
        meta = yaml.safe_load(match.group(2))
    except Exception as exc:  # YAMLError, or a RecursionError on absurd nesting
        return None, f"{CARD_FILE} front matter is not valid YAML ({type(exc).__name__})"
    if not isinstance(meta, dict) or "license" not in meta:
        return None, f"{CARD_FILE} front matter has no license field"
    value = meta.get("license")
    if isinstance(value, str) and value.strip().lower() == "other":
        value = meta.get("license_name") or "other"
    if not isinstance(value, str) or not LICENSE_NAME.fullmatch(value.strip().lower()):
        return None, f"{CARD_FILE} license field is not a license name"
    name = value.strip().lower()
    return (
        (None, f"{CARD_FILE} says license: other, without a license_name") if name == "other" else (name, "")
    )


def _read_bounded(path: Path) -> bytes | None:
    """Up to ``MAX_CARD_BYTES + 1`` bytes of a regular file (None for anything else); never blocks on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, left = [], MAX_CARD_BYTES + 1
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
