"""The console people read: `nf-train`'s real process output (one line per log step, eval lines,
the summary; library INFO lines only with `-v 0`) and `nf-eval`'s progress lines."""

from __future__ import annotations

import io
import math
import re
import sys
from pathlib import Path

import pytest
from test_train import _env, _run, _tail

from nf.inference.progress import Progress, duration
from nf.train.console import TrainConsole

STEPS = 4
# step  3/4  loss 2.31  accuracy 0.125  lr 0.0267  1,234 img/s  ETA 2s
STEP_LINE = re.compile(
    r"^step +(\d+)/(\d+)  loss (\S+)  accuracy (\S+)  lr (\S+)(?:  ([\d,]+) img/s)?  ETA (\d+h\d\dm|\d+m\d\ds|\d+s|--)$"
)
ABSL_INFO = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]")  # absl's INFO line prefix


def _train_cmd(config, workdir, *flags):
    return [
        sys.executable,
        "-m",
        "nf.train",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--config.total_steps={STEPS}",
        "--config.eval_every_steps=2",
        "--config.checkpoint_every_steps=2",
        *flags,
    ]


@pytest.fixture(scope="module")
def quiet_run(tiny_config_file, jax_cache_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    workdir = tmp_path_factory.mktemp("console") / "run"
    rc, out = _run(_train_cmd(tiny_config_file, workdir), _env(jax_cache_dir), workdir.parent / "train.log")
    assert rc == 0, _tail(out)
    return workdir, out.splitlines()


def test_default_console_is_one_line_per_step_then_eval_and_summary(quiet_run):
    workdir, lines = quiet_run
    steps = [(i, m) for i, line in enumerate(lines) if (m := STEP_LINE.match(line))]
    assert [int(m.group(1)) for _, m in steps] == list(range(1, STEPS + 1)), "\n".join(lines)
    assert all(int(m.group(2)) == STEPS for _, m in steps)
    assert all(m.group(6) for _, m in steps[1:]), "every step after the first has a measured throughput"
    assert steps[0][1].group(7) == "--" and not steps[0][1].group(6)  # the compiling step: no estimate
    assert steps[-1][1].group(7) == "0s"  # nothing left
    # The printed loss is the logged one (metrics.jsonl).
    import json

    logged = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in logged if r["split"] == "train"}
    for _, m in steps:
        assert float(m.group(3)) == pytest.approx(train[int(m.group(1))]["loss"], rel=1e-3)
    evals = [i for i, line in enumerate(lines) if line.startswith("eval at step ")]
    assert [lines[i].split(":")[0] for i in evals] == ["eval at step 2", "eval at step 4"]
    assert evals[0] == steps[1][0] + 1  # right after its step's line
    assert any(line.startswith(f"Finished at step {STEPS}.") for line in lines)
    assert not [line for line in lines if ABSL_INFO.match(line)], "\n".join(lines)
    assert not [line for line in lines if "Traceback" in line]
    assert "JAX devices: [CpuDevice(id=0)] (process 0 of 1)" in lines, "\n".join(lines)
    # libtpu (installed with the test extra) has no TPU here: its start-up complaints stay hidden.
    assert not [line for line in lines if "TPU" in line or "libtpu" in line], "\n".join(lines)
    # Short enough to read at a glance: devices, the steps, 2 evals and the summary (<= 8 lines).
    assert len(lines) <= 1 + STEPS + 2 + 8, "\n".join(lines)


