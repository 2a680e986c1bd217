"""Run plans through libprt.so on whatever driver PRT_LIBCUDA names (the tests' fake one) and say
where every buffer lived, so test/plan-native.test.ts can map the fake driver's launch log back to
buffer names and compare it with the TS plans.

stdin: {"manifest": path, "kernelDir": path, "cases": [{"kind", "spec": [deg, d, e, chunk, dtype],
        "problem": {b, t, hq, h, scale, gated, initial_state, final_state, len0, ns?, nc?}, "log": path,
        "outputsInWorkspace": bool}]}
stdout: [{"buffers": [{"name", "role", "ptr", "bytes"}], "workspace": ptr, "steps": [...]}] per case
"""

import ctypes
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from prt import _native  # noqa: E402


def main() -> None:
    job = json.load(sys.stdin)
    rt = _native.Runtime([job["manifest"]], job["kernelDir"])
    lib = _native.library()
    out = []
    for case in job["cases"]:
        pr = case["problem"]
        plan = rt.plan(case["kind"], tuple(case["spec"]), pr["b"], pr["t"], pr["hq"], pr["h"], pr["scale"],
                       bool(pr.get("gated")), bool(pr.get("initial_state")), bool(pr.get("final_state")), pr.get("len0", 0),
                       pr.get("ns", 0), pr.get("nc", 0))
        allocated = []

        def alloc(n: int) -> int:
            p = ctypes.c_uint64()
            _native.check(lib.prt_mem_alloc(ctypes.byref(p), max(n, 256)))
            allocated.append(p.value)
            return p.value

        keep_out = not case.get("outputsInWorkspace")
        ptrs = {b.name: alloc(b.bytes) for b in plan.buffers if b.role == _native.BUF_INPUT or (b.role == _native.BUF_OUTPUT and keep_out)}
        ws_bytes = plan.workspace_bytes if keep_out else plan.workspace_bytes_all
        ws = alloc(ws_bytes)
        os.environ["FAKE_CUDA_LOG"] = case["log"]
        plan.run(0x5000, ptrs, ws, ws_bytes)
        _native.check(lib.prt_synchronize())
        out.append({
            "buffers": [{"name": b.name, "role": b.role, "bytes": b.bytes, "ptr": ptrs.get(b.name, ws + b.offset)} for b in plan.buffers],
            "workspace": ws,
            "workspaceBytes": ws_bytes,
            "steps": plan.steps(),
        })
        for p in allocated:
            _native.check(lib.prt_mem_free(p))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
