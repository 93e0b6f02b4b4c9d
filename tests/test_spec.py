"""JobSpec loading: YAML, --set overrides, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.spec import SpecError, load_spec

BASE = """
name: t
manifest: rows.jsonl
output: out
painter: {checkpoint: tiny, steps: 4}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path):
    spec = load_spec(write(tmp_path, BASE))
    assert spec.manifest == str(tmp_path / "rows.jsonl")
    assert spec.output == str(tmp_path / "out")
    assert spec.painter.checkpoint == "tiny"  # a preset name is not a path
    assert spec.painter.guidance_scale == 7.5 and spec.painter.resolution == 1024
    assert spec.designer.kind == "none" and spec.runner.name == "FnApiRunner"
    limits = spec.limits
    assert (limits.fetch_timeout_s, limits.storage_errors_before_fail_fast, limits.storage_cooldown_s) == (
        60.0,
        3,
        30.0,
    )


def test_overrides_parse_yaml_values(tmp_path):
    spec = load_spec(
        write(tmp_path, BASE),
        ["painter.steps=12", "painter.guidance_scale=4.5", "incremental=true", "output=gs://b/out"],
    )
    assert spec.painter.steps == 12 and spec.painter.guidance_scale == 4.5
    assert spec.incremental is True and spec.output == "gs://b/out"


@pytest.mark.parametrize(
    "text, overrides, expected",
    [
        (BASE + "painter_typo: 1\n", [], "painter_typo: unknown key"),
        (BASE, ["painter.stpes=3"], "painter.stpes: unknown key"),
        (BASE, ["painter.steps=0"], "painter.steps: Input should be greater than or equal to 1"),
        (BASE, ["painter.task=edit"], "painter.task: unknown key"),
        (BASE, ["painter.checkpoint=null"], "painter.checkpoint and painter.t2i_checkpoint are both empty"),
        (BASE, ["designer.kind=openai"], "designer.model is required"),
        (BASE, ["painter.device=tpu"], "painter.device"),
        (BASE, ["painter.device=cuda:0,gpu:1"], "painter.device: Value error, painter device must be auto"),
        (BASE, ["painter.device=cuda:0,gpu:1"], "('gpu:1' is not a device)"),
        (BASE, ["painter.device=0"], "painter.device: Value error, painter device count must be at least 1"),
        (
            BASE,
            ["painter.device=cpu,cuda:0"],
            "painter.device: Value error, painter device must name devices of one",
        ),
        (BASE, ["painter.device=[cuda:0, 7]"], "painter.device"),
        (BASE, ["painter.device=true"], "painter.device"),
        (BASE, ["painter.device=cpu,,cpu"], "('' is not a device)"),
        (
            BASE,
            ["runner.paint_accelerator=nvidia-l4"],
            "runner.paint_accelerator: Value error, must look like",
        ),
        (
            BASE,
            ["runner.paint_accelerator=type:nvidia-l4;count:0;install-nvidia-driver"],
            "runner.paint_accelerator",
        ),
        (
            BASE,
            ["runner.paint_accelerator=type:nvidia-l4;count:two;install-nvidia-driver"],
            "runner.paint_accelerator",
        ),
        (BASE, ["runner.paint_accelerator=type:nvidia-l4;count:1"], "install-nvidia-driver"),
        (BASE, ["runner.paint_accelerator=type:;count:1;install-nvidia-driver"], "runner.paint_accelerator"),
        (
            BASE,
            ["runner.paint_min_ram=lots"],
            "runner.paint_min_ram: Value error, must be a size such as 32GB",
        ),
        (BASE, ["runner.paint_min_ram=32"], "runner.paint_min_ram: Value error"),
        (BASE, ["runner.paint_min_ram=-1GB"], "runner.paint_min_ram: Value error"),
        (BASE, ["runner.paint_min_ram=infGB"], "runner.paint_min_ram: Value error"),
        (BASE, ["runner.paint_min_ram=0.1B"], "runner.paint_min_ram: Value error"),
        (BASE, ["runner.paint_min_ram=32XB"], "runner.paint_min_ram: Value error"),
        (BASE, ["runner.paint_min_ram=32"], "(got 32)"),
        (BASE, ["runner.paint_min_ram='32'"], "runner.paint_min_ram: Value error, must be a size"),
        (BASE, ["runner.paint_gpu=1"], "runner.paint_gpu: unknown key"),
        (BASE, ["limits.fetch_timeout_s=0"], "limits.fetch_timeout_s: Input should be greater than 0"),
        (BASE, ["limits.storage_errors_before_fail_fast=0"], "limits.storage_errors_before_fail_fast"),
        (BASE, ["limits.storage_cooldown_s=-1"], "limits.storage_cooldown_s: Input should be greater than 0"),
        (BASE, ["limits.fetch_timeout_s=soon"], "limits.fetch_timeout_s"),
        (
            BASE,
            ["painter.compile=fast"],
            "painter.compile: Value error, must be false, true (= default), default or max-autotune (got 'fast')",
        ),
        (BASE, ["painter.compile=reduce-overhead"], "painter.compile: Value error"),
        (BASE, ["painter.compile=0"], "got 0"),
        (BASE, ["painter.compile=null"], "got None"),
        (BASE, ["painter.vae_dtype=float32"], "painter.vae_dtype: Input should be 'auto' or 'same'"),
        ("name: t\noutput: out\n", [], "manifest: Field required"),
        (BASE.replace("name: t", "name: Bad Name"), [], "name: String should match pattern"),
    ],
)
def test_errors_name_the_field(tmp_path, text, overrides, expected):
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text), overrides)
    assert expected in str(info.value)


