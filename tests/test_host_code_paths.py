"""Host-kernel code paths chosen at run time.

The host kernels run clones compiled for AVX2 and AVX-512 where the CPU has
them (csrc/kernels/cpu_isa.h). Every level must give the same bits: each
level runs in its own process (MASKED_OPS_CPU_ISA is read once) on the same
inputs, for every loss of both tables, the mask kinds with their own code paths
(boolean, float, short and long prefix rows, several masks, labels), forward,
backward and the one-pass forward_backward; the digests must agree (on a
CPU with AVX only, every process runs the baseline)."""

import glob
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = ("baseline", "avx2", "avx512")

# Run in a child process: imports only NumPy and the compiled binding.
CHILD = r"""
import hashlib, importlib.util, json, sys
import numpy as np

spec = importlib.util.spec_from_file_location("_kernels", sys.argv[1])
k = importlib.util.module_from_spec(spec)
spec.loader.exec_module(k)
k.set_num_threads(2)

PARAMS = {"huber": (0.7,), "binary_crossentropy": (0.1,),
          "binary_crossentropy_from_logits": (0.1,)}
digest = hashlib.sha256()

def add(*arrays):
    for a in arrays:
        if a is not None:
            digest.update(np.ascontiguousarray(np.asarray(a)).tobytes())

rng = np.random.default_rng(7)
for dtype in (np.float16, np.float32, np.float64):
    shape = (6, 77, 300)  # several chunks; rows neither block- nor lane-aligned
    pred_normal = rng.standard_normal(shape).astype(dtype)
    pred_prob = rng.uniform(0.0, 1.0, shape).astype(dtype)
    true_normal = rng.standard_normal(shape).astype(dtype)
    true_label = (rng.random(shape) < 0.5)
    masks = {
        "none": None,
        "bool": rng.random(shape) < 0.7,
        "float": np.where(rng.random(shape) < 0.3, 0.0, rng.random(shape)).astype(dtype),
        "short_rows": rng.random(shape[:2]) < 0.7,
        "long_rows": np.where(rng.random(shape[:1]) < 0.3, 0.0, 1.5).astype(dtype),
        "several": [rng.random(shape) < 0.8, rng.random(shape[:2]).astype(dtype)],
    }
    for loss in k.losses:
        params = PARAMS.get(loss, ())
        crossentropy = "crossentropy" in loss
        y_pred = pred_prob if loss == "binary_crossentropy" else pred_normal
        y_true = true_label.astype(dtype) if crossentropy else true_normal
        for name, mask in masks.items():
            out = k.forward(y_true, y_pred, mask, loss_name=loss, params=params)
            add(*out[:3])
            loss_value, _, weight_sum, _ = out
            grads = k.backward(1.5, 0.25, -0.5, y_true, y_pred, mask, None, loss_value,
                               weight_sum, "mean", True, True,
                               name in ("float", "long_rows"),
                               loss_name=loss, params=params)
            add(*grads)
            if name in ("none", "bool"):
                add(*k.forward_backward(y_true, y_pred, mask, "mean", True, True,
                                        loss_name=loss, params=params))
        if crossentropy:
            out = k.forward(true_label, y_pred, masks["bool"], loss_name=loss, params=params)
            add(*out[:3])
rows, classes = 37, 1000
logits = (4.0 * rng.standard_normal((rows, classes))).astype(np.float32)
probabilities = rng.random((rows, classes)).astype(np.float32)
labels = rng.integers(0, classes, rows).astype(np.int64)
dense = rng.dirichlet(np.ones(classes), rows).astype(np.float32)
row_mask = rng.random(rows) < 0.7
for loss in k.row_losses:
    from_logits = loss.endswith("_from_logits")
    name = loss.removesuffix("_from_logits")
    y_pred = logits if from_logits else probabilities
    y_true = labels if name.startswith("sparse") else dense
    options = dict(loss=name, from_logits=from_logits)
    if not name.startswith("sparse"):
        options["label_smoothing"] = 0.1
    add(*k.row_forward_backward(y_true, y_pred, row_mask, **options))
print(json.dumps({"isa": k.cpu_isa(), "digest": digest.hexdigest()}))
"""


def binding_path():
    found = glob.glob(os.path.join(ROOT, "masked_ops", "_kernels*.so"))
    if not found:
        pytest.fail("masked_ops/_kernels*.so is not built (make build)")
    return found[0]


def run_level(level):
    env = dict(os.environ, MASKED_OPS_CPU_ISA=level)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, binding_path()],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_instruction_set_gives_the_same_bits():
    results = {level: run_level(level) for level in LEVELS}
    best = results["avx512"]["isa"]
    # A level is never above what the CPU has, and asking for a lower one gets it.
    assert results["baseline"]["isa"] == "baseline"
    assert results["avx2"]["isa"] in ("baseline", "avx2")
    assert LEVELS.index(results["avx2"]["isa"]) <= LEVELS.index(best)
    assert len({r["digest"] for r in results.values()}) == 1, results


def test_an_unknown_level_keeps_the_detected_one():
    assert run_level("not-an-isa")["isa"] == run_level("avx512")["isa"]


def load_binding():
    spec = importlib.util.spec_from_file_location("_kernels", binding_path())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_streaming_stores_give_the_same_gradients(mask_kind):
    """Gradients of 16 MiB and more are written with streaming stores
    (kStreamingBytes in masked_loss_cpu.h); the same backward over slices
    below that size uses plain stores and must give the same bits. The view
    starts 4 bytes into its buffer (groups not 16-byte aligned: plain stores
    there too) in the second case."""
    k = load_binding()
    rng = np.random.default_rng(3)
    n = (1 << 22) + 37  # float32: just over 16 MiB, with a ragged tail
    for start in (0, 1):
        y_true = rng.standard_normal(n + start).astype(np.float32)[start:]
        y_pred = rng.standard_normal(n + start).astype(np.float32)[start:]
        if mask_kind == "bool":
            mask = rng.random(n) < 0.7
        else:
            mask = np.where(rng.random(n) < 0.3, 0.0, rng.random(n)).astype(np.float32)
        want_mask = mask_kind == "float"
        loss, _, weight_sum, _ = k.forward(y_true, y_pred, mask)
        args = (1.25, 0.5, -0.25)
        whole = k.backward(
            *args, y_true, y_pred, mask, None, loss, weight_sum, "mean", True, True, want_mask
        )
        cuts = np.linspace(0, n, 5).astype(int)
        parts = [
            k.backward(
                *args,
                y_true[a:b].copy(),
                y_pred[a:b].copy(),
                mask[a:b].copy(),
                None,
                loss,
                weight_sum,
                "mean",
                True,
                True,
                want_mask,
            )
            for a, b in zip(cuts[:-1], cuts[1:], strict=True)
        ]
        for index in range(3 if want_mask else 2):
            joined = np.concatenate([p[index] for p in parts])
            assert np.array_equal(whole[index].view(np.uint32), joined.view(np.uint32))
        if mask_kind == "bool":
            one_pass = k.forward_backward(y_true, y_pred, mask, "mean", True, True)
            unit = k.backward(
                1.0,
                0.0,
                0.0,
                y_true,
                y_pred,
                mask,
                None,
                loss,
                weight_sum,
                "mean",
                True,
                True,
                False,
            )
            for a, b in zip(one_pass[4:], unit[:2], strict=True):
                assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
