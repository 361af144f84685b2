"""The ``medsam`` command's first contact: argument parsing, devices, start-up cost, progress, signals.

Parsing is tested in-process; start-up cost, one-line errors and signals in subprocesses (a fresh
interpreter is the only way to see which modules a command imports, and signals end processes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsam_monai.cli import build_parser
from medsam_monai.cli.progress import progress_lines
from medsam_monai.devices import check_device_name, resolve_device

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
HEAVY_MODULES = ("torch", "monai", "fastapi", "uvicorn", "SimpleITK", "transformers")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._subparsers._group_actions if a.dest == "command").choices


# ----- 1. values that start with a minus sign -----------------------------------------------------

# (subcommand and its required arguments, option, a value starting with "-" or a number, the parsed value)
NUMBER_OPTIONS = [
    (["segment", "ct.nii.gz", "--out", "o.nii.gz"], "--box", "-5,10,-30,20,60,15", ["-5,10,-30,20,60,15"]),
    (["segment", "ct.nii.gz", "--out", "o.nii.gz"], "--box-ras", "-40,10,-30,20,60,15", ["-40,10,-30,20,60,15"]),
    (["segment", "ct.nii.gz", "--out", "o.nii.gz"], "--box-ras", "-4.5e1,-.5,-30,2E1,60.,15", ["-4.5e1,-.5,-30,2E1,60.,15"]),
    (["segment", "ct.nii.gz", "--out", "o.nii.gz"], "--window", "-600,1500", "-600,1500"),
    (["segment", "ct.nii.gz", "--out", "o.nii.gz"], "--point", "-5,10,3", ["-5,10,3"]),
    (["segment", "ct.nii.gz", "--out", "o.nii.gz"], "--negative-point", "-2.5,7", ["-2.5,7"]),
    (["segment", "ct.nii.gz", "--out", "o.nii.gz"], "--point-ras", "-40,-10.5,-30", ["-40,-10.5,-30"]),
    (["segment", "ct.nii.gz", "--out", "o.nii.gz"], "--negative-point-ras", "-4e1,10,-3", ["-4e1,10,-3"]),
    (["segment", "ct.nii.gz", "--out", "o.nii.gz"], "--label-value", "3", [3]),
    (["everything", "ct.nii.gz", "--out", "m.json"], "--points-per-side", "-4", -4),
    (["everything", "ct.nii.gz", "--out", "m.json"], "--points-per-batch", "16", 16),
    (["everything", "ct.nii.gz", "--out", "m.json"], "--pred-iou-thresh", "-0.5", -0.5),
    (["everything", "ct.nii.gz", "--out", "m.json"], "--stability-score-thresh", "0.9", 0.9),
    (["everything", "ct.nii.gz", "--out", "m.json"], "--stability-score-offset", "-1e-1", -0.1),
    (["everything", "ct.nii.gz", "--out", "m.json"], "--box-nms-thresh", "0.5", 0.5),
    (["everything", "ct.nii.gz", "--out", "m.json"], "--crop-n-layers", "-1", -1),
    (["everything", "ct.nii.gz", "--out", "m.json"], "--crop-nms-thresh", ".5", 0.5),
    (["everything", "ct.nii.gz", "--out", "m.json"], "--crop-overlap-ratio", "0.25", 0.25),
    (["everything", "ct.nii.gz", "--out", "m.json"], "--crop-n-points-downscale-factor", "2", 2),
    (["everything", "ct.nii.gz", "--out", "m.json"], "--min-mask-region-area", "-100", -100),
    (["everything", "ct.nii.gz", "--out", "m.json"], "--min-area-mm2", "-2.5", -2.5),
    (["everything", "ct.nii.gz", "--out", "m.json"], "--max-area-fraction", "0.8", 0.8),
    (["everything", "ct.nii.gz", "--out", "m.json"], "--slice", "-3", -3),
    (["everything", "ct.nii.gz", "--out", "m.json"], "--window", "-600,1500", "-600,1500"),
    (["download"], "--max-mb", "12.5", 12.5),
    (["serve"], "--prefetch-slices", "-1", -1),
    (["serve"], "--port", "0", 0),
    (["serve"], "--max-upload-mb", "0.5", 0.5),
    (["serve"], "--max-volume-mb", "12", 12.0),
    (["serve"], "--max-sessions-mb", "1e3", 1000.0),
    (["serve"], "--cache-mb", "0", 0.0),
    (["serve"], "--session-ttl", "60", 60.0),
    (["serve"], "--request-timeout", "2.5", 2.5),
    (["serve"], "--max-connections", "8", 8),
]


def _dest(parser: argparse.ArgumentParser, option: str) -> str:
    return parser._option_string_actions[option].dest


@pytest.mark.parametrize("prefix, option, value, expected", NUMBER_OPTIONS)
def test_number_values_parse_after_a_space_and_after_equals(prefix, option, value, expected):
    parser = build_parser()
    spaced = parser.parse_args([*prefix, option, value])
    joined = parser.parse_args([*prefix, f"{option}={value}"])
    dest = _dest(_subcommands()[prefix[0]], option)
    assert getattr(spaced, dest) == expected
    assert getattr(joined, dest) == expected


def _takes_numbers(action: argparse.Action) -> bool:
    """An option whose value is a number (its type converts "1" to one) or a list of numbers (its metavar)."""
    if not action.option_strings or action.nargs == 0:
        return False
    try:
        converted = action.type("1") if action.type is not None else None
    except (argparse.ArgumentTypeError, ValueError):
        converted = None
    return isinstance(converted, (int, float)) or "," in str(action.metavar or "")


def test_every_option_that_takes_numbers_is_tested_above():
    found = {
        (name, option)
        for name, sub in _subcommands().items()
        for action in sub._actions
        if _takes_numbers(action)
        for option in action.option_strings
    }
    assert found == {(prefix[0], option) for prefix, option, _, _ in NUMBER_OPTIONS}


def test_a_negative_value_reaches_the_option_own_check():
    """`--port -1` is refused by the port check, not taken for an unknown option `-1`."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--port", "-1"])