def test_bad_override_syntax(tmp_path):
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        load_spec(write(tmp_path, BASE), ["painter.steps"])
    with pytest.raises(SpecError, match="is not a section"):
        load_spec(write(tmp_path, BASE), ["name.x=1"])


def test_missing_and_non_mapping_spec(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(write(tmp_path, "- a\n- b\n"))


def test_demo_spec_is_valid():
    spec = load_spec(Path(__file__).resolve().parents[1] / "jobs" / "demo.yaml")
    assert spec.painter.checkpoint == "tiny" and spec.manifest.endswith("jobs/demo/manifest.jsonl")


def test_checkpoints_per_mode(tmp_path):
    (tmp_path / "ckpt-t2i").mkdir()
    spec = load_spec(write(tmp_path, BASE), ["painter.t2i_checkpoint=ckpt-t2i"])
    assert spec.painter.checkpoints() == {"edit": "tiny", "t2i": str(tmp_path / "ckpt-t2i")}
    only_t2i = load_spec(write(tmp_path, BASE), ["painter.checkpoint=null", "painter.t2i_checkpoint=tiny"])
    assert only_t2i.painter.checkpoints() == {"t2i": "tiny"}


@pytest.mark.parametrize(
    ("override", "device"),
    [
        ("painter.device=auto", "auto"),
        ("painter.device=2", "2"),
        ("painter.device= cuda:0 , cuda:1 ", "cuda:0,cuda:1"),
        ("painter.device=[cuda:0, cuda:1]", "cuda:0,cuda:1"),
        ("painter.device=cpu,cpu", "cpu,cpu"),
    ],
)
def test_painter_device_forms(tmp_path, override, device):
    assert load_spec(write(tmp_path, BASE), [override]).painter.device == device


def test_paint_resource_hints(tmp_path):
    spec = load_spec(
        write(tmp_path, BASE),
        [
            "runner.paint_accelerator=type:nvidia-l4; count:2; install-nvidia-driver",
            "runner.paint_min_ram=30 GiB",
        ],
    )
    assert spec.runner.paint_resource_hints() == {
        "accelerator": "type:nvidia-l4;count:2;install-nvidia-driver",
        "min_ram": "30 GiB",
    }
    assert load_spec(write(tmp_path, BASE)).runner.paint_resource_hints() == {}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("false", False), ("true", "default"), ("default", "default"), ("max-autotune", "max-autotune")],
)
def test_compile_modes_and_the_old_boolean(tmp_path, value, expected):
    spec = load_spec(write(tmp_path, BASE), [f"painter.compile={value}"])
    assert spec.painter.compile == expected
    assert load_spec(write(tmp_path, BASE)).painter.compile is False


