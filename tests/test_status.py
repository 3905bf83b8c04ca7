"""`dyn status`: the table of a results directory's runs, from sample files written here (no training)."""
import datetime
import json
import os
import subprocess
import sys
import time

from click.testing import CliRunner

from conftest import dyn_here
from dyn.cli import cli
from dyn.status import CLEAR, rerun_verdict, status, table
from dyn.status_jobs import error_line
from dyn.training import finished



def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _summary(results, run, cohort, top1=90.0, best=91.0, epochs=2):
    path = results / "runs" / run / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run": run, "cohort": cohort, "epochs": epochs, "top1": top1, "best_top1": best,
                                "best_epoch": 1, "images_per_second": 1234.5}))


def _log_csv(results, run, top1s, seconds=60.0):
    path = results / "runs" / run / "log.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{e + 1},1.0,{t},99.0,0.5,0.001,{seconds},500.0" for e, t in enumerate(top1s)]
    path.write_text("epoch,loss,top1,top5,val_loss,lr,seconds,images_per_s\n" + "\n".join(rows) + "\n")


def _progress(results, cohort, members, pid, host=None, updated=None, eta=7200.0):
    state = results / "state" / cohort
    state.mkdir(parents=True, exist_ok=True)
    (state / "last.pt").write_bytes(b"not read")
    (state / "progress.json").write_text(json.dumps({
        "cohort": cohort, "host": host or os.uname().nodename, "pid": pid, "updated": (updated or _now()).isoformat(),
        "epoch": 3, "epochs": 10, "step": 5, "steps": 10, "images_per_s": 321.0, "eta_epoch_s": 30.0,
        "eta_job_s": eta, "members": {run: {"done": 2, "epochs": 10, "last_top1": 50.0, "best_top1": 55.0,
                                            "best_epoch": 1, "stopped": stopped} for run, stopped in members.items()}}))


def _log(results, cohort, *lines):
    path = results / "logs" / "distill" / f"{cohort}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _keep(results, run, **parts):
    """A kept copy of `run` as finished.keep leaves it, its key's parts this install's unless given."""
    kept = results / "state" / "finished" / run
    kept.mkdir(parents=True)
    (kept / "summary.json").write_text("{}")
    parts = {"fingerprint": "f" * 16, "training_code": finished.training_code_digest(),
             **finished.library_versions(), "device": "cuda", **parts}
    (kept / "key.json").write_text(json.dumps({"key": "k" * 16, **parts}))
    (kept / "key").write_text("k" * 16 + "\n")


