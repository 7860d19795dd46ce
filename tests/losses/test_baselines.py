"""Baseline hashing losses against float64 NumPy references, plus gradient-health checks.

The references are written pair by pair from the papers' formulas, independently of the
vectorized (and numerically rearranged) JAX code they check.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from deephash_jax.losses import baselines

BITS = (16, 32, 48, 64)


# ----------------------------------------------------------------------------------------------
# NumPy float64 references.


def _ordered_pairs(labels):
  """[(i, j, s_ij)] over i != j, and the class-balance weight of a similar / dissimilar pair."""
  pairs = [(i, j, labels[i] == labels[j])
           for i, j in itertools.product(range(len(labels)), repeat=2) if i != j]
  num_similar = sum(s for _, _, s in pairs)
  num_dissimilar = len(pairs) - num_similar
  w_similar = len(pairs) / num_similar if num_similar else 0.0
  w_dissimilar = len(pairs) / num_dissimilar if num_dissimilar else 0.0
  return pairs, w_similar, w_dissimilar


def _cos_eps(a, b, eps):
  return a @ b / (math.sqrt(a @ a + eps) * math.sqrt(b @ b + eps))


def np_dch(pre, labels, *, gamma, quantization_weight, eps=baselines.NORM_EPS):
  h = np.tanh(pre.astype(np.float64))
  num_bits = h.shape[1]
  dist = lambda a, b: num_bits / 2 * (1 - _cos_eps(a, b, eps))
  pairs, w_similar, w_dissimilar = _ordered_pairs(labels)
  total = 0.0
  for i, j, similar in pairs:
    d = dist(h[i], h[j])
    if similar:  # the paper's Eq. 8 form: s log(d / gamma) + log(1 + gamma / d)
      total += w_similar * (math.log(d / gamma) + math.log(1 + gamma / d))
    else:
      total += w_dissimilar * math.log(1 + gamma / d)
  cauchy = total / len(pairs) if pairs else 0.0
  ones = np.ones(num_bits)
  quantization = np.mean([math.log(1 + dist(np.abs(row), ones) / gamma) for row in h])
  return cauchy + quantization_weight * quantization


def np_hashnet(pre, labels, *, step, alpha, continuation_gamma, continuation_power,
               continuation_step_size):
  held = math.floor(step / continuation_step_size) * continuation_step_size
  beta = (1 + continuation_gamma * held) ** continuation_power
  h = np.tanh(beta * pre.astype(np.float64))
  pairs, w_similar, w_dissimilar = _ordered_pairs(labels)
  total = 0.0
  for i, j, similar in pairs:
    theta = alpha * h[i] @ h[j]
    total += ((w_similar if similar else w_dissimilar)
              * (np.logaddexp(0.0, theta) - similar * theta))
  return total / len(pairs) if pairs else 0.0


def np_dpsh(pre, labels, *, quantization_weight):
  u = pre.astype(np.float64)
  pairs, _, _ = _ordered_pairs(labels)
  likelihood = np.mean([np.logaddexp(0.0, 0.5 * u[i] @ u[j]) - s * 0.5 * u[i] @ u[j]
                        for i, j, s in pairs]) if pairs else 0.0
  return likelihood + quantization_weight * np.mean((u - np.sign(u)) ** 2)


def np_csq_centers(num_classes, num_bits, seed):
  if num_bits & (num_bits - 1) == 0 and num_classes <= 2 * num_bits:
    hadamard = scipy.linalg.hadamard(num_bits)
    return np.concatenate([hadamard, -hadamard])[:num_classes].astype(np.float64)
  return np.asarray(baselines.csq_centers(num_classes, num_bits, seed), np.float64)


def np_csq(pre, labels, *, num_classes, quantization_weight, center_seed):
  h = np.tanh(pre.astype(np.float64))
  target = (np_csq_centers(num_classes, h.shape[1], center_seed)[labels] + 1) / 2
  p = (h + 1) / 2
  bce = -(target * np.log(p) + (1 - target) * np.log(1 - p))
  return bce.mean() + quantization_weight * np.mean((np.abs(h) - 1) ** 2)


def np_greedyhash(pre, labels, *, penalty_weight):
  return penalty_weight * np.mean(np.abs(np.abs(pre.astype(np.float64)) - 1) ** 3)


def np_orthohash(pre, labels, *, num_classes, scale, margin, quantization_weight,
                 codebook_seed, eps=baselines.NORM_EPS):
  v = pre.astype(np.float64)
  codebook = np.asarray(baselines.orthohash_codebook(num_classes, v.shape[1], codebook_seed),
                        np.float64)
  ce, quantization = [], []
  for row, label in zip(v, labels):
    cos = np.array([row @ c / (math.sqrt(row @ row + eps) * math.sqrt(c @ c)) for c in codebook])
    logits = scale * (cos - margin * (np.arange(num_classes) == label))
    ce.append(np.logaddexp.reduce(logits) - logits[label])
    quantization.append(1 - _cos_eps(row, np.sign(row), eps))
  return np.mean(ce) + quantization_weight * np.mean(quantization)


REFERENCES = {
    "dch": np_dch,
    "hashnet": np_hashnet,
    "dpsh": np_dpsh,
    "csq": np_csq,
    "greedyhash": np_greedyhash,
    "orthohash": np_orthohash,
}


def _reference(name, pre, labels, *, num_classes, step, **hyper):
  extra = {}
  if name in ("csq", "orthohash"):
    extra["num_classes"] = num_classes
  if name == "hashnet":
    extra["step"] = step
  return REFERENCES[name](pre, labels, **extra, **hyper)


# ----------------------------------------------------------------------------------------------
# Inputs.


def _pre_codes(kind, batch, num_bits, seed):
  rng = np.random.default_rng(seed)
  if kind == "random":
    return rng.normal(size=(batch, num_bits)).astype(np.float32)
  if kind == "unit":  # pre-codes exactly +-1
    return rng.choice([-1.0, 1.0], size=(batch, num_bits)).astype(np.float32)
  if kind == "saturated":  # tanh is exactly +-1 in float32
    return rng.choice([-12.0, 12.0], size=(batch, num_bits)).astype(np.float32)
  if kind == "zeros":
    return np.zeros((batch, num_bits), np.float32)
  raise ValueError(kind)


def _near_collapsed(batch, num_bits, seed, scale):
  """Every row the same vector up to a 1e-3 relative perturbation (a fresh network)."""
  rng = np.random.default_rng(seed)
  base = scale * rng.normal(size=(1, num_bits))
  return (base + 1e-3 * scale * rng.normal(size=(batch, num_bits))).astype(np.float32)


def _labels(kind, batch, seed):
  """(B,) class ids in [0, batch): the loss is called with num_classes=batch throughout, so that
  every label kind of a shape shares one compilation."""
  if kind == "mixed":  # three classes, both similar and dissimilar pairs
    return np.random.default_rng(seed).permutation(np.arange(batch) % 3).astype(np.int32)
  if kind == "one_class":  # every pair similar
    return np.zeros(batch, np.int32)
  if kind == "all_distinct":  # no pair similar
    return np.arange(batch, dtype=np.int32)
  raise ValueError(kind)


@functools.lru_cache(maxsize=None)
def _compiled(name, num_classes, hyper):
  """jit(value_and_grad) of one loss: one compilation per shape instead of one per primitive,
  which keeps the file fast."""
  fn = functools.partial(baselines.BASELINES[name], num_classes=num_classes, **dict(hyper))
  return jax.jit(jax.value_and_grad(lambda p, l, s: fn(p, l, step=s), has_aux=True))


def _loss_and_grad(name, pre, labels, *, num_classes, step=0, **overrides):
  """((loss, aux), d loss / d pre_codes), default hyper-parameters updated by overrides."""
  hyper = {**baselines.default_hyper(name, pre.shape[1]), **overrides}
  compiled = _compiled(name, num_classes, tuple(sorted(hyper.items())))
  return compiled(jnp.asarray(pre), jnp.asarray(labels), jnp.int32(step))


def _loss(name, pre, labels, *, num_classes, step=0, **overrides):
  return _loss_and_grad(name, pre, labels, num_classes=num_classes, step=step, **overrides)[0]


# ----------------------------------------------------------------------------------------------
# Values.

SHAPES = [(6, 8), (9, 16), (8, 32), (12, 48), (10, 64)]
BATCH_AT = {num_bits: batch for batch, num_bits in SHAPES}
CASES = [("random", "mixed"), ("random", "one_class"), ("random", "all_distinct"),
         ("unit", "mixed"), ("saturated", "mixed"), ("zeros", "mixed"), ("zeros", "one_class")]


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
@pytest.mark.parametrize("batch,num_bits", SHAPES)
def test_value_matches_numpy_reference(name, batch, num_bits):
  for seed, (code_kind, label_kind) in enumerate(CASES):
    pre = _pre_codes(code_kind, batch, num_bits, seed)
    labels = _labels(label_kind, batch, seed)
    hyper = baselines.default_hyper(name, num_bits)
    loss, aux = _loss(name, pre, labels, num_classes=batch)
    expected = _reference(name, pre, labels, num_classes=batch, step=0, **hyper)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-7,
                               err_msg=f"{name} {code_kind} {label_kind}")
    assert loss.shape == () and loss.dtype == jnp.float32
    assert all(np.isfinite(float(v)) for v in aux.values())


@pytest.mark.parametrize("step", [0, 199, 200, 1000, 12345])
def test_hashnet_continuation_value_and_schedule(step):
  pre = _pre_codes("random", 8, 32, step)
  labels = _labels("mixed", 8, step)
  hyper = baselines.default_hyper("hashnet", 32)
  loss, aux = _loss("hashnet", pre, labels, num_classes=8, step=step)
  expected = np_hashnet(pre, labels, step=step, **hyper)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  held = (step // 200) * 200
  np.testing.assert_allclose(float(aux["beta"]), math.sqrt(1 + 0.005 * held), rtol=1e-6)


def test_aux_terms_add_up_to_the_loss():
  pre = _pre_codes("random", 9, 16, 0)
  labels, num_classes = _labels("mixed", 9, 0), 9
  weighted = {"dch": ("cauchy", "quantization"), "dpsh": ("likelihood", "quantization"),
              "csq": ("center", "quantization"), "orthohash": ("ce", "quantization")}
  for name, (main, extra) in weighted.items():
    weight = baselines.default_hyper(name, 16)["quantization_weight"]
    loss, aux = _loss(name, pre, labels, num_classes=num_classes)
    np.testing.assert_allclose(float(loss), float(aux[main] + weight * aux[extra]), rtol=1e-6)
  loss, aux = _loss("greedyhash", pre, labels, num_classes=num_classes)
  np.testing.assert_allclose(float(loss), 0.1 * float(aux["penalty"]), rtol=1e-6)


def test_single_example_batch_has_no_pair_term():
  pre = _pre_codes("random", 1, 16, 0)
  for name in ("dch", "hashnet", "dpsh"):
    loss, _ = _loss(name, pre, np.zeros(1, np.int32), num_classes=1)
    expected = _reference(name, pre, np.zeros(1, np.int32), num_classes=1, step=0,
                          **baselines.default_hyper(name, 16))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("name", ["csq", "orthohash"])
def test_single_class_problem(name):
  pre = _pre_codes("random", 9, 16, 0)
  labels = np.zeros(9, np.int32)
  loss, _ = _loss(name, pre, labels, num_classes=1)
  expected = _reference(name, pre, labels, num_classes=1, step=0,
                        **baselines.default_hyper(name, 16))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# Gradients: finite and non-zero at every bit length, including at a near-collapsed start.


def _grad(name, pre, labels, num_classes, step=0, **overrides):
  return np.asarray(_loss_and_grad(name, pre, labels, num_classes=num_classes, step=step,
                                   **overrides)[1])


# The similarity-preserving term alone: a regularizer's gradient must not hide a dead main term
# (a cosine clipped at 0.99 silences DCH's pair term while its quantization term stays live).
# GreedyHash's main term is the loop's classifier on sign_straight_through codes (tested below).
SIMILARITY_ONLY = {
    "dch": {"quantization_weight": 0.0},
    "hashnet": {},
    "dpsh": {"quantization_weight": 0.0},
    "csq": {"quantization_weight": 0.0},
    "orthohash": {"quantization_weight": 0.0},
}


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
@pytest.mark.parametrize("num_bits", BITS)
def test_gradient_finite_and_nonzero(name, num_bits):
  batch = BATCH_AT[num_bits]
  labels = _labels("mixed", batch, num_bits)
  inputs = {
      "random": _pre_codes("random", batch, num_bits, num_bits),
      "near-collapsed, small outputs": _near_collapsed(batch, num_bits, num_bits, scale=0.01),
      "near-collapsed, unit outputs": _near_collapsed(batch, num_bits, num_bits, scale=1.0),
  }
  # The floor only has to catch lost gradients (exact zeros, underflow). Genuine small ones
  # exist: HashNet's balanced pulls nearly cancel when all codes sit near the origin (~1e-5
  # here, the same in float64).
  terms = {"total": {}}
  if name in SIMILARITY_ONLY:
    terms["similarity term"] = SIMILARITY_ONLY[name]
  for (kind, pre), (term, overrides) in itertools.product(inputs.items(), terms.items()):
    grad = _grad(name, pre, labels, batch, **overrides)
    where = f"{name} {num_bits} bits, {kind}, {term}"
    assert np.all(np.isfinite(grad)), f"{where}: non-finite gradient"
    assert np.linalg.norm(grad) > 1e-6, f"{where}: gradient norm {np.linalg.norm(grad):.3g}"


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
def test_gradient_matches_finite_differences_of_reference(name):
  batch, num_bits = 6, 8
  pre = _pre_codes("random", batch, num_bits, 7)
  labels = _labels("mixed", batch, 7)
  hyper = baselines.default_hyper(name, num_bits)
  reference = lambda p: _reference(name, p, labels, num_classes=batch, step=0, **hyper)
  numeric = np.zeros((batch, num_bits))
  delta = 1e-6
  for index in np.ndindex(batch, num_bits):
    shift = np.zeros((batch, num_bits))
    shift[index] = delta
    numeric[index] = (reference(pre + shift) - reference(pre - shift)) / (2 * delta)
  np.testing.assert_allclose(_grad(name, pre, labels, batch), numeric, rtol=1e-3,
                             atol=1e-4 * np.abs(numeric).max())


@pytest.mark.parametrize("num_bits", BITS)
def test_hashnet_gradient_survives_late_continuation(num_bits):
  batch = BATCH_AT[num_bits]
  pre = _near_collapsed(batch, num_bits, 0, scale=0.01)
  grad = _grad("hashnet", pre, _labels("mixed", batch, 0), batch, step=20000)  # beta=sqrt(101)
  assert np.all(np.isfinite(grad)) and np.linalg.norm(grad) > 1e-6


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
def test_gradient_finite_at_zero_and_saturated_codes(name):
  labels = _labels("mixed", 9, 0)
  for kind in ("zeros", "unit", "saturated"):
    grad = _grad(name, _pre_codes(kind, 9, 16, 0), labels, 9)
    assert np.all(np.isfinite(grad)), f"{name} {kind}"


def _clipped_dch_cauchy(pre, labels):
  """The Cauchy term with cos clamped at 0.99, as a known re-implementation does."""
  h = jnp.tanh(pre)
  num_bits = h.shape[1]
  norms = jnp.linalg.norm(h, axis=1)
  cos = (h @ h.T) / jnp.maximum(norms[:, None] * norms[None, :], 1e-4)
  d = (1 - jnp.minimum(cos, 0.99)) * num_bits / 2
  s = (labels[:, None] == labels[None, :]).astype(jnp.float32)
  return jnp.mean(s * jnp.log(d / 20.0) + jnp.log(1 + 20.0 / d))


@functools.partial(jax.jit, static_argnames="num_bits")
def _dch_cauchy_grads(pre, labels, num_bits):
  """Gradients of the clipped and of our Cauchy term."""
  ours = lambda p: baselines.dch_loss(p, labels, num_classes=1, step=0,
                                      **baselines.default_hyper("dch", num_bits))[1]["cauchy"]
  return jax.grad(_clipped_dch_cauchy)(pre, labels), jax.grad(ours)(pre)


def _np_mean_dissimilar_distance(pre, labels):
  h = np.tanh(pre.astype(np.float64))
  h /= np.linalg.norm(h, axis=1, keepdims=True)
  return np.mean((1 - h @ h.T)[labels[:, None] != labels[None, :]])


@pytest.mark.parametrize("num_bits", [16, 48])
def test_dch_keeps_gradient_where_a_clipped_cosine_loses_it(num_bits):
  labels = _labels("mixed", 8, 0)
  pre = _near_collapsed(8, num_bits, 0, scale=0.01)
  clipped, grad = map(np.asarray, _dch_cauchy_grads(pre, labels, num_bits))
  assert np.all(clipped == 0.0)  # the input is in the regime the clip silences
  assert np.all(np.isfinite(grad)) and np.linalg.norm(grad) > 1e-3
  # Descending it spreads the dissimilar pairs apart.
  step = 1e-3 * pre.std() / np.abs(grad).max()
  assert (_np_mean_dissimilar_distance(pre - step * grad, labels)
          > _np_mean_dissimilar_distance(pre, labels))


# ----------------------------------------------------------------------------------------------
# CSQ hash centers.


def _min_distance(centers):
  dist = 0.5 * (centers.shape[1] - centers @ centers.T)
  return dist[~np.eye(len(centers), dtype=bool)].min()


@pytest.mark.parametrize("num_bits", BITS)
def test_csq_centers_shape_values_and_separation(num_bits):
  centers = baselines.csq_centers(10, num_bits, seed=0)
  assert centers.shape == (10, num_bits) and centers.dtype == np.float32
  assert set(np.unique(centers)) == {-1.0, 1.0}
  assert _min_distance(centers) >= num_bits / 4
  assert not centers.flags.writeable  # cached: callers must not be able to alter it


def test_csq_centers_deterministic_for_a_seed():
  baselines.csq_centers.cache_clear()
  first = np.array(baselines.csq_centers(10, 48, seed=3))
  baselines.csq_centers.cache_clear()
  np.testing.assert_array_equal(baselines.csq_centers(10, 48, seed=3), first)
  assert not np.array_equal(baselines.csq_centers(10, 48, seed=4), first)


def test_csq_centers_are_hadamard_rows_for_powers_of_two():
  for num_bits, num_classes in [(16, 10), (16, 32), (64, 100)]:
    np.testing.assert_array_equal(baselines.csq_centers(num_classes, num_bits),
                                  np_csq_centers(num_classes, num_bits, 0))
    assert _min_distance(baselines.csq_centers(num_classes, num_bits)) == num_bits / 2


def test_csq_centers_random_rows_are_balanced():
  for num_bits, num_classes in [(48, 10), (24, 100), (8, 20)]:  # no Hadamard / too many classes
    centers = baselines.csq_centers(num_classes, num_bits)
    assert centers.shape == (num_classes, num_bits)
    np.testing.assert_array_equal(centers.sum(axis=1), 0.0)


def test_csq_centers_warn_when_separation_is_unreachable():
  with pytest.warns(UserWarning, match="minimum Hamming distance"):
    centers = baselines.csq_centers(300, 12, max_tries=5)  # 300 codes of 12 bits: too many
  assert set(np.unique(centers)) == {-1.0, 1.0}


def test_orthohash_codebook_deterministic_and_signed():
  codebook = baselines.orthohash_codebook(10, 48, seed=1)
  assert codebook.shape == (10, 48) and set(np.unique(codebook)) == {-1.0, 1.0}
  baselines.orthohash_codebook.cache_clear()
  np.testing.assert_array_equal(baselines.orthohash_codebook(10, 48, seed=1), codebook)


# ----------------------------------------------------------------------------------------------
# Registry, hyper-parameters, compilation.


def test_registry_and_default_hyper():
  assert set(baselines.BASELINES) == {"dch", "hashnet", "dpsh", "csq", "greedyhash", "orthohash"}
  assert baselines.default_hyper("hashnet", 48)["alpha"] == pytest.approx(10 / 48)
  assert baselines.default_hyper("dch", 64) == {"gamma": 20.0, "quantization_weight": 0.1}
  with pytest.raises(KeyError):
    baselines.default_hyper("nope", 32)


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
def test_bfloat16_input_computes_in_float32(name):
  # Every other test already runs the losses under jit with a traced step.
  pre = _pre_codes("random", 12, 48, 0)
  labels = _labels("mixed", 12, 0)
  (loss, aux), grad = _loss_and_grad(name, jnp.asarray(pre, jnp.bfloat16), labels,
                                     num_classes=12, step=400)
  expected = _reference(name, np.asarray(jnp.asarray(pre, jnp.bfloat16), np.float32), labels,
                        num_classes=12, step=400, **baselines.default_hyper(name, 48))
  assert loss.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert set(aux) and all(v.shape == () for v in aux.values())
