"""int8 quantization of an exported ONNX model (`plantid export RUN --quantize`).

Static QDQ quantization (per-channel 7-bit int8 weights, uint8 activations) calibrated on photos
of the run's train split is the default; see `quantize_onnx` for why 7 bits. Dynamic quantization
only speeds up MatMul/Gemm; on convolutions it falls back to ConvInteger, which is slower than
fp32 on CPU (see benchmarks/bench_inference.py), so it is offered but not the default.
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
from plantid.infer.onnx_backend import INPUT_NAME, OUTPUT_NAME, make_session

log = logging.getLogger("plantid")

QUANTIZATIONS = ("static", "dynamic")
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


def quantize_onnx(fp32_path: Path, int8_path: Path, calibration: np.ndarray, mode: str = "static",
                  exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write an int8 model next to the fp32 one and report how it was made and how it agrees.

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
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        except Exception as exc:  # symbolic shape inference can fail on exotic graphs: plain optimization then
            log.warning("quantization pre-processing failed (%s); quantizing the graph as exported", exc)
            shutil.copyfile(fp32_path, prepared)
        widen_input_constants(prepared)
        softmax = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Softmax"]
        with atomic_path(int8_path) as tmp:
            try:
                if mode == "static":
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
            agreement = _agreement(fp32_path, tmp, calibration)
    info = {
        "file": int8_path.name,
        "mode": mode,
        "format": "QDQ" if mode == "static" else "QOperator (dynamic)",
        "weights": "int8 per-channel, 7-bit range (reduce_range)" if mode == "static" else "int8 per-channel",
        "activations": "uint8 (calibrated MinMax)" if mode == "static" else "uint8 (dynamic)",
        "calibration_images": int(len(calibration)) if mode == "static" else 0,
        "calibration_split": "train",
        "float_nodes": list(exclude),
        "top1_agreement_with_fp32": agreement,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    log.info("quantized %s (%s): top-1 agreement with fp32 %s on %d photos", int8_path, mode,
             f"{agreement:.3f}" if agreement is not None else "n/a", len(calibration))
    return info


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


def _probabilities(model_path: Path, images: np.ndarray) -> np.ndarray:
    """A model's softmax probabilities for a uint8 batch of photos, 64 photos per session call."""
    session = make_session(model_path)
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: images[i:i + 64]})[0]
                           for i in range(0, len(images), 64)])


def _agreement(fp32_path: Path, int8_path: Path, images: np.ndarray) -> float | None:
    if not len(images):
        return None
    a, b = _probabilities(fp32_path, images), _probabilities(int8_path, images)
    if not np.isfinite(b).all():
        raise PlantidError(f"{int8_path.name}: the quantized model returns non-finite probabilities")
    return float((a.argmax(1) == b.argmax(1)).mean())


def accuracy_on(fp32_path: Path, int8_path: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Top-1 accuracy of the fp32 and the int8 model on labelled photos, and the drop in points."""
    correct = {name: float((_probabilities(path, images).argmax(1) == labels).mean())
               for name, path in (("fp32", fp32_path), ("int8", int8_path))}
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
