"""JobSpec: the whole configuration of a dimflow job, loaded from YAML with ``--set a.b=value`` overrides.

Every knob lives here rather than in code constants, so a job is reproducible from its spec alone
(the spec is written into ``runs/{run_id}.json``). Unknown keys are errors, not warnings: a typo in a
field name must not silently fall back to a default on a million-row job.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from transforms.manifest_stream import (
    MAX_INSTRUCTION_CHARS,
    MAX_MANIFEST_BYTES,
    MAX_NESTING,
    MAX_ROW_BYTES,
    NESTING_CEILING,
    ManifestLimits,
)
from transforms.painter.base import COMPILE_CHOICES, compile_mode, device_choice
from transforms.painter.kinds import KIND_NAMES, KINDS, NATIVE_MASK_KINDS, get_kind
from transforms.painter.licenses import LICENSE_NAME


class SpecError(ValueError):
    """A job spec that cannot be used; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _VisionModelSpec(_Strict):
    """A vision-language model behind an OpenAI-compatible endpoint or loaded locally, and its limits (the
    designer's and the judge's sections share these fields)."""

    kind: Literal["openai", "local", "none"] = "none"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    requests_per_minute: float = Field(60.0, gt=0)
    tokens_per_minute: float = Field(150_000.0, gt=0)
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    seed: int | None = 0
    max_tokens: int = Field(1024, ge=1)
    # How many workers (pods/processes) share the limits above; each takes 1/workers of them.
    workers: int = Field(1, ge=1)
    device: str = "auto"  # local provider only
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # local provider only

    @model_validator(mode="after")
    def _model_required(self) -> _VisionModelSpec:
        if self.kind != "none" and not self.model:
            section = "judge" if isinstance(self, JudgeSpec) else "designer"
            raise ValueError(f"{section}.model is required when {section}.kind={self.kind!r}")
        return self


class DesignerSpec(_VisionModelSpec):
    """Which vision-language model turns instructions into blueprints, and how hard it may be pushed."""

    cache: bool = True


class JudgeSpec(_VisionModelSpec):
    """Which vision-language model scores each painted image (``none``: no judge stage), with its own limits.

    Its rate limits are its own: a judge and a designer on one endpoint each keep to their section's."""

    max_tokens: int = Field(512, ge=1)
    # A rubric file (YAML: prompts, score scale, labels; README "Quality gate"); null: dimflow's own rubric.
    rubric: str | None = None


class QualitySpec(_Strict):
    """What the judge's scores decide: the bar a row must reach and how many paints it may take to reach it."""

    # judge_overall (0..1) a row must reach; below it the row is painted again (up to max_paints) and, if it
    # never reaches it, ends ``rejected``. null: no bar (rows are scored, never repainted or rejected).
    min_overall: float | None = Field(None, ge=0, le=1)
    # Paints per row at most (the first included); each repaint uses the next seed of the row's sequence.
    max_paints: int = Field(1, ge=1, le=8)


class MaskSpec(_Strict):
    """How rows with a ``mask`` are painted: the painted pixels are composited over the source's inside the
    mask only, so the locked region (black) stays the source's own pixels."""

    # Pixels of a soft edge, on the editable side of the mask's edge (locked pixels stay exact); 0: a hard edge.
    feather_px: int = Field(2, ge=0, le=256)
    # composite: the painter paints the whole frame, the composite keeps the locked pixels; native+composite:
    # a painter kind that takes masks (qwen-image-edit) also gets the mask; the composite always applies last.
    mode: Literal["composite", "native+composite"] = "composite"
    # true: black (transparent) = may change, white (opaque) = must stay.
    invert: bool = False


