"""Golden fixtures for ports: the committed set verifies, tampering is caught,
export then verify round-trips, and docs/porting.md's examples run."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import metacpo_ref
from metacpo_ref.checks import fixtures as fx
from metacpo_ref.checks import fixture_files as ff
from metacpo_ref.checks.gradcheck import step_margin

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "tests" / "fixtures"


def by_name(rows):
    return {r["block"]: r for r in rows}


@pytest.fixture
def copy(tmp_path):
    """A writable copy of the committed fixtures."""
    dst = tmp_path / "fixtures"
    shutil.copytree(COMMITTED, dst)
    return dst


def load(directory, name):
    with np.load(directory / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def read_manifest(directory):
    return json.loads((directory / ff.MANIFEST).read_text())


def write_manifest(directory, manifest):
    (directory / ff.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def test_committed_fixtures_verify():
    rows = fx.verify(COMMITTED)
    assert [r["block"] for r in rows] == [name for name, _, _ in fx.BLOCKS]
    assert ff.all_ok(rows), [r for r in rows if r["status"] != "ok"]


def test_manifest_describes_every_array():
    manifest = read_manifest(COMMITTED)
    assert manifest["version"] == metacpo_ref.__version__ == "0.1.0"
    assert set(manifest["blocks"]) == {name for name, _, _ in fx.BLOCKS}
    total = 0
    for name, entry in manifest["blocks"].items():
        assert entry["description"] and entry["tolerance_reason"] and entry["function"]
        assert 0 < entry["rtol"] <= 1e-6 and 0 < entry["atol"] <= 1e-9
        arrays = load(COMMITTED, name)
        listed = {**entry["inputs"], **entry["outputs"]}
        assert set(arrays) == set(listed) and not set(entry["inputs"]) & set(entry["outputs"])
        for k, d in listed.items():
            assert d["meaning"] and d["shape"] == list(arrays[k].shape) and d["dtype"] == str(arrays[k].dtype)
            assert d["dtype"] in ("float64", "int64", "bool")
        total += (COMMITTED / entry["file"]).stat().st_size
    total += (COMMITTED / ff.MANIFEST).stat().st_size
    assert total < 1_000_000
    # the blocks the brief asks for are all there
    for name in ("policy_log_prob", "policy_mean_kl", "policy_fvp", "gae", "cg", "meta_gradient", "outer_step"):
        assert name in manifest["blocks"]
    for case in ("trust", "both", "recovery"):
        for metric in ("identity", "dense", "hinv"):
            assert f"solve_step_{case}_{metric}" in manifest["blocks"]
        outputs = manifest["blocks"][f"cpo_layer_{case}_dense"]["outputs"]
        assert {"gbar", "abar", "bbar", "deltabar", "Hbar"} <= set(outputs)


def test_manifest_names_functions_that_exist():
    """Each ``metacpo_ref.module.function`` a block's ``function`` or ``description`` names
    imports (a port follows these names into the code; a moved module left them stale once)."""
    import importlib

    manifest, named = read_manifest(COMMITTED), set()
    for entry in manifest["blocks"].values():
        for text in (entry["function"], entry["description"]):
            named |= set(re.findall(r"metacpo_ref(?:\.\w+)+", text))
    assert len(named) >= 20
    for name in sorted(named):
        module, _, attr = name.rpartition(".")
        assert hasattr(importlib.import_module(module), attr), name


def test_fixture_cases_are_the_named_ones():
    for case in ("trust", "both", "recovery"):
        for metric in ("identity", "dense", "hinv"):
            z = load(COMMITTED, f"solve_step_{case}_{metric}")
            assert fx.CASES[int(z["case_index"])] == case
            assert np.isnan(z["nu"]) == (case == "recovery")
            assert (float(z["nu"]) > 0) == (case == "both")
            if metric == "identity":       # far from a case boundary: a port's rounding cannot flip it
                assert step_margin(z["g"], z["a"], float(z["b"]), float(z["delta"])) > 0.1
    meta = load(COMMITTED, "meta_gradient")
    cases = {fx.CASES[int(meta[f"task{i}_step{k}_case_index"])] for i in range(2) for k in range(2)}
    assert cases == {"trust", "both", "recovery"}
    assert min(fx._chain_margins(meta, meta)) > 0.1      # inputs and outputs share the file
    assert abs(float(meta["F"])) > 1e-3     # evaluated off the recording chain: the ratios are not 1


def test_cpo_layer_vjp_is_the_autograd_vjp():
    """The stored VJP (cpo_step_vjp) is what autograd gets through the cpo_layer primitive."""
    from autograd import make_vjp

    from metacpo_ref.step.dco import cpo_layer

    for case in ("trust", "both", "recovery"):
        z = load(COMMITTED, f"cpo_layer_{case}_dense")
        vjp, x = make_vjp(lambda g, a, b, d, H: cpo_layer(g, a, b, d, H), argnum=(0, 1, 2, 3, 4))(
            z["g"], z["a"], float(z["b"]), float(z["delta"]), z["H"])
        bars = vjp(z["xbar"])
        np.testing.assert_allclose(x, z["x"], rtol=1e-12, atol=1e-15)
        for got, key in zip(bars, ("gbar", "abar", "bbar", "deltabar", "Hbar")):
            np.testing.assert_allclose(got, z[key], rtol=1e-10, atol=1e-13, err_msg=f"{case} {key}")


def test_changed_output_value_is_caught(copy):
    name = "solve_step_both_dense"
    arrays = load(copy, name)
    arrays["x"] = arrays["x"] * (1 + 1e-4)          # within no tolerance
    ff.write_npz(copy / f"{name}.npz", arrays)
    row = by_name(fx.verify(copy, only=[name]))[name]
    assert row["status"] == "FAIL" and row["detail"] == "x: sha256 mismatch; outputs off: x"
    # ... and with the manifest's hash updated too, recomputation catches it
    manifest = read_manifest(copy)
    manifest["blocks"][name]["outputs"]["x"]["sha256"] = ff.sha256(arrays["x"])
    write_manifest(copy, manifest)
    row = by_name(fx.verify(copy, only=[name]))[name]
    assert row["status"] == "FAIL" and row["detail"] == "outputs off: x"
    assert row["max_abs_diff"] > row["bound"]


def test_changed_input_that_does_not_move_the_output_is_caught(copy):
    """v_boot is read only at time-limit cuts: changing it elsewhere leaves every
    output equal, and only the hash check sees it."""
    name = "gae"
    arrays = load(copy, name)
    t = int(np.flatnonzero(~arrays["truncated"])[0])
    arrays["v_boot"] = arrays["v_boot"].copy()
    arrays["v_boot"][t] += 1.0
    recomputed = fx.compute_gae({k: arrays[k] for k in read_manifest(copy)["blocks"][name]["inputs"]})
    for k, v in recomputed.items():
        np.testing.assert_array_equal(v, arrays[k])       # the output does not move
    ff.write_npz(copy / f"{name}.npz", arrays)
    row = by_name(fx.verify(copy, only=[name]))[name]
    assert row["status"] == "FAIL" and row["detail"] == "v_boot: sha256 mismatch"


def test_changed_input_with_matching_hash_is_caught_by_recomputation(copy):
    name = "meta_gradient"
    arrays = load(copy, name)
    arrays["task1_step0_adv_c"] = arrays["task1_step0_adv_c"] * 1.01
    ff.write_npz(copy / f"{name}.npz", arrays)
    manifest = read_manifest(copy)
    manifest["blocks"][name]["inputs"]["task1_step0_adv_c"]["sha256"] = ff.sha256(arrays["task1_step0_adv_c"])
    write_manifest(copy, manifest)
    row = by_name(fx.verify(copy, only=[name]))[name]
    assert row["status"] == "FAIL" and "dG" in row["detail"]


def test_missing_block_is_caught(copy):
    (copy / "cg.npz").unlink()
    manifest = read_manifest(copy)
    del manifest["blocks"]["policy_fvp"]
    manifest["blocks"]["qp_layer_from_the_future"] = manifest["blocks"]["gae"]
    write_manifest(copy, manifest)
    rows = by_name(fx.verify(copy))
    assert rows["cg"]["status"] == "MISSING" and rows["policy_fvp"]["status"] == "MISSING"
    assert rows["qp_layer_from_the_future"]["status"] == "FAIL"
    assert not ff.all_ok(rows.values())
    assert sum(r["status"] == "ok" for r in rows.values()) == len(fx.BLOCKS) - 2


def test_export_then_verify_round_trips(tmp_path):
    manifest = fx.export(tmp_path)
    assert ff.all_ok(fx.verify(tmp_path))
    # the inputs are seeded: the same set as the committed one, and the outputs agree
    committed = read_manifest(COMMITTED)
    assert set(manifest["blocks"]) == set(committed["blocks"])
    for name, entry in manifest["blocks"].items():
        ref = committed["blocks"][name]
        for k, d in entry["inputs"].items():
            assert (d["shape"], d["dtype"]) == (ref["inputs"][k]["shape"], ref["inputs"][k]["dtype"])
        new, old = load(tmp_path, name), load(COMMITTED, name)
        for k in entry["outputs"]:
            assert ff.compare(new[k], old[k], entry["rtol"], entry["atol"])[2], \
                f"{name}.{k} moved: if on purpose, re-export tests/fixtures (docs/porting.md)"


def test_cli_export_and_verify(tmp_path):
    out = tmp_path / "fx"
    run = lambda *args: subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT,
                                       capture_output=True, text=True)
    r = run("export-fixtures", str(out))
    assert r.returncode == 0, r.stderr
    r = run("verify-fixtures", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(fx.BLOCKS)} of {len(fx.BLOCKS)} blocks ok" in r.stdout
    arrays = load(out, "policy_log_prob")
    arrays["logp"] = arrays["logp"] + 1e-6
    ff.write_npz(out / "policy_log_prob.npz", arrays)
    r = run("verify-fixtures", str(out))
    assert r.returncode == 1 and "policy_log_prob" in r.stdout and "FAIL" in r.stdout


def test_porting_guide_examples_run(monkeypatch, capsys):
    """Every python block of docs/porting.md runs, in order, from the repository root."""
    text = (ROOT / "docs" / "porting.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(code) >= 1
    monkeypatch.chdir(ROOT)
    namespace = {"__name__": "porting_guide"}
    for i, snippet in enumerate(code):
        exec(compile(snippet, f"docs/porting.md[python block {i}]", "exec"), namespace)
    assert "policy_log_prob: max |diff|" in capsys.readouterr().out


def test_a_set_with_loosened_tolerances_and_a_perturbed_output_fails_against_the_reference(copy, tmp_path):
    """A tampered set: an output off by 1e-4 relative (its hash updated) and the manifest's
    tolerances loosened to cover it. The reference's tolerances judge it, and the looser
    ones are named; the CLI says whose tolerances it used."""
    name = "solve_step_both_dense"
    arrays = load(copy, name)
    arrays["x"] = arrays["x"] * (1 + 1e-4)
    ff.write_npz(copy / f"{name}.npz", arrays)
    manifest = read_manifest(copy)
    entry = manifest["blocks"][name]
    entry["outputs"]["x"]["sha256"] = ff.sha256(arrays["x"])
    entry["rtol"], entry["atol"] = 1e-2, 1e-2
    write_manifest(copy, manifest)
    row = by_name(fx.verify(copy, only=[name]))[name]
    assert row["status"] == "FAIL"
    assert row["detail"] == ("the manifest's tolerances (rtol 0.01, atol 0.01) are looser than the reference's "
                             "(rtol 1e-06, atol 1e-09); outputs off: x")
    assert row["max_abs_diff"] > row["bound"]
    entry["rtol"], entry["atol"] = 1e-12, 1e-15   # tighter than the reference: judged by the reference's
    write_manifest(copy, manifest)
    (copy / f"{name}.npz").write_bytes((COMMITTED / f"{name}.npz").read_bytes())
    entry["outputs"]["x"]["sha256"] = read_manifest(COMMITTED)["blocks"][name]["outputs"]["x"]["sha256"]
    write_manifest(copy, manifest)
    assert by_name(fx.verify(copy, only=[name]))[name]["status"] == "ok"
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "verify-fixtures", str(copy)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "tolerances: the reference's own" in r.stdout, r.stdout + r.stderr