def test_negative_numbers_are_values_in_a_real_segment_run(tmp_path):
    """The README's own example shape: a negative RAS box and the lung window reach the command."""
    args = build_parser().parse_args(
        [
            "segment",
            str(NIBABEL_DATA / "anatomical.nii"),
            "--box-ras",
            "-28,-20,-6,22,36,0",
            "--window",
            "-600,1500",
            "--box",
            "-5,1,1,2,2,2",
            "--out",
            str(tmp_path / "o.nii.gz"),
        ]
    )
    assert args.box_ras == ["-28,-20,-6,22,36,0"] and args.window == "-600,1500" and args.box == ["-5,1,1,2,2,2"]


# ----- 2. devices ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [("auto", "auto"), ("CPU", "cpu"), (" cuda:1 ", "cuda:1"), ("mps", "mps")])
def test_device_names_are_checked_without_torch(name, expected):
    assert check_device_name(name) == expected


@pytest.mark.parametrize("name", ["gpu", "meta", "cuda:", "cuda:x", "cpu,cuda", ""])
def test_unknown_device_names_are_refused(name):
    with pytest.raises(ValueError, match="unknown device"):
        check_device_name(name)


@pytest.mark.parametrize("name", ["gpu", "meta", "xla"])
def test_resolve_device_refuses_what_cannot_run_a_model(name):
    with pytest.raises(ValueError, match=f"'{name}'"):
        resolve_device(name)


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    """A STUB of the hardware only: torch's availability probes answer as on a machine with that device."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert resolve_device("auto") == expected


def test_missing_devices_are_refused_with_what_to_use():
    import torch

    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="no usable Apple MPS; use --device auto or cpu"):
            resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(ValueError, match="CUDA GPU"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_auto_is_the_default_device_of_every_command_that_loads_a_model():
    for name in ("segment", "demo", "serve"):
        action = _subcommands()[name]._option_string_actions["--device"]
        assert action.default == "auto", name


# ----- 3. start-up cost: help and argument errors import nothing heavy ----------------------------

# Runs `medsam ARGS...` in this interpreter, then reports its exit status and which heavy modules it imported.
_PROBE = textwrap.dedent(f"""
    import json, sys
    from medsam_monai.cli import main
    try:
        code = main(sys.argv[2:])
    except SystemExit as stop:
        code = stop.code
    heavy = [m for m in {HEAVY_MODULES!r} if m in sys.modules]
    with open(sys.argv[1], "w") as report:
        json.dump({{"code": code, "heavy": heavy}}, report)
