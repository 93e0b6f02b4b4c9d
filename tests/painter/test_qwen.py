"""painter.kind qwen-image-edit on the tiny Qwen checkpoints: parity with diffusers' own pipelines, per-row
seeds, the checkpoint fingerprint and its cache, the handler's replicas and failure isolation, and the
errors that name the row or the field."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.painter.support import image_bytes, max_abs_diff, t2i_parity
from transforms.painter.base import PaintParams, PaintRequest
from transforms.painter.diffusers_checkpoint import (
    CheckpointNotFound,
    checkpoint_sha256,
    file_sha256,
    fingerprint_files,
)
from transforms.painter.handler import PainterModelHandler, PaintFailure, checkpoint_fingerprint
from transforms.painter.kinds import get_kind

KIND = "qwen-image-edit"
CPU = torch.device("cpu")
# guidance 4 > 1: true classifier-free guidance against the negative prompt runs (two forwards per step)
PARAMS = PaintParams(steps=2, guidance_scale=4.0, resolution=64)


@pytest.fixture(scope="module")
def edit_dir():
    from transforms.painter.qwen.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint("edit")


@pytest.fixture(scope="module")
def t2i_dir():
    from transforms.painter.qwen.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint("t2i")


@pytest.fixture(scope="module")
def qwen_edit(edit_dir):
    return get_kind(KIND).load_painter("tiny", "edit", dtype=torch.float32, device=CPU)


@pytest.fixture(scope="module")
def qwen_t2i(t2i_dir):
    return get_kind(KIND).load_painter("tiny", "t2i", dtype=torch.float32, device=CPU)


def edit_rows():
    return [
        PaintRequest("wide", "make the background white", 7, image_bytes((96, 64))),
        PaintRequest("tall-rgba", "add a soft shadow", 8, image_bytes((48, 80), mode="RGBA")),
        PaintRequest("wide-again", "make the background white", 9, image_bytes((96, 64))),
    ]


def t2i_rows():
    return [
        PaintRequest("cup", "a red cup on a wooden table", 1, None),
        PaintRequest("sky", "a blue sky over a calm sea at noon, with a small boat", 2, None),
        PaintRequest("cup-other-seed", "a red cup on a wooden table", 3, None),
    ]


# ------------------------------------------------------------------------------------------ parity


def test_edit_parity_with_a_direct_pipeline_call(qwen_edit, edit_dir, capsys):
    """The pipeline is the reference: our painter gives its pixels for the same checkpoint, inputs, seeds."""
    from diffusers import QwenImageEditPlusPipeline

    from transforms.painter.diffusers_painter import source_image
    from transforms.painter.diffusers_processor import load_processor

    reference = QwenImageEditPlusPipeline.from_pretrained(
        str(edit_dir), processor=load_processor(edit_dir, "processor"), dtype=torch.float32
    )
    reference.set_progress_bar_config(disable=True)
    rows = edit_rows()[:2]
    ours = qwen_edit.paint(rows, PARAMS)
    diffs = []
    for row, painting in zip(rows, ours, strict=True):
        expected = reference(
            image=source_image(row),
            prompt=row.prompt,
            negative_prompt=" ",
            true_cfg_scale=PARAMS.guidance_scale,
            num_inference_steps=PARAMS.steps,
            width=64,
            height=64,
            generator=torch.Generator().manual_seed(row.seed),
        ).images[0]
        diffs.append(max_abs_diff(painting.image, expected))
    with capsys.disabled():
        print(f"\nqwen edit parity: max abs pixel diff per row {diffs}")
    assert diffs == [0, 0]
    # and the rows differ from each other: the comparison can fail
    assert max_abs_diff(ours[0].image, ours[1].image) > 0


def test_t2i_parity_with_a_direct_pipeline_call_alone_and_batched(t2i_dir, capsys):
    """Row by row (CPU default) against one direct call per row; batched against one direct batched call."""
    from diffusers import QwenImagePipeline

    reference = QwenImagePipeline.from_pretrained(str(t2i_dir), dtype=torch.float32)
    reference.set_progress_bar_config(disable=True)
    rows = t2i_rows()[:2]

    def direct(prompts, seeds):
        return reference(
            prompt=prompts,
            negative_prompt=[" "] * len(prompts),
            true_cfg_scale=PARAMS.guidance_scale,
            num_inference_steps=PARAMS.steps,
            width=64,
            height=64,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds],
        ).images

    found = t2i_parity(KIND, rows, PARAMS, direct)
    with capsys.disabled():
        print(f"\nqwen t2i parity (max abs pixel diff per row; prompts padded and masked): {found}")
    assert found["alone"] == [0, 0] and found["batched"] == [0, 0]


# ------------------------------------------------------------------------------------------ seeds


def test_an_edit_row_is_the_same_alone_or_in_a_batch(qwen_edit):
    rows = edit_rows()
    together = qwen_edit.paint(rows, PARAMS)
    for row, painting in zip(rows, together, strict=True):
        (alone,) = qwen_edit.paint([row], PARAMS)
        assert alone.image.tobytes() == painting.image.tobytes(), row.key
        assert painting.fields["batch_size"] == 3 and alone.fields["batch_size"] == 1
    # same source and prompt, another seed: another image (the seed is the row's own)
    assert together[0].image.tobytes() != together[2].image.tobytes()


def test_a_t2i_row_is_the_same_alone_or_in_a_batch(qwen_t2i):
    rows = t2i_rows()
    together = qwen_t2i.paint(rows, PARAMS)
    reversed_order = qwen_t2i.paint(rows[::-1], PARAMS)[::-1]
    for row, painting, other in zip(rows, together, reversed_order, strict=True):
        (alone,) = qwen_t2i.paint([row], PARAMS)
        assert alone.image.tobytes() == painting.image.tobytes() == other.image.tobytes(), row.key
    assert together[0].image.tobytes() != together[2].image.tobytes()


def test_fields_sizes_and_aspect(qwen_edit):
    params = PaintParams(steps=1, guidance_scale=1.0, resolution=64, aspect="preserve")
    wide, tall, _ = qwen_edit.paint(edit_rows(), params)
    assert wide.image.size == (80, 48) and wide.image.width % 16 == 0  # nearest bucket to 3:2 at ~64^2
    assert tall.image.size[0] < tall.image.size[1] and tall.image.size[1] % 16 == 0
    assert wide.fields == {
        "painter": "qwen-image-edit:tiny-edit",
        "checkpoint_sha256": checkpoint_fingerprint("tiny", "edit", kind=KIND),
        "steps": 1,
        "guidance_scale": 1.0,
        "dtype": "float32",
        "vae_dtype": "float32",
        "device": "cpu",
        "batch_size": 3,
        "width": 80,
        "height": 48,
    }


def test_guidance_at_or_below_one_sends_no_negative_prompt(qwen_edit):
    row = edit_rows()[0]
    off = qwen_edit.call_arguments([row], PaintParams(2, 1.0, 64), (64, 64))
    on = qwen_edit.call_arguments([row], PaintParams(2, 4.0, 64), (64, 64))
    assert "negative_prompt" not in off and off["true_cfg_scale"] == 1.0
    assert on["negative_prompt"] == " " and on["true_cfg_scale"] == 4.0
    assert "guidance_scale" not in on  # Qwen's transformers are not guidance-distilled


# ------------------------------------------------------------------------------------------ checks


@pytest.mark.parametrize(
    ("task", "request_", "message"),
    [
        ("edit", PaintRequest("no-source", "x", 1, None), "row 'no-source': task is 'edit'"),
        ("t2i", PaintRequest("has-source", "x", 1, image_bytes()), "row 'has-source': task is 't2i'"),
        ("edit", PaintRequest("blank", "   ", 1, image_bytes()), "row 'blank': empty prompt"),
        ("edit", PaintRequest("neg-seed", "x", -1, image_bytes()), "row 'neg-seed': seed"),
        ("edit", PaintRequest("huge-seed", "x", 2**64, image_bytes()), "row 'huge-seed': seed"),
        ("edit", PaintRequest("garbage", "x", 1, b"\x89PNG not really"), "row 'garbage': cannot decode"),
    ],
)
def test_bad_requests_name_the_row(qwen_edit, qwen_t2i, task, request_, message):
    painter = qwen_edit if task == "edit" else qwen_t2i
    with pytest.raises(ValueError, match=message):
        painter.paint([request_], PARAMS)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (PaintParams(2, 4.0, 72), "multiple of the latent grid \\(16 px"),
        (PaintParams(0, 4.0, 64), "steps"),
        (PaintParams(2, -1.0, 64), "guidance_scale"),
    ],
)
def test_bad_params_are_refused_before_painting(qwen_edit, params, message):
    with pytest.raises(ValueError, match=message):
        qwen_edit.paint(edit_rows()[:1], params)
    with pytest.raises(ValueError, match=message):
        checkpoint_fingerprint("tiny", "edit", params, kind=KIND)


def test_dim_only_settings_are_refused_by_the_loader():
    kind = get_kind(KIND)
    with pytest.raises(ValueError, match="painter.compile applies to painter.kind dim only"):
        kind.load_painter("tiny", "edit", dtype=torch.float32, device=CPU, compile="default")
    with pytest.raises(ValueError, match="painter.vae_dtype applies to painter.kind dim only"):
        kind.load_painter("tiny", "edit", dtype=torch.float32, device=CPU, vae_dtype="same")


# ------------------------------------------------------------------------------------------ checkpoints


def test_checkpoint_names_and_their_errors(edit_dir, t2i_dir, tmp_path):
    assert checkpoint_fingerprint(str(edit_dir), "edit", kind=KIND) == checkpoint_fingerprint(
        "tiny", "edit", kind=KIND
    )
    with pytest.raises(CheckpointNotFound, match="is a QwenImagePipeline.*painter.t2i_checkpoint"):
        checkpoint_fingerprint(str(t2i_dir), "edit", kind=KIND)
    with pytest.raises(CheckpointNotFound, match="is a QwenImageEditPlusPipeline.*painter.checkpoint"):
        checkpoint_fingerprint(str(edit_dir), "t2i", kind=KIND)
    with pytest.raises(CheckpointNotFound, match="has no model_index.json"):
        checkpoint_fingerprint(str(tmp_path), "edit", kind=KIND)
    # HF_HUB_OFFLINE=1 (tests/conftest.py): an uncached repo id fails at once, naming it and why
    with pytest.raises(
        CheckpointNotFound, match="'Qwen/Qwen-Image-Edit-2511' is not a local folder.*offline"
    ):
        checkpoint_fingerprint("Qwen/Qwen-Image-Edit-2511", "edit", kind=KIND)
    with pytest.raises(CheckpointNotFound, match="neither a folder"):
        checkpoint_fingerprint("not a/repo id/at all", "edit", kind=KIND)
    weightless = tmp_path / "weightless"
    shutil.copytree(edit_dir, weightless, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(CheckpointNotFound, match="no \\*.safetensors"):
        checkpoint_fingerprint(str(weightless), "edit", kind=KIND)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text("{not json")
    with pytest.raises(CheckpointNotFound, match="cannot read it"):
        checkpoint_fingerprint(str(tmp_path / "broken"), "edit", kind=KIND)


def test_fingerprint_covers_every_weight_and_config_file(edit_dir, tmp_path):
    import hashlib

    names = [path.relative_to(edit_dir).as_posix() for path in fingerprint_files(edit_dir)]
    assert "model_index.json" in names and "transformer/diffusion_pytorch_model.safetensors" in names
    assert "text_encoder/model.safetensors" in names and "vae/diffusion_pytorch_model.safetensors" in names
    assert "transformer/config.json" in names and "processor/tokenizer.json" in names
    expected = hashlib.sha256()
    for name in names:
        data = (edit_dir / name).read_bytes()
        expected.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    assert checkpoint_sha256(edit_dir, tmp_path / "cache") == expected.hexdigest()
    copy = tmp_path / "copy"
    shutil.copytree(edit_dir, copy)
    assert checkpoint_sha256(copy, tmp_path / "cache") == expected.hexdigest()  # names are relative
    # one weight byte changed, or a config changed, or a file renamed: another fingerprint
    for change in ("weights", "config", "rename"):
        variant = tmp_path / change
        shutil.copytree(edit_dir, variant)
        if change == "weights":
            path = variant / "vae" / "diffusion_pytorch_model.safetensors"
            data = bytearray(path.read_bytes())
            data[-1] ^= 1
            path.write_bytes(bytes(data))
        elif change == "config":
            path = variant / "transformer" / "config.json"
            path.write_text(path.read_text().replace('"num_layers": 2', '"num_layers": 2 '))
        else:
            (variant / "vae" / "diffusion_pytorch_model.safetensors").rename(
                variant / "vae" / "w.safetensors"
            )
        assert checkpoint_sha256(variant, tmp_path / "cache") != expected.hexdigest(), change


def test_per_file_hashes_are_cached_by_path_size_and_mtime(tmp_path):
    """A file is read once: the next call takes the cached hash (shown by planting a different one), and a
    change of size or mtime hashes it anew."""
    import hashlib
    import os

    cache = tmp_path / "cache"
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights" * 1000)
    real = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert file_sha256(weights, cache) == real
    (entry,) = [p for p in cache.rglob("*") if p.is_file()]
    entry.write_text("f" * 64 + "\n")  # what the cache says wins while path, size and mtime match
    assert file_sha256(weights, cache) == "f" * 64
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert file_sha256(weights, cache) == real  # touched: hashed again
    entry.write_text("not a hash")  # a damaged entry is ignored
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(weights, cache) == real
    link = tmp_path / "link.safetensors"
    link.symlink_to(weights)  # HF snapshots link to blobs: the blob's entry is used
    assert file_sha256(link, cache) == real


def test_tiny_builds_are_deterministic_and_race_safe(tmp_path):
    import threading

    from transforms.painter.qwen.tiny import ensure_tiny_checkpoint

    folders: list = []
    threads = [
        threading.Thread(target=lambda: folders.append(ensure_tiny_checkpoint("t2i", tmp_path)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(folders) == 2 and folders[0] == folders[1]
    assert [p.name for p in tmp_path.iterdir()] == [folders[0].name]  # no scratch folder left behind
    from transforms.painter.qwen.tiny import ensure_tiny_checkpoint as again

    assert checkpoint_sha256(folders[0], tmp_path / "c1") == checkpoint_sha256(again("t2i"), tmp_path / "c2")


# ------------------------------------------------------------------------------------------ handler


def test_handler_replicas_and_failure_isolation_for_the_kind(edit_dir):
    """Two CPU replicas load through the kind's loader; a batch with an undecodable source fails that row
    alone, the others are painted as when alone."""
    handler = PainterModelHandler(
        checkpoint="tiny", task="edit", params=PARAMS, batch_size=3, kind=KIND, device="cpu,cpu"
    )
    assert handler.get_metrics_namespace() == "dimflow_painter_qwen-image-edit"
    model = handler.load_model()
    assert model.devices == ("cpu#0", "cpu#1") and model.name == "qwen-image-edit:tiny-edit"
    good = edit_rows()[:2]
    bad = PaintRequest("broken", "x", 1, b"not an image at all")
    results = handler.run_inference([good[0], bad, good[1]], model)
    assert [r.example.key for r in results] == ["wide", "broken", "tall-rgba"]
    failure = results[1].inference
    assert isinstance(failure, PaintFailure) and "row 'broken': cannot decode" in failure.error
    for row, result in zip(good, (results[0], results[2]), strict=True):
        (alone,) = model.replicas[0].painter.paint([row], PARAMS)
        assert result.inference.image.tobytes() == alone.image.tobytes()
        assert result.inference.fields["device"] in ("cpu#0", "cpu#1")


def test_handler_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="painter kind must be one of dim, qwen-image-edit"):
        PainterModelHandler(checkpoint="tiny", task="edit", params=PARAMS, kind="sana")


# ------------------------------------------------------------------------------------------ job keys


def _job_spec(tmp_path, kind: str, **painter):
    from pipeline.spec import JobSpec

    return JobSpec.model_validate(
        {
            "name": "keys",
            "manifest": str(tmp_path / "m.jsonl"),
            "output": str(tmp_path / "out"),
            "painter": {
                "kind": kind,
                "checkpoint": "tiny",
                "t2i_checkpoint": "tiny",
                "resolution": 64,
                **painter,
            },
        }
    )


def test_a_bad_checkpoint_refuses_the_job_naming_the_field(tmp_path, t2i_dir):
    from pipeline.preflight import PreflightError
    from pipeline.run import job_keys

    with pytest.raises(PreflightError, match=r"painter \(checkpoint '.*t2i.*'\): .*is a QwenImagePipeline"):
        job_keys(_job_spec(tmp_path, KIND, checkpoint=str(t2i_dir)))
    with pytest.raises(PreflightError, match=r"painter \(t2i_checkpoint 'Qwen/Qwen-Image'\): .*Hugging Face"):
        job_keys(_job_spec(tmp_path, KIND, t2i_checkpoint="Qwen/Qwen-Image"))
    with pytest.raises(PreflightError, match=r"painter \(checkpoint 'tiny'\): resolution 72 .*\(16 px"):
        job_keys(_job_spec(tmp_path, KIND, resolution=72))
