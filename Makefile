# diffrt — the README's two commands: `make test` and `make engines` (each creates and fills .venv when needed).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed-dev
EXPORT_STAMP := $(VENV)/.installed-export
# torch is pinned: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 is the CPU build this machine serves.
TORCH  := torch==2.13.0
# Test workers: two suit the 2-core machines CI runs on.
JOBS   ?= 2
# make engines [MODEL=folder-or-file] [OUT=folder] [EXPORT_ARGS="--static 512x512 ..."]
# The default MODEL is the bundled demo model (models/digits: handwritten digits drawn from text, trained by
# `make train-demo`); MODEL=tiny exports a tiny deterministic random-weight SD model instead (it draws noise).
DEMO_MODEL := models/digits
DEMO_LORA  := $(DEMO_MODEL)/bold_lora.safetensors
DEMO_FILES := $(filter-out $(DEMO_LORA),$(wildcard $(DEMO_MODEL)/*.json $(DEMO_MODEL)/*/*))
MODEL  ?= $(DEMO_MODEL)
OUT    ?= engines/default
EXPORT_ARGS ?=
# make engines PROVIDER=tensorrt [ENGINES_ARGS="--precision fp16 --refittable"]: also build TensorRT plans for this
# GPU into OUT/engines/ (needs an NVIDIA GPU and TensorRT 10: pip install -e ".[trt]"). Default: ONNX graphs only.
PROVIDER ?= onnxruntime
ENGINES_ARGS ?=
# make demo [STEPS=20] [GUIDANCE=4] [DEMO_OUT=demo.png]: the digits 0-9 from the bundled model's package OUT and from
# OUT-bold (its "bold strokes" LoRA fused), each package exported when missing or older than models/digits; torch-free.
STEPS  ?= 20
GUIDANCE ?= 4
DEMO_OUT ?= demo.png
LORA_OUT := $(OUT)-bold
# make train-demo [TRAIN_OUT=folder] [TRAIN_ARGS="--seed 0 --minutes 25"]: train the demo model again (about 25
# minutes on 2 CPU cores; deterministic: the same arguments give the files in models/digits).
TRAIN_OUT ?= build/digits-train
TRAIN_ARGS ?= --seed 0

.PHONY: help install test test-fast engines demo demo-video train-demo train-tiny-vae train-video-demo bench quality bench-serve bench-video serve lint clean interop-optimum

help:
	@echo "make test     create .venv if missing, install diffrt[dev] (torch pinned), run the test suite"
	@echo "make engines  export MODEL (default: the bundled digits model, models/digits) to the package OUT (engines/default)"
	@echo "make demo     build the digits packages (without and with the bold LoRA), draw 0-9 with each into DEMO_OUT (demo.png)"
	@echo "make train-demo  train the digits model and its LoRA again into TRAIN_OUT (build/digits-train), ~25 min"
	@echo "make train-tiny-vae  distil the digits model's tiny VAE (AutoencoderTiny) into TINY_VAE_OUT, ~4 min"
	@echo "make demo-video  the video model (models/digits-video): moving digits into demo.gif and demo.mp4 (torch-free)"
	@echo "make train-video-demo  train the video model again into VIDEO_TRAIN_OUT (build/digits-video-train), ~30 min"
	@echo "make serve    serve the package OUT over HTTP (OpenAI and AUTOMATIC1111 APIs; diffrt serve --help)"
	@echo "make bench-serve  diffrt serve under concurrent load beside diffusers + FastAPI (benchmarks/SERVE.md)"
	@echo "make bench-video  CogVideoX-2b (real transformer and VAE sizes, random weights): diffrt beside diffusers (benchmarks/VIDEO.md)"
	@echo "make lint     ruff over the sources"
	@echo "make clean    remove the virtual environment and caches"

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[dev]" $(TORCH)
	# The real CLIP merges file ships in open-clip-torch; its own requirements would pull torchvision.
	$(PIP) install --quiet --no-deps open-clip-torch==3.3.0
	touch $(STAMP)

