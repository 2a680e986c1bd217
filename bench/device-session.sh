#!/usr/bin/env bash
# One GPU run (see bench/README.md): compile the generated kernels there (16 cores), check them
# against the interpreter and the float64 reference, then time ours beside PyTorch SDPA in the same
# run. Every log goes under $OUT (default ./device-out). Needs node, nvcc, python3 with torch on PATH;
# a .device/setup.sh beside it, when there is one, is sourced first to provide them.
# Usage: bash bench/device-session.sh [tests|python|bench|autotune|checks|attn|algorithms|issue23|binding-profile|api-overhead|varlen|sm80|sass|ncu|all]...   env: TS="4096 16384 65536" CHUNKS="128"
set -uo pipefail
OUT=${OUT:-device-out}; mkdir -p "$OUT"
if [[ -f .device/setup.sh ]]; then source .device/setup.sh > "$OUT/setup.log" 2>&1; fi
TS=${TS:-"4096 16384 65536"}
CHUNKS=${CHUNKS:-128}
build() {
  local t0=$SECONDS
  if [[ -n "${DEV_SPECS:-}" ]]; then
    # only a few specs, into their own folder, which the runtime searches first: DEV_SPECS="64:64,128:bf16" (d:chunks:dtypes)
    IFS=: read -r dd cc tt <<< "$DEV_SPECS"
    node codegen/bin.mjs gen --deg 2 --d "$dd" --chunk "$cc" --dtype "$tt" --out build/generated/dev --build-dir build/generated/dev --compile --jobs 16 >> "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
    export RETENTION_KERNELS=$PWD/build/generated/dev
    echo "build (dev specs $DEV_SPECS): $((SECONDS - t0)) s"
    return
  fi
  for d in generated build/generated/*/; do
    [[ -f "$d/manifest.json" ]] || continue
    node codegen/bin.mjs build --out "$d" --build-dir build/kernels --jobs 16 >> "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
  done
  echo "build: $((SECONDS - t0)) s"
}
build
for step in "${@:-all}"; do
  case $step in
    tests|all)
      PRT_REQUIRE_GPU=1 PRT_GPU_SPECS="${GPU_SPECS:-}" timeout ${GPU_TEST_LIMIT:-300} node node_modules/vitest/vitest.mjs run test/gpu > "$OUT/gpu-tests.log" 2>&1
      echo "gpu tests rc=$?"; grep -E "Tests |passed|failed|worst" "$OUT/gpu-tests.log" | tail -15 ;;&
    bench|all)
      for c in $CHUNKS; do
        PROFILE=1 CHUNK=$c REPS=${REPS:-10} node --import tsx bench/retention.ts $TS > "$OUT/ours-c$c.log" 2> "$OUT/ours-c$c.err"
        echo "bench c=$c rc=$?"; tail -3 "$OUT/ours-c$c.err"
      done
      python3 bench/sdpa.py $TS > "$OUT/sdpa.log" 2>&1
      for c in $CHUNKS; do node bench/table.mjs "$OUT/ours-c$c.log" "$OUT/sdpa.log" | tee "$OUT/table-c$c.md"; done
      python3 bench/report.py "$OUT/ours-c${CHUNKS%% *}.log" "$OUT/sdpa.log" "$OUT" "${COMMIT:-unknown}" || echo "report failed" ;;&
    python|all)
      # PY_K: a pytest -k selection (e.g. the tests whose specs a DEV_SPECS build has)
      PYTHONPATH=$PWD/runtime/python timeout ${PY_LIMIT:-240} python3 -m pytest runtime/python/tests -q -rs -s -x ${PY_K:+-k "$PY_K"} > "$OUT/python-tests.log" 2>&1
      echo "python tests rc=$?"; tail -15 "$OUT/python-tests.log" ;;&
    api-overhead)
      # issue 25 item 5: the TS API per call against its launches alone, and Decoder.step's device and host time
      REPS=${REPS:-20} timeout ${API_LIMIT:-300} node --import tsx bench/api-overhead.ts ${API_SHAPES:-1:4096 1:16384 16:1024} > "$OUT/api-overhead.log" 2>&1
      echo "api-overhead rc=$?"; tail -12 "$OUT/api-overhead.log" ;;
    varlen)
      # issue 26: a packed call (cu_seqlens) against the same documents padded and one call per document
      PYTHONPATH=$PWD/runtime/python COMMIT=${COMMIT:-unknown} timeout ${VARLEN_LIMIT:-300} python3 bench/varlen.py "$OUT/varlen.json" > "$OUT/varlen.log" 2>&1
      echo "varlen rc=$?"; tail -8 "$OUT/varlen.log" ;;
    autotune)
      cp codegen/schedules.json "$OUT/schedules.json"
      timeout ${TUNE_LIMIT:-420} node --import tsx bench/autotune.ts --spec ${TUNE_SPEC:-p2_d64_e64_c128_bf16} --kernels "$TUNE_KERNELS" \
        --t ${TUNE_T:-16384} --b ${TUNE_B:-1} --reps ${REPS:-5} --jobs 16 --out "$OUT/schedules.json" > "$OUT/autotune.log" 2>&1
      echo "autotune rc=$?"; grep -vE "^\s*$" "$OUT/autotune.log" | tail -25 ;;
    checks)
      # issue 8 item 5: compute-sanitizer over every kernel of one spec per dtype, and run-to-run determinism
      for dt in ${SAN_DTYPES:-bf16 f16 f32}; do
        for tool in memcheck racecheck; do
          SPEC=p2_d32_e32_c64_$dt DECODE_STEPS=${DECODE_STEPS:-67} timeout 240 compute-sanitizer --tool $tool --error-exitcode 9 \
            node --import tsx bench/sanitize.ts > "$OUT/sanitize-$tool-$dt.log" 2>&1
          echo "sanitize $tool $dt rc=$?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|sanitize run|Error" "$OUT/sanitize-$tool-$dt.log" | head -3
        done
      done
      for s in ${DET_SPECS:-p2_d64_e64_c128_bf16 p2_d64_e64_c64_f32}; do
        SPEC=$s timeout 120 node --import tsx bench/determinism.ts > "$OUT/determinism-$s.log" 2>&1
        echo "determinism $s rc=$?"; tail -1 "$OUT/determinism-$s.log"
      done ;;
    attn)
      # the attention kernels (issue 23): the quadratic path (CHUNK=16384 >= t: a chunk no manifest
      # has; its chunk-free kernels come from the smallest built chunk), the chunked path at chunk 128;
      # ours and SDPA (with a bf16 matmul ceiling) in the same run
      CEIL=1 B=16 python3 bench/sdpa.py 1024 > "$OUT/sdpa-attn.log" 2>&1
      B=4 python3 bench/sdpa.py 4096 >> "$OUT/sdpa-attn.log" 2>&1
      B=1 python3 bench/sdpa.py 16384 65536 >> "$OUT/sdpa-attn.log" 2>&1
      for bt in 16:1024 4:4096 1:16384; do
        PROFILE=1 B=${bt%%:*} CHUNK=16384 REPS=${REPS:-20} node --import tsx bench/retention.ts ${bt##*:} >> "$OUT/ours-attn.log" 2>> "$OUT/ours-attn.err"
      done
      for bt in 1:16384 1:65536; do
        PROFILE=1 B=${bt%%:*} CHUNK=128 REPS=${REPS:-10} node --import tsx bench/retention.ts ${bt##*:} >> "$OUT/ours-attn.log" 2>> "$OUT/ours-attn.err"
      done
      echo "attn rc=$?"; cat "$OUT/sdpa-attn.log"; grep -vE "^\s*$" "$OUT/ours-attn.log"; tail -5 "$OUT/ours-attn.err"
      if [[ -n "${ATTN_NCU:-}" ]]; then
        B=4 CHUNK=16384 FWD_ONLY=1 REPS=1 timeout 240 ncu --kernel-name regex:attention_y --launch-count 1 --clock-control none \
          --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats --section InstructionStats --section ComputeWorkloadAnalysis \
          node --import tsx bench/retention.ts 4096 > "$OUT/ncu-attn.log" 2>&1
        echo "ncu rc=$?"; grep -E "Duration|Throughput|Occupancy|Registers Per|Issue Slots Busy|Eligible|Executed Ipc" "$OUT/ncu-attn.log" | head -30
      fi ;;
    issue23)
      # issue 23 item 4, in one run: at b x t in $I23_SHAPES, fwd and fwd+bwd, ours through the PyTorch
      # binding and through the launches alone (CHUNK=auto: the library's own choice), SDPA, the ratio,
      # each kernel's ms, TFLOP/s and % of a bf16 matmul ceiling measured here; issue23.json and .png
      # in $OUT (and bench/results/<date>-<commit>/ in a git checkout); the headline table last
      I23_SHAPES=${I23_SHAPES:-"16:1024 4:4096 1:16384"}
      # the results folder and the JSON are named by COMMIT; a copied working tree's git may not know
      # the commit it was copied at (one run took a stale HEAD), so say so when it is unset
      [[ -n "${COMMIT:-}" ]] || echo "issue23: COMMIT is unset; the report takes this machine's git HEAD ($(git rev-parse --short HEAD 2>/dev/null || echo none)), which may not be the tree measured"
      CEIL=1 REPS=${REPS:-20} timeout ${I23_LIMIT:-150} python3 bench/sdpa.py $I23_SHAPES > "$OUT/issue23-sdpa.log" 2> "$OUT/issue23-sdpa.err"
      echo "issue23 sdpa rc=$?"; tail -3 "$OUT/issue23-sdpa.err"
      PROFILE=1 CHUNK=${I23_CHUNK:-auto} REPS=${REPS:-20} timeout ${I23_LIMIT:-150} node --import tsx bench/retention.ts $I23_SHAPES > "$OUT/issue23-ours.log" 2> "$OUT/issue23-ours.err"
      echo "issue23 launches rc=$?"; tail -3 "$OUT/issue23-ours.err"
      PYTHONPATH=$PWD/runtime/python CHUNK=${I23_CHUNK:-auto} REPS=${REPS:-20} timeout ${I23_LIMIT:-150} python3 bench/torch_retention.py $I23_SHAPES > "$OUT/issue23-binding.log" 2> "$OUT/issue23-binding.err"
      echo "issue23 binding rc=$?"; tail -3 "$OUT/issue23-binding.err"
      python3 bench/issue23_report.py --sdpa "$OUT/issue23-sdpa.log" --ours "$OUT/issue23-ours.log" --binding "$OUT/issue23-binding.log" --out "$OUT" \
        || echo "issue23 report failed" ;;
    binding-profile)
      # where the binding's time goes beyond the kernels: host vs device time per call, cProfile, torch.profiler
      PYTHONPATH=$PWD/runtime/python CHUNK=${I23_CHUNK:-auto} timeout ${PROF_LIMIT:-200} python3 bench/profile_binding.py ${PROF_SHAPES:-16:1024 4:4096} > "$OUT/binding-profile.log" 2>&1
      echo "binding-profile rc=$?"; grep -E '^\{' "$OUT/binding-profile.log" ;;
    sm80)
      # issue 23: the sm_80 path from a build with only compute_80 PTX (the driver JIT-compiles it for
      # this GPU; the sm_90a bodies are not in it), through the GPU tests of SM80_SPECS (d:chunks:dtypes)
      IFS=: read -r dd cc tt <<< "${SM80_SPECS:-64:64:bf16,f16}"
      node codegen/bin.mjs gen --arch sm_80 --deg 2 --d "$dd" --chunk "$cc" --dtype "$tt" --out build/generated/sm80 --build-dir build/generated/sm80 --compile --jobs 16 > "$OUT/sm80-build.log" 2>&1 || { tail -20 "$OUT/sm80-build.log"; continue; }
      grep -c "compute_90a\|sm_90a" build/generated/sm80/Makefile | sed 's/^/sm_90a mentions in the sm80 Makefile: /'
      RETENTION_KERNELS=$PWD/build/generated/sm80 PRT_REQUIRE_GPU=1 PRT_GPU_SPECS="${SM80_GPU_SPECS:-p2_d64_e64_c64_(bf16|f16)}" timeout ${GPU_TEST_LIMIT:-300} node node_modules/vitest/vitest.mjs run test/gpu > "$OUT/gpu-tests-sm80.log" 2>&1
      echo "sm80 gpu tests rc=$?"; grep -E "Tests |worst|^p2_" "$OUT/gpu-tests-sm80.log" | tail -12 ;;
    algorithms)
      # the algorithm table (dsl/algorithm.ts): quadratic vs chunked fwd+bwd over t and b*h, into $OUT/algorithms.json
      cp codegen/algorithms.json "$OUT/algorithms.json"
      timeout ${ALG_LIMIT:-420} node --import tsx bench/algorithms.ts --specs ${ALG_SPECS:-p2_d64_e64_bf16} --ts ${ALG_TS:-1024,2048,4096,8192,16384,32768} \
        --bh ${ALG_BH:-8,64} --reps ${REPS:-5} --out "$OUT/algorithms.json" > "$OUT/algorithms.log" 2>&1
      echo "algorithms rc=$?"; grep -vE "^\{" "$OUT/algorithms.log" | tail -30 ;;
    sass)
      # issue 23: where one kernel's instructions go, at b = $SASS_B, t = $SASS_T on the quadratic
      # path: its SASS (cuobjdump, every fatbin on the search path) and Nsight Compute's source page
      # (per-instruction executions and stall samples, CSV)
      K=${SASS_KERNEL:-attention_y}
      for fb in "${RETENTION_KERNELS:-build/kernels}"/*.fatbin build/kernels/*.fatbin; do
        [[ -f "$fb" ]] && cuobjdump -sass "$fb" | awk -v k="prt_${K}_" '/Function : /{p = index($0, k) > 0} p'
      done > "$OUT/sass-$K.txt" 2>&1
      echo "sass $K: $(grep -cE '^\s+/\*[0-9a-f]{4}\*/' "$OUT/sass-$K.txt") instructions"
      FWD=$([[ $K == attention_y ]] && echo 1 || echo 0)
      B=${SASS_B:-4} CHUNK=16384 FWD_ONLY=$FWD REPS=1 timeout 240 ncu --kernel-name "regex:prt_${K}_" --launch-count 1 \
        --section SourceCounters --section WarpStateStats --section SpeedOfLight -o "$OUT/ncu-$K" -f \
        node --import tsx bench/retention.ts ${SASS_T:-4096} > "$OUT/ncu-$K.log" 2>&1
      echo "ncu $K rc=$?"
      ncu -i "$OUT/ncu-$K.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu-source-$K.csv" 2>&1
      echo "ncu source page rc=$? ($(wc -l < "$OUT/ncu-source-$K.csv") lines)"; head -3 "$OUT/ncu-source-$K.csv" | cut -c1-300 ;;
    ncu)
      KERNELS=${NCU_KERNELS:-"query_state_bwd_dq|update_state_bwd|query_state|update_state"}
      CHUNK=${CHUNKS%% *} REPS=1 timeout 400 ncu --kernel-name "regex:$KERNELS" --launch-count 4 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats --section InstructionStats \
        node --import tsx bench/retention.ts 16384 > "$OUT/ncu.log" 2>&1
      echo "ncu rc=$?"; grep -E "^  [a-z_]+|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per" "$OUT/ncu.log" | head -60 ;;
  esac
done
# The device returns at most 8 files from $OUT: pack every log into one archive (PACK=0 keeps them
# loose), leaving beside it the files a caller reads directly (the issue 23 JSON and plot, the
# autotune and algorithm tables) and session.log, which a caller's tee may still be writing.
if [[ "${PACK:-1}" == 1 ]]; then
  ( cd "$OUT" && files=$(ls -A | grep -vE '^(logs\.tgz|session\.log|issue23\.json|issue23\.png|schedules\.json|algorithms\.json|varlen\.json)$') \
    && [[ -n "$files" ]] && tar czf logs.tgz $files && rm -rf $files && echo "packed $(echo $files | wc -w) files into $OUT/logs.tgz" )
fi
