"""Episode records of an evaluation, and their replay (CompilerGym's ``validate()`` idea).

``python -m experiments.evaluate ... --records`` writes ``records.npz`` beside its results: one
row per episode with the request id (and its row in the split), the pinned budget, a hash of the
reset observation, the action(s), the outcome (configuration index, score, estimated latency,
violation, output tokens) and the reward, the policy and seed that acted, an index into the env
settings (env kind, split, reward parameters, EnvConfig switches) and, for the whole file, the
outcome cache's sha256. ``python -m experiments.validate_records FILE --cache PATH`` replays every
episode through the same env and compares (:func:`validate`).

File layout (``np.savez_compressed``, no pickles): ``meta`` (a JSON string: format, cache path and
sha256, settings list), and per-episode arrays ``policy``, ``seed``, ``settings``,
``request_id``, ``sample_index``, ``budget_ms``, ``obs_hash``, ``action`` (int64 (n, 8): a flat
episode's configuration index then ``-1``; a two-stage episode's stage-1 then stage-2
MultiDiscrete action), ``config_index``, ``score``, ``latency_ms``, ``violation``,
``output_tokens``, ``reward``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "molmoe-gym-episode-records/1"
OUTCOME_FIELDS: tuple[str, ...] = ("config_index", "score", "latency_ms", "violation", "output_tokens")
_OUT_DTYPES = {"config_index": np.int64, "score": np.float64, "latency_ms": np.float64, "violation": bool,
               "output_tokens": np.int64}
_ENV_SWITCHES = ("budget_mode", "nominal_output_tokens", "incomplete", "strict", "invalid_action")


def obs_hashes(obs: dict[str, np.ndarray]) -> np.ndarray:
    """Per row of a batched observation: the first 16 hex digits of the sha256 of every key's row
    bytes (keys sorted, each prefixed with its name and dtype). ``<U16`` (n,)."""
    keys = sorted(obs)
    n = np.asarray(obs[keys[0]]).shape[0]
    parts = []
    for k in keys:
        a = np.ascontiguousarray(np.asarray(obs[k]))
        parts.append(a.reshape(n, -1).view(np.uint8).reshape(n, -1) if a.size else np.zeros((n, 0), np.uint8))
    rows = np.concatenate(parts, axis=1)
    head = "".join(f"{k}:{np.asarray(obs[k]).dtype.str}:{np.asarray(obs[k]).shape[1:]};" for k in keys).encode()
    return np.array([hashlib.sha256(head + r.tobytes()).hexdigest()[:16] for r in rows], dtype="<U16")


def env_settings(venv: Any, kind: str) -> dict[str, Any]:
    """What a replay needs to rebuild ``venv``: its kind, split, reward parameters and switches."""
    from envs.reward import RewardConfig

    cfg = venv.config
    reward = RewardConfig.make(cfg.reward, cfg.reward_kwargs)
    out = {"kind": kind, "split": str(venv.data.split), "reward": asdict(reward)}
    for k in _ENV_SWITCHES:
        out[k] = getattr(cfg, k)
    return out


@dataclass
class EpisodeRecorder:
    """Collects the episodes of an evaluation (``add`` per vector-env run) and saves them."""

    cache_path: str
    cache_sha256: str
    seed: int = -1  # the evaluation seed in force (set by the evaluator's loop)
    settings: list[str] = field(default_factory=list)
    _cols: dict[str, list] = field(default_factory=dict)

    def add(self, venv: Any, policy: str, obs: dict[str, np.ndarray], actions: np.ndarray,
            final_info: dict[str, Any], reward: np.ndarray) -> None:
        """One vector-env run: ``obs`` the reset observations, ``actions`` (n,) flat configuration
        indices or (n, 8) two-stage stage-1 + stage-2 actions, ``final_info`` / ``reward`` of the
        last step."""
        a = np.asarray(actions, dtype=np.int64)
        kind = "flat" if a.ndim == 1 else "two_stage"
        n = a.shape[0]
        act = np.full((n, 8), -1, dtype=np.int64)
        act[:, : (1 if a.ndim == 1 else a.shape[1])] = a.reshape(n, -1)
        s = json.dumps(env_settings(venv, kind), sort_keys=True)
        if s not in self.settings:
            self.settings.append(s)
        cols = {
            "policy": np.full(n, str(policy)), "seed": np.full(n, int(self.seed), dtype=np.int64),
            "settings": np.full(n, self.settings.index(s), dtype=np.int64),
            "request_id": np.asarray(final_info["sample_id"]).astype(str),
            "sample_index": np.asarray(final_info["sample_index"], dtype=np.int64),
            "budget_ms": np.asarray(final_info["budget_ms"], dtype=np.float64),
            "obs_hash": obs_hashes(obs), "action": act,
            "reward": np.asarray(reward, dtype=np.float64),
        }
        for k in OUTCOME_FIELDS:
            cols[k] = np.asarray(final_info[k]).astype(_OUT_DTYPES[k])
        for k, v in cols.items():
            self._cols.setdefault(k, []).append(v)

    def __len__(self) -> int:
        return sum(len(v) for v in self._cols.get("reward", []))

    def save(self, path: str | Path) -> Path:
        meta = {"format": FORMAT, "cache": {"path": str(Path(self.cache_path).resolve()), "sha256": self.cache_sha256},
                "settings": [json.loads(s) for s in self.settings]}
        arrays = {k: np.concatenate(v) for k, v in self._cols.items()}
        np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)
        return Path(path)


def load_records(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) of a records file; ValueError naming the problem if it is not one."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except OSError:
        raise
    except Exception as e:  # a zip / npy format error
        raise ValueError(f"{path}: not a records file ({type(e).__name__}: {' '.join(str(e).split())})") from None
    if "meta" not in arrays:
        raise ValueError(f"{path}: not a records file (no meta)")
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: records format {meta.get('format')!r}, expected {FORMAT!r}")
    need = {"policy", "settings", "request_id", "budget_ms", "obs_hash", "action", "reward", *OUTCOME_FIELDS}
    missing = sorted(need - set(arrays))
    if missing:
        raise ValueError(f"{path}: records file lacks {missing}")
    return meta, arrays


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise bit-for-bit equality (NaN equals NaN of the same bits)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f" and b.dtype.kind == "f":
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        return a64.view(np.int64) == b64.view(np.int64)
    return a == b


@dataclass
class ValidationReport:
    n_episodes: int
    n_reproduced: int
    cache_sha256: str
    recorded_cache_sha256: str
    problems: list[str]  # file-level: cache hash mismatch, settings that cannot be rebuilt
    mismatches: list[dict[str, Any]]  # per episode: index, request id, policy, fields that differ

    @property
    def ok(self) -> bool:
        return not self.problems and self.n_reproduced == self.n_episodes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def validate(records_path: str | Path, cache_path: str | Path, *, max_report: int | None = None) -> ValidationReport:
    """Replay every recorded episode through the env it was recorded in, on ``cache_path``.

    An episode reproduces when its reset observation hash, outcome fields and reward are equal
    bit for bit. A cache whose sha256 differs from the recorded one is a file-level problem (the
    episodes are still replayed where possible); a request missing from the cache, a budget the
    env refuses or any replay error marks the episodes concerned as not reproduced."""
    from cache.reader import OutcomeCache
    from envs.replay_data import ReplayData
    from envs.vector_env import MolmoeKnobsFlatVectorEnv, MolmoeKnobsVectorEnv

    meta, rec = load_records(records_path)
    n = int(rec["reward"].shape[0])
    problems: list[str] = []
    bad: dict[int, list[str]] = {}
    with OutcomeCache(cache_path) as oc:
        sha = oc.content_hash()
        recorded_sha = str(meta.get("cache", {}).get("sha256", ""))
        if sha != recorded_sha:
            problems.append(f"cache sha256 {sha[:12]}… differs from the recorded {recorded_sha[:12]}… "
                            f"({meta.get('cache', {}).get('path')})")
        splits: dict[str, Any] = {}
        for si, st in enumerate(meta["settings"]):
            rows = np.flatnonzero(rec["settings"] == si)
            if rows.size == 0:
                continue
            try:
                if st["split"] not in splits:
                    splits[st["split"]] = ReplayData.from_cache(oc, st["split"])
                data = splits[st["split"]]
                ids = {sid: j for j, sid in enumerate(data.sample_ids.tolist())}
                idx = np.array([ids.get(str(r), -1) for r in rec["request_id"][rows]], dtype=np.int64)
                for i in rows[idx < 0]:
                    bad.setdefault(int(i), []).append("request not in cache")
                rows, idx = rows[idx >= 0], idx[idx >= 0]
                if rows.size == 0:
                    continue
                kw = {k: st[k] for k in _ENV_SWITCHES if k in st}
                cls = MolmoeKnobsFlatVectorEnv if st["kind"] == "flat" else MolmoeKnobsVectorEnv
                venv = cls(num_envs=int(rows.size), data=data, reward=st["reward"]["mode"],
                           reward_kwargs={k: v for k, v in st["reward"].items() if k != "mode"}, **kw)
                obs, _ = venv.reset(options={"sample_index": idx, "budget_ms": rec["budget_ms"][rows]})
                act = rec["action"][rows]
                if st["kind"] == "flat":
                    _, reward, _, _, info = venv.step(act[:, 0])
                else:
                    venv.step(act[:, :4])
                    _, reward, _, _, info = venv.step(act[:, 4:])
                fin = info["final_info"]
                diffs = {"obs_hash": ~_same(obs_hashes(obs), rec["obs_hash"][rows]),
                         "reward": ~_same(np.asarray(reward, dtype=np.float64), rec["reward"][rows])}
                for k in OUTCOME_FIELDS:
                    diffs[k] = ~_same(np.asarray(fin[k]).astype(_OUT_DTYPES[k]), rec[k][rows])
                for k, d in diffs.items():
                    for i in rows[d]:
                        bad.setdefault(int(i), []).append(k)
            except Exception as e:  # noqa: BLE001 - a replay that cannot run is reported, not raised
                msg = f"replay failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
                problems.append(f"settings {si} ({st.get('kind')}, split {st.get('split')}): {msg}")
                for i in rows:
                    bad.setdefault(int(i), []).append("replay failed")
    mism = [{"episode": i, "request_id": str(rec["request_id"][i]), "policy": str(rec["policy"][i]),
             "budget_ms": float(rec["budget_ms"][i]), "fields": f} for i, f in sorted(bad.items())]
    if max_report is not None:
        mism = mism[:max_report]
    return ValidationReport(n, n - len(bad), sha, str(meta.get("cache", {}).get("sha256", "")), problems, mism)
