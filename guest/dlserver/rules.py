"""Whole-model aggregation rules (`-method` of `aggregation darknet|onnx`): robust rules that
look at whole models, server optimisers and differential privacy. Each takes the n clients'
models (lists of float32 tensors, same shapes) and gives the new global model.

Flower 1.42's implementations are the definitions where Flower has the rule (tests check
ours against them); "mean" below is Flower's weighted FedAvg, c_i = f32(w_i / sum w)
(weights from -weights, else all 1), s = f32(c_1 x_1), s = f32(s + f32(c_i x_i)) in order.

Robust rules (D_ij = |x_i - x_j|^2 over the whole model, in double):
- krum:F, multikrum:F:M (Blanchard et al. 2017): n >= 2F + 3; score_i = the sum of the
  max(1, n - F - 2) smallest D_ij, j != i; the M (krum: 1) lowest scores (ties: the lower
  index) are selected, in score order, and their mean is the result (krum: the model itself).
- bulyan:F (El Mhamdi et al. 2018): n >= 4F + 3; multikrum selects theta = n - 2F models;
  per coordinate, their median med and the mean (float32 steps, ascending) of the
  beta = theta - 2F values nearest med (kernels.column_rule CLOSEST).
- geomed (Weiszfeld; not in Flower): z = argmin sum_i w_i |z - x_i| with z = sum_i a_i x_i,
  iterated on the coefficients a from the mean: a_i ~ w_i / max(|z - x_i|, eps), the distances
  from the Gram matrix of the x_i - x_1 (from D), until a step moves z by at most 1e-10 times
  the largest distance between two models, or 1000 iterations; z = f32(sum a_i x_i) in double.

Server optimisers (Reddi et al. 2021; Flower's FedAvgM, FedAdam, FedYogi, FedAdagrad), on the
previous global model x (-global) and the mean a of the clients' models, with the state
(round t, then m and v per coordinate) read from -state (none: round 0, zeros) and written to
-state-out; the step of each is kernels.fedopt's. fedadam's bias correction is Flower's:
eta_norm = eta * sqrt(1 - beta2^(t+2)) / (1 - beta1^(t+2)) in round t + 1.
- fedavgm:LR:MOMENTUM   (lr 1 and momentum 0: the mean itself, as Flower)
- fedadam:ETA:BETA1:BETA2:TAU, fedyogi:ETA:BETA1:BETA2:TAU, fedadagrad:ETA:TAU

Differential privacy, central (Flower's DifferentialPrivacyServerSide*Clipping around FedAvg):
each client's update x_i - g (g: -global) is scaled by s_i = f32(min(1, C / |x_i - g|)) and
added back to g (kernels.clip_update); the mean of those; then Gaussian noise of std
sigma = z * C / n on every coordinate (kernels.gauss_add).
- dpfixed:Z:C
- dpadaptive:Z:C0:GAMMA:LR[:SIGMA_B] (Andrew et al. 2021): C (C0 in round 1, else the state's)
  clips this round; b = the number of updates with |x_i - g| <= C, noised N(0, SIGMA_B^2)
  (default n / 20, Flower's), C' = C * exp(-LR * (b/n - GAMMA)) goes to -state-out; the
  model's noise multiplier is z' = (Z^-2 - (2 SIGMA_B)^-2)^-1/2 (Z < 2 SIGMA_B), std z' C / n;
  Z = 0 adds no noise at all, to the count neither (as Flower).
  (Flower 1.42 counts the clipped updates and noises with C': the clip moves the wrong way.)
Noise comes from ChaCha20 keyed by 32 bytes of os.urandom (WASI random_get in the sandbox);
-seed N keys it from N instead, for tests only: the output says the noise is not private.
"""

import hashlib
import math
import os
import struct
import sys
from array import array
from collections.abc import Callable

from . import kernels
from .errors import DLServerError
from .files import Wording, read_input_file
from .rng import f32

ROBUST = ("krum", "multikrum", "bulyan", "geomed")
OPTIMISERS = ("fedavgm", "fedadam", "fedyogi", "fedadagrad")
PRIVATE = ("dpfixed", "dpadaptive")
NAMES = ROBUST + OPTIMISERS + PRIVATE

Model = list  # of array('f'), one per tensor


class Rule:
    """A parsed whole-model -method: name and numeric parameters."""

    def __init__(self, name: str, params: list[float]):
        self.name = name
        self.params = params

    @property
    def needs_global(self) -> bool:
        return self.name in OPTIMISERS + PRIVATE

    @property
    def has_state(self) -> bool:
        return self.name in OPTIMISERS or self.name == "dpadaptive"


