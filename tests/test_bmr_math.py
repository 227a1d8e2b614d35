import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bmr_eqx as bx


def log_normal_pdf(y, cov):
    sign, logdet = np.linalg.slogdet(2 * np.pi * cov)
    return -0.5 * (logdet + y @ np.linalg.solve(cov, y))


@pytest.fixture
def conjugate():
    # y_i ~ N(θ, 1), i = 1..20, prior N(0, 1): posterior precision 21 = λ(h + δ), prior λδ = 1.
    y = np.random.default_rng(0).normal(0.4, 1.0, 20)
    ess, delta, h = 20.0, 0.05, 1.0
    mu = y.sum() / 21.0
    return y, ess, delta, h, mu


def test_conjugate_spike_exact(conjugate):
    y, ess, delta, h, mu = conjugate
    ones = np.ones((20, 20))
    exact = log_normal_pdf(y, np.eye(20)) - log_normal_pdf(y, np.eye(20) + ones)
    with jax.enable_x64(True):
        got = float(bx.delta_f_spike(jnp.float64(mu), jnp.float64(h), ess, delta))
    assert got == pytest.approx(exact, abs=1e-10)


@pytest.mark.parametrize("sr2", [0.5, 0.1, 1e-3])
def test_conjugate_gaussian_reduced_prior_exact(conjugate, sr2):
    y, ess, delta, h, mu = conjugate
    ones = np.ones((20, 20))
    exact = log_normal_pdf(y, np.eye(20) + sr2 * ones) - log_normal_pdf(y, np.eye(20) + ones)
    with jax.enable_x64(True):
        got = float(bx.delta_f_gaussian(jnp.float64(mu), jnp.float64(h), ess, delta, 1.0 / sr2))
        # The reduced posterior is the exact posterior under the reduced prior: precision 20 + 1/sr2.
        m_r, h_r = bx.reduced_posterior(jnp.float64(mu), jnp.float64(h), ess, delta, 1.0 / sr2)
        m_r, h_r = float(m_r), float(h_r)
    assert got == pytest.approx(exact, abs=1e-10)
    assert ess * (h_r + delta) == pytest.approx(20 + 1 / sr2, rel=1e-12)
    assert m_r == pytest.approx(y.sum() / (20 + 1 / sr2), rel=1e-12)


def quadrature_delta_f(mu, prec, prior_prec, reduced_prec):
    theta = np.linspace(mu - 12 / np.sqrt(prec), mu + 12 / np.sqrt(prec), 200_001)
    logq = -0.5 * prec * (theta - mu) ** 2 + 0.5 * np.log(prec / (2 * np.pi))
    log_ratio = 0.5 * np.log(reduced_prec / prior_prec) - 0.5 * (reduced_prec - prior_prec) * theta**2
    return np.log(np.trapezoid(np.exp(logq + log_ratio), theta))


@pytest.mark.parametrize("mu,h,reduced", [(0.3, 2.0, 50.0), (-0.05, 0.2, 1e3), (1.0, 5.0, 11.0)])
def test_gaussian_against_quadrature(mu, h, reduced):
    ess, delta = 10.0, 0.1
    with jax.enable_x64(True):
        got = float(bx.delta_f_gaussian(jnp.float64(mu), jnp.float64(h), ess, delta, reduced))
    assert got == pytest.approx(quadrature_delta_f(mu, ess * (h + delta), ess * delta, reduced), abs=1e-7)


def test_spike_is_the_limit_of_the_gaussian():
    ess, delta = 1000.0, 1e-2
    mu, h = jnp.array([0.01, -0.2, 0.0]), jnp.array([0.5, 3.0, 0.0])
    with jax.enable_x64(True):
        spike = np.asarray(bx.delta_f_spike(mu.astype(jnp.float64), h.astype(jnp.float64), ess, delta))
        near = np.asarray(bx.delta_f_gaussian(mu.astype(jnp.float64), h.astype(jnp.float64), ess, delta, 1e12))
    np.testing.assert_allclose(near, spike, atol=1e-6)


