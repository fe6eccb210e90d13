"""Faults a user can act on, turned into one line: the run is FAILED with it as its reason."""

from __future__ import annotations

import contextlib
import errno
import math


class JobFailed(RuntimeError):
    """A job that could not finish, for a reason the user can act on (its run is FAILED with
    this line as ``failure_reason``)."""


class NonFinite(ValueError):
    """The merged model's outputs are NaN or infinite."""


@contextlib.contextmanager
def _explained(explain):
    """An error ``explain`` turns into a line becomes a JobFailed with it; others pass."""
    try:
        yield
    except JobFailed:
        raise
    except Exception as e:
        line = explain(e)
        if line is None:
            raise
        raise JobFailed(line) from e


def faults_explained(device: str, batch_size: int):
    """Turn faults the user can act on into one-line JobFailed errors; bugs pass unchanged."""
    return _explained(lambda e: explain_fault(e, device, batch_size))


def explain_fault(e: BaseException, device: str, batch_size: int) -> str | None:
    """One line saying what went wrong and what to do, or None for an unexpected error."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    if isinstance(e, MemoryError) or "out of memory" in text.lower() \
            or "can't allocate memory" in text:
        with contextlib.suppress(Exception):
            import torch

            torch.cuda.empty_cache()
        return (f"out of memory on {device} ({text}); lower task.batch_size (now "
                f"{batch_size}), use model.dtype=bfloat16, or a device with more memory")
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    if full or "No space left on device" in text or "Disk quota exceeded" in text:
        where = getattr(e, "filename", None) or "a file"
        return (f"no space left writing {where} ({getattr(e, 'strerror', None) or text}); free "
                f"space, or point merge.save_dir / tracking.dir at another disk")
    if isinstance(e, OSError) and (isinstance(e, PermissionError) or e.errno == errno.EROFS):
        where = getattr(e, "filename", None) or "a file"
        return (f"cannot write {where} ({e.strerror}); make it writable (or point "
                f"merge.save_dir / tracking.dir elsewhere) and run the same command again")
    if type(e).__name__ == "SafetensorError" or "HeaderTooLarge" in text \
            or "MetadataIncompleteBuffer" in text:
        return f"a weight file cannot be read ({text}); check the files of model.pt and model.it"
    if isinstance(e, NonFinite):
        return str(e)
    return store_fault(e)


STORE_ERRORS = ("readonly database", "database is locked", "unable to open database file",
                "disk I/O error", "Permission denied", "Read-only file system")


def store_fault(e: BaseException) -> str | None:
    """One line for a tracking store that cannot be written (made read-only, locked, gone)
    while a job works, or None."""
    seen, chain = set(), e
    while chain is not None and id(chain) not in seen:  # the store's error is often wrapped
        seen.add(id(chain))
        text = str(chain)
        if any(s in text for s in STORE_ERRORS) and ("mlflow" in type(chain).__module__
                                                    or "sqlalchemy" in type(chain).__module__
                                                    or "sqlite" in text.lower()):
            what = next(s for s in STORE_ERRORS if s in text)
            return (f"the tracking store cannot be written ({what}); make tracking.dir "
                    f"writable and run the same command again (runs left open are closed the "
                    f"next time the store is opened)")
        chain = chain.__cause__ or chain.__context__
    return None


def store_faults():
    """A tracking store that cannot be written becomes one JobFailed line."""
    return _explained(store_fault)


ADVICE = {"float16": "; prefer model.dtype=float32 or bfloat16 to float16 (its range is narrow)",
          "bfloat16": "; try model.dtype=float32"}  # float32: the weights alone are to check


def check_finite(results: dict, dtype: str = "float32") -> None:
    """NonFinite if any task's log-likelihoods or metrics are NaN or infinite (the advice
    follows the merge's ``dtype``)."""
    for task, res in results.items():
        bad = [r["doc_id"] for r in res.records
               if not all(math.isfinite(x) for x in r.get("logliks", ()))]
        bad_metrics = sorted(k for k, v in res.metrics.items() if not math.isfinite(v))
        if bad or bad_metrics:
            what = (f"NaN/inf log-likelihoods on {len(bad)} {task} documents" if bad
                    else f"non-finite {task} metrics {bad_metrics}")
            raise NonFinite(f"the merged model gives {what} (model.dtype={dtype}); check the "
                            f"parents' weights for NaN/inf{ADVICE.get(dtype, '')}")
