"""ONNX export, int8 quantization, the ONNX backend and the challenge submission folder.

Real runs, real JPEGs, real onnxruntime sessions and real subprocesses; nothing of plantid mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from plantid.data.images import load_image, resize_pixels
from plantid.data.split import read_manifest
from plantid.errors import PlantidError
from plantid.infer.export import export_run
from plantid.infer.onnx_backend import INPUT_NAME, OUTPUT_NAME, OnnxBackend
from plantid.infer.predictor import Predictor
from tests.support.cli import invoke, one_line_error



def _photos(run: Path, size: int) -> tuple[list[str], np.ndarray]:
    rows = read_manifest(run / "split.csv").rows
    paths = [r.path for r in rows]
    return paths, np.stack([load_image(p, size) for p in paths])


def test_export_writes_a_checked_graph_with_preprocessing_inside(run: Path) -> None:
    import onnx

    folder = run / "export"
    model = onnx.load(str(folder / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == INPUT_NAME and out.name == OUTPUT_NAME
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [32, 32, 3]  # dynamic batch, NHWC
    meta = json.loads((folder / "preprocessing.json").read_text())
    assert meta["image_size"] == 32 and meta["resize"] == "bilinear antialias stretch to square"
    assert meta["labels"] == json.loads((run / "labels.json").read_text())
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["layout"] == "NHWC"
    from plantid.infer.checkpoint import load_trained

    trained = load_trained(run)
    assert meta["normalization"]["mean"] == pytest.approx(trained.model.mean.flatten().tolist())
    assert meta["normalization"]["std"] == pytest.approx(trained.model.std.flatten().tolist())
    assert meta["size_bytes"] == (folder / "model.onnx").stat().st_size
    assert meta["opset"] >= 17 and meta["max_abs_diff_vs_torch"] < 1e-4
    import hashlib

    ckpt = Path(meta["source_checkpoint"])
    assert ckpt.name == "best.ckpt"
    assert meta["source_checkpoint_sha256"] == hashlib.sha256((run / "best.ckpt").read_bytes()).hexdigest()
    assert not list(folder.glob(".*.tmp")), "atomic writes left temporary files"


def test_onnx_probabilities_match_torch_on_real_photos(run: Path) -> None:
    torch_pred = Predictor.from_run(run, backend="torch")
    onnx_backend = OnnxBackend.from_run(run)
    assert onnx_backend.classes == torch_pred.classes and onnx_backend.image_size == 32
    assert onnx_backend.session.get_session_options().intra_op_num_threads >= 1
    _, images = _photos(run, 32)
    expected = torch_pred.predict_arrays(images)
    for batch in (images[:1], images[:7], images):  # dynamic batch size
        got = onnx_backend(batch)
        assert got.dtype == np.float32 and got.shape == (len(batch), 3)
        np.testing.assert_allclose(got, expected[: len(batch)], atol=1e-4, rtol=0)
    with pytest.raises(ValueError):
        onnx_backend(images.astype(np.float32))
    # the Predictor runs both backends through the same file preprocessing
    paths = [str(p) for p in _photos(run, 32)[0][:5]]
    onnx_pred = Predictor.from_run(run, backend="onnx")
    for a, b in zip(torch_pred.predict(paths), onnx_pred.predict(paths)):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4, rtol=0)


def test_default_int8_stores_the_weights_in_int8_and_computes_in_float(run: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from plantid.infer.quantize import WEIGHT_MIN_ELEMENTS

    folder = run / "export"
    meta = json.loads((folder / "preprocessing.json").read_text())
    assert meta["int8"]["mode"] == "weights" and meta["int8"]["activations"] == "float32"
    int8 = onnx.load(str(folder / "model.int8.onnx"))
    inits = {i.name: i for i in int8.graph.initializer}
    ops = [n.op_type for n in int8.graph.node]
    assert "QuantizeLinear" not in ops  # no activation is rounded to 8 bits
    dequantized = {n.output[0]: inits[n.input[0]] for n in int8.graph.node if n.op_type == "DequantizeLinear"}
    assert dequantized and all(t.data_type == onnx.TensorProto.INT8 for t in dequantized.values())
    convs = [n for n in int8.graph.node if n.op_type == "Conv"]
    small = [n for n in convs if n.input[1] in inits and numpy_helper.to_array(inits[n.input[1]]).size < WEIGHT_MIN_ELEMENTS]
    assert any(n.input[1] in dequantized for n in convs)  # the convolutions' weights are int8, but for tiny ones
    assert all(n.input[1] in dequantized for n in convs if n not in small)
    floats = [numpy_helper.to_array(t).size for t in int8.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    ints = [numpy_helper.to_array(t).size for t in dequantized.values()]
    assert sum(ints) > 4 * sum(floats)  # what stays float is small: biases, scales
    assert (folder / "model.int8.onnx").stat().st_size < 0.4 * (folder / "model.onnx").stat().st_size

    # both models scored on the run's labelled val photos, as an independent count gives
    check = meta["int8"]["accuracy"]
    val = read_manifest(run / "split.csv").rows_for("val")
    classes = json.loads((run / "labels.json").read_text())
    images = np.stack([load_image(r.path, 32) for r in val])
    truth = np.array([classes.index(r.label) for r in val])
    expected = {name: float((OnnxBackend.from_run(run, quantized=q)(images).argmax(1) == truth).mean())
                for name, q in (("fp32", False), ("int8", True))}
    assert check["split"] == "val" and check["images"] == len(val)
    assert check["fp32"] == pytest.approx(expected["fp32"]) and check["int8"] == pytest.approx(expected["int8"])
    assert check["drop_points"] == pytest.approx(100 * (expected["fp32"] - expected["int8"]), abs=0.01)

    fp32, q = OnnxBackend.from_run(run), OnnxBackend.from_run(run, quantized=True)
    assert q.model_id.endswith(":onnx-int8") and fp32.model_id != q.model_id
    _, images = _photos(run, 32)
    p32, p8 = fp32(images), q(images)
    np.testing.assert_allclose(p8.sum(1), 1.0, atol=1e-4)
    assert float(np.abs(p8 - p32).max()) < 0.02  # 8-bit weights alone move probabilities little
    assert float((p8.argmax(1) == p32.argmax(1)).mean()) >= 0.95


def test_weights_are_quantized_per_output_channel(tmp_path: Path) -> None:
    """A MatMul's columns and a Gemm's rows (transB) are its output channels: each keeps its own scale,
    so a channel of small weights beside one of large weights keeps its precision."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from plantid.infer.quantize import quantize_weights

    rng = np.random.default_rng(0)
    scales = np.geomspace(1e-3, 10.0, 48).astype(np.float32)
    b = (rng.normal(size=(64, 48)) * scales).astype(np.float32)  # MatMul B: K x N, N outputs
    c = (rng.normal(size=(40, 48)) * np.geomspace(1e-3, 10.0, 40)[:, None]).astype(np.float32)  # Gemm B^T
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "b"], ["h"]), helper.make_node("Gemm", ["h", "c"], ["y"], transB=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 40]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [None, 48])],
        [numpy_helper.from_array(b, "b"), numpy_helper.from_array(c, "c")])
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
    assert quantize_weights(fp32, int8) == 2
    x = rng.normal(size=(16, 64)).astype(np.float32)
    want = ort.InferenceSession(str(fp32)).run(None, {"x": x})
    got = ort.InferenceSession(str(int8)).run(None, {"x": x})
    for w, g in zip(want, got):  # each output channel within 5% of its own size (a shared scale: 100%)
        error = np.abs(g - w).max(axis=0) / np.abs(w).max(axis=0)
        assert error.max() < 0.05, error.max()
    assert int8.stat().st_size < 0.35 * fp32.stat().st_size


