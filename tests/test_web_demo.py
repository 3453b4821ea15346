"""The in-browser demo (book/demo.md): the class activation map output, the committed model, and the page in
headless Chromium against Python on the same files.

The page is served over HTTP from the built book (a page opened from a file may not read the model next to
it). Its pixels must equal ``allkit.data.decode_cell``'s, its probabilities the Python ONNX predictor's on the
same file within 1e-4, and its heatmap ``cam_heatmap`` of the Python ``cam`` output within 1e-3. The latency
the page measures is written to ``_build/web-demo-latency.json`` beside Python's for the same file. The page's
tests build the book and open a browser: they are marked ``slow`` (``make test`` runs them, ``make test-fast`` not).
"""

import functools
import hashlib
import http.server
import importlib.util
import json
import os
import re
import shutil
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from allkit.deploy import OnnxPredictor, cam_heatmap, export_onnx, read_manifest
from allkit.errors import ModelError
from allkit.explain import gradcam
from allkit.models import build_model

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "book" / "demo" / "site" / "demo" / "model.int8.onnx"
FACTS = json.loads((ROOT / "book" / "demo" / "demo.json").read_text())
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_cam_output_is_gradcam_at_that_layer(tmp_path, backbone):
    """The exported ``cam``, drawn by ``cam_heatmap``, is pytorch-grad-cam's map for the same class, and the
    file's probabilities are the plain export's."""
    torch.manual_seed(0)
    model = build_model(backbone, weights="offline" if backbone == "efficientnet_lite0" else None).eval()
    export_onnx(model, backbone, tmp_path / "cam.onnx", image_size=96, cam=True)
    export_onnx(model, backbone, tmp_path / "plain.onnx", image_size=96)
    images = torch.randint(0, 256, (3, 3, 96, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with_cam = OnnxPredictor(tmp_path / "cam.onnx", threads=1)
    assert read_manifest(tmp_path / "cam.onnx")["cam"]["layer"]
    np.testing.assert_allclose(
        with_cam.predict_proba(images), OnnxPredictor(tmp_path / "plain.onnx").predict_proba(images), atol=1e-6
    )
    maps = with_cam.class_activation_maps(images.numpy())
    assert maps.shape[:2] == (3, 2)
    for target in ("ALL", "HEM"):
        reference = gradcam(model, backbone, images, target=target).heatmaps
        ours = np.stack([cam_heatmap(m[1 if target == "ALL" else 0], 96) for m in maps])
        assert np.abs(ours - reference).max() < 1e-3, target
        assert ours.max() == pytest.approx(1.0, abs=1e-6) and ours.min() == 0


def test_cam_is_refused_where_it_is_not_exact(tmp_path):
    """VGG's head has hidden layers: its 'CAM' would not be Grad-CAM, so the export says so."""
    model = build_model("vgg16").eval()
    with pytest.raises(ModelError, match="only for a linear head on average-pooled maps"):
        export_onnx(model, "vgg16", tmp_path / "vgg.onnx", image_size=32, cam=True)
    assert not (tmp_path / "vgg.onnx").exists()


def test_model_without_cam_says_so(tmp_path):
    model = build_model("resnet18").eval()
    export_onnx(model, "resnet18", tmp_path / "plain.onnx", image_size=32)
    with pytest.raises(ModelError, match="no class activation map output; export it with cam=True"):
        OnnxPredictor(tmp_path / "plain.onnx").class_activation_maps(np.zeros((1, 3, 32, 32), np.uint8))


def test_committed_model_is_the_int8_export_with_cam():
    manifest = read_manifest(MODEL)  # checks the sha256 of the file against its manifest
    assert manifest["precision"] == "int8" and manifest["cam"]["name"] == "cam"
    assert manifest["quantization"]["mode"] == "weights"  # fp32 arithmetic: the same numbers in every runtime
    assert "/work/" not in json.dumps(manifest) and "/home/" not in json.dumps(manifest)
    evaluation = FACTS["evaluation"]
    assert evaluation["cells"] > 0 and 0 <= evaluation["balanced_accuracy"] <= 1
    cells = FACTS["examples"]["cells"]
    assert 0 < len(cells) <= 8 and {c["label"] for c in cells} == {"ALL", "HEM"}
    assert len({c["person"] for c in cells}) == len(cells)  # one cell a person


def _extension():
    spec = importlib.util.spec_from_file_location("web_demo", ROOT / "book" / "_ext" / "web_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_without_npm_says_why(tmp_path, monkeypatch):
    web_demo = _extension()
    monkeypatch.setattr(web_demo.shutil, "which", lambda name: None)
    dist, why = web_demo.install_runtime(tmp_path)
    assert dist is None and "npm is not installed" in why


@pytest.mark.slow
def test_build_without_the_registry_says_why_in_one_line(tmp_path, monkeypatch):
    """No network: npm ci fails within seconds and the reason names npm's error code, not this machine's paths."""
    if not shutil.which("npm"):
        pytest.skip("npm is not installed")
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(ROOT / "book" / "demo" / name, tmp_path / name)
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")  # a closed port
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    dist, why = _extension().install_runtime(tmp_path)
    assert dist is None and why.startswith("npm ci could not install onnxruntime-web (code E"), why
    assert str(tmp_path) not in why and "/" not in why


def test_build_copies_only_the_example_cells_it_can_vouch_for(tmp_path, monkeypatch):
    web_demo = _extension()
    cells = tmp_path / "data" / "C-NMC_Leukemia" / "training_data" / "fold_2" / "all"
    cells.mkdir(parents=True)
    (cells / "good.png").write_bytes(b"the listed bytes")
    (cells / "changed.png").write_bytes(b"other bytes")
    listed = [
        {
            "file": f"C-NMC_Leukemia/training_data/fold_2/all/{name}",
            "sha256": hashlib.sha256(b"the listed bytes").hexdigest(),
        }
        for name in ("good.png", "changed.png", "absent.png")
    ]
    monkeypatch.setenv("ALLKIT_DATA", str(tmp_path / "data"))
    copied, why = web_demo.copy_examples({"examples": {"cells": listed}}, tmp_path, tmp_path / "out")
    assert [c["src"] for c in copied] == ["examples/good.png"] and why == ""
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]
    monkeypatch.setenv("ALLKIT_DATA", str(tmp_path / "nowhere"))
    assert web_demo.copy_examples({"examples": {"cells": listed}}, tmp_path / "no-root", tmp_path / "out2")[0] == []


# --------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(built_book):
    """The built book over HTTP on a free local port."""
    handler = functools.partial(_QuietHandler, directory=str(built_book))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def demo(served, browser, built_book):
    build = json.loads((built_book / "demo" / "build.js").read_text().split("=", 1)[1].rstrip().rstrip(";"))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Unreachable network (the Colab badge) is no error of the page; a missing file of the book is
    quiet = ("net::ERR", "the server responded with a status of")
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error"
            and not msg.text.startswith("Failed to load resource: " + quiet[0])
            and quiet[1] not in msg.text
            else None
        ),
    )
    page.on(
        "response",
        lambda r: (
            errors.append(f"HTTP {r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico")
            else None
        ),
    )
    page.goto(f"{served}/book/demo.html", wait_until="load")
    yield page, build, errors
    page.close()