def test_a_half_dtype_on_cpu_is_accepted_with_the_default_vae_dtype(tmp_path):
    for device in ("cpu", "mps", "cuda"):
        spec = load_spec(write(tmp_path, BASE), ["painter.dtype=bfloat16", f"painter.device={device}"])
        assert spec.painter.vae_dtype == "auto"


def render_key_of(tmp_path, overrides: list[str]) -> str:
    from pipeline.edit import painter_config
    from transforms.schema import render_key

    spec = load_spec(write(tmp_path, BASE), overrides)
    return render_key(
        source_sha256="a" * 64,
        instruction="make it red",
        designer_config={"kind": "none"},
        painter_config={**painter_config(spec), "mode": "edit"},
        checkpoint_sha256="c" * 64,
        seed=233,
    )


def test_painter_config_of_a_float32_job_is_the_one_it_had(tmp_path):
    """vae_dtype and compile modes leave existing float32 jobs' render keys alone (no catalog re-render)."""
    from pipeline.edit import painter_config

    spec = load_spec(write(tmp_path, BASE), ["painter.dtype=float32"])
    # The key's fields before painter.vae_dtype and compile modes existed, with their values.
    assert painter_config(spec) == {
        "kind": "dim",
        "steps": 4,
        "guidance_scale": 7.5,
        "resolution": 1024,
        "dtype": "float32",
        "noise_device": "cpu",
        "aspect": "square",
        "compile": False,
        "vae_tile_pixels": None,
    }
    float32 = render_key_of(tmp_path, ["painter.dtype=float32"])
    assert render_key_of(tmp_path, ["painter.dtype=float32", "painter.vae_dtype=same"]) == float32
    assert render_key_of(tmp_path, ["painter.dtype=float32", "painter.vae_dtype=auto"]) == float32
    # compile: true keeps the key it had as a boolean; the new mode is a new key (kernels round differently)
    compiled = load_spec(write(tmp_path, BASE), ["painter.dtype=float32", "painter.compile=true"])
    assert painter_config(compiled)["compile"] is True
    assert render_key_of(tmp_path, ["painter.dtype=float32", "painter.compile=default"]) == render_key_of(
        tmp_path, ["painter.dtype=float32", "painter.compile=true"]
    )
    assert render_key_of(
        tmp_path, ["painter.dtype=float32", "painter.compile=max-autotune"]
    ) != render_key_of(tmp_path, ["painter.dtype=float32", "painter.compile=true"])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "auto"])
def test_vae_dtype_enters_the_key_only_where_it_changes_pixels(tmp_path, dtype):
    """A half (or auto: bfloat16 on CUDA) painter: auto's float32 VAE is a new key; same keeps the old one."""
    from pipeline.edit import painter_config

    same = load_spec(write(tmp_path, BASE), [f"painter.dtype={dtype}", "painter.vae_dtype=same"])
    assert "vae_dtype" not in painter_config(same)
    auto = render_key_of(tmp_path, [f"painter.dtype={dtype}"])
    assert auto != render_key_of(tmp_path, [f"painter.dtype={dtype}", "painter.vae_dtype=same"])


MINIMAL = "name: t\nmanifest: rows.jsonl\noutput: out\n"


