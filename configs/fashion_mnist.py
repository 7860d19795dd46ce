r"""The paper's adversarial semantic hashing network on Fashion-MNIST, 48 bits: every config's base.

    deephash train --config=configs/fashion_mnist.py --workdir=workdirs/fashion_mnist
    deephash evaluate --workdir=workdirs/fashion_mnist --json

Protocol: queries = the 10,000 test images, database = the 60,000 training images, relevant =
same clothing type. Expected (2 CPU cores, XLA:CPU; ties scored by expectation): mAP@all 0.9112,
closest-match R@1 0.0025, about 19.5 min of training (README.md, Results). `make run` trains
configs/graded.py, which builds on this one.
Override any field on the command line, e.g. `--config.model.num_bits=64`.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  # "singh2019" (the paper's adversarial semantic hashing network), "graded" (configs/graded.py)
  # or a baseline from deephash_jax/losses/baselines.py ("dch", "hashnet", "dpsh", "csq",
  # "greedyhash", "orthohash") trained by the same loop on the same encoder (configs/benchmark.py).
  config.method = "singh2019"

  config.input = ml_collections.ConfigDict()
  config.input.dataset = "fashion_mnist"
  # TFDS data dir (None: TFDS default); a typed placeholder so --config.input.data_dir= works.
  config.input.data_dir = ml_collections.config_dict.placeholder(str)
  config.input.source_dir = "/usr/share/datasets/fashion-mnist"  # Debian's IDX files
  config.input.train_split = "train"
  config.input.query_split = "test"
  config.input.database_split = "train"
  config.input.num_classes = 10
  config.input.augment = ml_collections.ConfigDict()
  config.input.augment.gallery = dict(max_shift=2.0, flip=True)
  # Moderate nuisances: on 4-epoch runs, rotation 8 deg / brightness 0.1 / background 0.3 gave
  # mAP@all 0.858 against 0.851 for 12 deg / 0.2 / 0.5 (clean test queries).
  config.input.augment.query = dict(
      max_shift=3.0, flip=True, max_rotation_deg=8.0, scale_range=(0.9, 1.1),
      max_brightness=0.1, contrast_range=(0.6, 1.4), gamma_range=(0.7, 1.4),
      background_prob=0.3, background_max_level=0.4)
  # Query views of each item in a step (method="graded"): more than one puts several shopper
  # photos of each gallery view in the batch, each an anchor of the item level; 1 + query_views
  # views of each of the batch_size // 2 items pass the network. 2 on the benchmark's
  # graded_tanh_48b_s0: mAP@all 0.9193 -> 0.9227, CM R@1 0.0468 -> 0.0525; graded_48b_s0: 0.9057
  # -> 0.9103, 0.1134 -> 0.1095; 1.6 times the step's time. The same time spent on epochs did
  # better (seed 0): the benchmark's graded_tanh_qv2 (2 views, 15 epochs) 0.9170 / 0.0849 against
  # 0.9271 / 0.0842 with 1 view for 25 epochs (experiments/graded_codes/README.md, "Several query
  # views per item", "Two query views over seeds 0-2").
  config.input.augment.query_views = 1

  config.model = ml_collections.ConfigDict()
  config.model.encoder = "cnn"
  # The CNN's last (4x4x128) feature map is flattened into the feature layer, not averaged:
  # where a pattern sits on the garment tells items apart (models.ConvEncoder.pool). 15 epochs,
  # "mean" -> "flatten": mAP@all 0.9023 -> 0.9112 for singh2019; 0.8381 -> 0.8482 for graded,
  # whose closest-match R@1 goes 0.1397 -> 0.1317 (experiments/graded_codes/README.md).
  # conv: "auto" (the convolutions as one matmul over shifted slices on CPU, models.SlicedConv,
  # where XLA:CPU's convolutions are slow; nn.Conv on accelerators), "xla" or "sliced".
  # The CNN's convolutions are models.ConvEncoder's `layers` ((width, stride) each; an
  # `encoder_kwargs.layers` set here would replace "cnn_tiny"'s too, configs/graded.py sets one).
  # feature_dim: the width of the dense feature layer after the last feature map (None: the
  # encoder's own, 256 for "cnn"). 256 -> 1024 (+23 % of the CNN's multiply-adds), 48 bits,
  # 15 epochs, seeds 0-2: graded_tanh_qv2_cls3 mAP@all 0.9165 -> 0.9227, CM R@1 0.0928 -> 0.1029;
  # HashNet 0.9172 -> 0.9186 (the benchmark's *_w1024; experiments/graded_codes/README.md, "A
  # wider feature layer"). The shared default stays 256, as every benchmark row was trained.
  config.model.encoder_kwargs = ml_collections.ConfigDict(dict(
      pool="flatten", conv="auto", feature_dim=ml_collections.config_dict.placeholder(int)))
  config.model.num_bits = 48
  config.model.classifier_input = "code"      # or "features"
  # "image": every image standardized (minus its mean, over its standard deviation) before the
  # encoder, so brightness and contrast do not reach it (models.standardize_images); or "none".
  # 15 epochs with flip_average and pool "mean", "none" -> "image": mAP@all 0.9041 -> 0.9023,
  # closest-match R@1 0.0022 -> 0.0027 for singh2019; 0.8294 -> 0.8381 and 0.1241 -> 0.1397 for
  # graded.
  config.model.input_norm = "image"
  # "tanh" (with the quantization term) or "sign_ste": +-1 codes in the forward pass, identity
  # gradient (GreedyHash's sign layer; set loss.quantization_weight = 0 with it).
  config.model.code_activation = "tanh"
  config.model.discriminator_hidden = (256, 256)
  # Codes are made from the image and its mirror image (the mean of their tanh(h)), so a mirrored
  # photo gets the same code; training is unchanged. 15 epochs, input_norm "none" and pool
  # "mean", False -> True: mAP@all 0.9012 -> 0.9041 for singh2019, closest-match R@1
  # 0.1069 -> 0.1241 for graded (experiments/graded_codes/README.md).
  config.model.flip_average = True
  # > 0: codes also averaged over the image moved this many pixels right, left, down and up
  # (encoder.shifted_views; evaluation, index and search only). configs/graded.py at 15 epochs,
  # the same weights, 0 -> 1: mAP@all 0.8485 -> 0.8487, closest-match R@1 0.1367 -> 0.1530,
  # R@10 0.4215 -> 0.4440, for 3 times the evaluation's time (experiments/graded_codes/README.md).
  config.model.shift_average = 0

  config.loss = ml_collections.ConfigDict()
  config.loss.classification_weight = 1.0
  config.loss.hamming_weight = 1.0            # neighbours (same type) vs other types
  config.loss.hamming_item_weight = 0.1       # same item vs same type, other item
  config.loss.adversarial_weight = 0.1
  config.loss.quantization_weight = 0.1       # pulls tanh codes to +-1 (0 with "sign_ste")
  config.loss.gamma = 10.0                    # Cauchy scale for the category level
  config.loss.gamma_item = 10.0
  # > 0: the two gammas above hold at this code length and scale with num_bits (see
  # train.cauchy_gammas); 0: the same gammas at every length.
  config.loss.gamma_reference_bits = 0
  config.loss.adversarial_mode = "entropy"    # or "flip"
  config.loss.baseline_hyper = ml_collections.ConfigDict()  # overrides baselines.default_hyper
  # method="graded" (losses/graded.py; configs/graded.py): the category-level Cauchy term on all
  # pairs with a dead zone of pair_threshold bits for same-type pairs, the item-level InfoNCE of
  # each query view against the batch's gallery views on the codes (temperature in bits) and on
  # the features (cosine temperature); classification_weight and quantization_weight as above.
  config.loss.graded = ml_collections.ConfigDict()
  config.loss.graded.pair_weight = 5.0
  config.loss.graded.pair_threshold = 10.0
  config.loss.graded.pair_gamma = 10.0
  # > 0: FastAP of the type level on the same distances (losses/graded.py fast_ap_loss).
  config.loss.graded.ap_weight = 0.0
  config.loss.graded.item_weight = 1.0
  config.loss.graded.item_temperature = 4.8
  config.loss.graded.feature_item_weight = 1.0
  config.loss.graded.feature_temperature = 0.1
  # True: both item terms averaged with the reverse direction, each gallery view against the
  # batch's query views (CLIP's symmetric InfoNCE).
  config.loss.graded.item_symmetric = False
  # > 0: a hinge on each query view's signs against its gallery view's, item_bit_margin beyond 0
  # on the pre-codes (losses/graded.py bit_agreement_loss): the bits the search reads held, where
  # the item InfoNCE's cosine barely scores a bit near 0. Tried, not kept: on graded_tanh_qv2_48b_s0
  # weight 1 cuts the query's drift 3.89 -> 2.72 bits but packs the codes (31,280 -> 22,231
  # distinct), CM R@1 0.0849 -> 0.0660 (experiments/graded_codes/README.md, "A hinge").
  config.loss.graded.item_bit_weight = 0.0
  config.loss.graded.item_bit_margin = 0.5
  # In [0, 1]: the item term's code distance weighted per bit by 1 - discount * |the anchor's
  # type's mean code on the bit| (mean 1 over the bits; losses/graded.py type_bit_weights): the
  # items spread on the bits their type does not agree on. Not with memory_size > 0.
  config.loss.graded.item_type_bit_discount = 0.0
  # > 0: a cross-batch memory (XBM, Wang et al., CVPR 2020) of the last memory_size gallery
  # views (a multiple of the batch's items), more negatives of each query view's item terms from
  # step memory_start_step on (the codes of earlier steps drift less once training settles).
  config.loss.graded.memory_size = 0
  config.loss.graded.memory_start_step = 1000
  # True: the memory's rows are also columns of the FastAP type order (ap_weight > 0).
  config.loss.graded.memory_type_ap = False
  # > 0: HashNet's continuation (losses/baselines.py hashnet_scale) for the graded terms: they
  # read tanh(beta * pre-codes), beta = (1 + gamma * step) ** power held for step_size steps, so
  # late in training they score nearly binary codes, the codes the search ranks (with tanh alone
  # a quarter of the code's entries stay within 0.5 of 0). Tried, not kept: gamma 0.005 trades
  # 0.015 CM R@1 for 0.003 mAP@all (experiments/graded_codes/README.md, "The sign").
  config.loss.graded.continuation_gamma = 0.0
  config.loss.graded.continuation_power = 0.5
  config.loss.graded.continuation_step_size = 200
  # What the type level (the pair term and FastAP) reads: "continuous" (tanh codes, the relaxed
  # Hamming distance) or "sign_ste" (their signs with a straight-through gradient: the Hamming
  # distance the search ranks).
  config.loss.graded.type_level_codes = "continuous"
  # The same for the item InfoNCE on the codes (its term on the features is not affected).
  # "sign_ste" on graded_tanh_48b_s0 at type weights 2/5: mAP@all 0.9156 -> 0.9131, CM R@1
  # 0.0790 -> 0.0639 (26,665 distinct codes against 29,736: the signs pack the items).
  config.loss.graded.item_level_codes = "continuous"
  # With "sign_ste", the distance between the signs the gradient is taken of: "difference"
  # (K/4 |a_hat - b_hat|^2, the relaxed distance: for codes m bits apart, 1 - m/K on each bit
  # that differs, m/K on each that agrees, so a push barely reaches the bits that could flip) or
  # "inner_product" ((K - <a, b>) / 2: 1/2 on every bit, losses/distance.py sign_hamming). The
  # same distances forward. "inner_product" at the default's weights, benchmark graded 48 bits,
  # seed 0: mAP@all 0.9007 -> 0.8964, CM R@1 0.1208 -> 0.0091 (the type level, K/2 times
  # stronger on the agreeing bits, rules the code).
  config.loss.graded.sign_gradient = "difference"
  # The views the type level (the pair term and FastAP) scores, as anchors and as columns: "all"
  # (gallery and query views) or "gallery" (the query views' shopper nuisances are left to the
  # item level and the classifier).
  config.loss.graded.type_level_views = "all"
  # The views the classification term reads: "all" or "gallery" (the shopper's views are left to
  # the item level). "gallery" on the benchmark's graded_48b_s0: mAP@all 0.9057 -> 0.9058, CM R@1
  # 0.1134 -> 0.1035 (experiments/graded_codes/README.md, "Several query views per item").
  config.loss.graded.classifier_views = "all"
  # class_bits > 0 splits the code: the first class_bits bits (a power of 2) are pulled to the
  # class's Hadamard centre by a cosine-margin softmax (centre_scale, centre_margin) and a per-bit
  # cross-entropy (centre_bit_weight), in place of the pair term (the pair_* fields unused); the
  # item InfoNCE reads the other bits (benchmark variant graded_split: 32 of 48).
  config.loss.graded.class_bits = 0
  config.loss.graded.centre_weight = 1.0
  config.loss.graded.centre_scale = 8.0
  config.loss.graded.centre_margin = 0.2
  config.loss.graded.centre_bit_weight = 1.0

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 256               # views; = 128 catalogue items, two views each
  config.train.num_epochs = 15
  config.train.num_steps = 0                  # > 0 overrides num_epochs
  # > 0: each batch holds the items of at most this many types, in equal chunks (data/sampler.py;
  # more same-type rivals per item); 0: a uniform shuffle.
  config.train.types_per_batch = 0
  config.train.learning_rate = 3e-3
  config.train.warmup_steps = 200
  config.train.weight_decay = 5e-4
  config.train.grad_clip_norm = 5.0
  config.train.disc_learning_rate = 1e-3
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 1000
  config.train.keep_checkpoints = 3
  # No step, metrics read or checkpoint save may take longer: a stuck collective ends the run
  # with an error naming where (train/stopping.py), never a silent hang.
  config.train.hang_timeout_seconds = 600
  # "bfloat16": the encoder's activations and matmuls in bfloat16, parameters, optimizer states,
  # codes and losses in float32 (models.py). What accelerators are built for; slower on XLA:CPU.
  config.train.compute_dtype = "float32"

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 2000
  config.eval.map_at = (1000,)
  config.eval.radius = 2
  config.eval.num_queries = 0                 # > 0: evaluate on the first N queries only
  # How tied Hamming distances are ranked (evaluators/ranking.py): "expected" over every order
  # of the tied items, or "index" (lower database index first, what `search` returns).
  config.eval.ties = "expected"
  # The closest-match protocol (evaluators/closest_match.py): the first N test images re-rendered
  # as shoppers' photos by the seeded recipe below, searched among the 10,000 originals plus the
  # 60,000 training images; relevant = the original. num_queries = 0 leaves it out.
  config.eval.closest_match = ml_collections.ConfigDict()
  config.eval.closest_match.num_queries = 10000
  config.eval.closest_match.seed = 20240611     # query i is rendered with fold_in(key(seed), i)
  # Every query gets all three nuisances, stronger than training's query view: a new textured
  # background (level up to 0.5), rotation up to 15 degrees, scale 0.85-1.15, shift up to 3 px,
  # mirror with p = 0.5, brightness +-0.25, contrast 0.6-1.4, gamma 0.6-1.6.
  config.eval.closest_match.recipe = dict(
      background_prob=1.0, background_max_level=0.5,
      max_rotation_deg=15.0, scale_range=(0.85, 1.15), max_shift=3.0, flip=True,
      max_brightness=0.25, contrast_range=(0.6, 1.4), gamma_range=(0.6, 1.6))

  config.mesh = [("data", -1)]
  return config