_ARITY = {
    "krum": (1, 1),
    "multikrum": (2, 2),
    "bulyan": (1, 1),
    "geomed": (0, 0),
    "fedavgm": (2, 2),
    "fedadam": (4, 4),
    "fedyogi": (4, 4),
    "fedadagrad": (2, 2),
    "dpfixed": (2, 2),
    "dpadaptive": (4, 5),
}
_SHAPES = {
    "krum": "krum:F",
    "multikrum": "multikrum:F:M",
    "bulyan": "bulyan:F",
    "geomed": "geomed",
    "fedavgm": "fedavgm:LR:MOMENTUM",
    "fedadam": "fedadam:ETA:BETA1:BETA2:TAU",
    "fedyogi": "fedyogi:ETA:BETA1:BETA2:TAU",
    "fedadagrad": "fedadagrad:ETA:TAU",
    "dpfixed": "dpfixed:NOISE_MULTIPLIER:CLIP",
    "dpadaptive": "dpadaptive:NOISE_MULTIPLIER:CLIP0:QUANTILE:LR[:COUNT_STD]",
}


def parse_rule(method: str, count: int) -> Rule:
    """The whole-model rule `method` names, its parameters checked against count models."""
    name, *fields = method.split(":")
    low, high = _ARITY[name]
    try:
        params = [float(x) for x in fields]
    except ValueError:
        params = []
        low = -1
    if not low <= len(params) <= high or not all(math.isfinite(p) for p in params):
        raise DLServerError(f"-method {method}: expected {_SHAPES[name]} with numbers")

    def bad(why: str) -> DLServerError:
        return DLServerError(f"-method {method}: {why}")

    if name in ("krum", "multikrum", "bulyan"):
        f = params[0]
        if f != int(f) or f < 0:
            raise bad("F (the number of Byzantine clients) must be an integer >= 0")
        need = 4 * int(f) + 3 if name == "bulyan" else 2 * int(f) + 3
        if count < need:
            rule = "4F + 3" if name == "bulyan" else "2F + 3"
            raise bad(f"{name} needs n >= {rule} = {need} models, got {count}")
        if name == "multikrum":
            m = params[1]
            if m != int(m) or not 1 <= m <= count:
                raise bad(f"M (models selected) must be an integer in 1..{count}")
    elif name in ("fedadam", "fedyogi", "fedadagrad"):
        eta, tau = params[0], params[-1]
        if eta <= 0 or tau <= 0:
            raise bad("ETA and TAU must be > 0")
        if name != "fedadagrad" and not (0 <= params[1] < 1 and 0 <= params[2] < 1):
            raise bad("BETA1 and BETA2 must be in [0, 1)")
    elif name == "fedavgm":
        if params[0] <= 0 or not 0 <= params[1] < 1:
            raise bad("LR must be > 0 and MOMENTUM in [0, 1)")
    elif name in PRIVATE:
        if params[0] < 0:
            raise bad("the noise multiplier must be >= 0")
        if params[1] <= 0:
            raise bad("the clip norm must be > 0")
        if name == "dpadaptive":
            if not 0 <= params[2] <= 1:
                raise bad("QUANTILE must be in [0, 1]")
            if params[3] <= 0:
                raise bad("LR must be > 0")
            sigma_b = params[4] if len(params) == 5 else count / 20
            if sigma_b < 0:
                raise bad("COUNT_STD must be >= 0")
            if params[0] > 0 and params[0] >= 2 * sigma_b:
                raise bad(f"the noise multiplier must be < 2 * COUNT_STD = {2 * sigma_b:g}")
    return Rule(name, params)


# Shared pieces -----------------------------------------------------------------------------


def _sizes(model: Model) -> list[int]:
    return [len(t) for t in model]


def pairwise_sqdist(models: list[Model]) -> list[list[float]]:
    """D[i][j] = |x_i - x_j|^2 over every tensor, in double."""
    n = len(models)
    d = array("d", bytes(8 * n * n))
    for j, size in enumerate(_sizes(models[0])):
        if size:
            kernels.pair_sqdist([m[j] for m in models], size, d)
    return [list(d[i * n : (i + 1) * n]) for i in range(n)]


def weighted_mean(models: list[Model], weights: list[float]) -> Model:
    """Flower's FedAvg mean (module docstring), in the order of `models`."""
    total = sum(weights)
    coefs = [f32(w / total) for w in weights]
    out = []
    for j, size in enumerate(_sizes(models[0])):
        acc = array("f", models[0][j])
        kernels.scal(size, coefs[0], acc)
        for m, c in zip(models[1:], coefs[1:]):
            kernels.axpy(size, c, m[j], acc)
        out.append(acc)
    return out