def test_painter_defaults_follow_the_kind(tmp_path):
    """Unset sampling fields and checkpoints take the kind's defaults; dim's are the ones the spec always had
    (so a spec without a kind keeps its render keys); what a spec sets wins, an explicit null included."""
    from pipeline.edit import painter_config

    plain = load_spec(write(tmp_path, MINIMAL))
    dim = load_spec(write(tmp_path, MINIMAL), ["painter.kind=dim"])
    assert plain.painter == dim.painter and painter_config(plain) == painter_config(dim)
    assert (plain.painter.checkpoint, plain.painter.t2i_checkpoint) == ("stdKonjac/DIM-4.6B-Edit", None)
    assert (plain.painter.steps, plain.painter.guidance_scale, plain.painter.resolution) == (30, 7.5, 1024)
    qwen = load_spec(write(tmp_path, MINIMAL), ["painter.kind=qwen-image-edit"]).painter
    assert (qwen.checkpoint, qwen.t2i_checkpoint) == ("Qwen/Qwen-Image-Edit-2511", None)
    assert (qwen.steps, qwen.guidance_scale, qwen.resolution) == (40, 4.0, 1024)
    overridden = load_spec(
        write(tmp_path, MINIMAL),
        [
            "painter.kind=qwen-image-edit",
            "painter.steps=12",
            "painter.checkpoint=null",
            "painter.t2i_checkpoint=tiny",
            "painter.guidance_scale=1.0",
        ],
    ).painter
    assert (overridden.steps, overridden.guidance_scale, overridden.resolution) == (12, 1.0, 1024)
    assert (overridden.checkpoint, overridden.t2i_checkpoint) == (None, "tiny")
    assert painter_config(load_spec(write(tmp_path, MINIMAL), ["painter.kind=qwen-image-edit"]))["kind"] == (
        "qwen-image-edit"
    )


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            ["painter.kind=sana"],
            "painter.kind: Value error, painter kind must be one of dim, qwen-image-edit",
        ),
        (["painter.kind=7"], "painter.kind"),
        (["painter.kind=[dim]"], "painter.kind"),
        (["painter.kind=null"], "painter.kind"),
        (
            ["painter.kind=qwen-image-edit", "painter.compile=default"],
            "painter.compile applies to painter.kind dim",
        ),
        (
            ["painter.kind=qwen-image-edit", "painter.vae_dtype=same"],
            "painter.vae_dtype applies to painter.kind dim",
        ),
        (["painter.kind=qwen-image-edit", "painter.resolution=16000"], "painter.resolution"),
    ],
)
def test_bad_painter_kinds_and_settings_name_the_field(tmp_path, overrides, fragment):
    with pytest.raises(SpecError) as error:
        load_spec(write(tmp_path, MINIMAL), overrides)
    assert fragment in str(error.value)


@pytest.mark.parametrize("kind", ["dim", "longcat-image-edit"])
def test_native_masks_with_a_kind_that_takes_none_are_refused(tmp_path, kind):
    """mask.mode native+composite with dim or longcat would paint the whole frame unmasked: refused, naming
    the kinds that take masks; composite (every kind) is accepted."""
    with pytest.raises(SpecError) as error:
        load_spec(write(tmp_path, MINIMAL), [f"painter.kind={kind}", "mask.mode=native+composite"])
    message = str(error.value)
    assert "mask.mode native+composite needs a painter kind that takes masks natively" in message
    assert "(qwen-image-edit); painter.kind is " + kind in message
    assert load_spec(write(tmp_path, MINIMAL), [f"painter.kind={kind}", "mask.mode=composite"]).mask.mode == (
        "composite"
    )


def test_native_masks_with_qwen_are_accepted(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL), ["painter.kind=qwen-image-edit", "mask.mode=native+composite"])
    assert spec.mask.mode == "native+composite" and spec.painter.kind == "qwen-image-edit"


def test_mask_invert_at_the_top_level_is_mask_invert():
    """The issue's spelling, ``mask_invert: true`` per job, sets ``mask.invert``; a disagreement is refused
    naming both, and a non-boolean is refused by the field's own validator."""
    from pipeline.spec import JobSpec

    base = {"name": "j", "manifest": "m.jsonl", "output": "out"}
    assert JobSpec.model_validate({**base, "mask_invert": True}).mask.invert is True
    assert (
        JobSpec.model_validate({**base, "mask_invert": True, "mask": {"feather_px": 0}}).mask.feather_px == 0
    )
    assert (
        JobSpec.model_validate({**base, "mask_invert": False, "mask": {"invert": False}}).mask.invert is False
    )
    with pytest.raises(ValueError, match="mask_invert .* and mask.invert .* disagree"):
        JobSpec.model_validate({**base, "mask_invert": True, "mask": {"invert": False}})
    with pytest.raises(ValueError, match="invert"):
        JobSpec.model_validate({**base, "mask_invert": "sometimes"})