@pytest.mark.slow  # a second tiny trainer process
def test_verbosity_flag_brings_back_the_library_info_lines(quiet_run, tiny_config_file, jax_cache_dir, tmp_path):
    """`-v 0` (absl's INFO) on a resumed run: the INFO lines of absl, Orbax and the trainer show,
    the step lines are still there, and the console says where it resumed."""
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(quiet_run[0], workdir)
    cmd = _train_cmd(tiny_config_file, workdir, "-v", "0")
    cmd[cmd.index(f"--config.total_steps={STEPS}")] = f"--config.total_steps={STEPS + 1}"
    rc, out = _run(cmd, _env(jax_cache_dir), tmp_path / "verbose.log")
    assert rc == 0, _tail(out)
    lines = out.splitlines()
    info = [line for line in lines if ABSL_INFO.match(line)]
    assert any("checkpoint_manager.py" in line for line in info), _tail(out)  # Orbax
    assert any("Resuming from" in line for line in info), _tail(out)  # nf's own INFO
    assert f"Resuming from {workdir / 'checkpoints'}/{STEPS}: step {STEPS} of {STEPS + 1}." in lines
    assert [int(m.group(1)) for line in lines if (m := STEP_LINE.match(line))] == [STEPS + 1]


def test_train_line_eta_is_the_remaining_steps_at_the_measured_rate():
    out = io.StringIO()
    console = TrainConsole(total_steps=1000, batch_size=64, start_step=0, out=out)
    scalars = {"loss": 1.5, "accuracy": 0.5, "skipped_steps": 0, "learning_rate": 0.04, "images_per_sec": 640.0}
    console.write(400, "train", scalars)
    console.write(400, "checkpoint", {"stall_seconds": 0.1})  # files only
    # 600 steps x 64 images / 640 images/s = 60 s
    assert out.getvalue() == "step  400/1000  loss 1.5  accuracy 0.5  lr 0.04  640 img/s  ETA 1m00s\n"
    assert [duration(s) for s in (0.4, 59.6, 61, 3600 + 125)] == ["0s", "1m00s", "1m01s", "1h02m"]
    other = io.StringIO()  # a process > 0: only where it resumed from (every process says it)
    TrainConsole(10, 8, 3, checkpoints="w/checkpoints", enabled=False, out=other).write(4, "train", scalars)
    assert other.getvalue() == "Resuming from w/checkpoints/3: step 3 of 10.\n"


def test_progress_counts_images_and_predicts_the_end():
    out = io.StringIO()
    progress = Progress("ema weights", total=300, every_s=0.0, out=out)
    progress._t0 -= 2.0  # two seconds ago
    progress.update(100)
    line = out.getvalue().strip()
    m = re.fullmatch(r"ema weights: 100/300 images \(33%\)  ([\d.]+) images/s  ETA (\d+)s", line)
    assert m, line
    rate = float(m.group(1))
    assert 45 < rate <= 50 and int(m.group(2)) == round(200 / rate)


def test_nf_eval_prints_progress_while_it_runs(classifier_run, digits_root, tmp_path, capsys):
    from nf.cli import evaluate as nf_eval

    test_dir = digits_root / "test"
    total = sum(1 for _ in test_dir.glob("*/*"))
    batch = 64
    args = [f"--workdir={classifier_run}", f"--data={test_dir}", f"--batch_size={batch}"]
    assert nf_eval.main([*args, f"--out={tmp_path / 'r.json'}", "--progress_every_s=0", "--weights=both"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in ("raw", "ema"):
        progress = [line for line in lines if line.startswith(f"{name} weights: ")]
        done = [int(re.search(r": ([\d,]+)/", line).group(1).replace(",", "")) for line in progress]
        want = [min((i + 1) * batch, total) for i in range(math.ceil(total / batch))]
        assert done == want, "\n".join(lines)
        assert all(f"/{total:,} images (" in line and " images/s  " in line for line in progress)
        assert all("ETA " in line for line in progress[:-1]) and " took " in progress[-1]
    # The default (every 10 s) prints only the last line of each pass on a set this small.
    assert nf_eval.main([*args, f"--out={tmp_path / 'q.json'}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    progress = [line for line in lines if line.startswith("ema weights: ") and " images (" in line]
    assert len(progress) == 1 and progress[0].startswith(f"ema weights: {total}/{total} images (100%)"), lines