def _wait(page, name: str) -> dict:
    page.wait_for_function(
        "name => window.allkitDemo.last && window.allkitDemo.last.name === name && !window.allkitDemo.busy",
        arg=name,
        timeout=120_000,
    )
    return page.evaluate("window.allkitDemo.last")


@functools.cache
def _predictor() -> OnnxPredictor:
    return OnnxPredictor(MODEL, threads=1)


def _python(path: Path):
    from allkit.data import read_cell

    pixels = read_cell(path)
    predictor = _predictor()
    x = pixels.transpose(2, 0, 1)[None]
    probabilities = predictor.predict_proba(x)[0]
    maps = predictor.class_activation_maps(x)[0]
    return pixels, probabilities, cam_heatmap(maps[int(probabilities.argmax())], pixels.shape[0])


def _complete(build: dict, examples: bool = True) -> None:
    """Skip where the build lacks the runtime (a failure in CI, whose .ci/run installs npm) or, when ``examples``,
    the example cells (they come from C-NMC: CI without ../shared/data has none)."""
    if build["ort"] is None:
        if os.environ.get("CI"):
            pytest.fail(f"the demo's runtime is not in CI's build: {build['why_no_ort']}")
        pytest.skip(f"the demo's runtime is not in this build: {build['why_no_ort']}")
    if examples and not build["examples"]:
        pytest.skip(f"no example cells in this build: {build['why_no_examples']}")


@pytest.mark.slow
def test_demo_page_says_when_the_runtime_is_not_in_the_build(served, browser, built_book):
    build = (built_book / "demo" / "build.js").read_text()
    page = browser.new_page()
    why = "npm is not installed where this book was built"
    page.route(
        "**/demo/build.js",
        lambda route: route.fulfill(
            content_type="text/javascript",
            body=build.replace('"ort": "', '"ort": null, "was": "').replace(
                '"why_no_ort": ""', f'"why_no_ort": "{why}"'
            ),
        ),
    )
    page.route("**/demo/ort/*", lambda route: route.abort())
    page.goto(f"{served}/book/demo.html", wait_until="load")
    assert page.inner_text("#demo-message") == f"The demo is not in this build: {why}."
    assert not page.locator("#demo-controls").is_visible()
    page.close()