def test_mean_field_group_is_the_sum_2d_quadrature():
    ess, delta = 5.0, 0.2
    mus, hs = np.array([0.3, -0.1]), np.array([1.0, 0.4])
    prec = ess * (hs + delta)
    prior, reduced = ess * delta, 40.0
    grid = [np.linspace(m - 10 / np.sqrt(p), m + 10 / np.sqrt(p), 2001) for m, p in zip(mus, prec)]
    t1, t2 = np.meshgrid(*grid, indexing="ij")
    logq = sum(-0.5 * p * (t - m) ** 2 + 0.5 * np.log(p / (2 * np.pi)) for t, m, p in zip((t1, t2), mus, prec))
    log_ratio = sum(0.5 * np.log(reduced / prior) - 0.5 * (reduced - prior) * t**2 for t in (t1, t2))
    joint = np.log(np.trapezoid(np.trapezoid(np.exp(logq + log_ratio), grid[1], axis=1), grid[0]))
    with jax.enable_x64(True):
        per = bx.delta_f_gaussian(jnp.asarray(mus), jnp.asarray(hs), ess, delta, reduced)
        group = float(bx.group_delta_f(per[None, :], axis=0)[0])
    assert group == pytest.approx(joint, abs=1e-6)


def test_worked_values():
    got = bx.delta_f_spike(jnp.array([0.03, 0.005]), jnp.array([0.1, 0.01]), 60_000.0, 1e-3)
    assert float(got[0]) == pytest.approx(-0.41944, abs=1e-5)
    assert float(got[1]) == pytest.approx(1.190698, abs=1e-5)


def test_prune_iff_snr_below_bar():
    ess, delta = 1000.0, 1e-2
    mu = jnp.linspace(-0.2, 0.2, 101)
    h = jnp.full_like(mu, 2.0)
    df = bx.delta_f_spike(mu, h, ess, delta)
    snr = jnp.abs(mu) * jnp.sqrt(ess * (h + delta))
    bar = jnp.sqrt(jnp.log1p(h / delta))
    np.testing.assert_array_equal(df > 0, snr < bar)


def test_no_nan_for_zero_curvature_and_bad_prior_rejected():
    assert bool(jnp.all(jnp.isfinite(bx.delta_f_spike(jnp.zeros(3), jnp.zeros(3), 10.0, 1e-3))))
    assert bool(jnp.all(jnp.isfinite(bx.delta_f_gaussian(jnp.zeros(3), jnp.zeros(3), 10.0, 1e-3, 1e3))))
    with pytest.raises(ValueError, match="weight_decay must be a number > 0"):
        bx.delta_f_spike(jnp.zeros(3), jnp.ones(3), 10.0, 0.0)
    with pytest.raises(ValueError, match="ess must be a number > 0"):
        bx.delta_f_spike(jnp.zeros(3), jnp.ones(3), -1.0, 1e-3)
    with pytest.raises(ValueError, match="reduced_precision"):
        bx.delta_f_gaussian(jnp.zeros(3), jnp.ones(3), 10.0, 1.0, 5.0)


def test_group_delta_f_with_bias():
    df = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(bx.group_delta_f(df, 0, jnp.array([1.0, 2.0, 3.0])), [7.0, 24.0, 41.0])
    np.testing.assert_allclose(bx.group_delta_f(df, 1), df.sum(0))


def test_spike_and_slab():
    # Clearly separated: 30 weights strongly kept (ΔF = −40), 70 clearly prunable (ΔF = +3).
    df = jnp.concatenate([jnp.full(30, -40.0), jnp.full(70, 3.0)])
    keep = bx.spike_and_slab_mask(df)
    assert int(keep.sum()) == 30 and bool(keep[:30].all())
    # The fixed point is consistent: ζ = ψ(α) − ψ(β) with q from ζ itself.
    zeta = bx.spike_and_slab_threshold(df, num_iters=200)
    q = jax.nn.sigmoid(zeta - df)
    from jax.scipy.special import digamma

    assert float(zeta) == pytest.approx(float(digamma(1 + q.sum()) - digamma(1 + (1 - q).sum())), abs=1e-5)
    # With every ΔF negative and large, everything is kept.
    assert bool(bx.spike_and_slab_mask(jnp.full(10, -50.0)).all())


