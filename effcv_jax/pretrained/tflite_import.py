"""TFLite flatbuffers -> Flax variables; uint8-quantized MobileNet v1 and v2.

`read_tflite` parses a .tflite file with the `tflite` package (the generated
flatbuffer schema; no TensorFlow) into tensors and operators. Quantized
constants dequantize as (q - zero_point) * scale, per tensor or per channel
along `quantized_dimension`; int32 biases have zero point 0 and scale
input_scale * weight_scale.

`load_tflite_mobilenet_v1` maps a TF-slim MobileNet v1 graph (CONV_2D, then 13 x
(DEPTHWISE_CONV_2D, CONV_2D), AVERAGE_POOL_2D, the 1x1 CONV_2D logits,
[RESHAPE, SOFTMAX]) onto `MobileNetV1(batch_norm=False)` by operator position,
because tensor names differ between converter versions. Batch norm is already
folded into the convolutions' weights and biases. The slim names of those
layers and the Flax variables they fill:

  Conv2d_0              CONV_2D (O, kh, kw, I)     -> conv1/kernel (kh, kw, I, O), conv1/bias
  Conv2d_{i}_depthwise  DEPTHWISE_CONV_2D (1, kh, kw, C*m)
                                                   -> conv_dw_{i}/kernel (kh, kw, 1, C*m), bias
  Conv2d_{i}_pointwise  CONV_2D (O, 1, 1, I)       -> conv_pw_{i}/kernel (1, 1, I, O), bias
  Logits/Conv2d_1c_1x1  CONV_2D (N, 1, 1, C)       -> head/kernel (C, N), head/bias (N,)

`load_tflite_mobilenet_v2` does the same for TF-slim MobileNet v2 (CONV_2D, then per
block [CONV_2D expand,] DEPTHWISE_CONV_2D, CONV_2D project (no activation) [, ADD],
CONV_2D Conv_1, AVERAGE_POOL_2D, the logits) onto `MobileNetV2(batch_norm=False)`:
stem, block{i}_expand, block{i}_depthwise, block{i}_project, top_conv, head.

The result is the float model with dequantized weights; it does not reproduce
the uint8 activation rounding of the TFLite interpreter, so its outputs are
close to, not equal to, the interpreter's.
"""

import dataclasses
import os
import pathlib
import struct

import numpy as np

from effcv_jax.errors import FileFormatError, UserError
from effcv_jax.files import describe_start
from effcv_jax.models import mobilenet_v2
from effcv_jax.models.mobilenet_v1 import BLOCKS, MobileNetV1
from effcv_jax.pretrained.common import (Imported, NameMap, Preprocessing, Target,
                                         WeightImportError, convert_tensors, identity,
                                         model_shapes)
from effcv_jax.pretrained.keras_h5 import alpha_from_stem

try:
  import tflite  # the `tflite` PyPI package: flatbuffer classes of the TFLite schema
except ImportError:  # pragma: no cover - depends on the environment
  tflite = None

_TFLITE_IDENTIFIER = b"TFL3"
TFLITE_REMEDY = ("Download the .tflite file again (a complete TFLite model, as the TFLite "
                 "converter writes it).")
