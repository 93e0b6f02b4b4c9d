"""What the judge is asked: dimflow's own rubric, or the user's (``judge.rubric``, a YAML file).

**Ours** (written for dimflow, not taken from a benchmark) asks for strict JSON with
``instruction_following``, ``visual_quality`` and (edits only) ``preservation``, each 0-10, and a one-sentence
``reason``. ``RUBRIC_VERSION`` enters the judge's config, so changing the wording changes ``quality_key``.

**A rubric file** lets a user who has a benchmark's official prompt judge with it::

    name: my-benchmark            # shown in messages
    scale: 5                      # the prompt's top score; scores are rescaled to 0-10 before `overall`
    reply: lines                  # json (default): one JSON object; lines: "Label: N" or "Label: N/5" lines
    labels:                       # our criterion (or `reason`) -> the words the prompt uses for it
      instruction_following: Prompt Compliance
      visual_quality: Visual Naturalness
      preservation: Physical & Detail Integrity
    edit: |                       # shown with two images: the source first, then the edited image
      ... {instruction} ...
    t2i: |                        # shown with the generated image only
      ... {instruction} ...

``{instruction}`` is the only placeholder (the row's manifest instruction); any other ``{name}`` is refused,
so a template written for another tool cannot silently send a literal ``{image_caption}``. The file is read
once, on the machine that starts the run (``load_rubric``): bounded (``MAX_RUBRIC_BYTES``), UTF-8 text,
every field checked, refusals naming the file and field. What travels to workers is the plain dict it
returns (workers never read the file); its version is the sha256 of the file's bytes.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from transforms.judge.scores import CRITERIA, criteria_for
from transforms.storage import is_remote

RUBRIC_VERSION = "dimflow-judge-v1"
MAX_RUBRIC_BYTES = 64 * 1024
MAX_TEMPLATE_CHARS = 32_000
MAX_SCALE = 100
PLACEHOLDER = "{instruction}"
REASON = "reason"
REPLIES = ("json", "lines")
_FIELDS = ("name", "edit", "t2i", "scale", "labels", "reply")
_NAMED_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

_EDIT = """\
You are the quality reviewer for a catalog of edited photographs. Two images are attached: the FIRST is \
the original picture, the SECOND is what an image-editing model made of it when given this instruction:

{instruction}

Compare the two images and score the SECOND one on three criteria, each an integer from 0 to 10:

- instruction_following: did the requested change happen, completely and correctly? 0: nothing that was \
asked for is visible, or something else was changed instead. 5: partly done, or done with obvious mistakes \
(wrong colour, wrong object, wrong place, wrong count). 10: exactly what was asked.
- visual_quality: could the second image be published as it is? Look for smears, warped shapes, extra or \
missing limbs, garbled lettering, seams, halos, and lighting or perspective that does not match the rest of \
the picture. 0: unusable. 10: clean and natural, with no visible trace of editing.
- preservation: is everything the instruction did not mention still as it was in the first image? People, \
products, logos, printed text, background, framing and colours that were not part of the request must be \
unchanged. 0: the picture was replaced or the product altered. 10: only the requested change differs.

Score what you see, not what was intended. If the two images look the same, instruction_following is 0 \
unless the instruction asks for no visible change.

Answer with a single JSON object and nothing else (no code fence, no text before or after it):
{"instruction_following": <0-10>, "visual_quality": <0-10>, "preservation": <0-10>, \
"reason": "<one sentence: the main flaw, or why it is good>"}
"""

_T2I = """\
You are the quality reviewer for a catalog of generated pictures. The attached image was made by a \
text-to-image model from this description:

{instruction}

Score the image on two criteria, each an integer from 0 to 10:

- instruction_following: does the picture show what the description asks for: every object, attribute, \
count, colour, piece of text, position and style it mentions? 0: unrelated to the description. 5: the main \
subject is there but details are missing or wrong. 10: everything described is present and correct.
- visual_quality: could the picture be published as it is? Look for smears, warped shapes, extra or missing \
limbs, garbled lettering, and inconsistent lighting or perspective. 0: unusable. 10: clean and natural.