def test_posterior_delta_f_covers_every_trainable_weight():
    import equinox as eqx

    post = bx.Posterior(bx.Sparse(eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))), ess=100.0, weight_decay=0.1, hess_init=2.0)
    # a curvature with a quarter of hess_init left in it: ΔF uses the data part (h - w·h0)/(1 - w)
    post = eqx.tree_at(lambda p: (p.hess["layers[0].weight"], p.init_weight), post,
                       (jnp.linspace(0.6, 3.0, 12).reshape(4, 3), jnp.asarray(0.25)))
    df = bx.posterior_delta_f(post, curvature="data")
    w, h = post.mean.model.layers[0].weight, post.hess["layers[0].weight"]
    np.testing.assert_allclose(df["layers[0].weight"], bx.delta_f_spike(w, (h - 0.25 * 2.0) / 0.75, 100.0, 0.1), rtol=1e-6)
    np.testing.assert_allclose(df["layers[1].bias"], bx.delta_f_spike(post.mean.model.layers[1].bias, 2.0, 100.0, 0.1), rtol=1e-6)
    np.testing.assert_allclose(bx.posterior_delta_f(post)["layers[0].weight"], bx.delta_f_spike(w, h, 100.0, 0.1), rtol=1e-6)
    df = bx.posterior_delta_f(post)
    # One entry per trainable weight (biases included), keyed like hess; the masks get none.
    assert set(df) == set(post.hess) == {"layers[0].weight", "layers[0].bias", "layers[1].weight", "layers[1].bias"}
    assert len(jax.tree.leaves(df)) == 4
    for path, d in df.items():
        assert d.shape == post.hess[path].shape


def _linear_gaussian_layer(seed=0, n=40, d=6, sigma=0.5, prior=2.0):
    """A one-row linear layer y = X w + noise: its exact posterior (precision XᵀX/σ² + πI, mean the
    MAP) and a function giving the exact log evidence of the model using only some inputs."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.5  # correlated inputs
    y = x @ np.array([1.5, 0.0, -0.8, 0.05, 0.0, 0.3])[:d] + sigma * rng.normal(size=n)
    precision = x.T @ x / sigma**2 + prior * np.eye(d)
    mean = np.linalg.solve(precision, x.T @ y / sigma**2)

    def log_evidence(cols):
        cov = sigma**2 * np.eye(n) + x[:, cols] @ x[:, cols].T / prior
        return -0.5 * (y @ np.linalg.solve(cov, y) + np.linalg.slogdet(2 * np.pi * cov)[1])

    return mean, precision, prior, log_evidence


def test_full_covariance_reduction_is_the_obs_update_with_the_exact_evidence():
    mean, precision, prior, log_evidence = _linear_gaussian_layer()
    d = len(mean)
    new, mask, delta_f = bx.full_covariance_reduction(mean[None], precision, prior, sparsity=0.5)
    keep = np.asarray(mask[0])
    assert keep.sum() == 3
    cov = np.linalg.inv(precision)
    s, r = np.flatnonzero(~keep), np.flatnonzero(keep)
    obs = mean[r] - cov[np.ix_(r, s)] @ np.linalg.solve(cov[np.ix_(s, s)], mean[s])  # OBS / conditional mean
    np.testing.assert_allclose(np.asarray(new[0])[r], obs, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(new[0])[s], 0.0)
    exact = log_evidence(list(r)) - log_evidence(list(range(d)))
    np.testing.assert_allclose(float(delta_f[0]), exact, rtol=1e-4, atol=1e-4)
    # the reduced mean is the MAP of the model without those inputs (BMR = refitting, here exactly)
    x_prec = precision[np.ix_(r, r)]
    np.testing.assert_allclose(obs, np.linalg.solve(x_prec, (precision @ mean)[r]), rtol=1e-4, atol=1e-5)


def test_full_covariance_reduction_stops_where_the_evidence_stops_rising():
    mean, precision, prior, log_evidence = _linear_gaussian_layer(seed=1)
    d = len(mean)
    _, mask, delta_f = bx.full_covariance_reduction(np.stack([mean, mean]), precision, prior)
    keep = np.asarray(mask[0])
    assert 0 < keep.sum() < d and (np.asarray(mask[1]) == keep).all()
    full = log_evidence(list(range(d)))
    kept = list(np.flatnonzero(keep))
    np.testing.assert_allclose(float(delta_f[0]), log_evidence(kept) - full, rtol=1e-4, atol=1e-4)
    assert float(delta_f[0]) > 0
    for j in kept:  # switching off any one more weight lowers the evidence
        assert log_evidence([c for c in kept if c != j]) < log_evidence(kept)


def test_full_covariance_reduction_errors():
    with pytest.raises(TypeError, match="precision"):  # the shape annotations catch it
        bx.full_covariance_reduction(np.ones((2, 3)), np.eye(4), 1.0)
    with pytest.raises(ValueError, match="prior_precision"):
        bx.full_covariance_reduction(np.ones((2, 3)), np.eye(3), 0.0)