def krum_scores(d: list[list[float]], f: int) -> list[float]:
    n = len(d)
    closest = max(1, n - f - 2)
    return [sum(sorted(d[i][j] for j in range(n) if j != i)[:closest]) for i in range(n)]


def select_multikrum(d: list[list[float]], f: int, m: int) -> list[int]:
    """Indices of the m models of lowest Krum score, best first (ties: lower index)."""
    scores = krum_scores(d, f)
    return sorted(range(len(d)), key=lambda i: (scores[i], i))[:m]


def _names(indices: list[int]) -> str:
    return " ".join(f"c{i + 1}" for i in indices)


# Robust rules ------------------------------------------------------------------------------


def krum(models: list[Model], weights: list[float], f: int, m: int, say: Callable[[str], None]) -> Model:
    chosen = select_multikrum(pairwise_sqdist(models), f, m)
    say(f"{'krum' if m == 1 else 'multikrum'} f={f}: selected {_names(chosen)}")
    if m == 1:
        return [array("f", t) for t in models[chosen[0]]]
    return weighted_mean([models[i] for i in chosen], [weights[i] for i in chosen])


def bulyan(models: list[Model], f: int, say: Callable[[str], None]) -> Model:
    n = len(models)
    theta = n - 2 * f
    beta = theta - 2 * f
    chosen = select_multikrum(pairwise_sqdist(models), f, theta)
    say(f"bulyan f={f}: selected {_names(chosen)}, mean of the {beta} nearest the median")
    out = []
    for j, size in enumerate(_sizes(models[0])):
        t = array("f", bytes(4 * size))
        if size:
            kernels.column_rule(kernels.RULE_CLOSEST, [models[i][j] for i in chosen], size, beta, t)
        out.append(t)
    return out


def geomed_coefficients(d: list[list[float]], weights: list[float]) -> tuple[list[float], int]:
    """Weiszfeld's iteration on the coefficients a of z = sum a_i x_i (module docstring)."""
    n = len(d)
    g = [[(d[i][0] + d[j][0] - d[i][j]) / 2 for j in range(n)] for i in range(n)]
    scale = max(max(row) for row in d)
    if scale == 0:
        return [w / sum(weights) for w in weights], 0
    eps = 1e-12 * math.sqrt(scale)
    a = [w / sum(weights) for w in weights]
    for iteration in range(1, 1001):
        ga = [sum(g[i][k] * a[k] for k in range(n)) for i in range(n)]
        aga = sum(a[i] * ga[i] for i in range(n))
        dist = [math.sqrt(max(aga - 2 * ga[i] + g[i][i], 0.0)) for i in range(n)]
        inv = [w / max(r, eps) for w, r in zip(weights, dist)]
        s = sum(inv)
        new = [v / s for v in inv]
        delta = [x - y for x, y in zip(new, a)]
        step2 = sum(delta[i] * sum(g[i][k] * delta[k] for k in range(n)) for i in range(n))
        a = new
        if step2 <= 1e-20 * scale:
            return a, iteration
    return a, 1000


def geomed(models: list[Model], weights: list[float], say: Callable[[str], None]) -> Model:
    coefs, iterations = geomed_coefficients(pairwise_sqdist(models), weights)
    say(f"geomed: {iterations} Weiszfeld iterations")
    c = array("d", coefs)
    out = []
    for j, size in enumerate(_sizes(models[0])):
        t = array("f", bytes(4 * size))
        if size:
            kernels.combine([m[j] for m in models], c, size, t)
        out.append(t)
    return out


# State files -------------------------------------------------------------------------------

_STATE = struct.Struct("<8s16sQQId")  # magic, rule, round, floats per vector, vectors, scalar
_MAGIC = b"DLSSTAT1"


class State:
    """Optimiser or clipping state: the rounds done, a scalar (the clip norm), vectors."""

    def __init__(self, rule: str, rounds: int, scalar: float, vectors: list[array]):
        self.rule, self.rounds, self.scalar, self.vectors = rule, rounds, scalar, vectors

    def to_bytes(self) -> bytes:
        size = len(self.vectors[0]) if self.vectors else 0
        head = _STATE.pack(_MAGIC, self.rule.encode(), self.rounds, size, len(self.vectors), self.scalar)
        return head + b"".join(v.tobytes() for v in self.vectors)