Score what you see, not what was intended.

Answer with a single JSON object and nothing else (no code fence, no text before or after it):
{"instruction_following": <0-10>, "visual_quality": <0-10>, \
"reason": "<one sentence: the main flaw, or why it is good>"}
"""


class RubricError(ValueError):
    """A rubric that cannot be used; the message names the file (or config) and the field."""


@dataclass(frozen=True)
class Rubric:
    """A checked rubric (build it with ``rubric_from_config`` or use ``DEFAULT_RUBRIC``)."""

    name: str
    version: str  # RUBRIC_VERSION for ours, "sha256:<hex>" of a file's bytes
    edit: str
    t2i: str
    scale: float = 10.0
    labels: Mapping[str, str] = field(default_factory=dict)
    reply: str = "json"
    source: str = "dimflow's rubric"  # where it came from, for messages

    def prompt(self, mode: str, instruction: str) -> str:
        """The template of ``mode`` (edit | t2i) with the instruction in place of ``{instruction}``."""
        template = self.edit if mode == "edit" else self.t2i if mode == "t2i" else None
        if template is None:
            raise ValueError(f"mode must be edit or t2i, got {mode!r}")
        return template.replace(PLACEHOLDER, instruction)

    def label(self, name: str) -> str:
        """The word the reply uses for criterion (or ``reason``) ``name``."""
        return self.labels.get(name, name)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the judge config (pickled to workers); ``rubric_from_config`` reads it back."""
        return {
            "name": self.name,
            "version": self.version,
            "edit": self.edit,
            "t2i": self.t2i,
            "scale": self.scale,
            "labels": dict(self.labels),
            "reply": self.reply,
            "source": self.source,
        }


DEFAULT_RUBRIC = Rubric(name="dimflow", version=RUBRIC_VERSION, edit=_EDIT, t2i=_T2I)


