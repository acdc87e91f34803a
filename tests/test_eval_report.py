"""python -m tinybn.eval cifar --report / --plot DIR (tinybn.tasks.report): the confusion matrix and
per-class precision and recall against their closed forms, the class names of batches.meta.txt, the
PNGs read back, and the errors in one line."""
import numpy as np
import pytest

from test_cli_cifar import train, write_cifar
from tinybn.eval import main as eval_main
from tinybn.metrics import in_top_1
from tinybn.tasks import cifar, report
from tinybn.tensor import Tensor

NAMES = [f"class{i}" for i in range(10)]


def closed_forms(labels, predicted, k):
    """Confusion, precision and recall by their definitions, one example and one class at a time."""
    confusion = np.zeros((k, k), np.int64)
    for t, p in zip(labels, predicted):
        confusion[t, p] += 1
    precision = [confusion[j, j] / confusion[:, j].sum() if confusion[:, j].sum() else 0.0 for j in range(k)]
    recall = [confusion[i, i] / confusion[i].sum() if confusion[i].sum() else 0.0 for i in range(k)]
    return confusion, np.array(precision), np.array(recall)


@pytest.mark.parametrize("seed", range(3))
def test_report_numbers_are_the_closed_forms(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 50)
    predicted = np.where(rng.random(50) < 0.5, labels, rng.integers(0, 3, 50))
    predicted[predicted == 3] = 0                                               # class 3: never predicted
    labels[labels == 2] = 1                                                     # class 2: no example
    result = report.ClassReport(labels, predicted, ["a", "b", "c", "d", "e"])   # class 4: neither
    confusion, precision, recall = closed_forms(labels, predicted, 5)
    assert np.array_equal(result.confusion, confusion)
    np.testing.assert_allclose(result.precision, precision, rtol=0, atol=1e-15)
    np.testing.assert_allclose(result.recall, recall, rtol=0, atol=1e-15)
    assert result.precision[3] == result.precision[4] == result.recall[2] == result.recall[4] == 0.0
    assert result.precision_at_1 == np.mean(labels == predicted) and result.total == 50
    rows = {line.split()[1]: line.split()[2:] for line in result.format().splitlines()[1:6]}
    assert rows["d"][0] == "-" and rows["c"][1] == "-" and rows["e"][:2] == ["-", "-"]
    assert rows["b"] == [f"{precision[1]:.4f}", f"{recall[1]:.4f}", str(confusion[1].sum()),
                         str(confusion[:, 1].sum())]


def test_predictions_count_a_tie_with_the_label_as_a_hit():
    """model(x) = x: the 'images' are the logits. A tie for the top that includes the label is that
    label, as in_top_k; otherwise the first top logit. The diagonal is precision@1's hits."""
    logits = np.array([[1, 1, 0], [1, 1, 0], [0, 2, 5], [3, 0, 0], [0, 0, 0]], np.float32)
    labels = np.array([1, 2, 2, 1, 2])
    batches = [(logits[:2], labels[:2]), (logits[2:], labels[2:])]
    got_labels, predicted = report.predictions(lambda x: Tensor(x.numpy()), batches)
    assert got_labels.tolist() == labels.tolist() and predicted.tolist() == [1, 0, 2, 0, 2]
    result = report.ClassReport(got_labels, predicted, ["a", "b", "c"])
    assert result.correct == int(in_top_1(logits, labels).sum()) == 3


def test_bad_input_is_one_line():
    with pytest.raises(ValueError, match=r"^predicted must be in \[0, 2\) for 2 class names, got 0\.\.2$"):
        report.ClassReport([0, 1], [0, 2], ["a", "b"])
    with pytest.raises(ValueError, match=r"must be \(N,\) alike"):
        report.ClassReport([0, 1], [0], ["a", "b"])