def _grid(results):
    """One cohort of each kind: finished (restores, trains), running, stopped, failed (diverged, a mistake)."""
    done = ["softkd_none_b0_e2_s0", "spectral_Last1_b0.2_e2_s0"]
    for run in done:
        _summary(results, run, done)
    _keep(results, done[0])
    _keep(results, done[1], torch="0.0.1")
    _log(results, "cohort_e2_s0", f"2025-01-01 10:00:00,000 INFO run {done[0]}: deit <- cait, pairs []")

    running = ["softkd_none_b0_e10_s0", "spectral_Last1_b0.2_e10_s0"]
    _progress(results, "cohort_e10_s0", {running[0]: None, running[1]: None}, os.getpid())
    _log_csv(results, running[0], [40.0, 50.0])

    stopped = "softkd_none_b0_e10_s1"
    _progress(results, "cohort_e10_s1", {stopped: None}, _dead_pid(), updated=_now() - datetime.timedelta(hours=1))
    _log(results, "cohort_e10_s1", f"2025-01-01 10:00:00,000 INFO {stopped}: epoch 2/10 loss=1.0",
         "2025-01-01 10:00:00,000 INFO progress cohort_e10_s1: epoch 3/10 step 5/10 | 321 img/s | epoch ETA "
         "0:00:30 | job ETA 2:00:00 (1 student)")  # names the job, not a student

    diverged, fine = "spectral_Last1_bnan_e10_s2", "softkd_none_b0_e10_s2"
    _summary(results, fine, [fine, diverged], epochs=10)
    _log_csv(results, diverged, [30.0])
    (results / "state" / "cohort_e10_s2").mkdir(parents=True)
    (results / "state" / "cohort_e10_s2" / "last.pt").write_bytes(b"not read")
    _log(results, "cohort_e10_s2", f"2025-01-01 10:00:00,000 INFO run {diverged}: deit <- cait, pairs [(7, 11)]",
         f"2025-01-01 10:01:00,000 ERROR {diverged}: stopped: non-finite loss in epoch 2 at step 3",
         f"dyn: error: {diverged}: non-finite loss in epoch 2 at step 3")

    mistake = "spectral_Last1_b0.2_e10_s3"
    (results / "runs" / mistake).mkdir(parents=True)  # Snakemake made its folder; the job failed at once
    _log(results, "cohort_e10_s3", "dyn: error: layer spec 'Last10' does not fit")

    crashed = "softkd_none_b0_e5_s0"
    _log_csv(results, crashed, [10.0])
    _log(results, "cohort_e5_s0", f"2025-01-01 10:00:00,000 INFO run {crashed}: deit <- cait, pairs []",
         "Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
         "    boom()", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    return {row.run: row for row in status(results)}


def test_every_kind_of_run_in_one_table(tmp_path):
    rows = _grid(tmp_path)
    restores, trains = rows["softkd_none_b0_e2_s0"], rows["spectral_Last1_b0.2_e2_s0"]
    assert (restores.state, restores.cohort, restores.done, restores.epochs) == ("finished", "cohort_e2_s0", 2, 2)
    assert (restores.top1, restores.best_top1, restores.images_per_s) == (90.0, 91.0, 1234.5)
    assert trains.state == "finished" and trains.cohort == "cohort_e2_s0", "named after its cohort's id"

    running = rows["softkd_none_b0_e10_s0"]
    assert (running.state, running.cohort, running.done, running.epochs) == ("running", "cohort_e10_s0", 2, 10)
    assert (running.top1, running.best_top1, running.images_per_s) == (50.0, 55.0, 321.0)
    assert 7100 < running.eta_s <= 7200
    assert rows["spectral_Last1_b0.2_e10_s0"].state == "running", "a member known from progress.json alone"

    stopped = rows["softkd_none_b0_e10_s1"]
    assert stopped.state == "stopped" and stopped.eta_s is None and "no live writer" in stopped.note

    diverged = rows["spectral_Last1_bnan_e10_s2"]
    assert (diverged.state, diverged.done, diverged.top1) == ("failed", 1, 30.0)
    assert diverged.note == "dyn: error: spectral_Last1_bnan_e10_s2: non-finite loss in epoch 2 at step 3"
    assert rows["softkd_none_b0_e10_s2"].state == "finished", "its cohort's other student finished"
    mistake = rows["spectral_Last1_b0.2_e10_s3"]
    assert (mistake.state, mistake.cohort) == ("failed", "cohort_e10_s3")
    assert mistake.note == "dyn: error: layer spec 'Last10' does not fit"
    crashed = rows["softkd_none_b0_e5_s0"]
    assert crashed.state == "failed" and crashed.note.startswith("torch.OutOfMemoryError: CUDA out of memory")

    text = table(status(tmp_path))
    lines = text.splitlines()
    assert lines[0].split() == ["run", "cohort", "epoch", "top1", "best", "img/s", "state", "eta", "rerun", "note"]
    assert list(dict.fromkeys(line.split()[1] for line in lines[1:-1])) == [
        "cohort_e2_s0", "cohort_e5_s0", "cohort_e10_s0", "cohort_e10_s1", "cohort_e10_s2", "cohort_e10_s3"]
    assert lines[-1] == "9 runs: 3 finished, 2 running, 1 stopped, 3 failed"
    assert lines[4].split() == ["softkd_none_b0_e10_s0", "cohort_e10_s0", "2/10", "50.00", "55.00", "@1", "321",
                                "running", "2h00m", "-"]
    assert len({line.index("cohort_") for line in lines[1:-1]}) == 1, "aligned"


def test_a_finished_run_restores_or_trains_and_says_why(tmp_path):
    rows = _grid(tmp_path)
    restores, trains = rows["softkd_none_b0_e2_s0"], rows["spectral_Last1_b0.2_e2_s0"]
    assert (restores.rerun, restores.note) == ("restores", "if its configuration is unchanged (and on cuda)")
    assert trains.rerun == "trains" and trains.note == f"torch 0.0.1 -> {finished.library_versions()['torch']}"
    assert rows["softkd_none_b0_e10_s2"].rerun == "trains" and "no kept copy" in rows["softkd_none_b0_e10_s2"].note

    kept = tmp_path / "state" / "finished" / "softkd_none_b0_e2_s0"
    assert rerun_verdict(kept, code="another digest") == ("trains", "the training code changed")
    (kept / "key.json").unlink()
    assert rerun_verdict(kept) == ("trains", "kept under an older key (no key.json)")


def test_the_error_line_of_a_log():
    assert error_line(["INFO x: epoch 1/2", "dyn: error: bad layer spec 'Lst1'"]) == "dyn: error: bad layer spec 'Lst1'"
    assert error_line(["Traceback (most recent call last):", '  File "a.py", line 1', "    f()",
                       "KeyError: 'x'", "", "extra"]) == "KeyError: 'x'"
    assert error_line(["INFO x: epoch 1/2 loss=1.0"]) is None
    assert error_line(["Traceback (most recent call last):", '  File "a.py", line 1', "OSError: once",
                       "2025-01-01 10:00:00,000 INFO x: epoch 2/2 loss=1.0"]) is None, "the job went on"


def test_status_imports_no_torch_and_is_quick(tmp_path):
    for seed in range(15):
        run = f"softkd_none_b0_e2_s{seed}"
        _summary(tmp_path, run, [run])
        _keep(tmp_path, run)
    started = time.perf_counter()
    assert len(status(tmp_path)) == 15
    assert time.perf_counter() - started < 1.0, "well under a second (a few ms unloaded)"
    code = ("import sys; from dyn.cli import main; main(['status', sys.argv[1]]); "
            "print('imported:', sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "15 runs: 15 finished" in result.stdout and "imported: []" in result.stdout


def test_watch_prints_the_table_again_until_stopped(tmp_path, monkeypatch):
    _summary(tmp_path, "softkd_none_b0_e2_s0", ["softkd_none_b0_e2_s0"])
    result = CliRunner().invoke(cli, ["status", str(tmp_path), "--watch", "0.1", "--count", "3"])
    assert result.exit_code == 0, result.output
    assert result.output.count(CLEAR) == 3 and result.output.count("1 run: 1 finished") == 3
    once = CliRunner().invoke(cli, ["status", str(tmp_path)])
    assert CLEAR not in once.output and once.output.count("1 finished") == 1

    def interrupted(seconds):  # Ctrl-C while it waits
        raise KeyboardInterrupt

    monkeypatch.setattr("dyn.status.time.sleep", interrupted)
    stopped = CliRunner().invoke(cli, ["status", str(tmp_path), "--watch"])
    assert stopped.exit_code == 0 and stopped.output.count(CLEAR) == 1 and "every 10 s" in stopped.output


def test_a_missing_results_directory_is_one_line(tmp_path):
    ran = dyn_here(["status", tmp_path / "nowhere"])
    assert ran.returncode == 2
    assert ran.stderr.strip().splitlines() == [
        f"dyn: error: results directory '{tmp_path / 'nowhere'}' does not exist: give the folder the workflow "
        "writes (runs/, state/, logs/ in it)"]