def read_state(path: str, data: bytes, rule: str, size: int, vectors: int) -> State:
    """The state file's contents, checked against the rule and the model's float count."""
    if len(data) < _STATE.size or data[:8] != _MAGIC:
        raise DLServerError(f"{path}: not a dl-server state file")
    _, name, rounds, count, nvec, scalar = _STATE.unpack_from(data)
    name = name.rstrip(b"\0").decode("ascii", "replace")
    if name != rule:
        raise DLServerError(f"{path}: state of -method {name}, not {rule}")
    if nvec != vectors or (vectors and count != size):
        raise DLServerError(
            f"{path}: state of the wrong shape: {nvec} vectors of {count} values, the model needs"
            f" {vectors} of {size}"
        )
    if len(data) != _STATE.size + 4 * count * nvec:
        raise DLServerError(
            f"{path}: state file of {len(data)} bytes, expected {_STATE.size + 4 * count * nvec}"
        )
    vecs = [
        array("f", data[_STATE.size + 4 * count * k : _STATE.size + 4 * count * (k + 1)]) for k in range(nvec)
    ]
    return State(name, rounds, scalar, vecs)


# Server optimisers -------------------------------------------------------------------------


def optimise(
    rule: Rule, models: list[Model], weights: list[float], glob: Model, state: State | None, say
) -> tuple[Model, State]:
    mean = weighted_mean(models, weights)
    sizes = _sizes(glob)
    size = sum(sizes)
    t = state.rounds if state else 0
    if state:
        m, v = state.vectors[0], state.vectors[1]
    else:
        m, v = array("f", bytes(4 * size)), array("f", bytes(4 * size))
    p = rule.params
    name = rule.name
    if name == "fedavgm" and p[0] == 1 and p[1] == 0:
        out = mean  # Flower's FedAvgM without server learning rate or momentum: FedAvg
    else:
        if name == "fedavgm":
            kind, params = kernels.OPT_AVGM, [p[0], p[1], float(t == 0), 0.0]
        elif name == "fedadam":
            eta, b1, b2, tau = p
            r = t + 1
            eta_norm = eta * math.sqrt(1 - b2 ** (r + 1.0)) / (1 - b1 ** (r + 1.0))
            kind, params = kernels.OPT_ADAM, [eta_norm, b1, b2, tau]
        elif name == "fedyogi":
            kind, params = kernels.OPT_YOGI, list(p)
        else:
            kind, params = kernels.OPT_ADAGRAD, [p[0], 0.0, 0.0, p[1]]
        out = [array("f", g) for g in glob]
        mv, vv, at = memoryview(m), memoryview(v), 0
        for x, a, n in zip(out, mean, sizes):
            if n:
                kernels.fedopt(kind, n, x, a, mv[at : at + n], vv[at : at + n], array("d", params))
            at += n
    say(f"{name}: round {t + 1}, {' '.join(f'{q:g}' for q in p)}")
    return out, State(name, t + 1, 0.0, [m, v])


# Differential privacy ----------------------------------------------------------------------


class Noise:
    """Gaussian noise from ChaCha20 keyed by os.urandom, or by -seed (not private)."""

    def __init__(self, seed: int | None):
        if seed is None:
            self.key = os.urandom(32)
        else:
            self.key = hashlib.sha256(f"dl-server noise seed {seed}".encode()).digest()
        self.counter = 0

    def add(self, values: array, std: float) -> None:
        if std > 0 and len(values):
            self.counter = kernels.gauss_add(values, len(values), std, self.key, self.counter)

    def normal(self) -> float:
        one = array("f", [0.0])
        self.add(one, 1.0)
        return one[0]


def clip_norms(models: list[Model], glob: Model) -> list[float]:
    """|x_i - g| for every model, in double."""
    norms = []
    for m in models:
        d = array("d", bytes(32))
        for j, size in enumerate(_sizes(glob)):
            if size:
                kernels.pair_sqdist([m[j], glob[j]], size, d)
        norms.append(math.sqrt(d[1]))
    return norms


def clip_to(model: Model, glob: Model, norm: float, clip: float) -> bool:
    """model = glob + (model - glob) * f32(min(1, clip / norm)) in place (also for a factor
    of 1, as Flower); True when the update was longer than clip."""
    s = f32(clip / norm) if norm > clip else 1.0
    for t, g in zip(model, glob):
        kernels.clip_update(len(t), s, g, t)
    return norm > clip


