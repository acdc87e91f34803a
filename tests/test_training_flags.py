"""The flags the command lines share (cli_flags' parent parsers) are refused alike, with one
message, by every command that has them, before it reads data or touches a directory."""
import pytest

from tinybn.eval import main as eval_main
from tinybn.train import main as train_main

TRAIN_FLAGS = [("--max-steps", "0", "--max-steps must be positive, got 0"),
               ("--log-every", "0", "--log-every must be positive, got 0"),
               ("--summary-every", "0", "--summary-every must be positive, got 0"),
               ("--checkpoint-every", "0", "--checkpoint-every must be positive, got 0"),
               ("--max-to-keep", "0", "--max-to-keep must be positive, got 0"),
               ("--seed", "-1", "--seed must be >= 0, got -1")]
INPUT_FLAGS = [("--batch-size", "0", "--batch-size must be positive, got 0"),
               ("--batch-size", "x", "argument --batch-size: invalid int value: 'x'"),
               ("--backend", "tpu", "argument --backend: invalid choice: 'tpu'")]
COMMANDS = [(train_main, "cifar", TRAIN_FLAGS + INPUT_FLAGS), (train_main, "mnist", TRAIN_FLAGS + INPUT_FLAGS),
            (eval_main, "cifar", INPUT_FLAGS), (eval_main, "mnist", INPUT_FLAGS)]
CASES = [pytest.param(main, task, flag, value, message, id=f"{main.__module__} {task} {flag} {value}")
         for main, task, flags in COMMANDS for flag, value, message in flags]


@pytest.mark.parametrize("main, task, flag, value, message", CASES)
def test_a_shared_flag_is_refused_alike(main, task, flag, value, message, tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main([task, "--data-dir", str(tmp_path / "no-data"), "--no-download", "--train-dir", str(run_dir),
              flag, value])
    code = exit_.value.code
    text = code if isinstance(code, str) else capsys.readouterr().err       # argparse prints, exits 2
    assert code not in (0, None)
    assert text.startswith("error: ") and message in text and "\n" not in text.rstrip("\n"), text
    assert not run_dir.exists() and not (tmp_path / "no-data").exists()     # nothing read or created
