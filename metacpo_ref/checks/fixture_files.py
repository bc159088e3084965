"""The fixture files' format: one uncompressed ``<block>.npz`` per block and a
``manifest.json`` (meaning, shape, dtype and SHA-256 of every array, the tolerances, the
package version); writing a set from a table of blocks, and verifying a set by
recomputing each block's outputs from its stored inputs. The blocks themselves are
:mod:`metacpo_ref.checks.fixtures`; the format is described in ``docs/porting.md``.
"""
import hashlib
import io
import json
import os
import zipfile

import numpy as np

import metacpo_ref

FORMAT = 1
MANIFEST = "manifest.json"
COMPARISON = ("an output passes when max|port - stored| <= atol + rtol * max|stored| over the array "
              "(NaN must be NaN where stored NaN; integer outputs must be equal)")
HASH = "SHA-256 (hex) of the array's raw bytes: C order, little-endian, dtype as listed"


def sha256(x):
    """SHA-256 (hex) of an array's raw bytes (C order)."""
    return hashlib.sha256(np.asarray(x).tobytes(order="C")).hexdigest()


def _describe(x, meaning):
    return {"meaning": meaning, "shape": list(x.shape), "dtype": str(x.dtype), "sha256": sha256(x)}


def write_npz(path, arrays):
    """An uncompressed .npz (readable by ``numpy.load``) with fixed timestamps: the same
    arrays always give the same bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, x in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, x, allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def export(directory, blocks):
    """Write ``<name>.npz`` per block of ``blocks`` (``(name, make, compute)`` rows) and
    ``manifest.json`` into ``directory``; returns the manifest."""
    os.makedirs(directory, exist_ok=True)
    manifest = {"format": FORMAT, "package": "metacpo_ref", "version": metacpo_ref.__version__,
                "numpy": np.__version__, "hash": HASH, "comparison": COMPARISON,
                "docs": "docs/porting.md", "blocks": {}}
    for name, make, _ in blocks:
        inputs, outputs, meta = make()
        if set(inputs) & set(outputs):
            raise ValueError(f"{name}: input and output names overlap: {set(inputs) & set(outputs)}")
        meanings = meta["meanings"]
        missing = (set(inputs) | set(outputs)) - set(meanings)
        if missing:
            raise ValueError(f"{name}: no meaning for {sorted(missing)}")
        write_npz(os.path.join(directory, name + ".npz"), {**inputs, **outputs})
        manifest["blocks"][name] = {
            "file": name + ".npz", "description": meta["description"], "function": meta["function"],
            "rtol": meta["rtol"], "atol": meta["atol"], "tolerance_reason": meta["tolerance_reason"],
            "inputs": {k: _describe(v, meanings[k]) for k, v in inputs.items()},
            "outputs": {k: _describe(v, meanings[k]) for k, v in outputs.items()}}
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    return manifest


def compare(got, ref, rtol, atol):
    """``(max|got - ref|, bound, ok)`` with ``bound = atol + rtol max|ref|`` (NaNs must coincide)."""
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return np.inf, 0.0, False
    got, ref = got.astype(np.float64), ref.astype(np.float64)
    nan = np.isnan(ref)
    if np.any(np.isnan(got) != nan):
        return np.inf, 0.0, False
    diff = float(np.max(np.abs(got - ref)[~nan], initial=0.0))
    bound = atol + rtol * float(np.max(np.abs(ref[~nan]), initial=0.0))
    return diff, bound, diff <= bound


def _row(name, status, detail="", worst="", diff=np.nan, bound=np.nan):
    return {"block": name, "status": status, "worst": worst, "max_abs_diff": diff, "bound": bound, "detail": detail}


def verify_block(directory, name, entry, compute, tolerance=None):
    """One row of :func:`verify`: the file's arrays against the manifest (names, shapes,
    dtypes, hashes), then the outputs recomputed from the stored inputs, compared within
    ``tolerance`` = ``(rtol, atol)``, the reference's (:func:`reference_tolerance`; default:
    the manifest's own). A manifest whose tolerances are looser than the reference's fails."""
    rtol, atol = (entry.get("rtol"), entry.get("atol")) if tolerance is None else tolerance
    path = os.path.join(directory, entry.get("file", name + ".npz"))
    if not os.path.exists(path):
        return _row(name, "MISSING", f"no file {os.path.basename(path)}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        return _row(name, "FAIL", f"cannot read {os.path.basename(path)}: {err}")
    listed = {**entry["inputs"], **entry["outputs"]}
    problems = [f"{k} not in the manifest" for k in sorted(set(arrays) - set(listed))]
    problems += [f"{k} missing from the file" for k in sorted(set(listed) - set(arrays))]
    for k in sorted(set(arrays) & set(listed)):
        x, d = arrays[k], listed[k]
        if list(x.shape) != d["shape"] or str(x.dtype) != d["dtype"]:
            problems.append(f"{k}: {x.dtype}{list(x.shape)} != manifest {d['dtype']}{d['shape']}")
        elif sha256(x) != d["sha256"]:
            problems.append(f"{k}: sha256 mismatch")
    if any("sha256" not in p for p in problems):      # arrays missing or misshapen: stop here
        return _row(name, "FAIL", "; ".join(problems))
    problems += _looser(entry, rtol, atol)
    try:
        got = compute({k: arrays[k] for k in entry["inputs"]})
    except Exception as err:   # a tampered input can make the reference code refuse it
        return _row(name, "FAIL", "; ".join(problems + [f"recompute raised {type(err).__name__}: {err}"]))
    worst, bad = None, []
    for k in entry["outputs"]:
        if k not in got:
            bad.append(k)
            continue
        diff, bound, ok = compare(got[k], arrays[k], rtol, atol)
        if not ok:
            bad.append(k)
        if worst is None or diff / max(bound, 1e-300) > worst[1] / max(worst[2], 1e-300):
            worst = (k, diff, bound)
    if bad:
        problems.append(f"outputs off: {', '.join(bad)}")
    return _row(name, "FAIL" if problems else "ok", "; ".join(problems), *(worst or ()))


def _looser(entry, rtol, atol):
    """The problem of a manifest entry whose tolerances are not those of the reference or tighter."""
    stored = (entry.get("rtol"), entry.get("atol"))
    if all(isinstance(v, (int, float)) and v <= ref for v, ref in zip(stored, (rtol, atol))):
        return []
    return [f"the manifest's tolerances (rtol {stored[0]}, atol {stored[1]}) are looser than the reference's "
            f"(rtol {rtol:g}, atol {atol:g})"]


def reference_tolerance(make):
    """``(rtol, atol)`` of a block as this code defines it (what the committed manifest holds)."""
    meta = make()[2]
    return meta["rtol"], meta["atol"]


def verify(directory, blocks, only=None):
    """Recompute every block of ``blocks`` (or those named in ``only``) from its stored
    inputs, compare with the stored outputs within the reference's tolerances
    (:func:`reference_tolerance`, never the checked directory's: a manifest with looser ones
    fails) and check every hash. One row per block
    (``status`` "ok", "FAIL" or "MISSING"), and, checking them all, a FAIL row for each
    manifest block this code does not know."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        return [_row(MANIFEST, "MISSING", f"no {MANIFEST} in {directory}")]
    try:
        with open(path) as f:
            entries = json.load(f)["blocks"]
    except (OSError, ValueError, KeyError) as err:
        return [_row(MANIFEST, "FAIL", f"cannot read {MANIFEST}: {err!r}")]
    rows = []
    for name, make, compute in blocks:
        if only is not None and name not in only:
            continue
        if name not in entries:
            rows.append(_row(name, "MISSING", "not in the manifest"))
        else:
            rows.append(verify_block(directory, name, entries[name], compute, reference_tolerance(make)))
    if only is None:
        known = {name for name, _, _ in blocks}
        rows += [_row(name, "FAIL", "unknown block (no compute function here)")
                 for name in entries if name not in known]
    return rows


def all_ok(rows):
    return all(r["status"] == "ok" for r in rows)


def manifest_version(directory):
    """The package version that wrote the fixtures in ``directory`` (None if unknown)."""
    try:
        with open(os.path.join(directory, MANIFEST)) as f:
            return json.load(f).get("version")
    except (OSError, ValueError):
        return None