def private(
    rule: Rule,
    models: list[Model],
    weights: list[float],
    glob: Model,
    state: State | None,
    seed: int | None,
    say,
) -> tuple[Model, State | None]:
    n = len(models)
    z, clip = rule.params[0], rule.params[1]
    t = 0
    if rule.name == "dpadaptive" and state is not None:
        clip, t = state.scalar, state.rounds
    norms = clip_norms(models, glob)
    clipped = sum(clip_to(m, glob, r, clip) for m, r in zip(models, norms))
    out = weighted_mean(models, weights)
    noise = Noise(seed)
    new_state = None
    model_z = z
    if rule.name == "dpadaptive":
        gamma, lr = rule.params[2], rule.params[3]
        sigma_b = rule.params[4] if len(rule.params) == 5 else n / 20
        if z == 0:
            sigma_b, model_z = 0.0, 0.0
        else:
            model_z = (z**-2 - (2 * sigma_b) ** -2) ** -0.5
        unclipped = (n - clipped) + sigma_b * noise.normal()
        new_clip = clip * math.exp(-lr * (unclipped / n - gamma))
        new_state = State(rule.name, t + 1, new_clip, [])
    std = model_z * clip / n
    for v in out:
        noise.add(v, std)
    say(
        f"{rule.name}: round {t + 1}, noise multiplier {model_z:g}, clip {clip:g}, clipped {clipped} of {n},"
        f" noise std {std:g}"
    )
    if new_state is not None:
        say(f"{rule.name}: next clip {new_state.scalar:g}")
    if seed is not None:
        say(f"{rule.name}: noise seeded with -seed {seed}: reproducible, NOT private")
    return out, new_state


def say_line(line: str) -> None:
    """A rule's report line, on stdout."""
    sys.stdout.write(line + "\n")


def aggregate(
    rule: Rule,
    models: list[Model],
    weights: list[float] | None,
    glob: Model | None,
    state: State | None,
    seed: int | None,
    say: Callable[[str], None],
) -> tuple[Model, State | None]:
    """The new global model (and the state to write) by `rule` from the clients' models."""
    w = weights if weights is not None else [1.0] * len(models)
    name, p = rule.name, rule.params
    if name in ("krum", "multikrum"):
        return krum(models, w, int(p[0]), 1 if name == "krum" else int(p[1]), say), None
    if name == "bulyan":
        return bulyan(models, int(p[0]), say), None
    if name == "geomed":
        return geomed(models, w, say), None
    assert glob is not None
    if name in OPTIMISERS:
        return optimise(rule, models, w, glob, state, say)
    return private(rule, models, w, glob, state, seed, say)


def state_vectors(rule: Rule) -> int:
    return 2 if rule.name in OPTIMISERS else 0


class RunFiles:
    """The flags of a whole-model rule: -global, -state, -state-out, -seed."""

    def __init__(self, argv):
        self.glob = argv.find_str("-global", None)
        self.state_in = argv.find_str("-state", None)
        self.state_out = argv.find_str("-state-out", None)
        seed = argv.find_str("-seed", None)
        if seed is not None:
            try:
                self.seed: int | None = int(seed)
            except ValueError:
                raise DLServerError(f"-seed {seed}: not an integer") from None
        else:
            self.seed = None

    def check(self, rule: Rule | None, method: str | None, out: str, inputs: list[str]) -> None:
        """Each flag only where its rule uses it, the needed ones present, no output overwriting an input."""
        name = rule.name if rule else (method or "mean")
        if rule is not None and rule.needs_global and self.glob is None:
            raise DLServerError(f"-method {method} needs -global <the previous global model>")
        if (rule is None or not rule.needs_global) and self.glob is not None:
            raise DLServerError(f"-global applies to the optimisers and dp rules, not to -method {name}")
        if rule is not None and rule.has_state and self.state_out is None:
            raise DLServerError(f"-method {method} needs -state-out <file> for its state")
        if (rule is None or not rule.has_state) and (self.state_in or self.state_out):
            raise DLServerError(
                f"-state and -state-out apply to the optimisers and dpadaptive, not to -method {name}"
            )
        if self.seed is not None and (rule is None or rule.name not in PRIVATE):
            raise DLServerError(f"-seed applies to the dp rules, not to -method {name}")
        outputs = [out] + ([self.state_out] if self.state_out else [])
        sources = inputs + [p for p in (self.glob, self.state_in) if p]
        for o in outputs:
            if o in sources:
                raise DLServerError(f"{o}: the output would overwrite one of the inputs")
        if self.state_out is not None and self.state_out == out:
            raise DLServerError(f"{out}: the model and the state would be written to the same file")

    def load_state(self, rule: Rule, size: int) -> State | None:
        if self.state_in is None or not rule.has_state:
            return None
        data = read_input_file(self.state_in, "state file", STATE_READ)
        return read_state(self.state_in, data, rule.name, size, state_vectors(rule))


STATE_READ = Wording(
    "{path}: state file not found",
    "{path}: is a directory, not a state file",
    "{path}: cannot read state file: {reason}",
)
