"""Ridge-regression baseline (Ozcelik & VanRullen style): voxels -> any target space, linearly.

The method MindEye beat: a single linear map ``Y ~ Z W + b`` from standardised voxels ``Z`` to a
(flattened) target such as CLIP hidden tokens (257 x 768), the final CLIP embedding (768) or VAE
latents (4 x 64 x 64). The regularisation strength is chosen by K-fold cross-validation over a grid
of ``alphas``, solved in closed form for every alpha at once from one SVD per fold (as in
himalaya's ``RidgeCV`` / scikit-learn's ``RidgeCV``):

.. math::

    Z_{tr} = U S V^\\top, \\qquad
    W(\\alpha) = V \\, \\mathrm{diag}\\Big(\\frac{s_k}{s_k^2 + \\alpha}\\Big) U^\\top (Y_{tr} - \\bar Y_{tr}),

so each extra alpha costs one ``(n_val x k) @ (k x t)`` product instead of a new solve. The score is
the validation mean squared error over all targets (summed over folds); ``alpha_`` minimises it
(ties go to the larger alpha). The final model is refitted on all training samples at ``alpha_``.

Standardisation: voxels are z-scored with the *training* mean and (population) standard deviation;
in cross-validation each fold uses its own training-part statistics, so nothing leaks from the
validation part. Voxels with zero variance get scale 1 (they become all-zero columns). With
``fit_intercept=True`` the targets are centred and the mean is added back at prediction time, which
is exactly scikit-learn's ``Ridge(alpha, fit_intercept=True)`` applied to the standardised voxels.

Shapes: ``X`` is ``(n_samples, n_voxels)``; ``Y`` is ``(n_samples, *target_shape)`` (flattened
internally to ``(n_samples, t)``); ``predict`` returns ``(n_samples, *target_shape)``.

Example::

    ridge = RidgeBaseline(alphas=(1e2, 1e3, 1e4, 1e5), cv=5).fit(betas_train, clip_train)
    pred = ridge.predict(betas_test)          # (n_test, 257, 768)
    ridge.save("ckpt/ridge_subj01"); RidgeBaseline.load("ckpt/ridge_subj01")
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import save_file

from ..configfile import read_versioned_config, write_versioned_config
from ..errors import CheckpointError, ConfigMismatchError, DataFormatError, MindEyeError
from ..io import check_expected_config, load_weights_file, write_sha256

__all__ = ["RidgeBaseline", "NotFittedError", "DEFAULT_ALPHAS"]

DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(10.0**p) for p in range(-2, 7))
"""Default alpha grid 1e-2 ... 1e6 (standardised voxels: alpha is relative to ``n_samples``)."""

_CONFIG_NAME = "config.json"
_WEIGHTS_NAME = "model.safetensors"
_FORMAT_VERSION = 1
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class NotFittedError(MindEyeError, RuntimeError):
    """A model was used (``predict`` / ``save``) before ``fit``."""


def _as_tensor(a: Any, name: str, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        t = a.detach().to("cpu")
    else:
        try:
            t = torch.from_numpy(np.asarray(a))
        except TypeError as exc:
            raise DataFormatError(f"{name}: cannot convert {type(a).__name__} to an array ({exc})") from exc
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise DataFormatError(f"{name}: expected a numeric array, got dtype {t.dtype}")
    t = t.to(dtype)
    n_bad = int((~torch.isfinite(t)).sum())
    if n_bad:
        raise DataFormatError(f"{name} contains {n_bad} NaN/inf values (of {t.numel()}); clean or impute them first")
    return t


class RidgeBaseline:
    """Linear ridge decoder from voxels to a target space with alpha chosen by K-fold CV.

    Args:
        alphas: candidate regularisation strengths (positive). One alpha is shared by all targets.
        cv: number of folds (>= 2), or 1 / 0 to skip CV (then ``alphas`` must hold one value).
        fit_intercept: centre the targets (and add their training mean back when predicting).
        standardize: z-score voxels with training statistics (recommended for fMRI betas).
        dtype: ``"float32"`` (default; NSD-size targets) or ``"float64"`` for the linear algebra.
        target_chunk: number of target columns processed at a time during CV (bounds memory).

    Fitted attributes:
        alpha_ (float), cv_mse_ (``(n_alphas,)`` mean validation MSE per alpha), n_voxels_ (int),
        target_shape_ (tuple), coef_ (``(n_voxels, t)`` torch tensor, acting on standardised voxels),
        intercept_ (``(t,)``), x_mean_ / x_scale_ (``(n_voxels,)``).
    """

    def __init__(
        self,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        cv: int = 5,
        fit_intercept: bool = True,
        standardize: bool = True,
        dtype: str = "float32",
        target_chunk: int = 65536,
    ) -> None:
        alphas = tuple(float(a) for a in alphas)
        if not alphas:
            raise ValueError("RidgeBaseline: alphas is empty")
        if any(not math.isfinite(a) or a <= 0 for a in alphas):
            raise ValueError(f"RidgeBaseline: alphas must be positive and finite, got {alphas}")
        if int(cv) != cv or cv < 0:
            raise ValueError(f"RidgeBaseline: cv must be a non-negative integer, got {cv!r}")
        if cv < 2 and len(alphas) > 1:
            raise ValueError(f"RidgeBaseline: cv={cv} skips cross-validation, so give a single alpha (got {len(alphas)})")
        if dtype not in _DTYPES:
            raise ValueError(f"RidgeBaseline: dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if target_chunk < 1:
            raise ValueError(f"RidgeBaseline: target_chunk must be >= 1, got {target_chunk}")
        self.alphas = alphas
        self.cv = int(cv)
        self.fit_intercept = bool(fit_intercept)
        self.standardize = bool(standardize)
        self.dtype = dtype
        self.target_chunk = int(target_chunk)
        self._fitted = False

    # ----------------------------------------------------------------- config
    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-ready)."""
        return {
            "alphas": list(self.alphas),
            "cv": self.cv,
            "fit_intercept": self.fit_intercept,
            "standardize": self.standardize,
            "dtype": self.dtype,
            "target_chunk": self.target_chunk,
        }

    def __repr__(self) -> str:
        state = f", alpha_={self.alpha_:g}, n_voxels_={self.n_voxels_}" if self._fitted else ""
        return f"RidgeBaseline(alphas={list(self.alphas)}, cv={self.cv}{state})"

    # ---------------------------------------------------------------- helpers
    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Voxel mean and scale, each ``(v,)``; identity when ``standardize=False``."""
        v = x.shape[1]
        if not self.standardize:
            mean = x.mean(0) if self.fit_intercept else torch.zeros(v, dtype=x.dtype)
            return mean, torch.ones(v, dtype=x.dtype)
        mean = x.mean(0)
        scale = x.std(0, unbiased=False)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return mean, scale

    def _prepare_z(self, x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``Z = (X - mean) / scale`` (scale 1 and, without an intercept, mean 0 when not standardising)."""
        if self.standardize:
            return (x - mean) / scale
        return x - mean

    def _folds(self, n: int, groups: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
        from sklearn.model_selection import GroupKFold, KFold

        if groups is None:
            if n < self.cv:
                raise DataFormatError(f"cv={self.cv} folds need at least {self.cv} samples, got {n}")
            return [(tr, va) for tr, va in KFold(n_splits=self.cv).split(np.zeros(n))]
        n_groups = len(np.unique(groups))
        if n_groups < self.cv:
            raise DataFormatError(f"cv={self.cv} folds need at least {self.cv} distinct groups, got {n_groups}")
        return [(tr, va) for tr, va in GroupKFold(n_splits=self.cv).split(np.zeros(n), groups=groups)]

    # -------------------------------------------------------------------- fit
    def fit(self, X: Any, Y: Any, groups: Any = None) -> "RidgeBaseline":
        """Choose ``alpha_`` by K-fold CV, then refit on all samples.

        Args:
            X: voxels ``(n, v)`` (numpy or torch).
            Y: targets ``(n, *target_shape)``.
            groups: optional ``(n,)`` labels kept together in one fold (e.g. the image index, so
                repeated presentations of one image never straddle train and validation).

        Returns:
            ``self``.
        """
        dt = _DTYPES[self.dtype]
        x = _as_tensor(X, "X (voxels)", dt)
        y = _as_tensor(Y, "Y (targets)", dt)
        if x.ndim != 2:
            raise DataFormatError(f"X must be (n_samples, n_voxels), got shape {tuple(x.shape)}")
        if y.ndim < 1 or y.shape[0] != x.shape[0]:
            raise DataFormatError(
                f"X and Y must have the same number of samples: X has {x.shape[0]}, Y has shape {tuple(y.shape)}"
            )
        n = x.shape[0]
        if n < 2:
            raise DataFormatError(f"need at least 2 samples to fit, got {n}")
        target_shape = tuple(int(s) for s in y.shape[1:])
        y2 = y.reshape(n, -1)
        g = None
        if groups is not None:
            g = np.asarray(groups)
            if g.shape != (n,):
                raise DataFormatError(f"groups must have shape ({n},), got {g.shape}")

        alphas = torch.tensor(self.alphas, dtype=dt)
        if self.cv >= 2:
            sse = torch.zeros(len(self.alphas), dtype=torch.float64)
            count = 0
            for tr, va in self._folds(n, g):
                tr_t, va_t = torch.from_numpy(tr), torch.from_numpy(va)
                sse += self._fold_sse(x[tr_t], x[va_t], y2, tr_t, va_t, alphas)
                count += len(va) * y2.shape[1]
            self.cv_mse_ = (sse / count).to(torch.float32)
            # argmin with ties resolved towards the larger (safer) alpha
            best = min(range(len(self.alphas)), key=lambda i: (float(sse[i]), -self.alphas[i]))
            self.alpha_ = float(self.alphas[best])
        else:
            self.cv_mse_ = torch.full((1,), float("nan"))
            self.alpha_ = float(self.alphas[0])

        mean, scale = self._stats(x)
        z = self._prepare_z(x, mean, scale)
        y_mean = y2.mean(0) if self.fit_intercept else torch.zeros(y2.shape[1], dtype=dt)
        u, s, vh = torch.linalg.svd(z, full_matrices=False)
        d = s / (s * s + self.alpha_)
        # W = V diag(d) U^T (Y - ybar), U^T Y first ((k x n) @ (n x t)), in column chunks to bound memory
        coef = torch.empty(x.shape[1], y2.shape[1], dtype=dt)
        for start in range(0, y2.shape[1], self.target_chunk):
            cols = slice(start, start + self.target_chunk)
            coef[:, cols] = vh.T @ (d[:, None] * (u.T @ (y2[:, cols] - y_mean[cols])))
        self.coef_ = coef
        self.intercept_ = y_mean
        self.x_mean_, self.x_scale_ = mean, scale
        self.n_voxels_ = int(x.shape[1])
        self.target_shape_ = target_shape
        self._fitted = True
        return self

    def _fold_sse(
        self,
        x_tr: torch.Tensor,
        x_va: torch.Tensor,
        y: torch.Tensor,
        tr: torch.Tensor,
        va: torch.Tensor,
        alphas: torch.Tensor,
    ) -> torch.Tensor:
        """Validation sum of squared errors for every alpha, ``(n_alphas,)``, from one SVD.

        ``y`` is the full ``(n, t)`` target matrix; rows ``tr`` / ``va`` are sliced per column chunk.
        """
        mean, scale = self._stats(x_tr)
        z_tr = self._prepare_z(x_tr, mean, scale)
        z_va = self._prepare_z(x_va, mean, scale)
        u, s, vh = torch.linalg.svd(z_tr, full_matrices=False)
        zv = z_va @ vh.T  # (n_va, k)
        d = s[None, :] / (s[None, :] ** 2 + alphas[:, None])  # (n_alphas, k)
        out = torch.zeros(len(alphas), dtype=torch.float64)
        for start in range(0, y.shape[1], self.target_chunk):
            yt = y[tr, start : start + self.target_chunk]
            yv = y[va, start : start + self.target_chunk]
            ym = yt.mean(0) if self.fit_intercept else torch.zeros(yt.shape[1], dtype=yt.dtype)
            uty = u.T @ (yt - ym)  # (k, t)
            for i in range(len(alphas)):
                pred = zv @ (d[i][:, None] * uty) + ym
                out[i] += float(((pred - yv) ** 2).sum(dtype=torch.float64))
        return out

    # ---------------------------------------------------------------- predict
    def _check_fitted(self, what: str) -> None:
        if not self._fitted:
            raise NotFittedError(f"RidgeBaseline.{what}() called before fit(); call fit(X, Y) or RidgeBaseline.load(folder)")

    def predict(self, X: Any) -> Any:
        """Predict targets ``(n, *target_shape)`` from voxels ``(n, n_voxels_)``.

        Returns a numpy array for numpy input and a CPU torch tensor for torch input, in the model's
        ``dtype`` (float32 by default).
        """
        self._check_fitted("predict")
        is_torch = isinstance(X, torch.Tensor)
        x = _as_tensor(X, "X (voxels)", self.coef_.dtype)
        if x.ndim != 2:
            raise DataFormatError(f"X must be (n_samples, n_voxels), got shape {tuple(x.shape)}")
        if x.shape[1] != self.n_voxels_:
            raise DataFormatError(f"expected {self.n_voxels_} voxels (as in training), got {x.shape[1]}")
        pred = self._prepare_z(x, self.x_mean_, self.x_scale_) @ self.coef_ + self.intercept_
        pred = pred.reshape(x.shape[0], *self.target_shape_)
        if is_torch:
            return pred
        return pred.numpy()

    def score(self, X: Any, Y: Any) -> float:
        """Mean over target columns of the coefficient of determination R^2 (flattened targets)."""
        x = _as_tensor(X, "X (voxels)", self.coef_.dtype)
        pred = self.predict(x).to(self.coef_.dtype)
        y = _as_tensor(Y, "Y (targets)", pred.dtype).reshape(pred.shape[0], -1)
        p = pred.reshape(pred.shape[0], -1)
        ss_res = ((y - p) ** 2).sum(0)
        ss_tot = ((y - y.mean(0)) ** 2).sum(0)
        ok = ss_tot > 0
        return float((1 - ss_res[ok] / ss_tot[ok]).mean())

    # ------------------------------------------------------------- save/load
    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (coef, intercept, voxel stats, CV curve) + its ``.sha256``."""
        self._check_fitted("save")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "coef": self.coef_.contiguous(),
            "intercept": self.intercept_.contiguous(),
            "x_mean": self.x_mean_.contiguous(),
            "x_scale": self.x_scale_.contiguous(),
            "cv_mse": self.cv_mse_.contiguous(),
        }
        tmp = folder / (_WEIGHTS_NAME + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt", "class": "RidgeBaseline"})
        write_sha256(tmp, name=_WEIGHTS_NAME)  # verified by load (load_weights_file)
        tmp.replace(folder / _WEIGHTS_NAME)
        payload = {
            **self.config,
            "fitted": {"alpha_": self.alpha_, "n_voxels_": self.n_voxels_, "target_shape_": list(self.target_shape_)},
        }
        write_versioned_config(folder / _CONFIG_NAME, kind="RidgeBaseline", version=_FORMAT_VERSION, data=payload)
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, expected_config: dict[str, Any] | None = None) -> "RidgeBaseline":
        """Load a model written by :meth:`save`.

        Args:
            folder: the checkpoint directory.
            expected_config: optional values the checkpoint must have, e.g. ``{"n_voxels_": 15724}``
                or ``{"target_shape_": [257, 768]}`` (fitted keys) or constructor keys.

        Raises:
            CheckpointError: missing/corrupt files or tensors that do not match the config.
            ConfigMismatchError: another class's checkpoint or an ``expected_config`` difference.
        """
        folder = Path(folder)
        cpath = folder / _CONFIG_NAME
        payload = read_versioned_config(
            cpath, kind="RidgeBaseline", version=_FORMAT_VERSION, error=CheckpointError, mismatch_error=ConfigMismatchError
        ).data
        fitted = payload.get("fitted")
        if not isinstance(fitted, dict) or {"alpha_", "n_voxels_", "target_shape_"} - set(fitted):
            raise CheckpointError(f"{cpath}: missing the 'fitted' section (alpha_, n_voxels_, target_shape_)")
        ctor = {k: payload[k] for k in ("alphas", "cv", "fit_intercept", "standardize", "dtype", "target_chunk") if k in payload}
        check_expected_config({**ctor, **fitted}, expected_config, cpath)
        model = cls(**ctor)
        wpath = folder / _WEIGHTS_NAME
        state = load_weights_file(wpath)
        v = int(fitted["n_voxels_"])
        target_shape = tuple(int(s) for s in fitted["target_shape_"])
        t = int(np.prod(target_shape)) if target_shape else 1
        expected_shapes = {"coef": (v, t), "intercept": (t,), "x_mean": (v,), "x_scale": (v,)}
        for name, shape in expected_shapes.items():
            if name not in state:
                raise CheckpointError(f"{wpath}: missing tensor {name!r}")
            if tuple(state[name].shape) != shape:
                raise CheckpointError(f"{wpath}: tensor {name!r} has shape {tuple(state[name].shape)}, config implies {shape}")
        model.coef_ = state["coef"]
        model.intercept_ = state["intercept"]
        model.x_mean_ = state["x_mean"]
        model.x_scale_ = state["x_scale"]
        model.cv_mse_ = state.get("cv_mse", torch.full((1,), float("nan")))
        model.alpha_ = float(fitted["alpha_"])
        model.n_voxels_ = v
        model.target_shape_ = target_shape
        model._fitted = True
        return model
