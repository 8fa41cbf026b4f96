"""int8 quantization of an exported ONNX model (`plantid export RUN --quantize`).

Three modes. ``weights`` (the default) stores every large tensor as int8 with one scale per
output channel and computes in float: a quarter of the file, the accuracy of fp32 (static int8
lost 1-5 points at 192 px; docs/decisions.md, 2026-12-07 "int8 weights, float arithmetic").
``static`` is QDQ with per-channel 7-bit int8 weights and uint8 activations calibrated on photos
of the run's train split (see `quantize_onnx` for why 7 bits). ``dynamic`` only speeds up
MatMul/Gemm; on convolutions it falls back to ConvInteger, slower than fp32 on CPU (see
benchmarks/bench_inference.py).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from plantid.errors import PlantidError, first_line
from plantid.fileio import atomic_path
from plantid.infer.onnx_backend import FOLDED_INT8_MODES, INPUT_NAME, OUTPUT_NAME, SCORE_NAME, make_session

log = logging.getLogger("plantid")

QUANTIZATIONS = (*FOLDED_INT8_MODES, "static", "dynamic")
DEFAULT_QUANTIZATION = FOLDED_INT8_MODES[0]
# Float tensors smaller than this stay float in ``weights`` mode (biases, scales, the input
# normalization): they weigh nothing and some feed arithmetic that int8 would coarsen.
WEIGHT_MIN_ELEMENTS = 1024
# Train photos (spread over the classes) for the activation ranges of static quantization. 64,
# 128, 256 and 512 photos, and Percentile/Entropy instead of MinMax, gave the same accuracy on
# tf_efficientnet_lite0 (within 1-2 test photos of 446); 128 keeps calibration a few seconds.
CALIBRATION_IMAGES = 128


class _CalibrationReader:
    """onnxruntime CalibrationDataReader over a uint8 batch of photos, a few images at a time."""

    def __init__(self, images: np.ndarray, batch: int = 8):
        self.batches = [images[i:i + batch] for i in range(0, len(images), batch)]
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.batches):
            return None
        self.index += 1
        return {INPUT_NAME: self.batches[self.index - 1]}

    def rewind(self) -> None:
        self.index = 0


def quantize_onnx(fp32_path: Path, int8_path: Path, calibration: np.ndarray, mode: str = DEFAULT_QUANTIZATION,
                  exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write an int8 model next to the fp32 one and report how it was made and how it agrees.

    weights: int8 tensors read back in float (`quantize_weights`); `calibration` only measures agreement.
    static: QDQ, per-channel symmetric int8 weights, uint8 activations calibrated (MinMax) on
    `calibration`; the final Softmax stays in float so probabilities keep their resolution.
    dynamic: int8 weights, activations quantized at run time (MatMul/Gemm/Conv).

    Static weights use 7 bits (reduce_range, [-64, 64]). onnxruntime multiplies uint8 activations
    by int8 weights with VPMADDUBSW on x86 CPUs without AVX512-VNNI/AVX-VNNI (most AVX2 machines),
    which adds pairs of products in a saturating int16: 2 * 255 * 127 overflows. With 8-bit
    weights tf_efficientnet_lite0 lost 3.4 points of top-1 at 128 px and 6.3 at 96 px (87% and
    82% top-1 agreement with fp32); with 7 bits, 2 * 255 * 64 fits and int8 was no worse than
    fp32 on either (93% and 91% agreement, the rest is 8-bit rounding spread over all layers).
    uint8 weights (U8U8) avoid the overflow too but run ~7x slower in onnxruntime's QLinearConv;
    int8 activations (S8S8) are slower on AVX2 and saturate alike.
    `exclude` names nodes left in float (see `noisiest_nodes`), besides the final Softmax.
    (Dynamic mode keeps 8 bits: reduce_range made its ConvInteger model worse, 56% -> 40% top-1.)
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="plantid-quant-", dir=int8_path.parent) as work:
        prepared = Path(work) / "prepared.onnx"
        if mode == "weights":  # tensors only: the graph as exported
            shutil.copyfile(fp32_path, prepared)
        else:
            try:
                quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
            except Exception as exc:  # symbolic shape inference can fail on exotic graphs: plain optimization then
                log.warning("quantization pre-processing failed (%s); quantizing the graph as exported", exc)
                shutil.copyfile(fp32_path, prepared)
        if mode == "static":
            widen_input_constants(prepared)
        softmax = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Softmax"]
        with atomic_path(int8_path) as tmp:
            try:
                if mode == "weights":
                    quantize_weights(prepared, Path(tmp))
                elif mode == "static":
                    quantize_static(
                        str(prepared), str(tmp), _CalibrationReader(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=softmax + list(exclude),
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                    )
                else:
                    quantize_dynamic(str(prepared), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                                     op_types_to_quantize=["Conv", "MatMul", "Gemm"], nodes_to_exclude=softmax)
                onnx.checker.check_model(str(tmp))
            except Exception as exc:  # onnxruntime.quantization raises assorted types
                raise PlantidError(f"int8 quantization ({mode}) failed: {first_line(exc)[:200]}; export without --quantize") from None
            agreement = _agreement(fp32_path, tmp, calibration, mode)
    info = {
        "file": int8_path.name,
        "mode": mode,
        "format": {"weights": "DequantizeLinear on int8 tensors", "static": "QDQ"}.get(mode, "QOperator (dynamic)"),
        "weights": "int8 per-channel, 7-bit range (reduce_range)" if mode == "static" else "int8 per-channel",
        "activations": {"weights": "float32", "static": "uint8 (calibrated MinMax)"}.get(mode, "uint8 (dynamic)"),
        "calibration_images": int(len(calibration)) if mode == "static" else 0,
        "calibration_split": "train",
        "float_nodes": list(exclude),
        "top1_agreement_with_fp32": agreement,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    log.info("quantized %s (%s): top-1 agreement with fp32 %s on %d photos", int8_path, mode,
             f"{agreement:.3f}" if agreement is not None else "n/a", len(calibration))
    return info


def quantize_weights(fp32_path: Path, int8_path: Path) -> int:
    """Store each float tensor of at least WEIGHT_MIN_ELEMENTS numbers and 2 or more axes as int8,
    read back through a DequantizeLinear node; everything is computed in float. Returns how many.

    Symmetric, one scale per output channel: axis 0 of Conv weights and of Gemm's B with transB,
    the columns of MatMul's B, the rows of any other tensor (a class mean, a bank row). The error
    is at most half a step of 1/127 of each channel's largest weight, far below what activation
    quantization adds. Sessions fold the dequantization into float weights once, at load
    (`plantid.infer.onnx_backend.folds_dequantize`, and the web app likewise), so the model runs at
    fp32 speed from a file a quarter the size.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fp32_path))
    graph = model.graph
    consumers: dict[str, list[tuple[Any, int]]] = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, position))
    replaced = []
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT or len(init.dims) < 2 or np.prod(init.dims) < WEIGHT_MIN_ELEMENTS:
            continue
        users = consumers.get(init.name, [])
        if not users:
            continue
        value = numpy_helper.to_array(init)
        axis = _channel_axis(users[0], value.ndim)
        moved = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)
        scale = np.maximum(np.abs(moved).max(axis=1), np.finfo(np.float32).tiny) / 127.0
        shape = [1] * value.ndim
        shape[axis] = -1
        quantized = np.clip(np.rint(value / scale.reshape(shape)), -127, 127).astype(np.int8)
        names = (f"{init.name}_int8", f"{init.name}_scale", f"{init.name}_zero")
        graph.initializer.remove(init)
        graph.initializer.extend([numpy_helper.from_array(quantized, names[0]),
                                  numpy_helper.from_array(scale.astype(np.float32), names[1]),
                                  numpy_helper.from_array(np.zeros(len(scale), np.int8), names[2])])
        graph.node.insert(0, helper.make_node("DequantizeLinear", list(names), [init.name],
                                              name=f"{init.name}_DequantizeLinear", axis=axis))
        replaced.append(init.name)
    for node in graph.node:  # the exporter's source locations and module paths: a tenth of the file
        node.doc_string = ""
        del node.metadata_props[:]
    onnx.save(model, str(int8_path))
    return len(replaced)