def test_static_int8_quantizes_activations_with_7_bit_weights(copy_run: Path) -> None:
    import onnx
    from onnx import numpy_helper

    export_run(copy_run, "onnx", quantize=True, quantization="static")
    folder = copy_run / "export"
    meta = json.loads((folder / "preprocessing.json").read_text())
    assert meta["int8"]["mode"] == "static" and meta["int8"]["calibration_images"] > 0
    int8 = onnx.load(str(folder / "model.int8.onnx"))
    ops = [n.op_type for n in int8.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert ops.count("Softmax") == 1  # probabilities stay float (not requantized to 8 bits)
    assert (folder / "model.int8.onnx").stat().st_size < 0.5 * (folder / "model.onnx").stat().st_size
    # 7-bit weights: onnxruntime adds pairs of uint8 x int8 products in int16 on AVX2, 2 * 255 * 64 fits
    inits = {i.name: i for i in int8.graph.initializer}
    weights = [numpy_helper.to_array(inits[n.input[0]]) for n in int8.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert weights and all(int(np.abs(w.astype(np.int16)).max()) <= 64 for w in weights)
    assert "reduce_range" in meta["int8"]["weights"]
    first_conv = next(k for k, n in enumerate(int8.graph.node) if n.op_type == "Conv")
    norm = [numpy_helper.to_array(inits[name]).shape for n in int8.graph.node[:first_conv]
            if n.op_type in ("Sub", "Div") for name in n.input if name in inits]
    assert (1, 3, 1, 32) in norm and (1, 3, 1, 1) not in norm  # widened for channels-last int8 kernels
    static = OnnxBackend.from_run(copy_run, quantized=True)
    assert _config_entry(static, "session.disable_quant_qdq") is None  # its int8 arithmetic needs the QDQ handling
    _, images = _photos(copy_run, 32)
    p32, p8 = OnnxBackend.from_run(copy_run)(images), static(images)
    assert float(np.abs(p8 - p32).max()) < 0.1
    assert float((p8.argmax(1) == p32.argmax(1)).mean()) >= 0.9


def test_normalization_constants_are_widened_without_changing_the_model(run: Path, tmp_path: Path) -> None:
    """The static int8 model's (x / 255 - mean) / std broadcasts [1, 3, 1, S] constants (fast channels-last)."""
    import onnx
    from onnx import numpy_helper

    from plantid.infer.quantize import widen_input_constants

    widened = tmp_path / "widened.onnx"
    shutil.copyfile(run / "export" / "model.onnx", widened)
    assert widen_input_constants(widened) >= 1
    shapes = {i.name: list(i.dims) for i in onnx.load(str(widened)).graph.initializer}
    assert any(dims == [1, 3, 1, 32] for dims in shapes.values())
    assert not any(dims == [1, 3, 1, 1] for dims in shapes.values())  # the originals are gone
    _, images = _photos(run, 32)
    meta = json.loads((run / "export" / "preprocessing.json").read_text())
    fp32, wide = OnnxBackend.from_run(run), OnnxBackend(widened, meta)
    for batch in (images[:1], images[:7]):  # shape arithmetic elsewhere in the graph is left alone
        np.testing.assert_allclose(wide(batch), fp32(batch), atol=1e-6, rtol=0)


def _config_entry(backend: OnnxBackend, key: str) -> str | None:
    try:
        return backend.session.get_session_options().get_session_config_entry(key)
    except RuntimeError:  # onnxruntime: "does not have configuration with key"
        return None


def test_onnx_sessions_do_not_spin_and_fold_int8_tensors_once(run: Path) -> None:
    """Worker threads sleep between operators: spinning ones starve other work on a shared CPU. The
    default int8 model's tensors are dequantized once, at load: it runs as fast as fp32."""
    int8, fp32 = OnnxBackend.from_run(run, quantized=True), OnnxBackend.from_run(run)
    assert _config_entry(int8, "session.intra_op.allow_spinning") == "0"
    assert _config_entry(int8, "session.disable_quant_qdq") == "1"
    assert _config_entry(fp32, "session.disable_quant_qdq") is None


def test_backend_without_export_names_the_command(run: Path, copy_run: Path) -> None:
    with pytest.raises(PlantidError, match=r"plantid export .* --format onnx"):
        OnnxBackend.from_run(copy_run)
    with pytest.raises(PlantidError, match="unknown export format"):
        export_run(copy_run, "tflite")
    shutil.copytree(run / "export", copy_run / "export")
    with (copy_run / "export" / "model.int8.onnx").open("ab") as fh:  # a half-replaced file
        fh.write(b"\0")
    with pytest.raises(PlantidError, match="does not match preprocessing.json"):
        OnnxBackend.from_run(copy_run, quantized=True)
    assert OnnxBackend.from_run(copy_run / "export").classes == json.loads((run / "labels.json").read_text())


def test_export_without_checkpoint_is_a_one_line_error(copy_run: Path) -> None:
    for name in ("best.ckpt", "last.ckpt"):
        (copy_run / name).unlink()
    assert "best.ckpt" in one_line_error(invoke("export", copy_run, "--format", "onnx"))
    assert not (copy_run / "export").exists()


SUBMISSION_CHECK = textwrap.dedent("""
    import json, sys
    import numpy as np
    from model import model

    class TensorLike:  # what a TensorFlow eager tensor offers
        def __init__(self, a):
            self.a = a
        def numpy(self):
            return self.a

    X = np.load("X.npy")
    m = model(".")
    out = {
        "float": m.predict(X).tolist(),
        "uint8": m.predict(X.astype(np.uint8)).tolist(),
        "tensor": np.asarray(m.predict(TensorLike(X))).tolist(),
        "dtype": str(m.predict(X).dtype),
        "imported": sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "plantid", "timm", "lightning")),
    }
    print(json.dumps(out))
""")


def test_submission_runs_without_torch_and_matches_torch(run: Path, tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        (folder,) = export_run(run, "submission", out=tmp_path / "built")
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in folder.iterdir()) == ["README.txt", "model.onnx", "model.py", "preprocessing.json"]
    # built in a private staging folder, but handed over with the modes mkdir/open would give
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o644}
    fresh = Path(shutil.copytree(folder, tmp_path / "elsewhere" / "submission"))
    _, photos = _photos(run, 32)
    X = np.stack([resize_pixels(p, 96) for p in photos[:12]]).astype(np.float32)  # the challenge's 96 x 96 floats
    np.save(fresh / "X.npy", X)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([sys.executable, "-c", SUBMISSION_CHECK], cwd=fresh, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["imported"] == [] and result["dtype"] == "int64"

    torch_pred = Predictor.from_run(run, backend="torch")
    probs = torch_pred.predict_arrays(np.stack([resize_pixels(x.astype(np.uint8), 32) for x in X]))
    expected = probs.argmax(1).tolist()
    assert result["float"] == expected and result["uint8"] == expected and result["tensor"] == expected


@pytest.mark.slow
def test_timm_backbone_exports_exactly(make_image_folder, tmp_path: Path) -> None:
    """BatchNorm, depthwise convs, 'same' padding and ReLU6 of tf_efficientnet_lite0 through ONNX."""
    from plantid.config import load_config
    from plantid.train.run import train_run

    photos = make_image_folder(tmp_path / "photos", per_class=8, size=64)
    cfg = load_config("cpu-default", [
        f"data.root={photos}", "data.image_size=64", "data.val=0.25", "data.test=0.25", "data.batch_size=8",
        f"data.cache_dir={tmp_path / 'cache'}", "model.name=tf_efficientnet_lite0", "model.weights=none",
        "train.epochs=1", "train.limit_train_batches=2", "train.progress=false",
    ])
    run = tmp_path / "run"
    train_run(cfg, run)
    written = export_run(run, "onnx")
    assert written[0] == run / "export" / "model.onnx"
    _, images = _photos(run, 64)
    expected = Predictor.from_run(run, backend="torch").predict_arrays(images)
    got = OnnxBackend.from_run(run)(images)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_an_int8_model_that_lost_accuracy_at_export_is_flagged_when_loaded(run: Path, tmp_path: Path, caplog) -> None:
    folder = Path(shutil.copytree(run / "export", tmp_path / "export"))
    meta = json.loads((folder / "preprocessing.json").read_text())
    meta["int8"]["accuracy"]["drop_points"] = 0.0
    (folder / "preprocessing.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="plantid"):
        OnnxBackend.from_run(folder, quantized=True)
    assert not [r for r in caplog.records if "below the fp32 model" in r.getMessage()]
    meta["int8"]["accuracy"]["drop_points"] = 2.5
    (folder / "preprocessing.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="plantid"):
        OnnxBackend.from_run(folder, quantized=True)
        OnnxBackend.from_run(folder)  # the fp32 model is not flagged
    flagged = [r.getMessage() for r in caplog.records if "below the fp32 model" in r.getMessage()]
    assert len(flagged) == 1 and "2.5 points" in flagged[0] and "--backend onnx" in flagged[0]
