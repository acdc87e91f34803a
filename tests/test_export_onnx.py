"""ONNX export (tinybn.export.onnx_model) checked with onnxruntime against tinybn's logits."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from export_models import BUILDERS, calibrated, images, logits, max_scaled_diff, write_run
from tinybn import Tensor
from tinybn.export import lrn_attributes, onnx_model, save_onnx
from tinybn.export.__main__ import main as export_main
from tinybn.models import cifar10
from tinybn.ops.lrn import local_response_normalization


def run_onnx(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": x})[0]


# batch norm that no conv or dense feeds stays a node: cnn_bn's after its flatten, ResNet's
# pre-activation BN of each of its 16 units and its postnorm; every other one is folded
UNFOLDED = {"tutorial": 0, "tutorial_bn": 0, "bn": 0, "cnn_bn": 1, "resnet_v2_50": 16 + 1}


@pytest.mark.parametrize("name", sorted(UNFOLDED))
def test_onnxruntime_gives_tinybn_logits(name):
    model, shape = calibrated(name)
    x = images(shape, 2)
    proto = onnx_model(model, shape)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("BatchNormalization") == UNFOLDED[name]
    convs = sum(1 for n, _ in model.named_parameters() if n.endswith("kernel") and len(_.shape) == 4)
    assert ops[0] == "Transpose" and ops.count("Conv") == convs
    theirs, ours = run_onnx(proto, x), logits(model, x)
    assert theirs.shape == ours.shape == (2, 10)
    assert max_scaled_diff(theirs, ours) <= 1e-5, np.abs(theirs - ours).max()
    # the input stays NHWC with a free batch size: one example runs too
    np.testing.assert_allclose(run_onnx(proto, x[:1]), ours[:1], rtol=0, atol=1e-5 * max(1, np.abs(ours).max()))


@pytest.mark.parametrize("depth_radius, bias, alpha, beta, channels",
                         [(4, 1.0, 0.001 / 9.0, 0.75, 64), (2, 2.0, 0.5, 0.5, 7), (5, 0.5, 1.0, 1.25, 3)])
def test_lrn_maps_to_onnx_lrn(depth_radius, bias, alpha, beta, channels):
    attributes = lrn_attributes(depth_radius, bias, alpha, beta)
    assert attributes["size"] == 2 * depth_radius + 1
    assert attributes["alpha"] == pytest.approx(alpha * attributes["size"])
    node = helper.make_node("LRN", ["x"], ["y"], **attributes)
    graph = helper.make_graph([node], "lrn", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).normal(0, 3, (2, 5, 4, channels)).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"x": x.transpose(0, 3, 1, 2)})[0].transpose(0, 2, 3, 1)
    ours = local_response_normalization(Tensor(x), depth_radius, bias, alpha, beta).numpy()
    np.testing.assert_allclose(theirs, ours, rtol=2e-6, atol=1e-7)


def test_tutorial_lrn_constants():
    assert lrn_attributes(4, 1.0, 0.001 / 9.0, 0.75) == pytest.approx(dict(size=9, alpha=0.001, beta=0.75, bias=1.0))


def test_cli_exports_the_moving_averages_and_keeps_existing_files(tmp_path, capsys):
    model, shape = calibrated("tutorial_bn")
    ema = {f"{n}/ExponentialMovingAverage": p.numpy() * 0.5 for n, p in model.named_parameters()}
    write_run(tmp_path / "run", model, "cifar", "tutorial_bn", step=7, ema=ema)
    out = tmp_path / "m.onnx"
    export_main(["onnx", "--train-dir", str(tmp_path / "run"), "--out", str(out)])
    assert "wrote" in capsys.readouterr().out
    shadow_model = cifar10.tutorial_bn()
    state = model.state_dict()
    state.update({k[:-len("/ExponentialMovingAverage")]: v for k, v in ema.items()})
    shadow_model.load_state_dict(state)
    x = images(shape, 2)
    np.testing.assert_allclose(run_onnx(onnx.load(str(out)), x), logits(shadow_model, x), rtol=0, atol=1e-5)
    before = out.read_bytes()
    with pytest.raises(SystemExit, match=r"^error: .*exists; choose a new file name$"):
        export_main(["onnx", "--train-dir", str(tmp_path / "run"), "--out", str(out)])
    assert out.read_bytes() == before
    with pytest.raises(ValueError, match="exists"):
        save_onnx(model, out, shape)


def test_refuses_what_it_cannot_export():
    with pytest.raises(ValueError, match="SequentialClassifier or ResNetV2"):
        onnx_model(object(), (24, 24, 3))
    with pytest.raises(ValueError, match="input_shape must be"):
        onnx_model(cifar10.tutorial(), (24, 24))
    assert set(BUILDERS) >= {"tutorial", "tutorial_bn", "bn", "resnet_v2_50"}