def load_rubric(path: str | None) -> dict[str, Any] | None:
    """Driver side: read and check the rubric file at ``path`` (local or a Beam filesystem URI); None -> None.

    Returns the plain dict that goes into the judge config under ``rubric``; raises ``RubricError``
    naming the file and field for anything unusable.
    """
    if path is None:
        return None
    data = _read_bounded(path)
    where = f"judge.rubric file {path}"
    if b"\x00" in data:
        raise RubricError(f"{where}: is binary (contains NUL bytes), not a YAML text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RubricError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise RubricError(f"{where}: not valid YAML{at}: {problem}") from None
    if not isinstance(document, dict):
        raise RubricError(f"{where}: must be a YAML mapping with fields {', '.join(_FIELDS)}")
    unknown = sorted(str(key) for key in document if key not in _FIELDS)
    if unknown:
        raise RubricError(f"{where}: unknown field(s) {', '.join(unknown)}; expected {', '.join(_FIELDS)}")
    version = "sha256:" + hashlib.sha256(data).hexdigest()
    return _checked({**document, "version": version, "source": path}, where).as_dict()


def rubric_from_config(value: Mapping[str, Any] | None) -> Rubric:
    """The rubric from the judge config's ``rubric`` entry: None -> ours; ``load_rubric``'s dict -> checked again."""
    if value is None:
        return DEFAULT_RUBRIC
    if not isinstance(value, Mapping):
        raise RubricError(
            f"judge config 'rubric' must be the dict load_rubric(path) returns (or None), got "
            f"{type(value).__name__}: call transforms.judge.rubric.load_rubric on the driver"
        )
    source = value.get("source")
    where = f"judge.rubric file {source}" if isinstance(source, str) else "judge config 'rubric'"
    if not isinstance(value.get("version"), str) or not value["version"]:
        raise RubricError(f"{where}: field version is missing (not made by load_rubric?)")
    return _checked(value, where)


def _read_bounded(path: str) -> bytes:
    """At most MAX_RUBRIC_BYTES + 1 bytes of ``path``; refuses what is not a regular file."""
    where = f"judge.rubric file {path}"
    try:
        if is_remote(path):
            from apache_beam.io.filesystem import CompressionTypes
            from apache_beam.io.filesystems import FileSystems

            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                data = handle.read(MAX_RUBRIC_BYTES + 1)
        else:
            # O_NONBLOCK: a FIFO planted at the path must not hang the launcher before the check below.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise RubricError(f"{where}: not a regular file")
            with os.fdopen(fd, "rb") as handle:
                data = handle.read(MAX_RUBRIC_BYTES + 1)
    except RubricError:
        raise
    except Exception as exc:  # missing, unreadable, a folder, a storage error: all mean the same here
        raise RubricError(f"{where}: cannot read it: {type(exc).__name__}: {exc}") from None
    if len(data) > MAX_RUBRIC_BYTES:
        raise RubricError(f"{where}: larger than {MAX_RUBRIC_BYTES} bytes; a rubric is a few prompts")
    return data


def _checked(value: Mapping[str, Any], where: str) -> Rubric:
    """A Rubric from plain data, every field checked; ``where`` names the file or config in errors."""
    name = value.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 100 or "\n" in name:
        raise RubricError(
            f"{where}: field name must be a one-line string of 1-100 characters, got {name!r:.80}"
        )
    templates = {mode: _template(value.get(mode), where, mode) for mode in ("edit", "t2i")}
    scale = value.get("scale", 10)
    if (
        not isinstance(scale, int | float)
        or isinstance(scale, bool)
        or not math.isfinite(scale)
        or not 0 < scale <= MAX_SCALE
    ):
        raise RubricError(f"{where}: field scale must be a number in (0, {MAX_SCALE}], got {scale!r:.80}")
    reply = value.get("reply", "json")
    if reply not in REPLIES:
        raise RubricError(f"{where}: field reply must be one of {', '.join(REPLIES)}, got {reply!r:.80}")
    labels = value.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise RubricError(f"{where}: field labels must be a mapping of criterion -> label")
    for key, label in labels.items():
        if key not in (*CRITERIA, REASON):
            raise RubricError(
                f"{where}: field labels.{key}: not a criterion; expected {', '.join((*CRITERIA, REASON))}"
            )
        if not isinstance(label, str) or not label.strip() or len(label) > 100 or "\n" in label:
            raise RubricError(f"{where}: field labels.{key} must be a one-line string of 1-100 characters")
    used = [str(labels.get(c, c)).strip().lower() for c in criteria_for("edit")]
    if len(set(used)) != len(used):
        raise RubricError(
            f"{where}: field labels: two criteria share one label, so a reply cannot tell them apart"
        )
    return Rubric(
        name=name.strip(),
        version=str(value["version"]),
        edit=templates["edit"],
        t2i=templates["t2i"],
        scale=float(scale),
        labels={str(k): v.strip() for k, v in labels.items()},
        reply=reply,
        source=str(value.get("source") or where),
    )


def _template(template: Any, where: str, field_name: str) -> str:
    if template is None:
        raise RubricError(f"{where}: field {field_name} is missing (the {field_name} prompt template)")
    if not isinstance(template, str) or not template.strip():
        raise RubricError(f"{where}: field {field_name} must be a non-empty text (the prompt template)")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise RubricError(f"{where}: field {field_name} is longer than {MAX_TEMPLATE_CHARS} characters")
    others = sorted({m.group(1) for m in _NAMED_PLACEHOLDER.finditer(template)} - {"instruction"})
    if others:
        listed = ", ".join("{" + name + "}" for name in others)
        raise RubricError(
            f"{where}: field {field_name} uses placeholder(s) {listed}; only {PLACEHOLDER} is filled in"
        )
    if PLACEHOLDER not in template:
        raise RubricError(
            f"{where}: field {field_name} has no {PLACEHOLDER} placeholder, so the judge would never see "
            "the row's instruction"
        )
    return template