class PainterSpec(_Strict):
    """The painter model and its sampling parameters. The defaults written here are DIM's; with another
    ``kind``, unset ``checkpoint``, ``t2i_checkpoint``, ``steps``, ``guidance_scale`` and ``resolution`` take
    that kind's defaults (``transforms.painter.kinds``)."""

    # A registered painter kind: dim, qwen-image-edit, longcat-image-edit
    kind: str = "dim"
    # Rows with a source are edits (painted by ``checkpoint``); rows without one are text-to-image
    # (painted by ``t2i_checkpoint``). A null checkpoint makes that kind of row fail at validation.
    checkpoint: str | None = "stdKonjac/DIM-4.6B-Edit"
    t2i_checkpoint: str | None = None
    steps: int = Field(30, ge=1, le=1000)
    guidance_scale: float = Field(7.5, ge=0)
    resolution: int = Field(1024, ge=32, le=4096)
    seed: int = Field(233, ge=0, le=2**63 - 1)  # used for rows without their own seed
    batch_size: int = Field(1, ge=1, le=256)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # One painter replica per device: auto (every visible CUDA device, else the CPU), a count N (the first N
    # visible CUDA devices), or a list such as "cuda:0,cuda:1" or [cuda:0, cuda:1] (a device may repeat:
    # "cpu,cpu"). On the embedded runner N > 1 replicas get N bundle threads (pipeline/run.py).
    device: str = "auto"
    noise_device: Literal["cpu", "accelerator"] = "cpu"
    output_format: Literal["png", "jpg", "webp"] = "png"
    # resolution: images are written at the painted size; source: edit rows are resized back to the source's
    # own size (after EXIF orientation), so a mask's locked pixels are the source file's decoded pixels.
    output_size: Literal["resolution", "source"] = "resolution"
    # square: resolution x resolution (DIM's default); preserve: edit rows keep the source's aspect at
    # about resolution**2 pixels, bucketed to multiples of 32 so a batch shares one shape.
    aspect: Literal["square", "preserve"] = "square"
    # Outputs with more pixels than this decode in tiles (bounded VAE memory); null never tiles.
    vae_tile_pixels: int | None = Field(1536 * 1536, ge=1)
    # torch.compile mode of the DiT: false (eager), default, max-autotune (autotuned kernels + CUDA graphs
    # on CUDA); true = default. See README: measure before turning it on.
    compile: Literal[False, "default", "max-autotune"] = False
    # auto: when dtype is bfloat16/float16 the VAE runs as DIM runs it (float32 compute on the half-rounded
    # weights: under a float32 autocast on CUDA, on a float32 copy elsewhere); same: in dtype.
    vae_dtype: Literal["auto", "same"] = "auto"
    # The license of a local checkpoint folder or an HF id dimflow does not know (e.g. a fine-tune's): an SPDX
    # id or the license's short name. Known checkpoints keep their own (transforms/painter/licenses.py).
    license: str | None = None
    # Refuse to start unless every checkpoint the job paints with is known to allow commercial use.
    require_commercial_license: bool = False

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        """Fields the spec leaves unset take the kind's defaults (an explicit null checkpoint stays null)."""
        kind = data.get("kind", "dim") if isinstance(data, dict) else None
        if not isinstance(kind, str) or kind not in KINDS:
            return data  # the kind field's own validator names the choices
        return {**KINDS[kind].spec_defaults(), **data}

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        get_kind(value)  # ValueError naming the registered kinds
        return value

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: object) -> str:
        choice = device_choice(value)  # ValueError naming the syntax; a YAML integer is a count
        return ",".join(choice) if isinstance(choice, tuple) else str(choice)

    @field_validator("license")
    @classmethod
    def _license(cls, value: str | None) -> str | None:
        """A license name as model cards spell it (SPDX ids are case-insensitive: kept in lower case)."""
        if value is None:
            return None
        name = value.strip().lower()
        if not LICENSE_NAME.fullmatch(name):
            raise ValueError(
                "must be a license name such as apache-2.0 or cc-by-nc-4.0 (letters, digits, . + _ -)"
            )
        return name

    @field_validator("compile", mode="before")
    @classmethod
    def _compile(cls, value: Any) -> Any:
        """true is ``default`` (the boolean the setting was before it took modes); anything but the choices is
        refused here, naming them (not after a lax coercion such as 0 -> false)."""
        try:
            return compile_mode(value) or False
        except ValueError:
            raise ValueError(f"must be {COMPILE_CHOICES}") from None  # the error list adds the value given

    @model_validator(mode="after")
    def _settings_of_the_kind(self) -> PainterSpec:
        """A setting only another kind reads must keep its default: it would change nothing here."""
        for other in KIND_NAMES:
            if other == self.kind:
                continue
            for name in get_kind(other).only:
                if (
                    name not in get_kind(self.kind).only
                    and getattr(self, name) != PainterSpec.model_fields[name].default
                ):
                    raise ValueError(
                        f"painter.{name} applies to painter.kind {other} only; painter.kind is {self.kind} "
                        f"(got {getattr(self, name)!r}; leave it unset)"
                    )
        return self

    @model_validator(mode="after")
    def _some_checkpoint(self) -> PainterSpec:
        if not self.checkpoint and not self.t2i_checkpoint:
            raise ValueError(
                "painter.checkpoint and painter.t2i_checkpoint are both empty: nothing can paint"
            )
        return self

    def checkpoints(self) -> dict[str, str]:
        """mode (edit | t2i) -> checkpoint, for the modes this job can paint."""
        pairs = {"edit": self.checkpoint, "t2i": self.t2i_checkpoint}
        return {mode: ckpt for mode, ckpt in pairs.items() if ckpt}


