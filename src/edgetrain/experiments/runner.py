"""``edgetrain run CONFIG.toml --out DIR``: trials run, written as they finish, resumed on a rerun.

A run directory holds::

    run.json        the config's name, fingerprint, trial count, start/finish times, versions
    config.toml     the config text as it was run
    results.jsonl   one result record per finished trial, appended and fsynced as each finishes
    results.csv     the same, flattened, rewritten (atomically) after each trial
    cache/          deployed models shared by trials of the same seed (checksummed ``.etm`` files)

Rerunning the same config skips trials that already have a record (``ok`` or ``does-not-fit``) and
retries those that failed, so a crash or Ctrl-C loses at most the trials in flight. A directory
holding another config's results is refused unless ``force``; then the old files move to
``superseded-<k>/`` (nothing is deleted). Trials run in this process (``workers=1``), in worker
processes, or as Ray tasks; every path writes the same files, from this process only.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..files import atomic_write
from ..report import make_record, print_table, progress, versions, write_csv, write_json
from ..report.record import _clean
from ..threads import TRIAL_THREADS, torch_threads
from .config import RunConfig
from .methods import run_trial
from .trials import Trial, expand

RESULTS = "results.jsonl"
DONE = ("ok", "does-not-fit")
CSV_COLUMNS = ["trial", "name", "status", "panel", "model", "shift", "method", "kind", "seed", "device", "clean",
               "shifted", "final", "forward_passes", "macs", "train_ram_bytes", "extra_memory_bytes", "weight_writes",
               "max_writes_per_cell", "energy_per_sample_j", "latency_per_sample_s", "wall_s", "error"]


class RunDirError(ValueError):
    """The run directory cannot be used as asked (another config's results, unreadable files)."""


@dataclass
class RunSummary:
    out: Path
    trials: int
    skipped: int
    ran: int
    failed: int
    records: list[dict]
    wall_s: float


def read_results(path: Path) -> tuple[dict[str, dict], int]:
    """Records by trial id (a later line for the same id wins) and the number of lines that did not
    parse (a crash can leave a truncated last line)."""
    out: dict[str, dict] = {}
    bad = 0
    if not path.exists():
        return out, 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out[str(rec["trial"])] = rec
        except (json.JSONDecodeError, KeyError, TypeError):
            bad += 1
    return out, bad


def _rewrite_clean(path: Path, records: Iterable[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in records))


def append_record(path: Path, record: dict) -> None:
    """Append one record as a JSON line and fsync, so a finished trial survives a crash."""
    line = json.dumps(_clean(record), allow_nan=False)  # non-finite numbers -> null, tensors -> lists
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def csv_row(r: dict) -> dict:
    acc, led = r.get("accuracy") or {}, r.get("ledger") or {}
    ps = r.get("per_sample") or {}
    return {"trial": r.get("trial"), "name": r.get("name"), "status": r.get("status"), "panel": r.get("panel"),
            "model": r.get("model"), "shift": r.get("shift"), "method": r.get("method"), "kind": r.get("kind"),
            "seed": r.get("seed"), "device": r.get("device"), "clean": acc.get("clean"),
            "shifted": acc.get("shifted"), "final": acc.get("final"), "forward_passes": led.get("forward_passes"),
            "macs": led.get("macs"), "train_ram_bytes": led.get("train_ram_bytes"),
            "extra_memory_bytes": led.get("extra_memory_bytes"), "weight_writes": led.get("weight_writes"),
            "max_writes_per_cell": led.get("max_writes_per_cell"), "energy_per_sample_j": ps.get("energy_j"),
            "latency_per_sample_s": ps.get("latency_s"), "wall_s": led.get("wall_s"), "error": r.get("error")}


def _error_record(trial: Trial, message: str, wall: float) -> dict:
    s = trial.spec
    return make_record(method=s["method"]["label"], dataset=s["panel"]["dataset"], model=s["arch"], fmt=s["format"],
                       shift=s["shift"], device=s["devices"]["profiles"][0], seed=s["seed"],
                       accuracy={}, ledger={"wall_s": wall}, status="error", error=message, kind=s["method"]["kind"],
                       panel=s["panel"]["name"], config=s)


def execute(trial: Trial, cache_dir: str, data_dir: str | None, download: bool,
            on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Run one trial and return its record; any exception becomes an ``error`` record (the run goes
    on, and a rerun retries it)."""
    t0 = time.perf_counter()
    try:
        with torch_threads(TRIAL_THREADS):  # the same result in-process, in a worker or on Ray (``threads``)
            rec = run_trial(trial.spec, cache_dir=cache_dir, data_dir=data_dir, download=download,
                            on_progress=on_progress)
    except Exception as e:  # noqa: BLE001 - recorded, reported, retried on rerun
        tail = traceback.format_exc().strip().splitlines()[-3:]
        rec = _error_record(trial, f"{type(e).__name__}: {e} [{' | '.join(tail)}]", time.perf_counter() - t0)
    rec["trial"], rec["name"] = trial.id, trial.name
    return rec


def prepare_dir(cfg: RunConfig, out: Path, force: bool) -> None:
    """Create ``out`` or check that it belongs to ``cfg``; with ``force`` move another config's files
    aside."""
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "run.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            theirs = meta["fingerprint"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise RunDirError(f"{meta_path} is not a run description written by edgetrain (unreadable or altered); "
                              "pick another --out, or move it away") from None
        if theirs != cfg.fingerprint():
            if not force:
                raise RunDirError(
                    f"{out} holds results of a different config ({meta.get('config_file')}, fingerprint {theirs}; "
                    f"this config's is {cfg.fingerprint()}). Use another --out, or --force to move the old results "
                    "to a superseded-<k>/ folder and start afresh")
            k = 1
            while (out / f"superseded-{k}").exists():
                k += 1
            dest = out / f"superseded-{k}"
            dest.mkdir()
            for name in ("run.json", "config.toml", RESULTS, "results.csv", "report.md", "report.html", "summary.csv"):
                if (out / name).exists():
                    shutil.move(str(out / name), dest / name)
            for png in out.glob("*.png"):
                shutil.move(str(png), dest / png.name)
    elif (out / RESULTS).exists():
        raise RunDirError(f"{out} has {RESULTS} but no run.json: it was not written by this command; "
                          "pick another --out")


def _write_meta(cfg: RunConfig, out: Path, n: int, started: str, wall: float, finished: bool) -> None:
    write_json(out / "run.json", {"name": cfg.name, "description": cfg.description, "config_file": str(cfg.path),
                                  "fingerprint": cfg.fingerprint(), "quick": cfg.quick, "trials": n,
                                  "started": started, "finished": finished, "wall_s": wall, "versions": versions()})


def run_config(cfg: RunConfig, out: str | Path, *, workers: int = 1, ray_address: str | None = None,
               use_ray: bool = False, force: bool = False, data_dir: str | None = None, download: bool = False,
               show_progress: bool = True, only: Callable[[Trial], bool] | None = None) -> RunSummary:
    """Run every trial of ``cfg`` not yet in ``out``; see the module docstring."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    t0 = time.perf_counter()
    out = Path(out)
    trials = expand(cfg)
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        return _run_locked(cfg, out, trials, t0, workers=workers, ray_address=ray_address, use_ray=use_ray,
                           force=force, data_dir=data_dir, download=download, show_progress=show_progress, only=only)


@contextmanager
def _locked(out: Path):
    """An exclusive lock on ``out/.lock`` for the whole run: a second run on the same directory is
    refused instead of running every trial twice and interleaving its results."""
    import fcntl

    with open(out / ".lock", "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"{out} is in use by another 'edgetrain run' (it holds {out / '.lock'}); wait for it "
                              "to finish or pick another --out") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _run_locked(cfg: RunConfig, out: Path, trials: list[Trial], t0: float, *, workers: int, ray_address: str | None,
                use_ray: bool, force: bool, data_dir: str | None, download: bool, show_progress: bool,
                only: Callable[[Trial], bool] | None) -> RunSummary:
    prepare_dir(cfg, out, force)
    results_path = out / RESULTS
    have, bad = read_results(results_path)
    prior, started = _prior_meta(out)
    if bad:
        _rewrite_clean(results_path, have.values())  # drop a truncated line before appending after it
    if have:  # the CSV may lag the JSON lines after a crash between the two writes
        write_csv(out / "results.csv", [csv_row(r) for r in have.values()], CSV_COLUMNS)
    started = started or datetime.now(UTC).isoformat(timespec="seconds")
    _write_meta(cfg, out, len(trials), started, prior, False)
    atomic_write(out / "config.toml", cfg.path.read_text(encoding="utf-8"))
    todo = [t for t in trials if have.get(t.id, {}).get("status") not in DONE and (only is None or only(t))]
    skipped = len(trials) - len(todo)
    cache = str(out / "cache")
    failed = 0

    def finish(rec: dict) -> None:
        nonlocal failed
        append_record(results_path, rec)
        have[rec["trial"]] = rec
        failed += rec["status"] == "error"
        write_csv(out / "results.csv", [csv_row(r) for r in have.values()], CSV_COLUMNS)

    interrupted = False
    with progress(disable=not show_progress) as bar:
        overall = bar.add_task(f"{cfg.name}: trials", total=len(trials), completed=skipped)
        try:
            if use_ray:
                _run_ray(todo, cache, data_dir, download, ray_address, finish, lambda: bar.advance(overall))
            elif workers > 1:
                _run_pool(todo, cache, data_dir, download, workers, finish, lambda: bar.advance(overall))
            else:
                for trial in todo:
                    inner = bar.add_task(f"  {trial.name}", total=1)
                    rec = execute(trial, cache, data_dir, download,
                                  lambda d, n, inner=inner: bar.update(inner, completed=d, total=n))
                    bar.remove_task(inner)
                    finish(rec)
                    bar.advance(overall)
        except KeyboardInterrupt:
            interrupted = True
    records = [have[t.id] for t in trials if t.id in have]
    wall = time.perf_counter() - t0
    complete = not interrupted and all(have.get(t.id, {}).get("status") in DONE for t in trials)
    _write_meta(cfg, out, len(trials), started, prior + wall, complete)
    summary = RunSummary(out, len(trials), skipped, len(todo) if not interrupted else sum(
        1 for t in todo if t.id in have), failed, records, wall)
    _print_summary(records)
    if interrupted:
        raise KeyboardInterrupt(f"interrupted: {len(records)} of {len(trials)} trials have results in {out}; "
                                "rerun the same command to resume")
    return summary


def _prior_meta(out: Path) -> tuple[float, str | None]:
    """Wall time of earlier sessions of this run (summed into run.json's ``wall_s``) and when the
    first one started."""
    path = out / "run.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        return float(meta.get("wall_s") or 0.0), meta.get("started")
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0, None


def _run_pool(todo: list[Trial], cache: str, data_dir, download: bool, workers: int,
              finish: Callable[[dict], None], advance: Callable[[], None]) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork: torch's thread pools do not survive it
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending = {pool.submit(execute, t, cache, data_dir, download): t for t in todo}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    trial = pending.pop(fut)
                    try:
                        rec = fut.result()
                    except Exception as e:  # noqa: BLE001 - a worker that died (e.g. killed for memory)
                        rec = _error_record(trial, f"worker failed: {type(e).__name__}: {e}", 0.0)
                        rec["trial"], rec["name"] = trial.id, trial.name
                    finish(rec)
                    advance()
        except BaseException:
            # Ctrl-C, or a failure while saving: stop now. Cancelling only drops trials not yet handed
            # out, so the workers (busy with, or queued up for, trials whose results would be lost
            # anyway) are terminated; the executor's own exit would otherwise wait for them.
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in list(getattr(pool, "_processes", {}).values()):  # no public API for this
                proc.terminate()
            raise


def _run_ray(todo: list[Trial], cache: str, data_dir, download: bool, address: str | None,
             finish: Callable[[dict], None], advance: Callable[[], None]) -> None:
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray needs Ray: install it with  pip install -c constraints.txt -e \".[ray]\"") from None
    if not ray.is_initialized():
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    remote = ray.remote(num_cpus=1)(execute)
    refs = {remote.remote(t, cache, data_dir, download): t for t in todo}
    try:
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                trial = refs.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a task or node that failed
                    rec = _error_record(trial, f"ray task failed: {type(e).__name__}: {e}", 0.0)
                    rec["trial"], rec["name"] = trial.id, trial.name
                finish(rec)
                advance()
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref)
        raise


def _print_summary(records: list[dict]) -> None:
    rows = []
    for r in records:
        acc = r.get("accuracy") or {}
        rows.append({"panel": r.get("panel"), "model": r.get("model"), "shift": r.get("shift"),
                     "method": r.get("method"), "seed": r.get("seed"), "status": r.get("status"),
                     "shifted": acc.get("shifted"),
                     "final": acc.get("final"), "train RAM B": (r.get("ledger") or {}).get("train_ram_bytes"),
                     "writes": (r.get("ledger") or {}).get("weight_writes"),
                     "uJ/sample": None if not (r.get("per_sample") or {}).get("energy_j")
                     else round(r["per_sample"]["energy_j"] * 1e6, 3)})
    print_table(rows, title="trials (edgetrain report DIR for tables by method and plots)")


__all__ = ["RunDirError", "RunSummary", "append_record", "execute", "prepare_dir", "read_results", "run_config"]
