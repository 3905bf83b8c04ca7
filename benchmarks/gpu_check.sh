#!/usr/bin/env bash
# One device session's checks, run from the repository root on a CUDA machine:
#   1. the GPU training-step benchmark (benchmarks/bench_gpu.py --compile);
#   2. the CUDA paths of the real CLI on the embedded digits: teacher training, SpectralKD with bf16
#      and EMA, with float16 and its gradient scaler, with repeated augmentation, ProjectorKD with
#      torch.compile, a cohort of three students with augmentation and drop path (each student
#      compared with the same run alone), torchrun + NCCL with repeated augmentation and float16,
#      a GPU slot, capture + metrics;
#   3. the same SpectralKD run in float32 on the CPU, to compare accuracy with the bf16 GPU run.
# Usage: benchmarks/gpu_check.sh OUT_DIR [DEVICE]   (DEVICE=cpu makes it a quick smoke test of this script)
set -uo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [DEVICE]}
dev=${2:-cuda}
epochs=${EPOCHS:-10}
mkdir -p "$out"
work=$(mktemp -d)
py=${PYTHON:-python3}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
step() {  # step NAME COMMAND...: run, log to $out/NAME.log, report the time and exit code
    local name=$1; shift
    local started=$SECONDS
    "$@" >"$out/$name.log" 2>&1
    local rc=$?
    printf '%-22s rc=%d %4ds\n' "$name" "$rc" "$((SECONDS - started))" | tee -a "$out/summary.txt"
    [ $rc -eq 0 ] || { status=1; tail -5 "$out/$name.log"; }
}

{ nvidia-smi -L 2>/dev/null; $py -c 'import torch, timm, numpy; print("torch", torch.__version__, "timm", timm.__version__, "numpy", numpy.__version__, "cuda", torch.cuda.is_available())'; } | tee "$out/summary.txt"

if [ "$dev" = cuda ]; then
    step bench_gpu $py benchmarks/bench_gpu.py --compile --out "$out/bench_gpu.json"
else
    step bench_gpu $py benchmarks/bench_gpu.py --device cpu --batch 2 --steps 1 --warmup 1 --out "$out/bench_gpu.json"
fi

