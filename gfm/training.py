"""The one training loop of GFM: conditional flow matching on recorded checkpoint paths.

References:
    Shou, Ding, Gao, "Gradient Flow Matching for Learning Update Dynamics in Neural Network
    Training", arXiv 2505.20221 (2025), Sec. 3 (the flow-matching objective).
    Lipman et al., "Flow Matching for Generative Modeling", ICLR 2023 (conditional FM).
    Karpathy, nanoGPT ``train.py`` (the shape of the loop).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gfm._torch import one_thread, resolve_device
from gfm.config import GFMSettings, TrainSettings
from gfm.data.names import OPTIMIZERS
from gfm.data.schema import RunRecord
from gfm.features import Normalizer, context, lr_at, lr_features, run_context
from gfm.fields import FIELDS, Cond, VectorField, scan_states
from gfm.forecast import forecast
from gfm.forecaster import Prefix, observed_index
from gfm.paths import LinearPath
from gfm.prior import is_cached, prior_velocity, quadfit
from gfm.surrogate import Grad

if TYPE_CHECKING:
    from gfm.model import GFM

__all__ = ["EVAL_FRACTION", "TRAIN_FRACTIONS", "fit", "prefit_priors", "validate"]

log = logging.getLogger("gfm.training")

TRAIN_FRACTIONS = (0.05, 0.6)  # observed fractions drawn per example (covers evaluate's 0.1–0.5)
EVAL_FRACTION = 0.25  # observed fraction of the validation forecast
_EVAL_RUNS = 16  # validation runs forecast at each evaluation (evenly spaced over val)
_EVAL_PARAMS = 4096  # parameters forecast per validation run (exact: the field is per-parameter)
_WARMUP = 0.05  # fraction of steps of linear learning-rate warm-up
_MIN_LR = 0.1  # cosine decays the learning rate to this fraction of cfg.lr
_CLIP = 1.0  # gradient-norm clip
_CUM = 1.0  # weight of the integrated (cumulative) velocity error in the loss
_POOL = 1024  # parameters per run the prior is fitted on in training (cached per run and k)
_WORKER_MIN_ROWS = 512  # parameter rows a batch needs for a loader worker to pay for itself
_K_GRID = 12  # observed indices per run in prior training, evenly over TRAIN_FRACTIONS

OnEval = Callable[[int, dict[str, float]], bool | None]


@dataclass
class _Batch:
    """R runs × N parameters × M_max intervals (shorter runs padded and masked).

    (†) Only for fields that keep optimizer state (``_needs_state``), else None.
    """

    optimizers: list[str]
    ctx: torch.Tensor  # (R, N, F_ctx)
    run: torch.Tensor  # (R, N_RUN + H)
    w_tau: torch.Tensor  # (R, N, M) ŵ at the random time τ_i in interval i
    w_theta: torch.Tensor | None  # (R, N, M) ŵ at the state point θ_i of interval i (†)
    u: torch.Tensor  # (R, N, M) target normalised velocity of interval i
    tau: torch.Tensor  # (R, M)
    theta: torch.Tensor | None  # (R, M) (†)
    U: torch.Tensor | None  # (R, 1, M) position of τ_i in its interval, in [0, 1) (†)
    lrf_tau: torch.Tensor  # (R, M, N_LR)
    lrf_theta: torch.Tensor | None  # (R, M, N_LR) (†)
    alpha_tau: torch.Tensor  # (R, 1, M)
    mask: torch.Tensor  # (R, 1, M) 1 on intervals k <= i < M_r (the future of the prefix)
    persist: torch.Tensor  # (R,) Σ_n c_n² y_n², y = (w_M − w_k)/c: persistence's squared error
    c2: torch.Tensor  # (R, N) c_n²
    cond: Cond  # per parameter (R, N, 1), per run (R, 1, 1)
    prior_v: torch.Tensor | None  # (R, N, M) the prior's velocity per interval (0 before k)

    def map(self, fn: Callable[[Any], Any]) -> _Batch:
        """The batch with ``fn`` applied to every tensor field, its ``cond``'s included.

        A field that is None stays None; ``optimizers`` is kept as it is.
        """

        def each(x: Any) -> Any:
            return None if x is None else fn(x)

        cond = replace(
            self.cond, **{f.name: each(getattr(self.cond, f.name)) for f in fields(Cond)}
        )
        rest = {
            k: v if k == "optimizers" else each(v) for k, v in vars(self).items() if k != "cond"
        }
        return _Batch(**rest, cond=cond)

    def to(self, device: torch.device) -> _Batch:
        return self.map(lambda x: x.to(device))


_Slot = tuple[torch.dtype, int, tuple[int, ...]]  # a packed tensor: (dtype, offset, shape)


@dataclass
class _Packed:
    """A batch as one flat buffer per dtype, so a loader worker sends 2 tensors instead of ~30.

    Each tensor a worker sends costs a shared-memory segment on both sides (measured: 11 ms a
    batch in the worker and 6 ms in the training process, more than drawing the batch); the
    training process gets views into the buffers back (``unpack``), the same values.
    """

    skeleton: _Batch  # the batch with every tensor replaced by its _Slot
    buffers: dict[torch.dtype, torch.Tensor]

    @staticmethod
    def of(batch: _Batch) -> _Packed:
        """Pack ``batch``: its tensors concatenated per dtype, in field order."""
        parts: dict[torch.dtype, list[torch.Tensor]] = {}
        sizes: dict[torch.dtype, int] = {}

        def slot(x: torch.Tensor) -> _Slot:
            offset = sizes.get(x.dtype, 0)
            parts.setdefault(x.dtype, []).append(x.reshape(-1))
            sizes[x.dtype] = offset + x.numel()
            return (x.dtype, offset, tuple(x.shape))

        skeleton = batch.map(slot)
        return _Packed(skeleton, {dtype: torch.cat(p) for dtype, p in parts.items()})

    def unpack(self) -> _Batch:
        """The batch, its tensors views into the buffers."""

        def view(slot: _Slot) -> torch.Tensor:
            dtype, offset, shape = slot
            return self.buffers[dtype][offset : offset + math.prod(shape)].view(shape)

        return self.skeleton.map(view)


def _check_run(record: RunRecord) -> None:
    record.check_shapes()  # weights (M+1, D) with M >= 2, lr (M+1,), params D


@dataclass
class _Prefixed:
    """What every example of one (run, k) shares, computed once: prior training draws it again.

    The prior is fitted on a fixed pool of the run's parameters (``_POOL``, all when fewer), and
    the examples of this (run, k) sample their N parameters from that pool.
    """

    prefix: Prefix
    norm: Normalizer
    pool: torch.Tensor  # (P,) int64 parameter indices
    ctx: torch.Tensor  # (P, F_ctx) context with the prior's columns
    run: torch.Tensor  # (N_RUN + H,)
    cond: Cond  # per parameter (P, 1)
    prior_v: torch.Tensor  # (P, M) the prior's velocity per interval, zero before k

    @staticmethod
    def build(
        record: RunRecord, k: int, history: int, pool_seed: int, cache: Path | None = None
    ) -> _Prefixed:
        """Fit the prior on the run's parameter pool and compute the pool's context."""
        prefix = Prefix.from_record(record, k)
        norm = Normalizer.from_prefix(prefix)
        pool = _pool(prefix.D, k, pool_seed)
        prior = quadfit(prefix, index=pool, cache=cache)
        v = prior_velocity(prior, prefix.M, norm.scale[pool])  # (P, M − k)
        return _Prefixed(
            prefix=prefix,
            norm=norm,
            pool=pool,
            ctx=context(prefix, norm, history=history, index=pool, prior=prior),
            run=run_context(prefix, norm, history=history),
            cond=Cond.from_prefix(prefix, norm, index=pool),
            prior_v=torch.cat([v.new_zeros(len(pool), k), v], 1),
        )

    def rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Cond, torch.Tensor]:
        """(parameter indices, context, conditioning, prior velocity) of pool rows ``rows``."""
        per_param = {f: getattr(self.cond, f)[rows] for f in ("center", "scale", "g_scale")}
        return self.pool[rows], self.ctx[rows], replace(self.cond, **per_param), self.prior_v[rows]


def _example(  # noqa: PLR0913 - one run's draw: the run, k, sizes, σ, the stream, its statics
    record: RunRecord,
    k: int,
    n_params: int,
    history: int,
    sigma: float,
    rng: np.random.Generator,
    shared: _Prefixed | None = None,
    *,
    state: bool = True,
) -> dict:
    """One run's share of a batch: N parameters, every interval, normalised by its prefix.

    Without ``shared`` the N parameters are drawn from all D and their context computed here;
    with it (prior training) they are drawn from its pool and the context, conditioning and
    prior velocity are taken from it. They are drawn without replacement: a run with fewer
    than N parameters (or pool rows) gives all of them once, and ``_collate`` pads it with
    zero-weight rows, so a 2-parameter run costs 2 rows, not N copies of the same two. Without
    ``state`` the optimizer-state points θ_i are left out (None): a free field never reads them,
    and they were a fifth of a batch's drawing and sending.
    """
    if shared is None:
        prefix = Prefix.from_record(record, k)
        norm = Normalizer.from_prefix(prefix)
        D = prefix.D
        idx = torch.from_numpy(rng.choice(D, size=min(n_params, D), replace=False))  # (N,)
        ctx = context(prefix, norm, history=history, index=idx)  # (N, F_ctx)
        run, cond, prior_v = run_context(prefix, norm, history=history), None, None
    else:
        prefix, norm, P = shared.prefix, shared.norm, len(shared.pool)
        rows = torch.from_numpy(rng.choice(P, size=min(n_params, P), replace=False))
        idx, ctx, cond, prior_v = shared.rows(rows)
        run = shared.run
    M = prefix.M
    r = record.spec.record_every
    W = torch.from_numpy(np.ascontiguousarray(record.weights[:, idx.numpy()])).float()  # (M+1, N)
    W_hat = (W - norm.center[idx].float()) / norm.scale[idx].float()  # (M+1, N)

    # τ_i = (i + U_i)/M: one flow-matching time per interval (stratified U[0,1) sampling);
    # θ_i = (i + θ)/M: the mean position of the interval's r optimizer steps, where the
    # optimizer state is accumulated (the same points the forecast uses on the prefix).
    U = torch.from_numpy(rng.random(M)).double()  # (M,)
    grid = torch.arange(M, dtype=torch.float64)
    tau = (grid + U) / M  # (M,)
    theta_frac = (r - 1) / (2 * r)
    theta = (grid + theta_frac) / M  # (M,)
    path = LinearPath(sigma)  # σ in normalised units: a tube relative to the layer's scale
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    _, w_tau, u = path.sample(W_hat, tau.float(), generator=gen)  # (M, N) each
    w_theta = LinearPath().w_at(W_hat, theta.float()).T if state else None  # (N, M), on the path
    mask = torch.zeros(M)
    mask[k:] = 1.0
    return {
        "optimizer": prefix.optimizer,
        "M": M,
        "ctx": ctx,
        "run": run,
        "w_tau": w_tau.T,  # (M, N) -> (N, M)
        "w_theta": w_theta,
        "u": u.T,
        "tau": tau.float(),
        "theta": theta.float() if state else None,
        "U": U.float() if state else None,
        "lrf_tau": lr_features(prefix, tau),  # (M, N_LR)
        "lrf_theta": lr_features(prefix, theta) if state else None,
        "alpha_tau": lr_at(prefix, tau).float(),
        "mask": mask,
        # persistence's squared error of the sampled parameters, raw units: Σ_n (w_M − w_k)²
        "persist": (norm.scale[idx].double() ** 2 * W_hat[-1].double() ** 2).sum().float(),
        "c2": norm.scale[idx].float() ** 2,
        "cond": cond if cond is not None else Cond.from_prefix(prefix, norm, index=idx),
        "prior_v": prior_v,
    }


def _pad_params(e: dict, n: int) -> dict:
    """An example with ``n`` parameter rows: its first row repeated, with weight c² = 0.

    The padded rows are real values (a zero scale would put NaN into the loss's products),
    and c² = 0 removes them from both loss terms; ``persist`` counts only the real rows.
    """
    have = e["c2"].shape[0]
    if have == n:
        return e

    def rows(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else torch.cat([x, x[:1].expand(n - have, *x.shape[1:])])

    out = dict(e)
    for key in ("ctx", "w_tau", "w_theta", "u", "prior_v"):
        out[key] = rows(e[key])
    out["c2"] = torch.cat([e["c2"], e["c2"].new_zeros(n - have)])
    out["cond"] = replace(e["cond"], **{f: rows(getattr(e["cond"], f)) for f in Cond._PER_PARAM})
    return out


def _collate(examples: list[dict]) -> _Batch:
    """Stack examples, padded to the longest M (masked out) and the most parameters.

    The parameter rows are padded with rows of zero weight (``_pad_params``).
    """
    Mx = max(e["M"] for e in examples)
    Nx = max(e["c2"].shape[0] for e in examples)
    examples = [_pad_params(e, Nx) for e in examples]

    def pad_last(x: torch.Tensor, value: float = 0.0) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, Mx - x.shape[-1]), value=value)

    def pad_first(x: torch.Tensor, value: float | None = 0.0) -> torch.Tensor:  # (M, F) -> (Mx, F)
        extra = x[-1:].expand(Mx - x.shape[0], *x.shape[1:]) if value is None else None
        fill = extra if extra is not None else x.new_full((Mx - x.shape[0], *x.shape[1:]), value)
        return torch.cat([x, fill], 0)

    def stack(key: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
        if examples[0][key] is None:  # left out of every example (state points, a prior)
            return None
        return torch.stack([fn(e[key]) for e in examples])

    return _Batch(
        optimizers=[e["optimizer"] for e in examples],
        ctx=stack("ctx", lambda x: x),
        run=stack("run", lambda x: x),
        w_tau=stack("w_tau", pad_last),
        w_theta=stack("w_theta", pad_last),
        u=stack("u", pad_last),
        tau=stack("tau", lambda x: pad_last(x, 1.0)),
        theta=stack("theta", lambda x: pad_last(x, 1.0)),
        U=stack("U", lambda x: pad_last(x).unsqueeze(0)),
        lrf_tau=stack("lrf_tau", lambda x: pad_first(x, None)),
        lrf_theta=stack("lrf_theta", lambda x: pad_first(x, None)),
        alpha_tau=stack("alpha_tau", lambda x: pad_last(x, float(x[-1]))).unsqueeze(1),
        mask=stack("mask", pad_last).unsqueeze(1),
        persist=stack("persist", lambda x: x),
        c2=stack("c2", lambda x: x),
        cond=Cond.stack([e["cond"] for e in examples]),
        prior_v=stack("prior_v", pad_last),
    )


def _loss(model: GFM, b: _Batch) -> torch.Tensor:
    """Flow-matching loss, relative to persistence, plus its integral over the future.

        δ_i = (v_θ(ŵ(τ_i), s(τ_i), τ_i) − û_i) / M          per-interval displacement error
        E_j = Σ_{k <= i < j} δ_i                              error accumulated up to t_j
        L_run = [ Σ_n c_n² Σ_{i>=k} δ_ni²  +  mean_{j>k} Σ_n c_n² E_nj² ] / Σ_n c_n² (y_n² + 1e-6)
        L = mean over the batch's runs

    with y = (w_M − w_k)/c the run's remaining normalised displacement. The first term is
    conditional flow matching on the linear path (Shou et al. 2025, Sec. 3; one stratified time
    per interval); the second matches the integrated velocity (teacher-forced), which weighs
    a persistent bias as the forecast does, where a per-interval loss lets noise dominate. The
    c² weights and the denominator make every run count like its ``rel_mse_persistence``
    (raw-unit squared error over persistence's), the metric the benchmark reports.

    For optimizer-aware fields the optimizer state s(τ) is the one the field itself implies
    along the observed path: the surrogate at the state point θ_l of every earlier interval,
    scanned with the optimizer's exact per-interval decay β^r (``scan_states``), then advanced
    from the checkpoint t_i to τ_i with decay β^(r·U_i) towards φ(ĝ(τ_i)). The loss thus trains
    the surrogate at all earlier intervals through the state, as the forecast uses it.
    """
    net = model.net
    code = net.encode(b.ctx)  # (R, N, rows, K)
    M = b.cond.S / b.cond.record_every  # (R, 1, 1)
    g_tau = net.combine(code, net.trunk(b.tau, b.lrf_tau, b.run), b.w_tau, M)  # (R, N, M)
    g_theta = None
    if any(model.field_for(o).n_state for o in b.optimizers):
        g_theta = net.combine(code, net.trunk(b.theta, b.lrf_theta, b.run), b.w_theta, M)
    # one group per distinct field: the free variant's one field moves every run at once
    groups: dict[int, tuple[VectorField, list[int]]] = {}
    for i, opt in enumerate(b.optimizers):
        field = model.field_for(opt)
        groups.setdefault(id(field), (field, []))[1].append(i)
    R = len(b.optimizers)
    losses, runs = [], []
    for field, rows in groups.values():
        take = None if len(rows) == R else torch.tensor(rows)
        losses.append(_group_loss(field, b, g_tau, g_theta, M, take))
        runs += rows
    # the mean in the order of the runs sorted by optimizer, as when each optimizer was a
    # group: the same float sum, so the same trained network bit for bit
    at = {run: j for j, run in enumerate(runs)}
    order = sorted(range(R), key=lambda i: (b.optimizers[i], i))
    return torch.cat(losses)[torch.tensor([at[i] for i in order])].mean()


def _group_loss(  # noqa: PLR0913 - one group's share of _loss
    field: VectorField,
    b: _Batch,
    g_tau: Grad,
    g_theta: Grad | None,
    M: torch.Tensor,
    rows: torch.Tensor | None,
) -> torch.Tensor:
    """``_loss``'s L_run of the batch's runs ``rows`` (None: all of them), all moved by ``field``."""

    def take(x: torch.Tensor) -> torch.Tensor:
        return x if rows is None else x[rows]

    cond = b.cond if rows is None else b.cond.select(rows)
    gate = None if g_tau.gate is None else take(g_tau.gate)
    w_tau, g = take(b.w_tau), Grad(take(g_tau.mean), take(g_tau.var), gate)
    if b.prior_v is not None:
        cond = replace(cond, prior_v=take(b.prior_v))  # (Rg, N, M): interval i's ṗ at τ_i
    states = []
    if field.n_state:
        assert g_theta is not None  # internal: _loss computes it whenever a field keeps state
        g_th = Grad(take(g_theta.mean), take(g_theta.var))
        phis_theta = field.targets(g_th, take(b.w_theta), cond)
        phis_tau = field.targets(g, w_tau, cond)
        for phi_th, phi_tau, beta in zip(phis_theta, phis_tau, field.decays(cond), strict=True):
            s_ck = scan_states(phi_th, beta**cond.record_every)[..., :-1]  # (Rg, N, M)
            e = beta ** (cond.record_every * take(b.U))  # (Rg, 1, M) decay from t_i to τ_i
            states.append(e * s_ck + (1 - e) * phi_tau)  # (Rg, N, M)
    v = field.drift(w_tau, states, g, take(b.alpha_tau), take(b.tau), cond)
    mask = take(b.mask)  # (Rg, 1, M) future intervals of each run
    delta = (v - take(b.u)) * mask / take(M)  # (Rg, N, M)
    c2 = take(b.c2).unsqueeze(-1)  # (Rg, N, 1)
    den = take(b.persist) + 1e-6 * take(b.c2).sum(1)  # (Rg,)
    fm = (c2 * delta.square()).sum((1, 2))
    E = torch.cumsum(delta, -1)  # (Rg, N, M) accumulated error at t_{i+1}
    cum = (c2 * E.square() * mask).sum((1, 2)) / mask.sum((1, 2)).clamp_min(1.0)
    return (fm + _CUM * cum) / den


def _forecast_errors(  # noqa: PLR0913 - validate's arguments
    model: GFM,
    runs: Sequence[RunRecord],
    fraction: float,
    max_runs: int,
    max_params: int,
    prior_cache: Path | None,
) -> tuple[list[float], list[float]]:
    """Per-run final-weight MSE and MSE relative to persistence (see ``validate``)."""
    mse: list[float] = []
    rel: list[float] = []
    for i, k, idx in _eval_picks(runs, fraction, max_runs, max_params):
        record = runs[i]
        prefix = Prefix.from_record(record, k)
        cfg = model.cfg
        pred = forecast(
            model.field_for(prefix.optimizer),
            prefix,
            torch.tensor([1.0], dtype=torch.float64),
            method=cfg.solver,
            solver_steps=cfg.solver_steps,
            rtol=cfg.rtol,
            atol=cfg.atol,
            chunk_size=cfg.chunk_size,
            index=idx,
            prior_cache=prior_cache,
        )[0].double()  # (N,)
        cols = slice(None) if idx is None else idx.numpy()
        # float64 copies: the record's arrays are read-only memory maps
        target = torch.tensor(record.weights[-1, cols], dtype=torch.float64)
        last = torch.tensor(record.weights[prefix.k, cols], dtype=torch.float64)
        err = (pred - target).square()
        mse.append(float(err.mean()))
        rel.append(float(err.sum() / (last - target).square().sum().clamp_min(1e-30)))
    return mse, rel


def _eval_picks(
    runs: Sequence[RunRecord], fraction: float, max_runs: int, max_params: int
) -> Iterator[tuple[int, int, torch.Tensor | None]]:
    """(run position, k, parameter indices or None for all) of each validation forecast.

    Runs evenly spaced over ``runs``, at most ``max_params`` parameters each, drawn from one
    stream seeded 0: the same picks at every evaluation, in every process.
    """
    n = min(len(runs), max_runs)
    picks = np.unique(np.linspace(0, len(runs) - 1, n).round().astype(int)) if n else []
    rng = np.random.default_rng(0)
    for i in picks:
        shape = runs[int(i)].weights.shape
        D = shape[1]
        idx = (
            None if max_params >= D else torch.from_numpy(np.sort(rng.choice(D, max_params, False)))
        )
        yield int(i), observed_index(shape[0] - 1, fraction), idx


@torch.no_grad()
def validate(
    model: GFM,
    runs: Sequence[RunRecord],
    *,
    fraction: float = EVAL_FRACTION,
    max_runs: int = _EVAL_RUNS,
    max_params: int = _EVAL_PARAMS,
    prefix_name: str = "val",
    prior_cache: Path | None = None,
) -> dict[str, float]:
    """Forecast the final weights of (a subset of) runs from an observed fraction.

        forecast_mse       = mean_runs mean_j (ŵ_M,j − w_M,j)²
        rel_mse_persistence = mean_runs Σ_j (ŵ_M,j − w_M,j)² / Σ_j (w_k,j − w_M,j)²

    Runs are evenly spaced over ``runs`` (at most ``max_runs``) and at most ``max_params``
    parameters per run (a fixed random subset; exact since the field is per-parameter);
    ``prior_cache``: a folder of fitted priors the forecasts read and fill (``gfm.prior_cache``).

    Returns:
        ``{f"{prefix_name}/forecast_mse": …, f"{prefix_name}/rel_mse_persistence": …}``.
    """
    with one_thread():
        mse, rel = _forecast_errors(model, runs, fraction, max_runs, max_params, prior_cache)
    return {
        f"{prefix_name}/forecast_mse": float(np.mean(mse)) if mse else math.nan,
        f"{prefix_name}/rel_mse_persistence": float(np.mean(rel)) if rel else math.nan,
    }


def _lr(step: int, cfg: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to _MIN_LR · lr (nanoGPT's schedule)."""
    warmup = max(1, int(_WARMUP * cfg.steps))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * (_MIN_LR + (1 - _MIN_LR) * 0.5 * (1 + math.cos(math.pi * progress)))


def fit(
    model: GFM,
    train: Sequence[RunRecord],
    val: Sequence[RunRecord] | None,
    cfg: TrainSettings,
    *,
    on_eval: OnEval | None = None,
) -> list[dict[str, float]]:
    """Train ``model.net`` by flow matching on the checkpoint paths of ``train``.

    Each step draws ``cfg.batch_runs`` runs (indices only: ``train`` may be a lazy view that
    loads runs on access), for each an observed index k (fraction in ``TRAIN_FRACTIONS``) and
    ``cfg.batch_params`` parameters; the context comes from the prefix w_0..w_k, and the field
    is regressed onto the normalised path velocity û_i = M (ŵ_{i+1} − ŵ_i) at one random time
    τ_i in every interval i >= k (see ``_loss``). AdamW with warm-up and cosine decay; every
    ``cfg.eval_every`` steps the final weights of validation runs are forecast from
    ``EVAL_FRACTION`` and the best-scoring network is kept.

    Args:
        model: the GFM whose network is trained in place.
        train: training runs.
        val: validation runs (None: no evaluation, the last network is kept).
        cfg: training settings.
        on_eval: called as ``on_eval(step, metrics)`` after each evaluation; returning False
            stops training (raising, e.g. ``optuna.TrialPruned``, propagates).

    Returns:
        One metrics dict per evaluation: step, train/loss, lr, seconds, and with ``val``
        val/forecast_mse and val/rel_mse_persistence.

    Raises:
        ValueError: ``train`` is empty or a drawn run is malformed (the message names the run).
    """
    if len(train) == 0:
        raise ValueError("`train` must hold at least one run, got 0")
    given, cfg = cfg, sized(cfg, train)
    if cfg != given:
        log.info(
            "runs of at most %d parameters: %d steps (train.steps %d is for %d-parameter "
            "batches), evaluation every %d, batches drawn %s",
            _max_params(train),
            cfg.steps,
            given.steps,
            given.batch_params,
            cfg.eval_every,
            "by a worker process" if cfg.loader_workers else "in-process",
        )
    device = resolve_device(cfg.device)
    with one_thread() if device.type == "cpu" else contextlib.nullcontext():
        return _loop(model, train, val, cfg, device, on_eval)


_SHARED: OrderedDict[tuple, _Prefixed] = OrderedDict()  # (run, k, ...) -> statics, an LRU
_SHARED_MAX = 2048  # (run, k) pairs kept: every pair of the default dataset (90 runs × 12 k)


def _prefixed(
    record: RunRecord, k: int, gfm: GFMSettings, pool_seed: int, cache: Path | None = None
) -> _Prefixed:
    """``_Prefixed.build`` remembered for this process (fits and tuning trials draw it again).

    The key holds the run's id, its shape, k, the context size, the pool's seed and a digest of
    the run's weights, so another dataset's run of the same name never hits.
    """
    W = record.weights
    digest = hashlib.blake2b(np.ascontiguousarray(W[[0, k, -1]]).tobytes(), digest_size=8)
    key = (record.spec.run_id, W.shape, k, gfm.history, pool_seed, digest.hexdigest())
    hit = _SHARED.get(key)
    if hit is None:
        hit = _SHARED[key] = _Prefixed.build(record, k, gfm.history, pool_seed, cache)
        if len(_SHARED) > _SHARED_MAX:
            _SHARED.popitem(last=False)
    else:
        _SHARED.move_to_end(key)
    return hit


def _pool(D: int, k: int, pool_seed: int) -> torch.Tensor:
    """The (P,) parameter indices of a run the prior is fitted on at k: all, or ``_POOL`` drawn."""
    if D <= _POOL:
        return torch.arange(D)
    gen = np.random.default_rng([pool_seed, D, k])
    return torch.from_numpy(np.sort(gen.choice(D, _POOL, replace=False)))


def _k_grid(M: int) -> np.ndarray:
    """The observed indices k a run of M intervals is drawn at in prior training."""
    lo, hi = (observed_index(M, f) for f in TRAIN_FRACTIONS)
    return np.unique(np.linspace(lo, hi, _K_GRID).round().astype(int))


def prefit_priors(
    train: Sequence[RunRecord],
    val: Sequence[RunRecord] | None,
    cfg: TrainSettings,
    *,
    workers: int = 2,
) -> int:
    """Fit every prior a ``fit`` with ``cfg`` will ask for into ``cfg.prior_cache``, in parallel.

    That is, for each train run and k of its grid the prior of its parameter pool, and each
    validation forecast's prior; fits already in the cache are skipped. Training then reads
    them all (its batch worker and validation otherwise fit them one after another on one core
    while the network waits); tuning trials and the training after them share them.

    Args:
        train: training runs (a lazy view is read by index in the worker processes).
        val: validation runs, or None.
        cfg: the training settings (``prior_cache`` and ``seed``, the pools' seed).
        workers: processes (spawned, one thread each); at most the number of runs.

    Returns:
        The number of fits made (0 without a cache).
    """
    if cfg.prior_cache is None:
        return 0
    jobs: list[tuple[str, int, list[tuple[int, torch.Tensor | None]]]] = [
        ("train", i, [(int(k), None) for k in _k_grid(train[i].weights.shape[0] - 1)])
        for i in range(len(train))
    ]
    if val is not None:
        jobs += [
            ("val", i, [(k, idx)])
            for i, k, idx in _eval_picks(val, EVAL_FRACTION, _EVAL_RUNS, _EVAL_PARAMS)
        ]
    args = (train, val, cfg.prior_cache, cfg.seed)
    _PREFIT.update(train=train, val=val, cache=cfg.prior_cache, seed=cfg.seed)
    # the fits already cached are found here: spawning workers (each imports torch) only to
    # look them up cost 4.8 s of a training stage whose tuning had made every fit
    jobs = [job for job in jobs if _missing(job)]
    if workers <= 1 or len(jobs) <= 1:
        with one_thread():
            return sum(_prefit_run(job) for job in jobs)
    ctx = torch.multiprocessing.get_context("spawn")
    n = min(workers, len(jobs))
    with ProcessPoolExecutor(n, mp_context=ctx, initializer=_prefit_init, initargs=args) as ex:
        return sum(ex.map(_prefit_run, jobs))


_PREFIT: dict[str, Any] = {}  # a prefit worker's runs and cache (set by _prefit_init)


def _prefit_init(
    train: Sequence[RunRecord], val: Sequence[RunRecord] | None, cache: Path, seed: int
) -> None:
    torch.set_num_threads(1)
    _PREFIT.update(train=train, val=val, cache=cache, seed=seed)


def _prefit_fits(
    job: tuple[str, int, list[tuple[int, torch.Tensor | None]]],
) -> Iterator[tuple[Prefix, torch.Tensor | None, bool]]:
    """(prefix, parameter indices, cached?) of each prior fit of a prefit job."""
    part, i, fits = job
    record = _PREFIT[part][i]
    for k, idx in fits:
        prefix = Prefix.from_record(record, k)
        index = _pool(prefix.D, k, _PREFIT["seed"]) if part == "train" else idx
        yield prefix, index, is_cached(prefix, _PREFIT["cache"], index=index)


def _missing(job: tuple[str, int, list[tuple[int, torch.Tensor | None]]]) -> bool:
    """Whether a prefit job has a fit the cache lacks."""
    return not all(cached for _, _, cached in _prefit_fits(job))


def _prefit_run(job: tuple[str, int, list[tuple[int, torch.Tensor | None]]]) -> int:
    """Fit one run's missing priors (train: its pools at each k; val: the forecast's parameters)."""
    made = 0
    for prefix, index, cached in _prefit_fits(job):
        if not cached:
            quadfit(prefix, index=index, cache=_PREFIT["cache"])
            made += 1
    return made


def _draw(
    gfm: GFMSettings,
    train: Sequence[RunRecord],
    cfg: TrainSettings,
    rng: np.random.Generator,
) -> list[dict]:
    """One batch's examples: runs, observed indices and parameters; runs load when drawn.

    k is uniform over ``TRAIN_FRACTIONS``; with a prior it is drawn from ``_K_GRID`` indices
    evenly over that range instead, so each (run, k)'s prior fit is computed once per process
    (``_prefixed``), across fits too (tuning trials, the benchmark's seeds).
    """
    examples, state = [], _needs_state(gfm)
    for i in rng.integers(len(train), size=cfg.batch_runs):
        record = train[int(i)]
        _check_run(record)
        M = record.weights.shape[0] - 1
        lo, hi = (observed_index(M, f) for f in TRAIN_FRACTIONS)
        statics = None
        if gfm.prior:
            grid = _k_grid(M)
            k = int(grid[rng.integers(len(grid))])
            statics = _prefixed(record, k, gfm, cfg.seed, cfg.prior_cache)
        else:
            k = int(rng.integers(lo, hi + 1))
        examples.append(
            _example(record, k, cfg.batch_params, gfm.history, gfm.sigma, rng, statics, state=state)
        )
    return examples


def _needs_state(gfm: GFMSettings) -> bool:
    """Whether a field of a GFM with these settings keeps optimizer state (``GFM.fields``)."""
    return gfm.variant == "optimizer" and any(FIELDS[o].n_state for o in OPTIMIZERS)


class _Batches(torch.utils.data.IterableDataset):
    """The ``cfg.steps`` training batches of one fit, in order, from the stream ``cfg.seed``.

    Iterated in the training process, or in a worker process (``cfg.loader_workers``) so that
    drawing examples and fitting priors overlaps the network's steps on another core; the batches
    are the same either way.
    """

    def __init__(
        self,
        gfm: GFMSettings,
        train: Sequence[RunRecord],
        cfg: TrainSettings,
        *,
        packed: bool = False,
    ) -> None:
        self.gfm, self.train, self.cfg, self.packed = gfm, train, cfg, packed

    def __iter__(self) -> Iterator[_Batch | _Packed]:
        rng = np.random.default_rng(self.cfg.seed)
        for _ in range(self.cfg.steps):
            batch = _collate(_draw(self.gfm, self.train, self.cfg, rng))
            yield _Packed.of(batch) if self.packed else batch


def _batches(gfm: GFMSettings, train: Sequence[RunRecord], cfg: TrainSettings) -> Iterator[_Batch]:
    """The batches of ``_Batches``, prefetched by ``cfg.loader_workers`` spawned workers (0: here)."""
    if not cfg.loader_workers:
        return iter(_Batches(gfm, train, cfg))
    data = _Batches(gfm, train, cfg, packed=True)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=None,
        collate_fn=_as_is,
        num_workers=cfg.loader_workers,
        prefetch_factor=8,
        multiprocessing_context="spawn",  # no fork of a process that may run MLflow/Prefect threads
        worker_init_fn=_one_thread_worker,
    )
    return (packed.unpack() for packed in loader)


def _as_is(batch: _Packed) -> _Packed:
    return batch  # each item is already a collated batch


def _one_thread_worker(_: int) -> None:
    torch.set_num_threads(1)  # the examples are small ops; the training process has its core


def _max_params(train: Sequence[RunRecord]) -> int | None:
    """The most parameters of a training run, or None when only loading every run would tell.

    From the runs table of a ``Trajectories`` view, or the records of a list or tuple.
    """
    runs = getattr(train, "runs", None)
    if runs is not None and "n_params" in getattr(runs, "columns", ()):
        return int(runs["n_params"].max())
    if isinstance(train, list | tuple):
        return max(int(record.weights.shape[1]) for record in train)
    return None


def sized(cfg: TrainSettings, train: Sequence[RunRecord]) -> TrainSettings:
    """The training settings ``fit`` uses on ``train``: scaled to runs of few parameters.

    A step draws ``batch_runs`` runs × min(``batch_params``, D) parameters, so when every run
    has D < ``batch_params`` parameters the batches hold a fraction f = max D / ``batch_params``
    of the rows ``steps`` is set for. Training then keeps the number of parameter rows it
    learns from, and the number of evaluations:

        steps' = min(steps, max(min_steps, ⌈f · steps⌉)),   eval_every' = ⌈eval_every · steps'/steps⌉

    and draws the batches in-process when they hold fewer than ``_WORKER_MIN_ROWS`` rows
    (sending a tiny batch from a worker costs more than drawing it). A set of 2-parameter
    runs thus trains 1,500 steps in seconds (BENCHMARKS.md, "Cost proportional to the data").
    A lazy sequence other than ``Trajectories`` is trained as configured.
    """
    most = _max_params(train)
    if most is None:
        return cfg
    n = min(cfg.batch_params, most)
    steps = min(cfg.steps, max(cfg.min_steps, math.ceil(cfg.steps * n / cfg.batch_params)))
    eval_every = min(cfg.eval_every, math.ceil(cfg.eval_every * steps / cfg.steps))
    workers = cfg.loader_workers if cfg.batch_runs * n >= _WORKER_MIN_ROWS else 0
    if (steps, eval_every, workers) == (cfg.steps, cfg.eval_every, cfg.loader_workers):
        return cfg
    return cfg.model_copy(
        update={"steps": steps, "eval_every": eval_every, "loader_workers": workers}
    )


def _loop(
    model: GFM,
    train: Sequence[RunRecord],
    val: Sequence[RunRecord] | None,
    cfg: TrainSettings,
    device: torch.device,
    on_eval: OnEval | None,
) -> list[dict[str, float]]:
    """The training loop of ``fit`` (same arguments)."""
    torch.manual_seed(cfg.seed)
    net = model.net.to(device).train()
    # foreach: one kernel per update over all tensors, the same values as the per-tensor loop
    opt = torch.optim.AdamW(
        net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True
    )
    history: list[dict[str, float]] = []
    best_score, best_state = math.inf, None
    running, seen = 0.0, 0
    batches = _batches(model.cfg, train, cfg)
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="gfm fit", disable=None, leave=False)
    for step in bar:
        lr = _lr(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr

        batch = next(batches).to(device)

        loss = _loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), _CLIP)  # rare outlier velocities
        opt.step()
        running += float(loss.detach())
        seen += 1

        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            metrics = {
                "step": float(step + 1),
                "train/loss": running / seen,
                "lr": lr,
                "seconds": time.perf_counter() - t0,
            }
            running, seen = 0.0, 0
            if val is not None and len(val):
                net.eval()
                metrics.update(validate(model, val, prior_cache=cfg.prior_cache))
                net.train()
                score = metrics["val/rel_mse_persistence"]
                if score < best_score:  # keep the best network (cheap: a few thousand floats)
                    best_score, best_state = score, copy.deepcopy(net.state_dict())
            history.append(metrics)
            log.info("step %d: %s", step + 1, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            bar.set_postfix(loss=f"{metrics['train/loss']:.4g}")
            if on_eval is not None and on_eval(step + 1, metrics) is False:
                log.info("step %d: stopped by on_eval", step + 1)
                break
    bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return history