@pytest.mark.slow
def test_demo_page_runs_the_examples_as_python_does(demo, built_book):
    page, build, errors = demo
    _complete(build)
    if not build["examples"]:
        pytest.skip(f"no example cells in this build: {build['why_no_examples']}")
    total = sum(p.stat().st_size for p in (built_book / "demo").rglob("*") if p.is_file())
    assert total <= 15e6, f"model + runtime + examples are {total / 1e6:.1f} MB"
    buttons = page.locator(".demo-example")
    assert buttons.count() == len(build["examples"])
    for i, cell in enumerate(build["examples"]):
        buttons.nth(i).click()
        got = _wait(page, Path(cell["src"]).name)
        assert "error" not in got, got.get("error")
        pixels, probabilities, heatmap = _python(built_book / "demo" / cell["src"])
        assert np.array_equal(np.array(got["pixels"], np.uint8).reshape(pixels.shape), pixels), cell["src"]
        assert np.abs(np.array(got["probabilities"]) - probabilities).max() <= 1e-4, cell["src"]
        assert np.abs(np.array(got["heatmap"]).reshape(heatmap.shape) - heatmap).max() <= 1e-3, cell["src"]
        shown = page.inner_text("#demo-call")
        # the page prints with JavaScript's toFixed, which rounds a binary halfway case unlike Python's format:
        # the printed number is checked to within its last digit's rounding
        printed = float(re.search(r"P\(ALL\) = (\d\.\d{3})", shown).group(1))
        assert abs(printed - probabilities[1]) <= 0.0005 + 1e-4, shown
        verdict = "right" if ("ALL" if probabilities[1] > probabilities[0] else "HEM") == cell["label"] else "wrong"
        assert f"C-NMC labels this cell {cell['label']}: the model is {verdict} here." in shown
    assert errors == [], errors


@pytest.mark.slow
def test_demo_page_records_its_latency_beside_python(demo, built_book):
    page, build, _ = demo
    _complete(build)
    if not page.evaluate("window.allkitDemo.last && !window.allkitDemo.last.error"):
        page.locator(".demo-example").first.click()
        _wait(page, Path(build["examples"][0]["src"]).name)
    page.click("#demo-time")
    page.wait_for_function("window.allkitDemo.timing && !window.allkitDemo.busy", timeout=120_000)
    timing = page.evaluate("window.allkitDemo.timing")
    assert len(timing["calls"]) == 10 and timing["median"] > 0
    printed = float(re.search(r"Median of 10 calls: (\d+\.\d) ms", page.inner_text("#demo-timing")).group(1))
    assert abs(printed - timing["median"]) <= 0.05 + 1e-9  # toFixed(1) of the median it measured
    from allkit.data import read_cell

    x = read_cell(built_book / "demo" / build["examples"][0]["src"]).transpose(2, 0, 1)[None]
    predictor = _predictor()
    predictor.predict_proba(x)
    calls = []
    for _ in range(10):
        start = time.perf_counter()
        predictor.predict_proba(x)
        calls.append((time.perf_counter() - start) * 1e3)
    record = {
        "page_first_call_ms": timing["first"],
        "page_median_of_10_ms": timing["median"],
        "python_onnxruntime_median_of_10_ms": statistics.median(calls),
        "model": MODEL.name,
        "threads": 1,
    }
    (ROOT / "_build" / "web-demo-latency.json").write_text(json.dumps(record, indent=2))
    print("web demo latency:", record)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["text", "huge", "grayscale", "rgba"])
def test_demo_page_refuses_bad_pictures_with_a_message(demo, tmp_path, kind):
    from PIL import Image

    page, build, _ = demo
    _complete(build, examples=False)
    path = tmp_path / f"{kind}.png"
    if kind == "text":
        path = tmp_path / "notes.txt"
        path.write_text("not a picture")
    elif kind == "huge":
        Image.new("RGB", (10_000, 10_000), (120, 40, 90)).save(path)
    elif kind == "grayscale":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (450, 450), dtype=np.uint8)).save(path)
    else:
        rgba = np.random.default_rng(0).integers(0, 255, (450, 450, 4), dtype=np.uint8)
        Image.fromarray(rgba, "RGBA").save(path)
    page.set_input_files("#demo-file", str(path))
    got = _wait(page, path.name)
    expected = {
        "text": "is not an image",
        "huge": "10000 × 10000 pixels",
        "grayscale": "is grayscale",
        "rgba": "transparent",
    }
    assert expected[kind] in got.get("error", ""), got
    assert expected[kind] in page.inner_text("#demo-message")
    assert page.evaluate("1 + 1") == 2  # the tab still answers


def test_cam_of_a_model_without_the_layer_is_one_model_error(tmp_path):
    model = build_model("resnet18").eval()
    model.layer4 = torch.nn.Identity()  # the Grad-CAM layer layer4.1 is gone
    with pytest.raises(ModelError, match="has no layer 'layer4.1'"):
        export_onnx(model, "resnet18", tmp_path / "r.onnx", image_size=32, cam=True)