_NUMPY_DTYPES = {"FLOAT32": "<f4", "FLOAT16": "<f2", "FLOAT64": "<f8", "INT8": "i1",
                 "UINT8": "u1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "BOOL": "?"}


@dataclasses.dataclass(frozen=True)
class TFLiteTensor:
  """One tensor of the graph. `data` is the raw constant (None for activations)."""
  name: str
  shape: tuple[int, ...]
  dtype: str                       # TFLite TensorType name, e.g. 'UINT8'
  data: np.ndarray | None
  scale: np.ndarray | None         # quantization scale(s); None if not quantized
  zero_point: np.ndarray | None
  quantized_dimension: int = 0

  def dequantized(self) -> np.ndarray:
    """The constant as float32: (q - zero_point) * scale, broadcast per channel."""
    if self.data is None:
      raise WeightImportError(f"tensor {self.name!r} is not a constant")
    values = self.data.astype(np.float32)
    if self.scale is None:
      return values
    axis_shape = [1] * values.ndim
    if self.scale.size > 1:
      axis_shape[self.quantized_dimension] = self.scale.size
    scale = self.scale.astype(np.float32).reshape(axis_shape)
    zero_point = self.zero_point.astype(np.float32).reshape(axis_shape)
    return (values - zero_point) * scale


@dataclasses.dataclass(frozen=True)
class TFLiteOp:
  """One operator: its builtin name, tensor indices and decoded conv/pool options."""
  kind: str                       # BuiltinOperator name, e.g. 'DEPTHWISE_CONV_2D'
  inputs: tuple[int, ...]
  outputs: tuple[int, ...]
  options: dict    # stride (h, w), padding, activation; depth_multiplier, dilation or filter


@dataclasses.dataclass(frozen=True)
class TFLiteGraph:
  """The first subgraph of a .tflite model."""
  tensors: list[TFLiteTensor]
  ops: list[TFLiteOp]
  inputs: tuple[int, ...]
  outputs: tuple[int, ...]


def _enum_names(enum_class) -> dict[int, str]:
  return {v: k for k, v in vars(enum_class).items() if not k.startswith("_")}


def _buffer_bytes(model, raw: bytes, index: int) -> bytes | None:
  """The bytes of buffer `index`: inline data, or an (offset, size) into the file."""
  buffer = model.Buffers(index)
  if buffer.DataLength():
    return buffer.DataAsNumpy().tobytes()
  if buffer.Offset() > 1:
    return raw[buffer.Offset():buffer.Offset() + buffer.Size()]
  return None


def _read_tensor(model, raw: bytes, tensor, type_names: dict[int, str]) -> TFLiteTensor:
  dtype = type_names[tensor.Type()]
  shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
  data = _buffer_bytes(model, raw, tensor.Buffer())
  if data is not None:
    if dtype not in _NUMPY_DTYPES:
      raise WeightImportError(f"constant tensor {tensor.Name()!r} has unsupported type {dtype}")
    data = np.frombuffer(data, _NUMPY_DTYPES[dtype]).reshape(shape)
  quant = tensor.Quantization()
  scale = zero_point = None
  dim = 0
  if quant is not None and quant.ScaleLength():
    scale = quant.ScaleAsNumpy().copy()
    zero_point = (quant.ZeroPointAsNumpy().copy() if quant.ZeroPointLength()
                  else np.zeros_like(scale, np.int64))
    dim = quant.QuantizedDimension()
  return TFLiteTensor(tensor.Name().decode("utf8"), shape, dtype, data, scale, zero_point, dim)


def _read_options(op, kind: str) -> dict:
  """Stride, padding, fused activation (and depth multiplier) of conv and pool ops."""
  option_classes = {"CONV_2D": tflite.Conv2DOptions,
                    "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
                    "AVERAGE_POOL_2D": tflite.Pool2DOptions}
  table = op.BuiltinOptions()
  if kind not in option_classes or table is None:
    return {}
  options = option_classes[kind]()
  options.Init(table.Bytes, table.Pos)
  decoded = {"stride": (options.StrideH(), options.StrideW()),
             "padding": _enum_names(tflite.Padding)[options.Padding()],
             "activation": _enum_names(tflite.ActivationFunctionType)[
                 options.FusedActivationFunction()]}
  if kind == "DEPTHWISE_CONV_2D":
    decoded["depth_multiplier"] = options.DepthMultiplier()
  if kind == "AVERAGE_POOL_2D":
    decoded["filter"] = (options.FilterHeight(), options.FilterWidth())
  else:
    decoded["dilation"] = (options.DilationHFactor(), options.DilationWFactor())
  return decoded


def read_tflite(path: str | pathlib.Path) -> TFLiteGraph:
  """Parses the first subgraph of a .tflite flatbuffer (constants kept raw, see `dequantized`)."""
  if tflite is None:
    raise ImportError("reading .tflite files needs the `tflite` package (pip install tflite)")
  full = os.path.abspath(path)
  raw = pathlib.Path(full).read_bytes()
  if raw[4:8] != _TFLITE_IDENTIFIER:
    raise FileFormatError(f"{full}: not a TFLite flatbuffer (no {_TFLITE_IDENTIFIER.decode()} "
                          f"identifier at byte 4; {describe_start(raw)}). {TFLITE_REMEDY}")
  try:
    return _parse_tflite(full, raw)
  except (struct.error, IndexError, ValueError, TypeError, KeyError) as e:
    if isinstance(e, UserError):
      raise
    raise FileFormatError(f"{full}: truncated or corrupt TFLite flatbuffer of {len(raw)} bytes "
                          f"({e}). {TFLITE_REMEDY}") from e


def _parse_tflite(path: str, raw: bytes) -> TFLiteGraph:
  """read_tflite on the bytes `raw` of the file `path`, without translating parse errors."""
  model = tflite.Model.GetRootAs(raw, 0)
  if model.SubgraphsLength() != 1:
    raise WeightImportError(f"{path} has {model.SubgraphsLength()} subgraphs; one is supported")
  graph = model.Subgraphs(0)
  type_names = _enum_names(tflite.TensorType)
  op_names = _enum_names(tflite.BuiltinOperator)
  tensors = [_read_tensor(model, raw, graph.Tensors(i), type_names)
             for i in range(graph.TensorsLength())]
  ops = []
  for i in range(graph.OperatorsLength()):
    op = graph.Operators(i)
    code = model.OperatorCodes(op.OpcodeIndex())
    # The schema keeps small codes in the deprecated int8 field; the larger is the real one.
    kind = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
    ops.append(TFLiteOp(kind, tuple(int(t) for t in op.InputsAsNumpy()),
                        tuple(int(t) for t in op.OutputsAsNumpy()), _read_options(op, kind)))
  return TFLiteGraph(tensors, ops, tuple(int(t) for t in graph.InputsAsNumpy()),
                     tuple(int(t) for t in graph.OutputsAsNumpy()))


# ----------------------------------------------------------------------------
# MobileNet v1.

def ohwi_to_hwio(x: np.ndarray) -> np.ndarray:
  """TFLite conv weights (out, kh, kw, in) -> Flax kernel (kh, kw, in, out)."""
  return np.transpose(x, (1, 2, 3, 0))


def tflite_depthwise_to_flax(x: np.ndarray) -> np.ndarray:
  """TFLite depthwise weights (1, kh, kw, C*m) -> Flax grouped kernel (kh, kw, 1, C*m)."""
  return np.transpose(x, (1, 2, 0, 3))


def ohwi_1x1_to_dense(x: np.ndarray) -> np.ndarray:
  """1x1 conv weights (out, 1, 1, in) -> Dense kernel (in, out)."""
  return np.transpose(x[:, 0, 0, :], (1, 0))


def drop_first_class_kernel(x: np.ndarray) -> np.ndarray:
  """Logits conv (N+1, 1, 1, C) with background first -> Dense kernel (C, N)."""
  return ohwi_1x1_to_dense(x)[:, 1:]


def drop_first_class_bias(x: np.ndarray) -> np.ndarray:
  """Logits bias (N+1,) with background first -> (N,)."""
  return x[1:]


def mobilenet_v1_layers() -> list[tuple[str, str, str, int]]:
  """(slim name, TFLite op, Flax module, stride) of the conv ops of MobileNet v1, in order."""
  layers = [("Conv2d_0", "CONV_2D", "conv1", 2)]
  for block_id, (_, stride) in enumerate(BLOCKS, start=1):
    layers.append((f"Conv2d_{block_id}_depthwise", "DEPTHWISE_CONV_2D", f"conv_dw_{block_id}",
                   stride))
    layers.append((f"Conv2d_{block_id}_pointwise", "CONV_2D", f"conv_pw_{block_id}", 1))
  return layers


HEAD = "Logits/Conv2d_1c_1x1"


def tflite_mobilenet_v1_name_map(drop_background: bool) -> NameMap:
  """'{slim name}/weights' and '/bias' -> `MobileNetV1(batch_norm=False)` variables."""
  transforms = {"CONV_2D": ohwi_to_hwio, "DEPTHWISE_CONV_2D": tflite_depthwise_to_flax}
  name_map = {}
  for slim, kind, module, _ in mobilenet_v1_layers():
    name_map[f"{slim}/weights"] = Target(f"params/{module}/kernel", transforms[kind])
    name_map[f"{slim}/bias"] = Target(f"params/{module}/bias", identity)
  name_map[f"{HEAD}/weights"] = Target(
      "params/head/kernel", drop_first_class_kernel if drop_background else ohwi_1x1_to_dense)
  name_map[f"{HEAD}/bias"] = Target(
      "params/head/bias", drop_first_class_bias if drop_background else identity)
  return name_map


def _check_op(index: int, op: TFLiteOp, kind: str, stride: int, activation: str,
              network: str = "MobileNet v1") -> None:
  """Raises WeightImportError unless op `index` is `kind` with SAME padding, `stride`
  and fused `activation` (as `network` has there)."""
  want = {"stride": (stride, stride), "padding": "SAME", "activation": activation}
  got = {key: op.options.get(key) for key in want}
  if op.kind != kind or got != want or op.options.get("dilation", (1, 1)) != (1, 1):
    raise WeightImportError(f"op {index} is {op.kind} {op.options}; {network} has "
                            f"{kind} {want} there")


def mobilenet_v1_tensors(graph: TFLiteGraph) -> dict[str, np.ndarray]:
  """Checks the graph is a MobileNet v1 and returns {'{slim name}/weights'|'/bias': float array}."""
  layers = mobilenet_v1_layers()
  ops = graph.ops
  if len(ops) < len(layers) + 2:
    raise WeightImportError(f"graph has {len(ops)} ops; MobileNet v1 has at least "
                            f"{len(layers) + 2}")
  tensors = {}
  for index, (slim, kind, _, stride) in enumerate(layers):
    _check_op(index, ops[index], kind, stride, "RELU6")
    _, weights, bias = ops[index].inputs
    tensors[f"{slim}/weights"] = graph.tensors[weights].dequantized()
    tensors[f"{slim}/bias"] = graph.tensors[bias].dequantized()
  pool, logits = ops[len(layers)], ops[len(layers) + 1]
  if pool.kind != "AVERAGE_POOL_2D":
    raise WeightImportError(f"op {len(layers)} is {pool.kind}; expected AVERAGE_POOL_2D")
  pooled_shape = graph.tensors[pool.outputs[0]].shape
  if pooled_shape[1:3] != (1, 1):
    raise WeightImportError(f"average pool gives {pooled_shape}, not a global average")
  _check_op(len(layers) + 1, logits, "CONV_2D", 1, "NONE")
  tensors[f"{HEAD}/weights"] = graph.tensors[logits.inputs[1]].dequantized()
  tensors[f"{HEAD}/bias"] = graph.tensors[logits.inputs[2]].dequantized()
  rest = [op.kind for op in ops[len(layers) + 2:]]
  if any(kind not in ("RESHAPE", "SQUEEZE", "SOFTMAX") for kind in rest):
    raise WeightImportError(f"unexpected ops after the logits: {rest}")
  return tensors


def input_preprocessing(graph: TFLiteGraph) -> Preprocessing:
  """The normalisation the uint8 input tensor's quantization implies.

  real = (q - zero_point) * scale = (q / 255 - mean) / std with mean = zero_point / 255
  and std = 1 / (255 * scale); for MobileNets (zero point 128, scale 1/128) x / 128 - 1.
  """
  tensor = graph.tensors[graph.inputs[0]]
  if tensor.scale is None:
    raise WeightImportError(f"input {tensor.name!r} is not quantized: normalisation unknown")
  mean = float(tensor.zero_point[0]) / 255.0
  std = 1.0 / (255.0 * float(tensor.scale[0]))
  return Preprocessing((mean,) * 3, (std,) * 3, image_size=tensor.shape[1])


def load_tflite_mobilenet_v1(path: str | pathlib.Path, drop_background: bool = True) -> Imported:
  """A (quantized) TF-slim MobileNet v1 .tflite -> `Imported` for `mobilenet_v1_{alpha}`.

  drop_background: the slim models have 1001 classes with 'background' at 0;
  True keeps the 1000 ImageNet-1k classes (indices as in the Keras models),
  False keeps all 1001. `model_kwargs` is {'batch_norm': False} (BN is folded).
  """
  graph = read_tflite(path)
  tensors = mobilenet_v1_tensors(graph)
  alpha = alpha_from_stem(tensors["Conv2d_0/weights"].shape[0])
  depth_multiplier = graph.ops[1].options["depth_multiplier"]
  num_classes = tensors[f"{HEAD}/weights"].shape[0] - int(drop_background)
  kwargs = {"batch_norm": False}
  if depth_multiplier != 1:
    kwargs["depth_multiplier"] = depth_multiplier
  preprocessing = input_preprocessing(graph)
  model = MobileNetV1(num_classes=num_classes, alpha=alpha, **kwargs)
  size = preprocessing.image_size
  expected = model_shapes(model, (1, size, size, 3))
  variables = convert_tensors(tensors, tflite_mobilenet_v1_name_map(drop_background), expected)
  return Imported(variables, f"mobilenet_v1_{alpha}", num_classes, kwargs, preprocessing)


# ----------------------------------------------------------------------------
# MobileNet v2.

def mobilenet_v2_layers(alpha: float = 1.0) -> list[tuple[str, str, str, int, str]]:
  """(tensor key, TFLite op, Flax module, stride, fused activation) of the conv ops of
  MobileNet v2 in graph order; an ('add', 'ADD', ...) row follows each residual block."""
  layers = [("Conv", "CONV_2D", "stem", 2, "RELU6")]
  in_channels = mobilenet_v2.make_divisible(mobilenet_v2.STEM_CHANNELS * alpha)
  for index, (expansion, channels, stride) in enumerate(mobilenet_v2.block_settings(alpha)):
    if expansion != 1:
      layers.append((f"block{index}/expand", "CONV_2D", f"block{index}_expand", 1, "RELU6"))
    layers.append((f"block{index}/depthwise", "DEPTHWISE_CONV_2D", f"block{index}_depthwise",
                   stride, "RELU6"))
    layers.append((f"block{index}/project", "CONV_2D", f"block{index}_project", 1, "NONE"))
    if stride == 1 and in_channels == channels:
      layers.append((f"block{index}/add", "ADD", "", 1, "NONE"))
    in_channels = channels
  layers.append(("Conv_1", "CONV_2D", "top_conv", 1, "RELU6"))
  return layers


V2_HEAD = "Logits"


def mobilenet_v2_tensors(graph: TFLiteGraph, alpha: float) -> dict[str, np.ndarray]:
  """Checks the graph is a MobileNet v2 of width `alpha` op by op (kinds, strides, fused
  activations, residual adds) and returns {'{key}/weights'|'/bias': float array}."""
  layers = mobilenet_v2_layers(alpha)
  ops = graph.ops
  if len(ops) < len(layers) + 2:
    raise WeightImportError(f"graph has {len(ops)} ops; MobileNet v2 has at least "
                            f"{len(layers) + 2}")
  tensors = {}
  for index, (key, kind, _, stride, activation) in enumerate(layers):
    if kind == "ADD":
      if ops[index].kind != "ADD" or ops[index].options.get("activation", "NONE") != "NONE":
        raise WeightImportError(f"op {index} is {ops[index].kind} {ops[index].options}; "
                                "MobileNet v2 adds the block's input back there")
      continue
    _check_op(index, ops[index], kind, stride, activation, "MobileNet v2")
    _, weights, bias = ops[index].inputs
    tensors[f"{key}/weights"] = graph.tensors[weights].dequantized()
    tensors[f"{key}/bias"] = graph.tensors[bias].dequantized()
  pool, logits = ops[len(layers)], ops[len(layers) + 1]
  if pool.kind != "AVERAGE_POOL_2D" or graph.tensors[pool.outputs[0]].shape[1:3] != (1, 1):
    raise WeightImportError(f"op {len(layers)} is {pool.kind}; expected a global "
                            "AVERAGE_POOL_2D")
  _check_op(len(layers) + 1, logits, "CONV_2D", 1, "NONE", "MobileNet v2")
  tensors[f"{V2_HEAD}/weights"] = graph.tensors[logits.inputs[1]].dequantized()
  tensors[f"{V2_HEAD}/bias"] = graph.tensors[logits.inputs[2]].dequantized()
  rest = [op.kind for op in ops[len(layers) + 2:]]
  if any(kind not in ("RESHAPE", "SQUEEZE", "SOFTMAX") for kind in rest):
    raise WeightImportError(f"unexpected ops after the logits: {rest}")
  return tensors


def tflite_mobilenet_v2_name_map(alpha: float, drop_background: bool) -> NameMap:
  """'{key}/weights' and '/bias' -> `MobileNetV2(batch_norm=False)` variables."""
  transforms = {"CONV_2D": ohwi_to_hwio, "DEPTHWISE_CONV_2D": tflite_depthwise_to_flax}
  name_map = {}
  for key, kind, module, _, _ in mobilenet_v2_layers(alpha):
    if kind != "ADD":
      name_map[f"{key}/weights"] = Target(f"params/{module}/kernel", transforms[kind])
      name_map[f"{key}/bias"] = Target(f"params/{module}/bias", identity)
  name_map[f"{V2_HEAD}/weights"] = Target(
      "params/head/kernel", drop_first_class_kernel if drop_background else ohwi_1x1_to_dense)
  name_map[f"{V2_HEAD}/bias"] = Target(
      "params/head/bias", drop_first_class_bias if drop_background else identity)
  return name_map


def load_tflite_mobilenet_v2(path: str | pathlib.Path, drop_background: bool = True) -> Imported:
  """A (quantized) TF-slim MobileNet v2 .tflite -> `Imported` for `mobilenet_v2_{alpha}`.

  The width `alpha` is read from the stem's channel count (32 * alpha rounded to 8);
  drop_background as in `load_tflite_mobilenet_v1`. `model_kwargs` is
  {'batch_norm': False} (batch norm is folded into the convolutions).
  """
  graph = read_tflite(path)
  stem_channels = graph.tensors[graph.ops[0].inputs[1]].shape[0]
  alphas = [a for a in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
            if mobilenet_v2.make_divisible(mobilenet_v2.STEM_CHANNELS * a) == stem_channels]
  if not alphas:
    raise WeightImportError(f"stem of {stem_channels} channels fits no MobileNet v2 width")
  errors = []
  for alpha in alphas:   # widths sharing a stem width differ in the blocks
    try:
      tensors = mobilenet_v2_tensors(graph, alpha)
      break
    except WeightImportError as e:
      errors.append(f"alpha {alpha}: {e}")
  else:
    raise WeightImportError("; ".join(errors))
  num_classes = tensors[f"{V2_HEAD}/weights"].shape[0] - int(drop_background)
  kwargs = {"batch_norm": False}
  preprocessing = input_preprocessing(graph)
  model = mobilenet_v2.MobileNetV2(num_classes=num_classes, alpha=alpha, **kwargs)
  size = preprocessing.image_size
  expected = model_shapes(model, (1, size, size, 3))
  variables = convert_tensors(tensors, tflite_mobilenet_v2_name_map(alpha, drop_background),
                              expected)
  return Imported(variables, f"mobilenet_v2_{alpha}", num_classes, kwargs, preprocessing)
