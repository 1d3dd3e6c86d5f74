#!/usr/bin/env bash
# The GPU checks as they are run on a lent NVIDIA machine (one H100 or H200, no network, Python 3.12 with torch).
# onnxruntime-gpu's wheel (255 MB) is larger than one transfer (64 MiB, the checkout's own 14 MB included), so it
# travels as five parts (ort.part1 .. ort.part5, joined in name order) of one xz-compressed tar of the unpacked
# wheel, one folder .pK per call; .p1 also holds the diffusers and open_clip wheels and the smallest part. The phases
# below are consecutive calls on one warm machine (/root/parts, /root/work and /tmp/site stay between them):
#
#   bash benchmarks/gpu_check.sh setup      # .p1 + diffusers, open_clip wheels: SD 1.5 export
#   bash benchmarks/gpu_check.sh baseline   # .p2: diffusers on torch CUDA, fp16; CUDA driver tests
#   bash benchmarks/gpu_check.sh part       # .p3, then again with .p4
#   bash benchmarks/gpu_check.sh ort        # .p5: onnxruntime-gpu, GPU tests, diffrt on ORT CUDA, the report
#
# The GPU tests alone (no benchmark): `wheels` (.p1), `part` three times (.p2 to .p4), then `tests` (.p5:
# onnxruntime-gpu and `pytest -m gpu tests/gpu/test_ort_cuda.py`).
#
# Parts are made here with: tar cf - -C <unzipped wheel> . | xz -9e --lzma2=preset=9e,dict=1536MiB, then
# split -b 41M into .p1/ .. .p5/ (ignored by git). Results come back under $OUT.
set -uo pipefail
PHASE=${1:?setup, baseline, part, ort, wheels or tests}
SITE=/tmp/site
WORK=/root/work
OUT=${OUT:-/tmp/gpu-out}
mkdir -p /root/parts "$WORK" "$OUT"
# PYTHONSAFEPATH: the checkout's diffrt/ folder (the CLI alone) must not shadow the copied package.
export PYTHONPATH=$SITE PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1
for part in .p1 .p2 .p3 .p4 .p5; do [ -d "$part" ] && cp "$part"/ort.part* /root/parts/ 2>/dev/null; done
ls -la /root/parts
# diffrt itself: its folders are the subpackages of one import name (pyproject's package-dir), copied as such.
rm -rf "$SITE/diffrt" && mkdir -p "$SITE" && cp -r diffrt "$SITE/diffrt" \
    && for sub in runtime export kernels; do cp -r "$sub" "$SITE/diffrt/$sub"; done

install_wheels() {
    python3 -m pip install -q --no-index --no-deps --target "$SITE" .p1/diffusers-*.whl .p1/open_clip_torch-*.whl
}

# onnxruntime-gpu from the four parts, with the CUDA 13 / cuDNN 9 libraries of the nvidia-* wheels beside torch.
install_ort() {
    cat /root/parts/ort.part? | sha256sum
    cat /root/parts/ort.part? | xz -d | tar xf - -C "$SITE" || return 1
    python3 -c "import onnxruntime as o; o.preload_dlls(); print('preload_dlls ok', o.get_available_providers())" \
        2>&1 | tail -2 | tee "$OUT/preload.txt"
    NVIDIA=$(python3 -c "import site; print(site.getsitepackages()[0])")/nvidia
    LD_LIBRARY_PATH=$(find "$NVIDIA" -name 'lib*.so*' -printf '%h\n' | sort -u | tr '\n' ':')${LD_LIBRARY_PATH:-}
    export LD_LIBRARY_PATH
}

case "$PHASE" in
wheels)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    install_wheels || exit 1
    ;;
tests)
    install_ort || exit 1
    timeout 400 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_ort_cuda.py -rs 2>&1 \
        | tail -40 | tee "$OUT/pytest-gpu.txt"
    ;;
setup)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    install_wheels || exit 1
    python3 -c "import diffrt, diffusers, torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
    time timeout 400 python3 benchmarks/bench_gpu.py prepare --work "$WORK"
    ;;
baseline)
    timeout 200 python3 benchmarks/bench_gpu.py run diffusers_fp16 --work "$WORK"
    timeout 60 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_cuda_driver.py 2>&1 | tail -5 \
        | tee "$OUT/pytest-cuda-driver.txt"
    ;;
part)
    ;;
ort)
    install_ort || exit 1
    timeout 130 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_ort_cuda.py 2>&1 \
        | tail -40 | tee "$OUT/pytest-gpu.txt"
    timeout 150 python3 benchmarks/bench_gpu.py run diffrt_cuda_fp16 diffrt_cuda_fp32 --work "$WORK" 2>&1 | tail -30
    if [ -f "$WORK/diffrt_cuda_fp16.failed.txt" ]; then
        timeout 60 python3 benchmarks/bench_gpu.py run diffrt_cuda_fp16_unfused --work "$WORK" 2>&1 | tail -10
    else
        timeout 60 python3 benchmarks/bench_gpu.py run diffrt_cuda_fp16_graph --work "$WORK" 2>&1 | tail -10
    fi
    python3 benchmarks/bench_gpu.py report --work "$WORK" --out "$OUT/gpu.json"
    cp "$WORK"/*.failed.txt "$OUT"/ 2>/dev/null
    ;;
esac
exit 0
