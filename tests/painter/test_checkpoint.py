"""Released layout, key mapping both ways, strict loading, tiny determinism and the cache race."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from transforms.painter.dim import checkpoint as ckpt
from transforms.painter.dim import keymap
from transforms.painter.dim.locate import resolve_checkpoint
from transforms.painter.dim.tiny import build_tiny_checkpoint, ensure_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]


def copy_with(src: str, dst: Path, edit) -> Path:
    """A copy of a checkpoint folder whose released state dict went through ``edit``."""
    shutil.copytree(src, dst)
    state = load_file(str(dst / ckpt.MODEL_FILE))
    edit(state)
    save_file(state, str(dst / ckpt.MODEL_FILE))
    return dst


def load(folder: Path, task: str = "edit"):
    return ckpt.load_modules(
        folder, ckpt.read_arch(folder, task), dtype=torch.float32, device=torch.device("cpu")
    )


def test_saved_in_the_released_layout(tiny_edit_dir):
    keys = set(load_file(str(Path(tiny_edit_dir) / ckpt.MODEL_FILE)))
    for name in (
        "mllm.visual.patch_embed.proj.weight",
        "mllm.model.embed_tokens.weight",
        "mllm.model.layers.1.self_attn.q_proj.weight",
        "mllm.model.norm.weight",
        "projector.0.weight",
        "projector.2.bias",
        "decoder.vae.encoder.conv_in.weight",
        "decoder.model.x_embedder.proj.weight",
        "decoder.model.t_embedder.mlp.0.weight",
        "decoder.model.t_block.1.weight",
        "decoder.model.y_embedder.y_proj.fc1.weight",
        "decoder.model.y_embedder.y_embedding",
        "decoder.model.attention_y_norm.weight",
        "decoder.model.blocks.1.attn.qkv.weight",
        "decoder.model.blocks.1.attn.q_norm.weight",
        "decoder.model.blocks.1.cross_attn.kv_linear.bias",
        "decoder.model.blocks.1.mlp.point_conv.conv.weight",
        "decoder.model.blocks.0.scale_shift_table",
        "decoder.model.final_layer.scale_shift_table",
        "decoder.model.final_layer.linear.weight",
    ):
        assert name in keys, name
    assert "mllm.lm_head.weight" not in keys  # tied to the embeddings
    assert not [k for k in keys if k.startswith(("encoder.", "dit.", "vae."))]


def test_mapping_round_trips_and_splits_fused_tensors(tiny_edit_dir):
    released = load_file(str(Path(tiny_edit_dir) / ckpt.MODEL_FILE))
    ours = keymap.released_to_ours(released)
    qkv = released["decoder.model.blocks.0.attn.qkv.weight"]
    q = ours["dit.transformer.transformer_blocks.0.attn1.to_q.weight"]
    v = ours["dit.transformer.transformer_blocks.0.attn1.to_v.weight"]
    assert torch.equal(q, qkv[: qkv.shape[0] // 3]) and torch.equal(v, qkv[2 * qkv.shape[0] // 3 :])
    assert "dit.y_embedding" in ours and "encoder.model.language_model.norm.weight" in ours
    back = keymap.ours_to_released(ours)
    assert back.keys() == released.keys()
    assert all(torch.equal(back[k], released[k]) for k in released)
    assert keymap.released_name("dit.transformer.transformer_blocks.3.attn2.to_v.bias") == (
        "decoder.model.blocks.3.cross_attn.kv_linear.bias"
    )


def test_reference_only_keys_are_ignored(tmp_path, tiny_edit_dir):
    def add(state):
        state["decoder.model.pos_embed"] = torch.zeros(1, 4, 32)
        state["decoder.text_encoder.layers.0.weight"] = torch.zeros(2)

    folder = copy_with(tiny_edit_dir, tmp_path / "ckpt", add)
    assert load(folder).dit.max_condition_length == 256


def test_missing_key_fails_listing_it(tmp_path, tiny_edit_dir):
    def drop(state):
        del state["decoder.model.blocks.1.attn.qkv.weight"]
        del state["projector.2.bias"]

    folder = copy_with(tiny_edit_dir, tmp_path / "ckpt", drop)
    with pytest.raises(ckpt.CheckpointError) as err:
        load(folder)
    assert "missing" in str(err.value)
    assert "decoder.model.blocks.1.attn.qkv.weight" in str(err.value)
    assert "projector.2.bias" in str(err.value)


def test_extra_key_fails_listing_it(tmp_path, tiny_edit_dir):
    def extra(state):
        state["decoder.model.blocks.7.scale_shift_table"] = torch.zeros(6, 32)  # maps, but no block 7

    folder = copy_with(tiny_edit_dir, tmp_path / "ckpt", extra)
    with pytest.raises(
        ckpt.CheckpointError, match=r"unexpected 1 keys: decoder\.model\.blocks\.7\.scale_shift_table"
    ):
        load(folder)


def test_unknown_key_fails_listing_it(tmp_path, tiny_edit_dir):
    def unknown(state):
        state["decoder.model.blocks.0.attn.extra_gate.weight"] = torch.zeros(2)

    folder = copy_with(tiny_edit_dir, tmp_path / "ckpt", unknown)
    with pytest.raises(keymap.KeyMapError, match=r"decoder\.model\.blocks\.0\.attn\.extra_gate\.weight"):
        load(folder)


def test_shape_mismatch_fails(tmp_path, tiny_edit_dir):
    def reshape(state):
        state["projector.0.bias"] = torch.zeros(7)

    folder = copy_with(tiny_edit_dir, tmp_path / "ckpt", reshape)
    with pytest.raises(ckpt.CheckpointError, match=r"shape mismatch"):
        load(folder)


def test_task_mismatch_fails_early(tmp_path, tiny_t2i_dir):
    with pytest.raises(ckpt.CheckpointError, match="'t2i' checkpoint"):
        ckpt.read_arch(Path(tiny_t2i_dir), "edit")
    # Without dimflow.json's task, the DiT's input channels tell.
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_t2i_dir, folder)
    meta = json.loads((folder / ckpt.ARCH_FILE).read_text())
    del meta["task"]
    (folder / ckpt.ARCH_FILE).write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match="takes 4 input channels"):
        ckpt.read_arch(folder, "edit")


def test_fingerprint_is_the_weights_sha256(tiny_edit_dir):
    from transforms.painter.handler import checkpoint_fingerprint

    data = (Path(tiny_edit_dir) / ckpt.MODEL_FILE).read_bytes()
    assert checkpoint_fingerprint("tiny", "edit") == hashlib.sha256(data).hexdigest()
    assert checkpoint_fingerprint(tiny_edit_dir, "edit") == hashlib.sha256(data).hexdigest()
    with pytest.raises(ckpt.CheckpointError):
        checkpoint_fingerprint(tiny_edit_dir, "t2i")


def test_unknown_checkpoint_names_fail(tmp_path):
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(str(tmp_path / "nowhere" / "x" / "y"), "edit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        resolve_checkpoint(str(tmp_path / "empty"), "edit")


def test_tiny_build_is_deterministic(tmp_path, tiny_edit_dir):
    build_tiny_checkpoint("edit", tmp_path)
    for name in (
        ckpt.MODEL_FILE,
        ckpt.ARCH_FILE,
        "processor/tokenizer.json",
        "processor/preprocessor_config.json",
    ):
        assert (tmp_path / name).read_bytes() == (Path(tiny_edit_dir) / name).read_bytes(), name


def test_ensure_tiny_is_idempotent(tiny_edit_dir):
    before = (Path(tiny_edit_dir) / ckpt.MODEL_FILE).stat().st_mtime_ns
    assert ensure_tiny_checkpoint("edit") == tiny_edit_dir
    assert (Path(tiny_edit_dir) / ckpt.MODEL_FILE).stat().st_mtime_ns == before


def test_two_processes_building_at_once(tmp_path, tiny_t2i_dir):
    code = (
        "import sys; from transforms.painter.dim.tiny import ensure_tiny_checkpoint; "
        "print(ensure_tiny_checkpoint('t2i', sys.argv[1]))"
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    paths = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(paths) == 1
    (folder,) = paths
    assert (Path(folder) / ckpt.MODEL_FILE).read_bytes() == (
        Path(tiny_t2i_dir) / ckpt.MODEL_FILE
    ).read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [Path(folder).name]  # no scratch folders left


def test_dimflow_json_overrides_the_full_size_arch(tmp_path, tiny_edit_dir):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_edit_dir, folder)
    meta = json.loads((folder / ckpt.ARCH_FILE).read_text())
    assert ckpt.read_arch(folder, "edit").data["dit"]["num_layers"] == 2  # tiny, merged over full size
    meta["arch"]["max_condition_length"] = 128
    (folder / ckpt.ARCH_FILE).write_text(json.dumps(meta))
    with pytest.raises(
        ckpt.CheckpointError, match=r"decoder\.model\.y_embedder\.y_embedding|dit\.y_embedding"
    ):
        load(folder)


def test_hub_ids_go_through_snapshot_download():
    # HF_HUB_OFFLINE=1 in tests: an uncached repo fails at once, naming the repo.
    with pytest.raises(FileNotFoundError, match=r"stdKonjac/DIM-4\.6B-Edit.*Hugging Face Hub"):
        resolve_checkpoint("stdKonjac/DIM-4.6B-Edit", "edit")