# The export stage alone (torch, transformers, onnx, onnxruntime), without the test oracle.
$(EXPORT_STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[export,cpu]" $(TORCH)
	$(PIP) install --quiet --no-deps open-clip-torch==3.3.0
	touch $(EXPORT_STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadfile -q

engines: $(EXPORT_STAMP) $(if $(filter $(MODEL),$(DEMO_MODEL)),$(OUT)/diffrt.json)
ifeq ($(MODEL),tiny)
	$(PY) -m diffrt.export.tiny build/default-model
	$(PY) -m diffrt export build/default-model $(OUT) --force --warm-cache $(EXPORT_ARGS)
else ifneq ($(MODEL),$(DEMO_MODEL))
	$(PY) -m diffrt export "$(MODEL)" $(OUT) --warm-cache $(EXPORT_ARGS)
endif
ifeq ($(PROVIDER),tensorrt)
	$(PY) -m diffrt engines build $(OUT) $(ENGINES_ARGS)
endif

# The bundled model's packages, exported again only when models/digits is newer (batch 10: a row of the demo grid).
$(OUT)/diffrt.json: $(DEMO_FILES) | $(EXPORT_STAMP)
	$(PY) -m diffrt export $(DEMO_MODEL) $(OUT) --force --batch 10 --warm-cache $(EXPORT_ARGS)

$(LORA_OUT)/diffrt.json: $(DEMO_FILES) $(DEMO_LORA) | $(EXPORT_STAMP)
	$(PY) -m diffrt export $(DEMO_MODEL) $(LORA_OUT) --force --batch 10 --lora $(DEMO_LORA):1.0 $(EXPORT_ARGS)

ifeq ($(MODEL),$(DEMO_MODEL))
demo: $(OUT)/diffrt.json $(LORA_OUT)/diffrt.json
	$(PY) -m diffrt.runtime.demo $(OUT) $(LORA_OUT) --labels base "bold LoRA" --steps $(STEPS) --guidance $(GUIDANCE) \
		--out $(DEMO_OUT)
else
demo:
	@echo "make demo draws the bundled digits model ($(DEMO_MODEL)); leave MODEL unset" >&2; exit 2
endif

# make demo-video [VIDEO_OUT=engines/digits-video]: the bundled CogVideoX-architecture model (models/digits-video:
# handwritten digits moving left, right, up or down) exported once (again only when models/digits-video is newer),
# then ten clips made by the torch-free runtime into demo.gif, demo.mp4 (PyAV: the `video` extra) and the frame strip
# docs/demo-video.png. The model wants its own text length (16 tokens), which the runtime takes from its config.
VIDEO_MODEL := models/digits-video
VIDEO_FILES := $(wildcard $(VIDEO_MODEL)/*.json $(VIDEO_MODEL)/*/*)
VIDEO_OUT ?= engines/digits-video
$(VIDEO_OUT)/diffrt.json: $(VIDEO_FILES) | $(EXPORT_STAMP)
	$(PY) -m diffrt export $(VIDEO_MODEL) $(VIDEO_OUT) --force --batch 10

demo-video: $(VIDEO_OUT)/diffrt.json
	$(PIP) install --quiet -e ".[video]"
	$(PY) -m diffrt.runtime.demo_video $(VIDEO_OUT) --out demo.gif --mp4 demo.mp4 --strip docs/demo-video.png

# make train-video-demo [VIDEO_TRAIN_OUT=folder]: train the video model again (deterministic, ~30 min on 2 cores);
# copy the folder to models/digits-video to ship it.
VIDEO_TRAIN_OUT ?= build/digits-video-train
train-video-demo: $(STAMP)
	$(PY) -m diffrt.export.train_video_demo $(VIDEO_TRAIN_OUT) --seed 0 --minutes 25

# Needs the dev install (scikit-learn's digits, the CLIP merges of open-clip-torch). Copy TRAIN_OUT to models/digits
# to ship what it made.
train-demo: $(STAMP)
	$(PY) -m diffrt.export.train_demo $(TRAIN_OUT) $(TRAIN_ARGS)

# make train-tiny-vae [TINY_VAE_OUT=folder]: distil models/digits/vae_tiny again (an AutoencoderTiny that decodes the
# digits model's latents as its KL VAE does; deterministic, ~4 min on 2 cores). Use it with
# `diffrt export models/digits OUT --vae models/digits/vae_tiny` (fast decode) or `--preview-vae` (previews).
TINY_VAE_OUT ?= build/digits-vae-tiny
train-tiny-vae: $(STAMP)
	$(PY) -m diffrt.export.train_tiny_vae $(TINY_VAE_OUT) --teacher $(DEMO_MODEL) --seed 0

# make bench [QUICK=1]: text-to-image latency of diffrt (ORT CPU) beside diffusers (torch) and OpenVINO on the SD 1.5
# architecture (random weights, built and exported once under build/bench/), with diffrt's fast modes (int8,
# DeepCache, both, + the tiny VAE: packages made once with --deepcache and `diffrt quantize`) and their PSNR against
# the exact image; writes benchmarks/results/latest.json and a section of benchmarks/RESULTS.md.
# QUICK=1: 256x256, 8 steps (minutes); else 256 and 512, 20 steps, 2 measured calls each.
# OpenVINO is not a dependency: installed here when the index has it, else its backend is recorded as skipped.
QUICK ?=
bench: $(STAMP)
	$(PIP) install --quiet openvino || echo "make bench: openvino did not install; its backend will be skipped" >&2
	$(PY) benchmarks/bench_pipeline.py $(if $(QUICK),--quick)

# make quality: what each fast mode costs in image quality (benchmarks/QUALITY.md): digits accuracy and pixel
# differences on the bundled model, PSNR on the SD 1.5 architecture (the packages `make bench` builds).
quality: $(STAMP)
	$(PY) benchmarks/quality.py

# make bench-serve [SERVE_MODELS=digits,sd15]: `diffrt serve` (step batching on, one job at a time) beside diffusers
# behind FastAPI with a lock, under 1, 2, 4 and 8 concurrent HTTP clients, on the digits model (32x32) and the SD 1.5
# architecture (256x256, built under build/bench-serve/); an overload burst; writes benchmarks/results/serve.json
# and the tables of benchmarks/SERVE.md. About 20 minutes on 2 cores; SERVE_MODELS=digits takes 3.
SERVE_MODELS ?= digits,sd15
bench-serve: $(STAMP)
	$(PY) benchmarks/bench_serve.py --models $(SERVE_MODELS)

# make bench-video [VIDEO_ARGS="--steps 3"]: text-to-video with CogVideoX-2b's transformer and VAE at their real
# sizes (random weights; a reduced T5: the real one does not fit in 24 GB beside them), 9 frames at 160x240, 2 steps,
# guidance 6: diffrt on ORT CPU (every session kept; a session per stage; plus VAE tiling) beside diffusers on torch
# (plain; VAE tiling + slicing), each in its own process. Built and exported once under build/bench-video/ (16 GB of
# free disk the first time, 12 GB kept; where there is less, VIDEO_ARGS="--transformer-layers 15" builds the
# transformer with half its layers: 10 GB, 6.5 GB kept). Writes benchmarks/results/video.json and benchmarks/VIDEO.md.
# About 10 minutes on 2 cores with 15 layers, the export included.
VIDEO_ARGS ?=
bench-video: $(STAMP)
	$(PY) benchmarks/bench_video.py $(VIDEO_ARGS)

# make serve [OUT=engines/default] [PORT=8000]: serve the package OUT (`make engines` first) on 127.0.0.1:PORT.
PORT ?= 8000
serve: $(EXPORT_STAMP)
	$(PIP) install --quiet -e ".[serve]"
	$(PY) -m diffrt serve $(OUT) --port $(PORT)

# By hand, not in CI: Optimum (transformers 4, diffusers 0.35) runs a diffrt package; Optimum's export fits our contracts.
OPTIMUM_VENV ?= .venv-optimum
interop-optimum: $(STAMP)
	test -x $(OPTIMUM_VENV)/bin/python || $(PYTHON) -m venv $(OPTIMUM_VENV)
	$(OPTIMUM_VENV)/bin/pip install --quiet $(TORCH) "optimum-onnx[onnxruntime]==0.1.0" "diffusers==0.35.2"
	rm -rf build/interop
	$(PY) tests/interop/optimum_interop.py ours build/interop
	$(OPTIMUM_VENV)/bin/python tests/interop/optimum_interop.py theirs build/interop
	$(PY) tests/interop/optimum_interop.py compare build/interop

lint: $(STAMP)
	$(PY) -m ruff check diffrt runtime export kernels tests
	$(PY) -m ruff format --check diffrt runtime export kernels tests

clean:
	rm -rf $(VENV) $(OPTIMUM_VENV) .pytest_cache build *.egg-info