""")


def _probe(tmp_path: Path, *args: str) -> tuple[dict, subprocess.CompletedProcess]:
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(report), *args], check=False, capture_output=True, text=True, timeout=120
    )
    return json.loads(report.read_text()), result


@pytest.mark.parametrize("args", [["--help"], ["segment", "--help"], ["serve", "--help"], ["demo", "--help"], ["--version"]])
def test_help_imports_no_heavy_module(tmp_path, args):
    report, result = _probe(tmp_path, *args)
    assert report == {"code": 0, "heavy": []}, result.stderr
    assert result.stdout


USAGE_ERRORS = [
    (["segment", "ct.nii.gz", "--out", "o.nii.gz", "--box-ras"], "argument --box-ras: expected one argument"),
    (["segment", "ct.nii.gz", "--out", "o.nii.gz", "--box", "1,1,1,2,2,2", "--device", "gpu"], "unknown device 'gpu'"),
    (["segment", "ct.nii.gz", "--out", "o.nii.gz", "--box", "1,1,1,2,2,2", "--device", "meta"], "unknown device 'meta'"),
    (["demo", "--device", "cuda:one"], "unknown device 'cuda:one'"),
    (["serve", "--device", "tpu"], "unknown device 'tpu'"),
    (["serve", "--port", "-1"], "port -1 is outside 0..65535"),
    (["serve", "--max-upload-mb=-5"], "-5 is not a positive number"),
    (["segment", "ct.nii.gz", "--box", "1,1,1,2,2,2"], "the following arguments are required: --out"),
    (["segment", "ct.nii.gz", "--out", "o.nii.gz", "--axis", "up"], "argument --axis: invalid choice: 'up'"),
    (["segment", "ct.nii.gz", "--out", "o.nii.gz", "--bogus"], "unrecognized arguments: --bogus"),
    (["fine-tune"], "argument COMMAND: invalid choice: 'fine-tune'"),
]


@pytest.mark.parametrize("args, message", USAGE_ERRORS)
def test_usage_errors_are_one_line_exit_2_and_import_nothing_heavy(tmp_path, args, message):
    report, result = _probe(tmp_path, *args)
    assert report == {"code": 2, "heavy": []}, result.stderr
    assert result.stderr.startswith("medsam: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


def test_the_installed_medsam_command_answers_help_without_torch():
    """The console script (what users type), with Python's own import log: no torch or MONAI line."""
    script = shutil.which("medsam") or str(Path(sys.executable).parent / "medsam")
    if not Path(script).exists():
        pytest.skip("the medsam console script is not installed next to this Python")
    started = time.perf_counter()
    result = subprocess.run(
        [script, "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
    )
    print(f"medsam --help: {time.perf_counter() - started:.2f} s")  # shown with -s; not asserted (shared machines)
    assert result.returncode == 0 and "segment" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert imported, "no import log: PYTHONPROFILEIMPORTTIME was not honoured"
    assert not {m for m in imported if m.split(".")[0] in HEAVY_MODULES}


@pytest.mark.parametrize("module", ["medsam_monai", "medsam_monai.cli"])
def test_python_dash_m_answers_help_without_torch(module):
    """``python -m medsam_monai`` and ``python -m medsam_monai.cli`` are the medsam command, as light as it."""
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
    )
    assert result.returncode == 0 and result.stdout.startswith("usage: medsam ") and "segment" in result.stdout, result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert imported and not {m for m in imported if m.split(".")[0] in HEAVY_MODULES}