@pytest.mark.parametrize("content, note", [
    ("\n".join(NAMES) + "\n\n", None),
    (None, "no such file"),
    ("\n".join(NAMES[:9]) + "\n", "holds 9 names, not 10"),
])
def test_class_names_from_batches_meta_txt(tmp_path, content, note):
    if content is not None:
        (tmp_path / "batches.meta.txt").write_text(content)
    names, said = report.class_names(str(tmp_path))
    assert names == (NAMES if note is None else list(report.CIFAR10_CLASS_NAMES))
    assert said is None if note is None else (said.startswith("note: class names are CIFAR-10's standard ones: ")
                                              and said.endswith(note))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CIFAR-10 (24 test images) with named classes, and 2 steps of training on it."""
    root = tmp_path_factory.mktemp("report")
    data = write_cifar(root / "data")
    (data / "cifar-10-batches-bin" / "batches.meta.txt").write_text("\n".join(NAMES) + "\n")
    train(data, root / "run", "--max-steps", "2", "--log-every", "1", "--backend", "numpy")
    return data, root / "run"


def eval_args(data, run, tmp_path, *extra):
    return ["cifar", "--data-dir", str(data), "--train-dir", str(run), "--eval-dir", str(tmp_path / "ev"),
            "--batch-size", "8", "--no-download", "--backend", "numpy", *extra]


def test_report_and_plots_of_a_checkpoint(trained, tmp_path, capsys):
    data, run = trained
    precision = eval_main(eval_args(data, run, tmp_path, "--plot", str(tmp_path / "plots")))
    out = capsys.readouterr().out.splitlines()
    # the report's precision@1 is the --watch path's (evaluate_batches), over the same examples
    images, labels = cifar.load_split("test", type("A", (), {"data_dir": str(data), "no_download": True}))
    expected, total, step, _ = cifar.evaluate(str(run / "model.ckpt-2.npz"), cifar.eval_batches(images, labels, 8),
                                              True)
    assert precision == expected and total == 24 and step == 2
    assert out[0].endswith(f"step 2: precision @ 1 = {expected:.4f} (24 examples, moving-average weights)")
    matrix = out[out.index("confusion matrix (row: true class, column: predicted class)") + 2:][:10]
    assert [line.split()[1] for line in matrix] == NAMES
    confusion = np.array([[int(c) for c in line.split()[2:]] for line in matrix])
    assert np.array_equal(confusion.sum(axis=1), np.bincount(labels, minlength=10))
    assert np.trace(confusion) == round(expected * 24)
    assert not (tmp_path / "ev").exists()                  # the report writes nothing into --eval-dir
    import matplotlib.image
    wrong = 24 - np.trace(confusion)
    for name, shape in [("confusion_matrix.png", (560, 640)), ("curves.png", (400, 1000)),
                        ("misclassified.png", (150 * -(-wrong // 6), 720))]:
        path = tmp_path / "plots" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[:2] == shape and pixels.std() > 0.01, name      # a picture, not a blank


def test_standard_names_when_batches_meta_txt_is_absent(tmp_path, capsys):
    data = write_cifar(tmp_path / "data")
    train(data, tmp_path / "run", "--max-steps", "1", "--backend", "numpy")
    capsys.readouterr()
    eval_main(eval_args(data, tmp_path / "run", tmp_path, "--report"))
    captured = capsys.readouterr()
    assert captured.err.startswith("note: class names are CIFAR-10's standard ones: ")
    assert "batches.meta.txt: no such file" in captured.err and captured.err.count("\n") == 1
    assert "1   automobile" in captured.out


def test_report_errors_are_one_line(trained, tmp_path, monkeypatch):
    data, run = trained
    (tmp_path / "file").write_text("x")
    for extra, message in [(["--report", "--watch"], "error: --report and --plot look at one checkpoint"),
                           (["--plot", str(tmp_path / "file")], f"error: --plot {tmp_path / 'file'} is not a directory")]:
        with pytest.raises(SystemExit) as info:
            eval_main(eval_args(data, run, tmp_path, *extra))
        assert str(info.value.code).startswith(message) and "\n" not in str(info.value.code)
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)
    with pytest.raises(SystemExit) as info:
        eval_main(eval_args(data, run, tmp_path, "--plot", str(tmp_path / "plots")))
    assert info.value.code == "error: --plot needs matplotlib, which is not installed: pip install -e '.[plot]'"
    assert not (tmp_path / "plots").exists()


def test_curves_need_train_csv_and_its_columns(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(FileNotFoundError, match="no .*train.csv: the curves come from"):
        report.plot_curves(str(tmp_path / "train.csv"), None, str(tmp_path / "c.png"))
    (tmp_path / "train.csv").write_text("step,loss\n1,2.0\n")
    with pytest.raises(ValueError, match=r"train.csv has no column 'train_accuracy' \(its columns: step, loss\)"):
        report.plot_curves(str(tmp_path / "train.csv"), None, str(tmp_path / "c.png"))
    assert not (tmp_path / "c.png").exists()
