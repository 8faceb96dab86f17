"""RidgeBaseline: closed form vs scikit-learn, CV alpha selection, save/load, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold

from mindeye_core.errors import CheckpointError, ConfigMismatchError, DataFormatError
from mindeye_core.models.ridge import NotFittedError, RidgeBaseline


def _problem(n: int = 120, v: int = 40, t: tuple[int, ...] = (3, 5), noise: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, v)) * rng.uniform(0.5, 3.0, size=v) + rng.normal(size=v)
    w = rng.normal(size=(v, int(np.prod(t))))
    y = x @ w / np.sqrt(v) + 0.7 + noise * rng.normal(size=(n, int(np.prod(t))))
    return x, y.reshape(n, *t)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_matches_sklearn_ridge_on_standardised_voxels(fit_intercept: bool) -> None:
    x, y = _problem()
    model = RidgeBaseline(alphas=(7.5,), cv=0, fit_intercept=fit_intercept, dtype="float64").fit(x, y)
    mu, sd = x.mean(0), x.std(0)
    z = (x - mu) / sd
    ref = Ridge(alpha=7.5, fit_intercept=fit_intercept).fit(z, y.reshape(len(y), -1))
    x_new = _problem(seed=1)[0][:17]
    ours = model.predict(x_new)
    assert ours.shape == (17, 3, 5)
    np.testing.assert_allclose(ours.reshape(17, -1), ref.predict((x_new - mu) / sd), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(model.coef_.numpy(), ref.coef_.T, rtol=1e-8, atol=1e-10)


def test_matches_sklearn_without_standardisation_and_in_float32() -> None:
    x, y = _problem(n=80, v=120)  # more voxels than samples (the fMRI regime)
    ref = Ridge(alpha=30.0).fit(x, y.reshape(len(y), -1))
    model64 = RidgeBaseline(alphas=(30.0,), cv=0, standardize=False, dtype="float64").fit(x, y)
    np.testing.assert_allclose(model64.predict(x).reshape(80, -1), ref.predict(x), rtol=1e-8, atol=1e-8)
    model32 = RidgeBaseline(alphas=(30.0,), cv=0, standardize=False).fit(x.astype(np.float32), y)
    pred32 = model32.predict(x.astype(np.float32))
    assert pred32.dtype == np.float32
    np.testing.assert_allclose(pred32.reshape(80, -1), ref.predict(x), rtol=1e-3, atol=1e-3)


def test_cv_scores_match_brute_force_sklearn_loop() -> None:
    x, y = _problem(n=90, v=30, t=(4,))
    alphas = (0.1, 3.0, 100.0, 3000.0)
    model = RidgeBaseline(alphas=alphas, cv=3, dtype="float64").fit(x, y)
    expected = []
    for a in alphas:
        sse = 0.0
        for tr, va in KFold(3).split(x):
            mu, sd = x[tr].mean(0), x[tr].std(0)
            r = Ridge(alpha=a).fit((x[tr] - mu) / sd, y[tr])
            sse += float(((r.predict((x[va] - mu) / sd) - y[va]) ** 2).sum())
        expected.append(sse / y.size)
    np.testing.assert_allclose(model.cv_mse_.numpy(), expected, rtol=1e-5)
    assert model.alpha_ == alphas[int(np.argmin(expected))]


def test_cv_picks_sensible_alpha() -> None:
    # Pure noise targets -> the strongest regularisation; clean linear signal -> a weak one.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(150, 50))
    noise_y = rng.normal(size=(150, 6))
    alphas = (1e-2, 1e0, 1e2, 1e4, 1e6)
    assert RidgeBaseline(alphas=alphas, cv=5).fit(x, noise_y).alpha_ >= 1e4
    clean_y = x @ rng.normal(size=(50, 6)) + 0.01 * rng.normal(size=(150, 6))
    clean = RidgeBaseline(alphas=alphas, cv=5).fit(x, clean_y)
    assert clean.alpha_ <= 1e0
    assert clean.score(x, clean_y) > 0.99
    # CV curve is finite and one value per alpha
    assert clean.cv_mse_.shape == (5,) and torch.isfinite(clean.cv_mse_).all()


def test_groups_keep_repetitions_in_one_fold() -> None:
    x, y = _problem(n=60, v=10, t=(2,))
    groups = np.repeat(np.arange(20), 3)
    model = RidgeBaseline(alphas=(1.0, 10.0), cv=4).fit(x, y, groups=groups)
    assert model.alpha_ in (1.0, 10.0)
    with pytest.raises(DataFormatError, match="groups must have shape"):
        RidgeBaseline(alphas=(1.0, 10.0), cv=4).fit(x, y, groups=groups[:-1])
    with pytest.raises(DataFormatError, match="at least 4 distinct groups"):
        RidgeBaseline(alphas=(1.0, 10.0), cv=4).fit(x, y, groups=np.arange(60) % 3)


def test_torch_input_output_and_constant_voxel() -> None:
    x, y = _problem(n=50, v=12, t=(2, 2))
    x[:, 3] = 5.0  # zero-variance voxel must not produce NaN
    model = RidgeBaseline(alphas=(1.0,), cv=0).fit(torch.from_numpy(x), torch.from_numpy(y))
    out = model.predict(torch.from_numpy(x).float())
    assert isinstance(out, torch.Tensor) and out.shape == (50, 2, 2) and torch.isfinite(out).all()


def test_save_load_round_trip(tmp_path) -> None:
    x, y = _problem(n=70, v=20, t=(3, 4))
    model = RidgeBaseline(alphas=(0.5, 5.0, 50.0), cv=3).fit(x, y)
    model.save(tmp_path / "ridge")
    loaded = RidgeBaseline.load(tmp_path / "ridge", expected_config={"n_voxels_": 20, "target_shape_": [3, 4]})
    assert loaded.alpha_ == model.alpha_ and loaded.config == model.config
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    torch.testing.assert_close(loaded.cv_mse_, model.cv_mse_)
    with pytest.raises(ConfigMismatchError, match=r"n_voxels_: saved 20, expected 15724"):
        RidgeBaseline.load(tmp_path / "ridge", expected_config={"n_voxels_": 15724})


def test_load_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="missing config file"):
        RidgeBaseline.load(tmp_path / "nothing")
    x, y = _problem(n=30, v=8, t=(2,))
    folder = RidgeBaseline(alphas=(1.0,), cv=0).fit(x, y).save(tmp_path / "r")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["fitted"]["n_voxels_"] = 9
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"tensor 'coef' has shape \(8, 2\), config implies \(9, 2\)"):
        RidgeBaseline.load(folder)
    cfg["_class"] = "BrainMLP"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigMismatchError, match="holds a 'BrainMLP' config file"):
        RidgeBaseline.load(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt config"):
        RidgeBaseline.load(folder)


def test_input_errors() -> None:
    x, y = _problem(n=40, v=10, t=(2,))
    with pytest.raises(NotFittedError, match="before fit"):
        RidgeBaseline().predict(x)
    with pytest.raises(NotFittedError, match="before fit"):
        RidgeBaseline().save("unused")
    model = RidgeBaseline(alphas=(1.0,), cv=0).fit(x, y)
    with pytest.raises(DataFormatError, match="expected 10 voxels .*got 9"):
        model.predict(x[:, :9])
    bad = x.copy()
    bad[2, 3] = np.nan
    with pytest.raises(DataFormatError, match="1 NaN/inf"):
        RidgeBaseline(alphas=(1.0,), cv=0).fit(bad, y)
    with pytest.raises(DataFormatError, match="1 NaN/inf"):
        model.predict(bad)
    with pytest.raises(DataFormatError, match="same number of samples"):
        RidgeBaseline(alphas=(1.0,), cv=0).fit(x, y[:-1])
    with pytest.raises(DataFormatError, match=r"\(n_samples, n_voxels\)"):
        model.predict(x[0])
    with pytest.raises(ValueError, match="alphas must be positive"):
        RidgeBaseline(alphas=(0.0, 1.0))
    with pytest.raises(ValueError, match="give a single alpha"):
        RidgeBaseline(alphas=(1.0, 2.0), cv=1)


def test_target_chunking_does_not_change_the_result() -> None:
    x, y = _problem(n=60, v=15, t=(7,))
    whole = RidgeBaseline(alphas=(0.3, 30.0, 3000.0), cv=3, dtype="float64").fit(x, y)
    chunked = RidgeBaseline(alphas=(0.3, 30.0, 3000.0), cv=3, dtype="float64", target_chunk=3).fit(x, y)
    np.testing.assert_allclose(chunked.cv_mse_.numpy(), whole.cv_mse_.numpy(), rtol=1e-6)
    np.testing.assert_allclose(chunked.coef_.numpy(), whole.coef_.numpy(), rtol=1e-10, atol=1e-12)