def _channel_axis(user: tuple[Any, int], ndim: int) -> int:
    """The output-channel axis of a tensor for its (first) consuming node and input position."""
    node, position = user
    if node.op_type == "MatMul" and position == 1:
        return ndim - 1
    if node.op_type == "Gemm" and position == 1:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 0


def widen_input_constants(path: Path) -> int:
    """Tile the [1, C, 1, 1] constants of the input normalization to [1, C, 1, W] (same values); rewrite `path`.

    For int8 models onnxruntime runs QLinearConv channels-last and moves the graph's NHWC -> NCHW
    Transpose behind (x / 255 - mean) / std, which then broadcasts a 3-value constant along the
    innermost axis, 3 floats per inner loop: ~20% of the int8 model's time at 96 px. Tiled along
    the width the same arithmetic runs in spans of W * C floats. Only elementwise nodes between
    the input and the first Conv are touched. Returns the number of constants tiled.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim if graph.input else []
    width = dims[2].dim_value if len(dims) == 4 else 0  # NHWC input: N x S x S x 3
    if width < 2:
        return 0
    inits = {init.name: init for init in graph.initializer}
    tiled: dict[str, str] = {}
    reached = {graph.input[0].name}  # tensors computed from the photos by the ops below
    for node in graph.node:  # topological order
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            break
        if node.op_type not in ("Transpose", "Cast", "Sub", "Div", "Mul", "Add") or not reached & set(node.input):
            continue
        reached.update(node.output)
        for k, name in enumerate(node.input):
            init = inits.get(name)
            if (init is None or init.data_type != onnx.TensorProto.FLOAT or len(init.dims) != 4
                    or [init.dims[i] for i in (0, 2, 3)] != [1, 1, 1] or init.dims[1] < 2):
                continue
            if name not in tiled:
                value = np.repeat(numpy_helper.to_array(init), width, axis=3)
                wide = numpy_helper.from_array(np.ascontiguousarray(value), f"{name}_w{width}")
                graph.initializer.append(wide)
                tiled[name] = wide.name
            node.input[k] = tiled[name]
    if tiled:
        used = {name for node in graph.node for name in node.input}
        for name in tiled:
            if name not in used:
                graph.initializer.remove(inits[name])
        onnx.save(model, str(path))
    return len(tiled)


def model_outputs(model_path: Path, images: np.ndarray, mode: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """A model's softmax probabilities for a uint8 batch of photos, and its unknown-photo scores when
    the model carries them (else None), 64 photos per session call (`mode`: how an int8 model was
    made, so its session is started as OnnxBackend starts it)."""
    session = make_session(model_path, fold_dequantize=mode in FOLDED_INT8_MODES)
    wanted = [OUTPUT_NAME] + ([SCORE_NAME] if SCORE_NAME in {o.name for o in session.get_outputs()} else [])
    outs = [session.run(wanted, {INPUT_NAME: images[i:i + 64]}) for i in range(0, len(images), 64)]
    scores = np.concatenate([o[1] for o in outs]) if len(wanted) == 2 else None
    return np.concatenate([o[0] for o in outs]), scores


def _probabilities(model_path: Path, images: np.ndarray, mode: str | None = None) -> np.ndarray:
    return model_outputs(model_path, images, mode)[0]


def _agreement(fp32_path: Path, int8_path: Path, images: np.ndarray, mode: str) -> float | None:
    if not len(images):
        return None
    a, b = _probabilities(fp32_path, images), _probabilities(int8_path, images, mode)
    if not np.isfinite(b).all():
        raise PlantidError(f"{int8_path.name}: the quantized model returns non-finite probabilities")
    return float((a.argmax(1) == b.argmax(1)).mean())


def accuracy_on(fp32_path: Path, int8_path: Path, images: np.ndarray, labels: np.ndarray,
                mode: str = DEFAULT_QUANTIZATION) -> dict[str, Any]:
    """Top-1 accuracy of the fp32 and the int8 model (made by `mode`) on labelled photos, and the drop in points."""
    correct = {name: float((_probabilities(path, images, m).argmax(1) == labels).mean())
               for name, path, m in (("fp32", fp32_path, None), ("int8", int8_path, mode))}
    return {"images": int(len(images)), "fp32": correct["fp32"], "int8": correct["int8"],
            "drop_points": round(100 * (correct["fp32"] - correct["int8"]), 2)}


def noisiest_nodes(fp32_path: Path, int8_path: Path, images: np.ndarray, count: int) -> list[str]:
    """The `count` quantized nodes that add the most quantization noise, worst first.

    Every float tensor of both models is read on `images` (a few train photos); a node's noise is
    how much the signal-to-quantization-noise ratio (dB, int8 model against fp32) falls from its
    input to its output. Noise that a node only passes on is not counted against it, so the
    layers that lose most are named, not the ones at the end of the network.
    """
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        modify_model_output_intermediate_tensors,
    )

    with tempfile.TemporaryDirectory(prefix="plantid-noise-") as work:
        activations = {}
        for name, path in (("fp32", fp32_path), ("int8", int8_path)):
            augmented = Path(work) / f"{name}.onnx"
            modify_model_output_intermediate_tensors(str(path), str(augmented))
            batches = [{INPUT_NAME: images[i:i + 4]} for i in range(0, len(images), 4)]
            activations[name] = collect_activations(str(augmented), batches)
    float_acts, quant_acts = activations["fp32"], activations["int8"]

    def sqnr(tensor: str) -> float | None:
        # the int8 model's value of a float tensor is the dequantized one where it was quantized
        got = quant_acts.get(tensor + "_DequantizeLinear_Output") or quant_acts.get(tensor)
        want = float_acts.get(tensor)
        if not got or not want:
            return None
        return float(compute_signal_to_quantization_noice_ratio(want, got))

    noise: list[tuple[float, str]] = []
    for node in onnx.load(str(int8_path)).graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or not node.input[0].endswith("_DequantizeLinear_Output"):
            continue  # a node left in float
        before = [v for v in [sqnr(node.input[0].removesuffix("_DequantizeLinear_Output"))] if v is not None]
        after = sqnr(node.output[0])
        if after is None:
            continue
        noise.append(((before[0] if before else 100.0) - after, node.name))
    return [name for _, name in sorted(noise, reverse=True)[:count]]
