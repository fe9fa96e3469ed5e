"""The estimator object: per-phase coefficients, prediction, JSON serialisation, the packaged default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from model_runtime.latency_estimator.features import (
    FORMAT_NAME,
    FORMAT_VERSION,
    PHASES,
    _as_float,
    _check_min,
    _design,
    _phase_rows,
    _rows_to_arrays,
    _validate_knobs,
    coefficient_names,
    expert_slots,
)
from model_runtime.latency_estimator.report import fidelity_metrics, format_report

DEFAULT_PROFILE_DIR = Path(__file__).resolve().parents[1] / "profiles"
DEFAULT_ESTIMATOR_PATH = DEFAULT_PROFILE_DIR / "default_estimator.json"

_DEFAULT_CACHE: dict[str, "LatencyEstimator"] = {}
#: Packaged estimators by name: the machine and path each profile was measured on
#: (model_runtime/profiles/README.md). ``h100-fast`` is the default.
NAMED_ESTIMATORS: dict[str, str] = {
    "h100-fast": "default_estimator.json",
    "h100-eager": "h100_runtime_eager_estimator.json",
    "h100-hf-reference": "reference_hf_eager_estimator.json",
    "h200-fast": "h200_runtime_fast_estimator.json",
}
DEFAULT_ESTIMATOR_NAME = "h100-fast"


class LatencyEstimator:
    """Per-phase linear latency model in ms (see the module docstring for the formulas).

    Args:
        coefficients: phase → {coefficient name → value}; names as in :func:`coefficient_names`,
            all values finite and ≥ 0.
        max_top_k: experts per token of blocks ``0..p-1`` (and the largest allowed ``top_k``).
        attention_quadratic: whether prefill has the ``blocks·S²`` term.
        source: where the profiling rows came from (free text, kept in the JSON).
        fit_report: the report :meth:`fit` produced (rows, splits, fidelity, warnings).
    """

    def __init__(
        self,
        coefficients: Mapping[str, Mapping[str, float]],
        *,
        max_top_k: int = 8,
        attention_quadratic: bool = False,
        source: str = "",
        fit_report: Mapping[str, Any] | None = None,
    ) -> None:
        if int(max_top_k) < 1:
            raise ValueError(f"max_top_k must be >= 1, got {max_top_k}")
        self.max_top_k = int(max_top_k)
        self.attention_quadratic = bool(attention_quadratic)
        self.source = str(source)
        self.fit_report: dict[str, Any] = dict(fit_report or {})
        names = coefficient_names(self.attention_quadratic)
        if set(coefficients) != set(PHASES):
            raise ValueError(f"coefficients must have phases {list(PHASES)}, got {sorted(coefficients)}")
        self._coef: dict[str, np.ndarray] = {}
        for phase in PHASES:
            given = dict(coefficients[phase])
            if set(given) != set(names[phase]):
                raise ValueError(
                    f"{phase} coefficients must be named {list(names[phase])}, got {sorted(given)}"
                )
            vec = np.array([float(given[n]) for n in names[phase]], dtype=np.float64)
            if not np.all(np.isfinite(vec)) or float(vec.min()) < 0:
                raise ValueError(f"{phase} coefficients must be finite and >= 0, got {vec.tolist()}")
            self._coef[phase] = vec

    # ------------------------------------------------------------------ accessors
    @property
    def coefficients(self) -> dict[str, dict[str, float]]:
        """phase → {name → value} (a copy)."""
        names = coefficient_names(self.attention_quadratic)
        return {ph: {n: float(v) for n, v in zip(names[ph], self._coef[ph])} for ph in PHASES}

    def coef_vector(self, phase: str) -> np.ndarray:
        """Coefficients of ``phase`` as float64 (n_coef,), design-column order (a copy)."""
        return self._coef[phase].copy()

    def __repr__(self) -> str:
        return f"LatencyEstimator(max_top_k={self.max_top_k}, source={self.source!r})"

    # ------------------------------------------------------------------ prediction
    def predict(
        self,
        *,
        crops: Any,
        vision_tokens: Any,
        prompt_tokens: Any,
        p: Any,
        top_k: Any,
        blocks: Any,
        output_tokens: Any,
        dtype: Any = np.float64,
    ) -> dict[str, np.ndarray]:
        """Latency in ms of requests × configurations; all inputs broadcast against each other.

        Typical use: request columns shaped ``(N, 1)`` (or ``(N, C)`` for per-tier crops / vision
        tokens) against configuration rows shaped ``(C,)``. Validation runs on the inputs before
        broadcasting, so it costs O(input size), not O(N·C).

        Returns a dict of arrays of the broadcast shape (``dtype``, float64 by default; pass
        ``np.float32`` to halve memory on large grids): ``vision_ms``, ``prefill_ms``,
        ``decode_ms_per_token``, ``decode_ms`` (total: per-token × max(output_tokens − 1, 0)) and
        ``total_ms``. The phase arrays may be read-only broadcast views (a phase that does not
        depend on some input is not copied along it); ``np.array(x)`` them before writing.

        Raises:
            ValueError: NaN/inf, negative crops or token counts, ``p < 1``, ``top_k < 1``,
                ``top_k > max_top_k`` or ``blocks < p``.
        """
        c = _as_float("crops", crops, dtype)
        vt = _as_float("vision_tokens", vision_tokens, dtype)
        pt = _as_float("prompt_tokens", prompt_tokens, dtype)
        pp = _as_float("p", p, dtype)
        k = _as_float("top_k", top_k, dtype)
        b = _as_float("blocks", blocks, dtype)
        out = _as_float("output_tokens", output_tokens, dtype)
        try:
            np.broadcast_shapes(c.shape, vt.shape, pt.shape, pp.shape, k.shape, b.shape, out.shape)
        except ValueError:
            raise ValueError(
                "inputs do not broadcast: shapes "
                f"crops{c.shape} vision_tokens{vt.shape} prompt_tokens{pt.shape} p{pp.shape} "
                f"top_k{k.shape} blocks{b.shape} output_tokens{out.shape}"
            ) from None
        for name, a in (("crops", c), ("vision_tokens", vt), ("prompt_tokens", pt), ("output_tokens", out)):
            _check_min(name, a, 0)
        _validate_knobs(pp, k, b, self.max_top_k)

        v0, v1 = self._coef["vision"].astype(dtype)
        vision = v0 + v1 * c
        S = vt + pt
        slots = expert_slots(pp, k, b, self.max_top_k)
        a = self._coef["prefill"].astype(dtype)
        # factorised so that configuration-only terms are computed at configuration shape and
        # only the products with S are full (N, C) arrays
        per_token = a[1] + a[2] * b + a[3] * slots
        prefill = S * per_token + (a[0] + a[4] * b + a[5] * slots)
        if self.attention_quadratic:
            prefill = prefill + (a[6] * b) * (S * S)
        d = self._coef["decode"].astype(dtype)
        ctx = S + out * 0.5
        per_tok = (d[0] + d[1] * b + d[2] * slots) + (d[3] * b) * ctx
        decode = per_tok * np.maximum(out - 1, 0)
        total = vision + prefill + decode
        shape = total.shape
        return {
            "vision_ms": np.broadcast_to(vision, shape),
            "prefill_ms": np.broadcast_to(prefill, shape),
            "decode_ms_per_token": np.broadcast_to(per_tok, shape),
            "decode_ms": np.broadcast_to(decode, shape),
            "total_ms": total,
        }

    def predict_phase(self, phase: str, rows: Any) -> np.ndarray:
        """Predicted ``ms`` of profile rows of one phase (decode: ms per token), float64 (n,)."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {list(PHASES)}")
        arrays = _rows_to_arrays(rows)
        r = _phase_rows(arrays, phase, self.max_top_k)
        return _design(phase, r, self.max_top_k, self.attention_quadratic) @ self._coef[phase]

    def fidelity(self, rows: Any) -> dict[str, dict[str, float | int | None]]:
        """Per phase present in ``rows``: ``mape`` (%), ``max_abs_pct_err`` (%), ``spearman``, ``n``.

        ``rows``: DataFrame or mapping of arrays in the profile format (decode ``ms`` per token).
        """
        arrays = _rows_to_arrays(rows)
        report: dict[str, dict[str, float | int | None]] = {}
        for phase in PHASES:
            r = _phase_rows(arrays, phase, self.max_top_k)
            if len(r["ms"]) == 0:
                continue
            pred = _design(phase, r, self.max_top_k, self.attention_quadratic) @ self._coef[phase]
            report[phase] = fidelity_metrics(r["ms"], pred)
        return report

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        rows: Any,
        *,
        holdout_frac: float = 0.25,
        seed: int = 0,
        ridge: float = 1e-4,
        attention_quadratic: bool = False,
        max_top_k: int = 8,
        source: str = "",
    ) -> "LatencyEstimator":
        """Fit every phase by relative-error NNLS (+ ridge) and keep a fit report.

        Args:
            rows: profile rows (DataFrame or mapping of arrays, see :func:`load_profile`); every
                phase needs at least one row.
            holdout_frac: fraction of each phase's rows held out (phases with at least
                :data:`MIN_ROWS_FOR_HOLDOUT` rows; at least 1 held out, at least 2 kept). The
                returned coefficients are fitted on the training rows only, so the held-out
                fidelity describes exactly this estimator. 0 disables the split.
            seed: seed of the split (each phase draws from ``default_rng([seed, phase index])``).
            ridge: penalty on the column-scaled coefficients (dimensionless); also the prior that
                picks a solution when a phase is underdetermined.
            attention_quadratic: add the ``blocks·S²`` prefill term.
            max_top_k: experts of the always-full blocks ``0..p-1``.
            source: provenance text stored with the estimator.

        The report (``fit_report``) holds per phase: ``n_rows``, ``n_train``, ``n_heldout``,
        ``n_coef``, ``rank``, ``underdetermined``, ``heldout_evaluated``, ``heldout_rows``
        (positions among the phase's rows, in input order), fidelity ``train``,
        ``heldout`` (None when not evaluated), ``loo`` (leave-one-out over all rows of the phase,
        when it has ≥ 4 rows), and ``warnings``.
        """
        from model_runtime.latency_estimator.fitting import fit_coefficients

        coefs, report = fit_coefficients(rows, holdout_frac=holdout_frac, seed=seed, ridge=ridge,
                                         attention_quadratic=attention_quadratic, max_top_k=max_top_k,
                                         source=source)
        return cls(coefs, max_top_k=max_top_k, attention_quadratic=attention_quadratic, source=source,
                   fit_report=report)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: format, version, units, coefficient names and values, fit report."""
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "units": "ms (decode_ms_per_token in ms per generated token after the first)",
            "max_top_k": self.max_top_k,
            "attention_quadratic": self.attention_quadratic,
            "coefficient_names": {ph: list(v) for ph, v in coefficient_names(self.attention_quadratic).items()},
            "coefficients": self.coefficients,
            "source": self.source,
            "fit_report": self.fit_report,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyEstimator":
        if not isinstance(d, Mapping):
            raise ValueError(f"estimator JSON must be an object, got {type(d).__name__}")
        if d.get("format") != FORMAT_NAME:
            raise ValueError(f"not a latency-estimator JSON (format={d.get('format')!r}, expected {FORMAT_NAME!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"unsupported estimator format_version {d.get('format_version')!r} (this code reads {FORMAT_VERSION})"
            )
        quad = bool(d.get("attention_quadratic", False))
        names = d.get("coefficient_names")
        expected = {ph: list(v) for ph, v in coefficient_names(quad).items()}
        if names is not None and {k: list(v) for k, v in names.items()} != expected:
            raise ValueError(f"coefficient_names {names} do not match this code's model {expected}")
        return cls(
            d["coefficients"],
            max_top_k=int(d.get("max_top_k", 8)),
            attention_quadratic=quad,
            source=str(d.get("source", "")),
            fit_report=d.get("fit_report") or {},
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, allow_nan=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LatencyEstimator":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{path}: estimator file not found") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        try:
            return cls.from_dict(d)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: {exc}") from None

    @classmethod
    def default(cls) -> "LatencyEstimator":
        """The packaged default profile's fit (``profiles/default_estimator.json``), loaded once.

        The instance is shared: treat it as read-only.
        """
        est = _DEFAULT_CACHE.get("default")
        if est is None:
            est = cls.load(DEFAULT_ESTIMATOR_PATH)
            _DEFAULT_CACHE["default"] = est
        return est

    @classmethod
    def named(cls, name: str) -> "LatencyEstimator":
        """A packaged estimator by its name in :data:`NAMED_ESTIMATORS` (e.g. ``"h100-fast"``)."""
        if name not in NAMED_ESTIMATORS:
            raise ValueError(f"unknown estimator name {name!r}; packaged: {', '.join(NAMED_ESTIMATORS)}")
        if name == DEFAULT_ESTIMATOR_NAME:
            return cls.default()
        return cls.load(DEFAULT_PROFILE_DIR / NAMED_ESTIMATORS[name])

    @classmethod
    def resolve(cls, spec: str | Path) -> "LatencyEstimator":
        """What a ``--estimator`` argument names: a packaged estimator's name or an estimator JSON file."""
        if str(spec) in NAMED_ESTIMATORS:
            return cls.named(str(spec))
        if not Path(spec).is_file():
            raise ValueError(f"--estimator {spec}: neither a packaged estimator ({', '.join(NAMED_ESTIMATORS)}) "
                             "nor an estimator JSON file")
        return cls.load(spec)

    def report(self) -> str:
        """Human-readable coefficients and fit report."""
        return format_report(self.to_dict())
