"""The painter's speed levers keep their promises: cross-attention keys/values computed once per sampling call
(not per step) and freed after it, batched rows with mixed condition lengths equal to rows alone, modules in
the job's dtype with a float32 solver state, and the torch.compile switch plumbed through."""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager

import pytest
import torch

from tests.painter.support import image_bytes
from transforms.painter.base import PaintParams, PaintRequest
from transforms.painter.dim import sampler
from transforms.painter.dim.dit import CrossCondition

PARAMS = PaintParams(steps=4, guidance_scale=7.5, resolution=64)
SOURCE = image_bytes((80, 64))
PROMPTS = (
    "red",
    "a much longer prompt that describes the whole scene in detail, object by object",
    "add a small white cat",
)


def rows(task: str) -> list[PaintRequest]:
    source = SOURCE if task == "edit" else None
    return [PaintRequest(key=f"r{i}", prompt=p, seed=20 + i, source=source) for i, p in enumerate(PROMPTS)]


@contextmanager
def batched(painter, row_by_row: bool = False):
    before = painter.row_by_row
    painter.row_by_row = row_by_row
    try:
        yield painter
    finally:
        painter.row_by_row = before


@contextmanager
def count_calls(modules: dict[str, torch.nn.Module]):
    """name -> list of the leading (batch) sizes each call saw."""
    seen: dict[str, list[int]] = {name: [] for name in modules}
    handles = [
        module.register_forward_hook(
            lambda _m, args, _out, name=name: seen[name].append(int(args[0].shape[0]))
        )
        for name, module in modules.items()
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def cross_modules(painter) -> dict[str, torch.nn.Module]:
    transformer = painter.modules.dit.transformer
    modules = {"caption_projection": transformer.caption_projection}
    for index, block in enumerate(transformer.transformer_blocks):
        modules |= {f"{index}.to_k": block.attn2.to_k, f"{index}.to_v": block.attn2.to_v}
        modules |= {f"{index}.to_q": block.attn2.to_q}
    return modules


def test_cross_keys_values_are_computed_once_per_call_not_per_step(edit_painter):
    steps = 3
    params = PaintParams(steps=steps, guidance_scale=7.5, resolution=64)
    layers = len(edit_painter.modules.dit.transformer.transformer_blocks)
    with batched(edit_painter), count_calls(cross_modules(edit_painter)) as seen:
        edit_painter.render(rows("edit"), params)
    # One sampling call for the batch: the conditions (3 rows, one padded batch) and the null condition
    # (once, shared by the 3 unconditional rows); queries at every step on [uncond rows, cond rows].
    assert seen["caption_projection"] == [3, 1]
    for index in range(layers):
        assert seen[f"{index}.to_k"] == [3, 1] and seen[f"{index}.to_v"] == [3, 1]
        assert seen[f"{index}.to_q"] == [6] * steps

    with batched(edit_painter, row_by_row=True), count_calls(cross_modules(edit_painter)) as seen:
        edit_painter.render(rows("edit"), params)
    # Row by row: one sampling call per row, each with its condition and its null condition.
    for index in range(layers):
        assert seen[f"{index}.to_k"] == [1, 1] * 3
        assert seen[f"{index}.to_q"] == [2] * (3 * steps)


def test_without_guidance_no_null_condition_is_projected(t2i_painter):
    params = PaintParams(steps=3, guidance_scale=1.0, resolution=64)
    with batched(t2i_painter), count_calls(cross_modules(t2i_painter)) as seen:
        t2i_painter.render(rows("t2i")[:2], params)
    assert seen["caption_projection"] == [2]
    assert seen["0.to_q"] == [2, 2, 2]


@pytest.mark.parametrize(("painter_name", "guidance_scale"), [("edit_painter", 7.5), ("t2i_painter", 1.0)])
def test_batched_mixed_lengths_equal_rows_alone(request, painter_name, guidance_scale):
    painter = request.getfixturevalue(painter_name)
    task = "edit" if painter_name == "edit_painter" else "t2i"
    params = PaintParams(steps=2, guidance_scale=guidance_scale, resolution=64)
    requests = rows(task)
    crosses: list[CrossCondition] = []
    original = painter.modules.dit.cross_condition

    def spy(*args, **kwargs):
        crosses.append(original(*args, **kwargs))
        return crosses[-1]

    painter.modules.dit.cross_condition = spy
    try:
        with batched(painter):
            together = painter.render(requests, params)
        alone = [painter.render([r], params) for r in requests]
    finally:
        del painter.modules.dit.cross_condition
    mixed = crosses[0]
    assert len(set(mixed.lengths)) == 3 and mixed.bias is not None  # the padded, masked path ran
    assert all(c.bias is None for c in crosses[1:])  # a row alone is not padded
    for index, image in enumerate(alone):
        assert (together[index] - image[0]).abs().max() <= 1e-4


def test_cached_forward_matches_the_stock_transformer_row_by_row(edit_painter):
    """Padded + masked + precomputed K/V on a mixed batch == diffusers' own forward on each row's N tokens."""
    dit = edit_painter.modules.dit
    generator = torch.Generator().manual_seed(0)
    channels = dit.y_embedding.shape[1]
    conditions = [torch.randn(n, channels, generator=generator) for n in (3, 11, 7)]
    latents = torch.randn(6, dit.transformer.config.in_channels, 2, 2, generator=generator)
    timestep = torch.tensor([999.0, 500.0, 3.0] * 2)
    stock = []
    captions = [dit.null_condition(c.shape[0]) for c in conditions] + conditions
    with torch.inference_mode():
        for index, caption in enumerate(captions):
            stock.append(
                dit.transformer(
                    hidden_states=latents[index : index + 1],
                    encoder_hidden_states=caption[None],
                    timestep=timestep[index : index + 1],
                    return_dict=False,
                )[0]
            )
        for pad_multiple in (1, 8):  # 8: what the painter uses on CUDA
            cross = dit.cross_condition(conditions, with_null=True, pad_multiple=pad_multiple)
            ours = dit(latents, cross, timestep)
            assert (ours - torch.cat(stock)).abs().max() <= 1e-5
        legacy = dit(latents, captions, timestep)  # the list-of-conditions call
        assert (legacy - torch.cat(stock)).abs().max() <= 1e-5


def test_cross_condition_is_freed_after_a_render(edit_painter):
    dit = edit_painter.modules.dit
    refs: list[weakref.ref] = []
    original = dit.cross_condition

    def spy(*args, **kwargs):
        cross = original(*args, **kwargs)
        refs.extend(
            weakref.ref(t) for t in (*cross.keys, *cross.values, *cross.null_keys, *cross.null_values)
        )
        refs.append(weakref.ref(cross))
        return cross

    dit.cross_condition = spy
    try:
        with batched(edit_painter):
            edit_painter.render(rows("edit")[:2], PaintParams(steps=2, guidance_scale=7.5, resolution=64))
    finally:
        del dit.cross_condition
    assert refs and all(ref() is None for ref in refs)  # no gc needed: nothing holds them
    for block in dit.transformer.transformer_blocks:  # the processors keep no tensors
        assert not [v for v in vars(block.attn2.processor).values() if isinstance(v, torch.Tensor)]


def test_concurrent_renders_do_not_share_keys_values(edit_painter):
    first, second = rows("edit")[0], rows("edit")[1]
    params = PaintParams(steps=2, guidance_scale=7.5, resolution=64)
    expected = {r.key: edit_painter.render([r], params) for r in (first, second)}
    results: dict[str, torch.Tensor] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(request):
        try:
            start.wait()
            results[request.key] = edit_painter.render([request], params)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,)) for r in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for key, image in expected.items():
        assert torch.equal(results[key], image)