digits='{"name": "digits"}'
# The options each rule always passes, at the config's defaults (the CLI has none); ours come after them.
defaults() { mapfile -t "$1" < <($py -c 'import sys; sys.path.insert(0, "benchmarks")
from cli_defaults import rule_options; print("\n".join(rule_options(sys.argv[1])))' "$2"); }
defaults distill_options distill; defaults fetch_options fetch; defaults capture_options capture
defaults entropy_options "metrics entropy"
run() {  # run METHOD [LAYERS BETA]: one run spec as `dyn distill --runs` takes it
    printf '[{"method": "%s", "layers": "%s", "beta": %s, "epochs": %s}]' "$1" "${2:-none}" "${3:-0}" "$epochs"
}
train='{"global_batch": 64, "lr_base": 2e-3, "lr_base_size": 64, "warmup_epochs": 1, "augment": false, "num_workers": 0, "eval_batch_size": 512, "crop_pct": null'
distill() {  # distill OUT_DIR DEVICE EXTRA_TRAIN_JSON ARGS...
    local dir=$1 device=$2 extra=$3; shift 3
    $py -m dyn.cli distill "${distill_options[@]}" --teacher-arch cait_digits \
        --teacher-checkpoint "$work/cait.safetensors" --student-arch deit_digits --runs-dir "$dir" \
        --num-images 16 --evolution-every 5 --dataset "$digits" --train "$train$extra}" --device "$device" "$@"
}
step fetch_teacher $py -m dyn.cli fetch "${fetch_options[@]}" --name cait --arch cait_digits --weights train --epochs "$epochs" \
    --out "$work/cait.safetensors" --dataset "$digits" --train "$train}" --device "$dev"
step spectral_bf16_ema distill "$out/spectral_$dev" "$dev" ', "ema": true, "ema_decay": 0.99' --runs "$(run spectral First1+Last1 0.2)"
step spectral_cpu_fp32 distill "$out/spectral_cpu" cpu ', "ema": true, "ema_decay": 0.99' --runs "$(run spectral First1+Last1 0.2)"
step spectral_fp16 distill "$out/spectral_fp16" "$dev" ', "amp_dtype": "float16"' --runs "$(run spectral First1+Last1 0.2)"
step spectral_repeated_aug distill "$out/spectral_ra" "$dev" ', "repeated_aug": 3' --runs "$(run spectral First1+Last1 0.2)"
step projector_compiled distill "$work/projector" "$dev" ', "compile": true' --runs "$(run projector First1+Last1 0.2)"
cohort="[{\"method\": \"softkd\", \"epochs\": $epochs}, {\"method\": \"spectral\", \"layers\": \"First1\", \"beta\": 0.2, \"epochs\": $epochs}, {\"method\": \"projector\", \"layers\": \"Last1\", \"beta\": 0.2, \"epochs\": $epochs}]"
aug=', "augment": true, "drop_path": 0.1, "teacher_cache": false'
step cohort_of_3 distill "$out/cohort" "$dev" "$aug" --runs "$cohort"
step cohort_alone_1 distill "$out/alone" "$dev" "$aug" --runs "$(run softkd)"
step cohort_alone_2 distill "$out/alone" "$dev" "$aug" --runs "$(run spectral First1 0.2)"
step cohort_alone_3 distill "$out/alone" "$dev" "$aug" --runs "$(run projector Last1 0.2)"
if [ "$dev" = cuda ]; then
    step torchrun_nccl $py -m torch.distributed.run --standalone --nproc_per_node=1 -m dyn.cli distill \
        "${distill_options[@]}" --runs '[{"method": "softkd", "epochs": 2}]' --teacher-arch cait_digits --teacher-checkpoint "$work/cait.safetensors" \
        --student-arch deit_digits --runs-dir "$out/ddp" --num-images 16 --dataset "$digits" \
        --train "$train, \"repeated_aug\": 3, \"amp_dtype\": \"float16\"}" --device cuda
    step gpu_slot $py -m dyn.cli gpu-run --gpus 1 --pool "$work/pool" -- \
        $py -c 'import os, torch; print("slot", os.environ["CUDA_VISIBLE_DEVICES"], torch.cuda.device_count())'
    cat "$out/gpu_slot.log"
fi
step capture $py -m dyn.cli capture "${capture_options[@]}" --name cait --arch cait_digits --checkpoint "$work/cait.safetensors" \
    --out "$work/cait.nc" --num-images 64 --dataset "$digits" --device "$dev"
step metrics_entropy $py -m dyn.cli metrics entropy "${entropy_options[@]}" --capture "$work/cait.nc" --out "$out/cait_entropy.nc"

$py - "$out" "$dev" <<'PY' | tee -a "$out/summary.txt"
import json, sys
from pathlib import Path
out, dev = Path(sys.argv[1]), sys.argv[2]
for name in (f"spectral_{dev}", "spectral_cpu", "spectral_fp16", "spectral_ra", "ddp", "cohort", "alone"):
    for path in sorted((out / name).glob("*/summary.json")):
        s = json.loads(path.read_text())
        print(f"{name:>14}: {s['run']}: top1 {s['top1']:.2f}  devices {s.get('devices')}")
try:  # a cohort's students against the same runs alone (bit-identical on the CPU; on CUDA, kernels may differ)
    from safetensors.torch import load_file
    for run in sorted(p.name for p in (out / "cohort").iterdir()):
        a, b = (load_file(out / d / run / "student.safetensors") for d in ("cohort", "alone"))
        diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
        print(f"cohort vs alone {run}: max |weight difference| {diff:.3g}")
except Exception as error:
    print(f"cohort vs alone: not compared ({error})")
bench = out / "bench_gpu.json"
if bench.exists():
    b = json.loads(bench.read_text())
    for k, v in b["results"].items():
        speedup = v.get("speedup_vs_reference", v.get("speedup_vs_singles", 1))
        print(f"{k:>14}: {v['seconds_per_step'] * 1000:.1f} ms/step  x{speedup:.2f}  "
              f"peak {v['peak_memory_gib']:.1f} GiB  ({b['device']})")
PY
rm -rf "$work"
exit $status
