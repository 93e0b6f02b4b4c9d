"""The ModelHandler through RunInference on the embedded runner, and its settings checks."""

from __future__ import annotations

import io

import apache_beam as beam
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from tests.painter.support import image_bytes
from transforms.painter.base import PaintParams, PaintRequest, decode_source
from transforms.painter.handler import (
    PainterModelHandler,
    checkpoint_fingerprint,
    resolve_device,
    resolve_dtype,
)

PARAMS = PaintParams(steps=3, guidance_scale=7.5, resolution=64)


def summary(result):
    painting = result.inference
    return (
        result.example.key,
        painting.key,
        painting.image.size,
        painting.fields["batch_size"] in (1, 2),
        painting.fields["checkpoint_sha256"],
        painting.fields["painter"],
    )


def test_run_inference_on_the_embedded_runner(tiny_edit_dir):
    sha = checkpoint_fingerprint("tiny", "edit")
    handler = PainterModelHandler(checkpoint="tiny", task="edit", params=PARAMS, batch_size=2)
    requests = [
        PaintRequest(key=f"r{i}", prompt=f"edit number {i}", seed=i, source=image_bytes()) for i in range(3)
    ]
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        results = pipeline | beam.Create(requests) | RunInference(handler) | beam.Map(summary)
        expected = [(f"r{i}", f"r{i}", (64, 64), True, sha, "dim:tiny-edit") for i in range(3)]
        assert_that(results, equal_to(expected))


def test_handler_direct_use_matches_painter(edit_painter):
    handler = PainterModelHandler(checkpoint="tiny", task="edit", params=PARAMS, batch_size=2)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 2}
    assert handler.get_metrics_namespace() == "dimflow_painter_dim"
    requests = [PaintRequest(key="a", prompt="blue", seed=5, source=image_bytes())]
    (result,) = handler.run_inference(requests, edit_painter)
    assert result.example is requests[0] and result.model_id == "dim:tiny-edit"
    assert result.inference.image.tobytes() == edit_painter.paint(requests, PARAMS)[0].image.tobytes()
    with pytest.raises(ValueError, match="inference_args"):
        handler.run_inference(requests, edit_painter, {"x": 1})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "inpaint"}, "task"),
        ({"dtype": "int8"}, "dtype"),
        ({"batch_size": 0}, "batch_size"),
        ({"noise_device": "gpu"}, "noise_device"),
        ({"kind": "other"}, "kind"),
        ({"vae_dtype": "float32"}, r"vae_dtype must be one of \('auto', 'same'\)"),
        ({"compile": "fast"}, r"compile must be false, true \(= default\), default or max-autotune"),
    ],
)
def test_handler_settings_are_checked(kwargs, message):
    settings = {"checkpoint": "tiny", "task": "edit", "params": PARAMS} | kwargs
    with pytest.raises(ValueError, match=message):
        PainterModelHandler(**settings)


def test_large_model_sharing_is_opt_in():
    assert not PainterModelHandler(
        checkpoint="tiny", task="edit", params=PARAMS
    ).share_model_across_processes()
    shared = PainterModelHandler(checkpoint="tiny", task="edit", params=PARAMS, share_across_processes=True)
    assert shared.share_model_across_processes()


def test_auto_device_and_dtype_on_cpu():
    import torch

    device = resolve_device("auto")
    if not torch.cuda.is_available():
        assert device.type == "cpu" and resolve_dtype("auto", device) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", device) == torch.float16


def test_decode_source_applies_exif_orientation():
    image = Image.open(io.BytesIO(image_bytes((80, 40))))
    exif = image.getexif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif)
    decoded = decode_source(PaintRequest(key="k", prompt="p", seed=0, source=out.getvalue()))
    assert decoded.size == (40, 80)


def test_handlers_with_equal_load_settings_share_one_loaded_painter(monkeypatch):
    """Each RunInference transform (first paint, each repaint, each chunk's pipeline) asks its handler to load:
    equal load settings within a run get the painter already loaded; other settings, or another run, load."""
    from types import SimpleNamespace

    loads = []

    def loader(checkpoint, task, **settings):
        loads.append((task, settings["compile"]))
        return SimpleNamespace(name=f"stub:{task}", task=task, checkpoint_sha256="0" * 64)

    monkeypatch.setattr("transforms.painter.dim.pipeline.load_dim_painter", loader)

    def handler(run_id="run-a", **changes):
        settings = {"checkpoint": "tiny", "task": "edit", "params": PARAMS, "device": "cpu", "run_id": run_id}
        return PainterModelHandler(**(settings | changes))

    first = handler().load_model()
    # another RunInference of the same run: another batch size or sampling does not change what is loaded
    assert (
        handler(batch_size=4, params=PaintParams(steps=9, guidance_scale=1.0, resolution=32)).load_model()
        is first
    )
    assert loads == [("edit", False)]
    assert handler(task="t2i").load_model() is not first
    assert handler(compile="default").load_model() is not first
    assert loads == [("edit", False), ("t2i", False), ("edit", "default")]
    assert handler().load_model() is first  # still held for the run
    assert handler(run_id="run-b").load_model() is not first  # another run loads its own
    assert (
        handler(run_id="").load_model() is not handler(run_id="").load_model()
    )  # outside a run: never shared
    assert len(loads) == 6