def test_modules_run_in_the_job_dtype_and_the_solver_stays_float32(monkeypatch):
    """With ``vae_dtype: same`` every module is in the job dtype (``auto``'s float32 VAE: test_levers.py)."""
    from transforms.painter.dim.pipeline import load_dim_painter

    painter = load_dim_painter(
        "tiny", "edit", dtype=torch.bfloat16, device=torch.device("cpu"), vae_dtype="same"
    )
    modules = painter.modules
    for name in ("encoder", "projector", "dit", "vae"):
        assert {p.dtype for p in getattr(modules, name).parameters()} == {torch.bfloat16}, name
    seen: dict[str, set] = {"dit_in": set(), "keys": set(), "solver": set()}
    forward = modules.dit.forward

    def dit_spy(latents, cross, timestep):
        seen["dit_in"].add(latents.dtype)
        seen["keys"].update(k.dtype for k in cross.keys)
        return forward(latents, cross, timestep)

    guided = sampler.guided

    def guided_spy(v_uncond, v_cond, scale):
        seen["solver"].update({v_uncond.dtype, v_cond.dtype})
        return guided(v_uncond, v_cond, scale)

    modules.dit.forward = dit_spy
    monkeypatch.setattr(sampler, "guided", guided_spy)
    step = sampler.DPMSolverMultistepScheduler.step

    def step_spy(self, model_output, timestep, sample, **kwargs):
        seen["solver"].update({model_output.dtype, sample.dtype})
        return step(self, model_output, timestep, sample, **kwargs)

    monkeypatch.setattr(sampler.DPMSolverMultistepScheduler, "step", step_spy)
    image = painter.render(rows("edit")[:1], PaintParams(steps=2, guidance_scale=7.5, resolution=64))
    assert seen == {"dit_in": {torch.bfloat16}, "keys": {torch.bfloat16}, "solver": {torch.float32}}
    assert image.dtype == torch.float32