def test_package_names_are_imported_on_first_use():
    code = textwrap.dedent("""
        import sys
        import medsam_monai
        assert "torch" not in sys.modules, "import medsam_monai imported torch"
        assert set(medsam_monai.__all__) <= set(dir(medsam_monai))
        from medsam_monai import MedSAMPredictor, build_sam
        assert "torch" in sys.modules and build_sam.__module__ == "medsam_monai.checkpoints"
        for name in medsam_monai.__all__:
            getattr(medsam_monai, name)
        assert medsam_monai.networks.build_sam_variant  # submodules too, as the eager package had them
        try:
            medsam_monai.no_such_name
        except AttributeError as err:
            assert "no_such_name" in str(err)
        else:
            raise AssertionError("no AttributeError")
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_help_points_to_the_bundle_for_fine_tuning():
    text = build_parser().format_help()
    assert "configs/train.json" in text and "bundles/medsam_vit_b/docs/README.md" in text
    assert "fine-tune it" not in text  # no command of that name: the description said one existed


# ----- 11. progress off a terminal -------------------------------------------------------------------


def test_progress_off_a_terminal_is_a_line_per_tenth_with_elapsed_and_estimate(capsys):
    now = [100.0]
    report = progress_lines("segmenting", clock=lambda: now[0])
    for done in range(1, 41):
        now[0] = 100.0 + 0.675 * done  # 0.675 s per slice
        report(done, 40)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "segmenting: 1/40 slices (2%), 0.7 s elapsed, ~26 s left"  # the first slice: it is alive
    assert "segmenting: 12/40 slices (30%), 8.1 s elapsed, ~19 s left" in lines
    assert lines[-1] == "segmenting: 40/40 slices (100%), 27.0 s elapsed, ~0 s left"
    assert len(lines) == 11  # the first slice, 10% ... 90%, the end
    assert not any("\r" in line for line in lines)


def test_progress_of_a_few_slices_shows_each_and_the_end_once(capsys):
    report = progress_lines("demo", clock=lambda: 0.0)
    for done in (1, 2, 3, 3):
        report(done, 3)
    assert [line.split(",")[0] for line in capsys.readouterr().err.splitlines()] == [
        "demo: 1/3 slices (33%)",
        "demo: 2/3 slices (66%)",
        "demo: 3/3 slices (100%)",
    ]


# ----- issue 14 item 9: Ctrl-C and SIGTERM end cleanly ---------------------------------------------------


def _small_volume(folder: Path) -> Path:
    path = folder / "input" / "small.nii.gz"
    path.parent.mkdir()
    data = np.random.default_rng(0).normal(40, 20, (24, 24, 3)).astype(np.int16)
    data[6:18, 6:18] += 150  # a bright square on every slice
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0])), path)
    return path


def _segment_args(folder: Path) -> list[str]:
    return [
        "segment",
        str(_small_volume(folder)),
        "--box",
        "4,4,0,19,19,2",
        "--variant",
        "tiny",
        "--out",
        str(folder / "out" / "mask.nii.gz"),
    ]


# Runs `medsam ARGS...` with one pause: at a chosen point it writes a "ready" file and sleeps, so the
# test's signal lands exactly there. `import`: when torch is first imported (start-up). `write`: when
# the atomic writer is about to rename a finished temporary output over the real one.
_PAUSING_RUN = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path

    ready, where, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]

    def pause():
        ready.write_text("paused")
        time.sleep(120)

    if where == "import":
        class PauseAtTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch":
                    pause()
                return None
        sys.meta_path.insert(0, PauseAtTorch())
    else:
        real_replace = os.replace
        def replace(source, target, *a, **k):
            if Path(source).name.startswith("."):  # the writer's hidden temporary file
                pause()
            return real_replace(source, target, *a, **k)
        os.replace = replace

    from medsam_monai.cli import main
    sys.exit(main(args))
""")


def _interrupt(tmp_path: Path, where: str, signum: int) -> subprocess.CompletedProcess:
    ready = tmp_path / "ready"
    process = subprocess.Popen(
        [sys.executable, "-c", _PAUSING_RUN, str(ready), where, *_segment_args(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"never reached the pause: {process.communicate()[1]}")
            time.sleep(0.05)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize(
    "signum, code, line", [(signal.SIGINT, 130, "medsam: interrupted"), (signal.SIGTERM, 143, "medsam: terminated")]
)
def test_a_signal_during_start_up_ends_with_one_line(tmp_path, signum, code, line):
    result = _interrupt(tmp_path, "import", signum)
    assert result.returncode == code, result.stderr
    assert result.stderr == line + "\n"
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_sigterm_during_the_write_leaves_no_temporary_file(tmp_path):
    result = _interrupt(tmp_path, "write", signal.SIGTERM)
    assert result.returncode == 143, result.stderr
    assert result.stderr.splitlines()[-1] == "medsam: terminated" and "Traceback" not in result.stderr
    assert list((tmp_path / "out").iterdir()) == []  # neither the hidden temporary nor a half output
    assert [p.name for p in (tmp_path / "input").iterdir()] == ["small.nii.gz"]  # the user's file is untouched
