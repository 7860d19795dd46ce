"""Loss functions of supervised deep hashing baselines, for comparison runs.

Every method is a pure function with one signature, so that the shared training loop can swap
them by name (``BASELINES[name]``)::

    loss, aux = xxx_loss(pre_codes, labels, *, num_classes, step, **hyper)

* ``pre_codes``: (B, K) output of the hash layer *before* any squashing. Each method applies its
  own activation (``tanh``, ``tanh(beta * z)``, ``sign`` with a straight-through gradient, or
  none). Computation is in float32 whatever the input dtype.
* ``labels``: (B,) int class ids in ``[0, num_classes)``.
* ``num_classes``: static Python int (CSQ and OrthoHash build their class codes from it).
* ``step``: the (possibly traced) integer training step, for schedules (HashNet's continuation).
* ``hyper``: the method's hyper-parameters, keyword-only and without defaults here:
  ``default_hyper(name, num_bits)`` is their single source, each value with its citation.
* Returns the scalar loss and ``aux``, a dict of named scalar sub-terms (unweighted) for logging.

Pair similarity (pairwise methods) is ``s_ij = [labels_i == labels_j]`` over all ordered pairs
``i != j`` of the batch; the diagonal is excluded. Pair terms are averaged over those
``B * (B - 1)`` pairs; with the class-balance weights of DCH and HashNet (``|S| / |S1|`` on
similar pairs, ``|S| / |S0|`` on dissimilar ones, ``S`` the set of pairs) that average equals
mean-over-similar-pairs plus mean-over-dissimilar-pairs, and a batch without similar (or
without dissimilar) pairs simply has no such term.

Numerical choices that differ from some public re-implementations are deliberate and noted at
each method (no clip that silences gradients, stable softplus / log-sigmoid forms).
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from deephash_jax.losses import distance

__all__ = [
    "BASELINES",
    "NORM_EPS",
    "csq_centers",
    "csq_loss",
    "dch_loss",
    "default_hyper",
    "dpsh_loss",
    "greedyhash_loss",
    "hashnet_loss",
    "hashnet_scale",
    "orthohash_codebook",
    "orthohash_loss",
]

# Added to squared norms before dividing (cosines of DCH and OrthoHash): keeps the cosine
# defined at a zero code and strictly below 1 for parallel codes, without clipping anything.
NORM_EPS = distance.NORM_EPS


# ----------------------------------------------------------------------------------------------
# Shared pieces.


def _as_float32(pre_codes):
  pre_codes = jnp.asarray(pre_codes)
  if pre_codes.ndim != 2:
    raise ValueError(f"pre_codes must be (batch, num_bits), got shape {pre_codes.shape}")
  return pre_codes.astype(jnp.float32)


def _pairs(labels):
  """(similarity s_ij, off-diagonal mask), both (B, B) float32."""
  labels = jnp.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be (batch,) class ids, got shape {labels.shape}")
  similar = (labels[:, None] == labels[None, :]).astype(jnp.float32)
  off_diagonal = 1.0 - jnp.eye(labels.shape[0], dtype=jnp.float32)
  return similar, off_diagonal


def _gram(a, b):
  """a @ b.T at full float32 precision (no TF32 / bf16 passes on accelerators): B x B x K is
  small, and the losses are compared against float64 references."""
  return jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)


def _pair_mean(per_pair, mask):
  return jnp.sum(per_pair * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _balanced_pair_mean(per_pair, similar, mask):
  """(1/|S|) sum_ij w_ij l_ij with w = |S|/|S1| (similar), |S|/|S0| (dissimilar).

  DCH's Eq. 2 and HashNet's weighted likelihood. An empty side gets weight 0 instead of a
  division by zero (its pairs do not exist, so nothing is lost).
  """
  num_pairs = jnp.sum(mask)
  num_similar = jnp.sum(similar * mask)
  num_dissimilar = num_pairs - num_similar
  weights = (similar * num_pairs / jnp.maximum(num_similar, 1.0)
             + (1.0 - similar) * num_pairs / jnp.maximum(num_dissimilar, 1.0))
  return _pair_mean(weights * per_pair, mask)


def _balanced_codes(num_classes, num_bits, rng):
  """+-1 rows with round(K/2) entries at -1 each, as the CSQ tutorial samples them."""
  rows = np.ones((num_classes, num_bits), np.float32)
  for row in rows:
    row[rng.permutation(num_bits)[: round(num_bits / 2)]] = -1.0
  return rows


def _min_pairwise_hamming(codes):
  if codes.shape[0] < 2:
    return codes.shape[1]
  dist = 0.5 * (codes.shape[1] - codes @ codes.T)
  np.fill_diagonal(dist, np.inf)
  return int(dist.min())


def _is_power_of_two(n):
  return n > 0 and n & (n - 1) == 0


def sylvester_hadamard(n):
  """n x n Hadamard matrix, n a power of 2 (the Sylvester construction of scipy.linalg.hadamard)."""
  h = np.ones((1, 1), np.float32)
  while h.shape[0] < n:
    h = np.block([[h, h], [h, -h]])
  return h


def _frozen(array):
  array.flags.writeable = False
  return array


# ----------------------------------------------------------------------------------------------
# DCH.


def dch_loss(pre_codes, labels, *, num_classes, step, gamma, quantization_weight,
             eps=NORM_EPS):
  """Deep Cauchy Hashing: Cao, Long, Liu, Wang, "Deep Cauchy Hashing for Hamming Space
  Retrieval", CVPR 2018.

  With ``h = tanh(pre_codes)`` and the normalized Hamming distance
  ``d_ij = K/2 * (1 - cos(h_i, h_j))`` (Eq. 6), the Cauchy cross-entropy (Eq. 8) on the
  Cauchy probability ``gamma / (gamma + d)``::

      l_ij = s_ij * log(1 + d_ij / gamma) + (1 - s_ij) * log(1 + gamma / d_ij)

  (``s log(d/gamma) + log(1 + gamma/d)`` in the paper's form) averaged with the class-balance
  weights (Eq. 2), plus the Cauchy quantization loss (Eq. 9)
  ``mean_i log(1 + d(|h_i|, 1) / gamma)`` weighted by ``quantization_weight`` (lambda, Eq. 7).

  The cosine has ``eps`` in the norms and nothing else: a known re-implementation clips cos at
  0.99, which zeroes the gradient of every pair whose codes are near-parallel, i.e. of every
  pair at the start of training when the network's outputs are almost the same for all
  inputs. Here a dissimilar near-parallel pair keeps a large, finite gradient (d >= K/4 *
  (res_i + res_j) > 0). ``num_classes`` and ``step`` are unused.
  """
  del num_classes, step
  codes = jnp.tanh(_as_float32(pre_codes))
  similar, mask = _pairs(labels)
  dist = distance.relaxed_hamming(codes, codes, eps=eps)
  per_pair = (similar * jnp.log1p(dist / gamma) + (1.0 - similar) * jnp.log1p(gamma / dist))
  cauchy = _balanced_pair_mean(per_pair, similar, mask)
  ones = jnp.ones((1, codes.shape[1]), jnp.float32)
  quantization = jnp.mean(jnp.log1p(
      distance.relaxed_hamming(jnp.abs(codes), ones, eps=eps) / gamma))
  loss = cauchy + quantization_weight * quantization
  return loss, {"cauchy": cauchy, "quantization": quantization}


# ----------------------------------------------------------------------------------------------
# HashNet.


def hashnet_scale(step, *, continuation_gamma, continuation_power, continuation_step_size):
  """HashNet's continuation scale beta = (1 + gamma * t) ** power, t = step rounded down to a
  multiple of ``continuation_step_size`` (thuml/HashNet pytorch/src/network.py: the scale is
  refreshed every ``step_size = 200`` iterations; step size 1 gives the smooth schedule)."""
  step = jnp.asarray(step)
  held = (step // continuation_step_size) * continuation_step_size
  return (1.0 + continuation_gamma * held.astype(jnp.float32)) ** continuation_power


def hashnet_loss(pre_codes, labels, *, num_classes, step, alpha, continuation_gamma,
                 continuation_power, continuation_step_size):
  """HashNet: Cao, Long, Wang, Yu, "HashNet: Deep Learning to Hash by Continuation", ICCV 2017.

  ``h = tanh(beta * pre_codes)`` with the continuation scale ``beta = hashnet_scale(step)``
  growing so that tanh tends to sign, and the weighted maximum likelihood on the inner product
  ``theta_ij = alpha * <h_i, h_j>``::

      l_ij = log(1 + exp(theta_ij)) - s_ij * theta_ij

  (a stable softplus, which is what the released code's ``l_threshold = 15`` linearization
  approximates), averaged with the class-balance weights ``|S|/|S1|``, ``|S|/|S0|``.
  ``num_classes`` is unused. ``aux["beta"]`` logs the scale.
  """
  del num_classes
  beta = hashnet_scale(step, continuation_gamma=continuation_gamma,
                       continuation_power=continuation_power,
                       continuation_step_size=continuation_step_size)
  codes = jnp.tanh(beta * _as_float32(pre_codes))
  similar, mask = _pairs(labels)
  theta = alpha * _gram(codes, codes)
  per_pair = jax.nn.softplus(theta) - similar * theta
  likelihood = _balanced_pair_mean(per_pair, similar, mask)
  return likelihood, {"likelihood": likelihood, "beta": beta}


# ----------------------------------------------------------------------------------------------
# DPSH.


def dpsh_loss(pre_codes, labels, *, num_classes, step, quantization_weight):
  """DPSH: Li, Wang, Kang, "Feature Learning based Deep Supervised Hashing with Pairwise
  Labels", IJCAI 2016.

  No activation: ``u = pre_codes``, ``theta_ij = <u_i, u_j> / 2`` and the negative pairwise
  log-likelihood::

      l_ij = log(1 + exp(theta_ij)) - s_ij * theta_ij          (stable softplus)

  averaged over pairs without re-weighting, plus ``quantization_weight`` (eta) times
  ``mean((u - sign(u))^2)``, with sign(u) held constant as the paper's discrete ``b_i``.
  The paper writes both terms as sums; here both are means (as in swuxyj/DeepHash-pytorch
  DPSH.py), which rescales eta (see ``default_hyper``). ``num_classes`` and ``step`` are unused.
  """
  del num_classes, step
  u = _as_float32(pre_codes)
  similar, mask = _pairs(labels)
  theta = 0.5 * _gram(u, u)
  likelihood = _pair_mean(jax.nn.softplus(theta) - similar * theta, mask)
  quantization = jnp.mean(jnp.square(u - jax.lax.stop_gradient(jnp.sign(u))))
  loss = likelihood + quantization_weight * quantization
  return loss, {"likelihood": likelihood, "quantization": quantization}


# ----------------------------------------------------------------------------------------------
# CSQ.


@functools.lru_cache(maxsize=64)
def csq_centers(num_classes: int, num_bits: int, seed: int = 0, *, max_tries: int = 1000):
  """(num_classes, num_bits) float32 hash centers of +-1, deterministic for a seed (read-only).

  As in the authors' tutorial (yuanli2333/Hadamard-Matrix-for-hashing,
  ``Tutorial_ hash_center_generation.ipynb``):

  * ``num_bits`` a power of 2 and ``num_classes <= 2 * num_bits``: the first rows of
    ``[H; -H]``, H the Sylvester Hadamard matrix (``seed`` unused). Any two centers are
    ``num_bits / 2`` apart (a row and its negation: ``num_bits``).
  * otherwise (e.g. 48 bits, where no Sylvester Hadamard matrix exists, or too many classes):
    rows with half their entries at -1 at random positions, redrawn until the minimum pairwise
    Hamming distance is ``>= num_bits / 4``; after ``max_tries`` draws the draw with the largest
    minimum distance is kept, with a warning.
  """
  if num_classes < 1 or num_bits < 1:
    raise ValueError(f"need num_classes >= 1 and num_bits >= 1, got {num_classes}, {num_bits}")
  if _is_power_of_two(num_bits) and num_classes <= 2 * num_bits:
    hadamard = sylvester_hadamard(num_bits)
    return _frozen(np.concatenate([hadamard, -hadamard])[:num_classes].astype(np.float32))
  rng = np.random.default_rng(seed)
  best, best_distance = None, -1
  for _ in range(max_tries):
    centers = _balanced_codes(num_classes, num_bits, rng)
    distance = _min_pairwise_hamming(centers)
    if distance > best_distance:
      best, best_distance = centers, distance
    if best_distance >= num_bits / 4:
      break
  else:
    warnings.warn(f"csq_centers: best minimum Hamming distance {best_distance} < "
                  f"num_bits/4 = {num_bits / 4} for {num_classes} classes after {max_tries} "
                  "draws")
  return _frozen(best)


def csq_loss(pre_codes, labels, *, num_classes, step, quantization_weight, center_seed):
  """CSQ: Yuan, Wang, Zhang, Tay, Jie, Liu, Feng, "Central Similarity Quantization for
  Efficient Image and Video Retrieval", CVPR 2020.

  ``h = tanh(pre_codes)``; each example is pulled to its class's hash center ``c``
  (``csq_centers(num_classes, K, center_seed)``) by the binary cross-entropy between
  ``(h + 1) / 2`` and ``(c + 1) / 2`` averaged over batch and bits, plus
  ``quantization_weight`` (lambda) times ``mean((|h| - 1)^2)``.

  ``(1 + tanh z) / 2 = sigmoid(2z)``, so the BCE is computed exactly as
  ``softplus(-2 * c * z)``: no log of 0 and no clamp when tanh saturates. ``step`` is unused.
  """
  del step
  pre_codes = _as_float32(pre_codes)
  centers = jnp.asarray(csq_centers(num_classes, pre_codes.shape[1], center_seed))
  targets = centers[jnp.asarray(labels)]
  center = jnp.mean(jax.nn.softplus(-2.0 * targets * pre_codes))
  codes = jnp.tanh(pre_codes)
  quantization = jnp.mean(jnp.square(jnp.abs(codes) - 1.0))
  loss = center + quantization_weight * quantization
  return loss, {"center": center, "quantization": quantization}


# ----------------------------------------------------------------------------------------------
# GreedyHash.


def greedyhash_loss(pre_codes, labels, *, num_classes, step, penalty_weight):
  """GreedyHash: Su, Zhang, Han, Tian, "Greedy Hash: Towards Fast Optimization for Accurate Hash
  Coding in CNN", NeurIPS 2018 -- the hashing part only.

  The method's loss is ``CE(classifier(sign(h))) + alpha * || |h| - 1 ||_3^3`` with the sign
  passed straight through (``models.sign_straight_through``). The shared loop owns the linear
  classifier, so for this method it feeds that classifier the model's sign codes
  (``model.code_activation='sign_ste'``) and adds the cross-entropy itself; this function
  returns only
  ``penalty_weight * mean(| |pre_codes| - 1 |^3)`` (alpha, the paper's p = 3 penalty that pulls
  h towards sign(h)). ``labels``, ``num_classes`` and ``step`` are unused.
  """
  del labels, num_classes, step
  h = _as_float32(pre_codes)
  penalty = jnp.mean(jnp.abs(jnp.abs(h) - 1.0) ** 3)
  return penalty_weight * penalty, {"penalty": penalty}


# ----------------------------------------------------------------------------------------------
# OrthoHash.


@functools.lru_cache(maxsize=64)
def orthohash_codebook(num_classes: int, num_bits: int, seed: int = 0):
  """(num_classes, num_bits) float32 codebook of i.i.d. fair +-1 entries (read-only).

  The released default (kamwoh/orthohash main.py ``--codebook-method B``, Bernoulli(0.5));
  nearly orthogonal for large ``num_bits``, which is what the method relies on.
  """
  if num_classes < 1 or num_bits < 1:
    raise ValueError(f"need num_classes >= 1 and num_bits >= 1, got {num_classes}, {num_bits}")
  rng = np.random.default_rng(seed)
  return _frozen((2.0 * rng.integers(0, 2, (num_classes, num_bits)) - 1.0).astype(np.float32))


def orthohash_loss(pre_codes, labels, *, num_classes, step, scale, margin,
                   quantization_weight, codebook_seed, eps=NORM_EPS):
  """OrthoHash: Hoe, Ng, Zhang, Chan, Song, Xiang, "One Loss for All: Deep Hashing with a Single
  Cosine Similarity based Learning Objective", NeurIPS 2021.

  No activation (the released model puts a BatchNorm on the hash layer; that belongs to the
  model). Logits are cosines between the codes and the class codebook
  (``orthohash_codebook(num_classes, K, codebook_seed)``), with an additive cosine margin on the
  true class: ``scale * (cos(v, c_k) - margin * [k == y])``, and the loss is their softmax
  cross-entropy. The released code's optional quantization term ``1 - cos(v, sign(v))``
  (sign held constant) is added with ``quantization_weight`` (0 by default there). ``step`` is
  unused.
  """
  del step
  v = _as_float32(pre_codes)
  codebook = jnp.asarray(orthohash_codebook(num_classes, v.shape[1], codebook_seed))
  v_hat, _ = distance.normalize(v, eps)
  cosine = _gram(v_hat, codebook / np.sqrt(v.shape[1]))
  onehot = jax.nn.one_hot(jnp.asarray(labels), num_classes, dtype=jnp.float32)
  logits = scale * (cosine - margin * onehot)
  ce = jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jnp.sum(logits * onehot, axis=-1))
  signs = jax.lax.stop_gradient(jnp.sign(v))
  signs_hat, _ = distance.normalize(signs, eps)
  quantization = jnp.mean(1.0 - jnp.sum(v_hat * signs_hat, axis=-1))
  loss = ce + quantization_weight * quantization
  return loss, {"ce": ce, "quantization": quantization}


# ----------------------------------------------------------------------------------------------
# Registry and recommended hyper-parameters.

BASELINES: dict[str, Callable] = {
    "dch": dch_loss,
    "hashnet": hashnet_loss,
    "dpsh": dpsh_loss,
    "csq": csq_loss,
    "greedyhash": greedyhash_loss,
    "orthohash": orthohash_loss,
}


def default_hyper(name: str, num_bits: int) -> dict:
  """The recommended hyper-parameters of baseline ``name`` at ``num_bits`` bits.

  Pass them as ``BASELINES[name](pre_codes, labels, num_classes=..., step=..., **hyper)``.
  """
  if name == "dch":
    return {
        # Cauchy scale: thulab/DeepHash examples/dch/train_val_script.py (--gamma 20) and
        # swuxyj/DeepHash-pytorch DCH.py get_config ("gamma": 20.0).
        "gamma": 20.0,
        # lambda of Eq. 7: swuxyj/DeepHash-pytorch DCH.py get_config ("lambda": 0.1).
        "quantization_weight": 0.1,
    }
  if name == "hashnet":
    return {
        # Sigmoid scale of the inner product: thuml/HashNet pytorch/src/train.py
        # ("sigmoid_param": 10.0 / hash_bit), also swuxyj/DeepHash-pytorch HashNet.py (10/bit).
        "alpha": 10.0 / num_bits,
        # Continuation beta = (1 + 0.005 t) ** 0.5, refreshed every 200 iterations:
        # thuml/HashNet pytorch/src/network.py (gamma 0.005, power 0.5, step_size 200).
        "continuation_gamma": 0.005,
        "continuation_power": 0.5,
        "continuation_step_size": 200,
    }
  if name == "dpsh":
    return {
        # eta on mean((u - sign u)^2) next to a mean over pairs: swuxyj/DeepHash-pytorch
        # DPSH.py ("alpha": 0.1). The authors' code (jiangqy/DPSH-pytorch, lambda = 10 in
        # DPSH_CIFAR_10_demo.py) divides both sums by num_train * batch, an effective
        # 10 * K / num_train (~0.02-0.1 on CIFAR-10) on this scale.
        "quantization_weight": 0.1,
    }
  if name == "csq":
    return {
        # lambda of the quantization term: yuanli2333/Hadamard-Matrix-for-hashing options.py
        # default and README ResNet-50 commands (--lambda2 0.05, --lambda1 0: no pair term).
        "quantization_weight": 0.05,
        # Only used when Hadamard centers do not apply (e.g. 48 bits).
        "center_seed": 0,
    }
  if name == "greedyhash":
    return {
        # alpha of the cubic penalty: ssppp/GreedyHash cifar1.py (loss1 + 0.1 * loss2);
        # the same repository uses 1 for ImageNet (imagenet.py).
        "penalty_weight": 0.1,
    }
  if name == "orthohash":
    return {
        # kamwoh/orthohash main.py defaults, "the default parameters to get the performance in
        # the paper" (README): --scale 8, --margin 0.2, --quan 0 (README's CIFAR-10 run: 0.3).
        "scale": 8.0,
        "margin": 0.2,
        "quantization_weight": 0.0,
        "codebook_seed": 0,
    }
  raise KeyError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