class RunnerSpec(_Strict):
    """The Beam runner and its pipeline options (``--key=value`` style, without dashes here)."""

    name: Literal["FnApiRunner", "DirectRunner", "DataflowRunner", "FlinkRunner", "PortableRunner"] = (
        "FnApiRunner"
    )
    options: dict[str, Any] = Field(default_factory=dict)
    # The embedded runners (FnApiRunner, DirectRunner) hold whole PCollections in memory: they run the
    # manifest in chunks of this many rows, one pipeline after another (null: one pipeline for all rows).
    # Distributed runners stream between stages and ignore it.
    chunk_rows: int | None = Field(20_000, ge=1)
    # Beam resource hints of the paint transforms (re-read, RunInference, image write), for runners that
    # place steps by them (Dataflow's right fitting: GPU workers for painting only); null: no hint.
    # e.g. "type:nvidia-l4;count:1;install-nvidia-driver" and "32GB". Other runners ignore them.
    paint_accelerator: str | None = None
    paint_min_ram: str | None = None

    @field_validator("paint_accelerator")
    @classmethod
    def _accelerator(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = [part.strip() for part in value.split(";") if part.strip()]
        keys = {part.partition(":")[0]: part.partition(":")[2] for part in parts}
        count = keys.get("count", "")
        if (
            not keys.get("type")
            or not count.isdigit()
            or int(count) < 1
            or "install-nvidia-driver" not in keys
        ):
            raise ValueError(
                "must look like 'type:nvidia-l4;count:1;install-nvidia-driver' (a GPU type, a count >= 1, and "
                "install-nvidia-driver: Dataflow installs the NVIDIA driver only when asked)"
            )
        return ";".join(parts)

    @field_validator("paint_min_ram", mode="before")
    @classmethod
    def _min_ram(cls, value: object) -> object:
        if value is None:
            return value
        from apache_beam.transforms.resources import parse_resource_hints

        try:  # a bare number (YAML 32) has no unit: refused rather than read as bytes
            (size,) = parse_resource_hints({"min_ram": value}).values() if isinstance(value, str) else (b"0",)
        except (ValueError, OverflowError):  # Beam's own parser; "infGB" overflows its round()
            size = b"0"
        if int(size) < 1:
            raise ValueError(
                "must be a size such as 32GB or 30GiB (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            )
        return value

    def paint_resource_hints(self) -> dict[str, str]:
        """The hints set, as ``with_resource_hints`` takes them."""
        hints = {"accelerator": self.paint_accelerator, "min_ram": self.paint_min_ram}
        return {name: value for name, value in hints.items() if value is not None}


class LimitsSpec(_Strict):
    """Bounds on hostile or accidental input: every fetch and row is checked against these."""

    max_image_bytes: int = Field(50 * 1024 * 1024, ge=1)
    max_pixels: int = Field(64 * 1024 * 1024, ge=1)
    max_instruction_chars: int = Field(MAX_INSTRUCTION_CHARS, ge=1)
    # When set, every source must lie under one of these (local folders or URI prefixes such as
    # gs://bucket/catalog/); anything else fails at validate. Null: any path Beam can read.
    source_roots: list[str] | None = None
    # The whole open+read of one source (any filesystem); a read still running then fails its row.
    fetch_timeout_s: float = Field(60.0, gt=0)
    # Per storage location (gs://bucket, local, ...): after this many consecutive storage errors of one
    # kind (connection, timeout, 5xx, permission), rows there fail at once for storage_cooldown_s, then
    # one probe read is let through.
    storage_errors_before_fail_fast: int = Field(3, ge=1)
    storage_cooldown_s: float = Field(30.0, gt=0)
    # One manifest record (a line, a JSON array element, a Parquet row as JSON), bounded while reading.
    max_row_bytes: int = Field(MAX_ROW_BYTES, ge=1)
    # Decompressed bytes read from one manifest file; past it, one failed row and the rest is not read.
    max_manifest_bytes: int = Field(MAX_MANIFEST_BYTES, ge=1)
    # Levels of objects/arrays in one record (and in a metadata string), checked before parsing.
    max_nesting: int = Field(MAX_NESTING, ge=1, le=NESTING_CEILING)

    def manifest_limits(self) -> ManifestLimits:
        """The bounds the manifest reader and validation apply (run and ``dimflow validate`` alike)."""
        return ManifestLimits(
            max_instruction_chars=self.max_instruction_chars,
            source_roots=tuple(self.source_roots) if self.source_roots is not None else None,
            max_row_bytes=self.max_row_bytes,
            max_manifest_bytes=self.max_manifest_bytes,
            max_nesting=self.max_nesting,
        )


class PriceSpec(_Strict):
    """What a designer model costs, for the report's cost estimate."""

    input_per_million_tokens: float = Field(..., ge=0)
    output_per_million_tokens: float = Field(..., ge=0)


class JobSpec(_Strict):
    """A dimflow job."""

    name: str = Field(..., pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    manifest: str
    output: str
    stage: Literal["all", "design", "paint"] = "all"
    incremental: bool = False
    designer: DesignerSpec = Field(default_factory=DesignerSpec)
    painter: PainterSpec = Field(default_factory=PainterSpec)
    runner: RunnerSpec = Field(default_factory=RunnerSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    mask: MaskSpec = Field(default_factory=MaskSpec)
    judge: JudgeSpec = Field(default_factory=JudgeSpec)
    quality: QualitySpec = Field(default_factory=QualitySpec)
    # provenance `designer` or `judge` value (e.g. "openai:gpt-4o") -> price; `dimflow report` estimates cost
    prices: dict[str, PriceSpec] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _mask_invert_alias(cls, data: Any) -> Any:
        """``mask_invert: true`` at the top level is ``mask.invert: true`` (the name the feature was asked
        for); both given and different is an error naming both."""
        if not isinstance(data, dict) or "mask_invert" not in data:
            return data
        data = dict(data)
        invert = data.pop("mask_invert")
        mask = data.get("mask") if isinstance(data.get("mask"), dict) else {}
        if "invert" in mask and mask["invert"] != invert:
            raise ValueError(
                f"mask_invert ({invert!r}) and mask.invert ({mask['invert']!r}) disagree; set one"
            )
        if not isinstance(data.get("mask", {}), dict):
            return {**data, "mask_invert": invert}  # the mask section's own validator names its type
        data["mask"] = {**mask, "invert": invert}
        return data

    @field_validator("manifest", "output")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty (an empty path would resolve to the spec's own folder)")
        return value.strip()

    @model_validator(mode="after")
    def _quality_needs_judge(self) -> JobSpec:
        quality = self.quality
        if self.judge.kind == "none" and (quality.min_overall is not None or quality.max_paints > 1):
            raise ValueError(
                "quality.min_overall and quality.max_paints > 1 need a judge: set judge.kind (openai or local)"
            )
        if quality.max_paints > 1 and quality.min_overall is None:
            raise ValueError("quality.max_paints > 1 repaints rows below quality.min_overall: set it too")
        return self

    @model_validator(mode="after")
    def _native_masks_need_a_kind_that_takes_them(self) -> JobSpec:
        """``mask.mode: native+composite`` with a kind that cannot take a mask would silently paint the whole
        frame as ``composite`` does: refused, naming the kinds that can."""
        if self.mask.mode == "native+composite" and not get_kind(self.painter.kind).native_masks:
            raise ValueError(
                f"mask.mode native+composite needs a painter kind that takes masks natively "
                f"({', '.join(NATIVE_MASK_KINDS)}); painter.kind is {self.painter.kind} (use mask.mode "
                "composite: every kind composites)"
            )
        return self

    def secret_env_names(self) -> list[str]:
        """Environment variables holding secrets: their values are scrubbed from all stored and shown text."""
        names = [self.designer.api_key_env, self.judge.api_key_env]
        return list(dict.fromkeys(name for name in names if name))

    def resolve_paths(self, base_dir: str | Path) -> JobSpec:
        """Make relative local manifest/output/checkpoint paths absolute against the spec's folder."""

        def absolute(path: str) -> str:
            if "://" in path or posixpath.isabs(path):
                return path
            return str((Path(base_dir) / path).resolve())

        data = self.model_dump()
        data["manifest"] = absolute(self.manifest)
        data["output"] = absolute(self.output)
        if self.limits.source_roots is not None:
            data["limits"]["source_roots"] = [absolute(root) for root in self.limits.source_roots]
        if self.judge.rubric:
            data["judge"]["rubric"] = absolute(self.judge.rubric)
        for field in ("checkpoint", "t2i_checkpoint"):
            checkpoint = getattr(self.painter, field)
            if checkpoint and (checkpoint.startswith((".", "/")) or Path(base_dir, checkpoint).is_dir()):
                data["painter"][field] = absolute(checkpoint)
        return JobSpec.model_validate(data)


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"invalid job spec {source}:"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif "input" in item and item["type"] != "missing":
            message = f"{message} (got {item['input']!r})"
        lines.append(f"  {field}: {message}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value); the value is parsed as YAML so numbers and bools work."""
    if "=" not in text:
        raise SpecError(f"--set {text!r}: expected KEY=VALUE, e.g. painter.steps=10")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part) for part in parts):
        raise SpecError(f"--set {text!r}: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise SpecError(f"--set {text!r}: value is not valid YAML: {exc}") from exc
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides; intermediate keys are created so validation can name unknown ones."""
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(f"--set {text!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Load a JobSpec from YAML, apply overrides, validate, and resolve relative paths."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SpecError(f"job spec not found: {path}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"job spec {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"job spec {path} must be a mapping at the top level, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format_errors(exc, str(path))) from None
    return spec.resolve_paths(path.parent)