def compile_available() -> bool:
    try:
        import torch._dynamo

        return bool(torch._dynamo.is_dynamo_supported())
    except Exception:  # noqa: BLE001 - any failure means: not available here
        return False


def test_compile_switch_is_plumbed_through_the_handler():
    from transforms.painter.handler import PainterModelHandler

    for bad in ("yes", "reduce-overhead", 1, None):
        with pytest.raises(
            ValueError, match=r"painter compile must be false, true \(= default\), default or max-autotune"
        ):
            PainterModelHandler(checkpoint="tiny", task="edit", params=PARAMS, compile=bad)
    (off,) = (
        r.painter
        for r in PainterModelHandler(checkpoint="tiny", task="edit", params=PARAMS).load_model().replicas
    )
    assert off.compile is False and not off.modules.dit.compiled
    on = PainterModelHandler(checkpoint="tiny", task="edit", params=PARAMS, compile=True)
    assert on.compile == "default"  # true: the boolean this setting was before it took modes
    (painter,) = (replica.painter for replica in on.load_model().replicas)
    assert painter.compile == "default" and painter.modules.dit.compiled  # compiled lazily, at the first step
    tuned = PainterModelHandler(checkpoint="tiny", task="edit", params=PARAMS, compile="max-autotune")
    assert tuned.compile == "max-autotune"


@pytest.mark.skipif(not compile_available(), reason="torch.compile (dynamo) is not supported here")
def test_compiled_denoiser_paints_the_same(edit_painter):
    """Traced by dynamo (the eager backend: no code generation, so the test stays quick)."""
    from transforms.painter.dim.pipeline import load_dim_painter

    painter = load_dim_painter("tiny", "edit", dtype=torch.float32, device=torch.device("cpu"), compile=True)
    dit = painter.modules.dit
    assert dit.compiled
    dit.enable_compile(backend="eager", fullgraph=True)
    params = PaintParams(steps=2, guidance_scale=7.5, resolution=64)
    request = rows("edit")[:1]
    assert (painter.render(request, params) - edit_painter.render(request, params)).abs().max() <= 1e-5
