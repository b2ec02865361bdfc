"""The U-Net's shapes, named blocks, hooks and guard rails."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from unet_flax import model as model_lib

pytestmark = pytest.mark.slow  # Compiles U-Nets of many configurations.


@pytest.mark.parametrize('norm,upsample', [('batch', 'transpose'), ('group', 'resize'),
                                           ('none', 'transpose')])
def test_output_shape_and_dtype(norm, upsample):
  model = model_lib.UNet(base_features=4, depth=2, norm=norm, upsample=upsample)
  x = jnp.ones((2, 32, 48, 1))
  variables = model.init(jax.random.key(0), x)
  logits = model.apply(variables, x)
  assert logits.shape == (2, 32, 48, 1) and logits.dtype == jnp.float32
  assert ('batch_stats' in variables) == (norm == 'batch')


def test_blocks_are_named_and_expose_activations():
  model = model_lib.UNet(base_features=4, depth=3)
  x = jnp.ones((1, 32, 32, 1))
  variables = model.init(jax.random.key(0), x)
  _, state = model.apply(variables, x, mutable=['intermediates'])
  names = model_lib.layer_names(3)
  assert names == ['encoder_0', 'encoder_1', 'encoder_2', 'bottleneck', 'decoder_2',
                   'decoder_1', 'decoder_0']
  shapes = {n: state['intermediates'][n]['activation'][0].shape for n in names}
  assert shapes['encoder_0'] == (1, 32, 32, 4)
  assert shapes['bottleneck'] == (1, 4, 4, 32)
  assert shapes['decoder_0'] == (1, 32, 32, 4)


def test_indivisible_size_is_refused():
  model = model_lib.UNet(base_features=4, depth=3)
  with pytest.raises(ValueError, match='divisible by 2\\*\\*depth = 8'):
    model.init(jax.random.key(0), jnp.ones((1, 36, 32, 1)))


def test_unknown_norm_is_refused():
  with pytest.raises(ValueError, match="model.norm must be one of"):
    model_lib.UNet(norm='layer').init(jax.random.key(0), jnp.ones((1, 32, 32, 1)))


def test_create_model_follows_config_and_half_precision():
  config = default.get_config()
  config.model.base_features = 8
  config.model.update(depth=2, deep_supervision=0)
  model = model_lib.create_model(config.model, half_precision=True)
  assert (model.base_features, model.depth, model.dtype) == (8, 2, jnp.bfloat16)
  variables = model.init(jax.random.key(0), jnp.ones((1, 16, 16, 1)))
  assert variables['params']['encoder_0']['conv_0']['kernel'].dtype == jnp.float32
  assert model.apply(variables, jnp.ones((1, 16, 16, 1))).dtype == jnp.float32


def test_pixel_shuffle_transpose_conv_equals_flax_conv_transpose():
  x = jax.random.normal(jax.random.key(0), (2, 5, 7, 6))
  reference = nn.ConvTranspose(4, (2, 2), strides=(2, 2))
  variables = reference.init(jax.random.key(1), x)
  fast = model_lib.PixelShuffleConvTranspose(4)
  np.testing.assert_allclose(fast.apply(variables, x), reference.apply(variables, x),
                             rtol=1e-5, atol=1e-5)


def test_reshape_max_pool_equals_flax_max_pool_with_gradients():
  x = jax.random.normal(jax.random.key(0), (2, 8, 6, 3))
  np.testing.assert_array_equal(model_lib.max_pool_2x2(x),
                                nn.max_pool(x, (2, 2), strides=(2, 2)))
  weights = jax.random.normal(jax.random.key(1), (2, 4, 3, 3))
  grad = lambda pool: jax.grad(lambda v: jnp.sum(pool(v) * weights))(x)
  np.testing.assert_array_equal(grad(model_lib.max_pool_2x2),
                                grad(lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))))


def test_gate_logits_is_the_logit_of_the_product_of_probabilities():
  a = jnp.array([-3.0, 0.0, 2.0, 40.0, -40.0, 40.0]).reshape(6, 1, 1, 1)
  b = jnp.array([1.0, -2.0, 0.5, 40.0, 40.0, -40.0])
  gated = np.asarray(model_lib.gate_logits(a, b)).ravel()
  sig = lambda v: 1 / (1 + np.exp(-np.asarray(v, np.float64)))
  q = sig(a.ravel()[:3]) * sig(b[:3])
  np.testing.assert_allclose(gated[:3], np.log(q / (1 - q)), rtol=1e-5)
  # Saturated heads stay finite: both sure -> large positive; either one sure "no" -> ~-40.
  assert np.all(np.isfinite(gated)) and gated[3] > 39
  np.testing.assert_allclose(gated[4:], [-40.0, -40.0], atol=1e-4)


def test_presence_head_gates_inference_and_is_sown_in_training():
  model = model_lib.UNet(base_features=4, depth=2, presence_head=True)
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 1))
  variables = model.init(jax.random.key(0), x)
  raw, state = model.apply(variables, x, train=True, mutable=['batch_stats', 'aux'])
  presence = state['aux']['presence_logits'][0]
  assert raw.shape == (2, 16, 16, 1) and presence.shape == (2,)
  # Inference with "no lesion here" forced through the head's bias: nothing survives.
  params = jax.tree.map(lambda v: v, variables['params'])
  params['presence']['Dense_0']['bias'] = jnp.full((1,), -30.0)
  gated = model.apply({**variables, 'params': params}, x)
  assert float(jnp.max(jax.nn.sigmoid(gated))) < 1e-6
  ungated = model_lib.UNet(base_features=4, depth=2).apply(
      {k: {n: v for n, v in c.items() if n != 'presence'} for k, c in variables.items()}, x)
  assert float(jnp.max(jax.nn.sigmoid(ungated))) > 1e-3


def test_deep_supervision_heads_are_sown_in_training_and_leave_inference_unchanged():
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 1))
  model = model_lib.UNet(base_features=4, depth=3, deep_supervision=2)
  variables = model_lib.init_variables(model, 0, 32)
  _, state = model.apply(variables, x, train=True, mutable=['batch_stats', 'aux'])
  assert [a.shape for a in state['aux']['deep_logits']] == [(2, 8, 8, 1), (2, 16, 16, 1)]
  plain_params = {n: v for n, v in variables['params'].items() if not n.startswith('head_')}
  assert set(variables['params']) - set(plain_params) == {'head_1', 'head_2'}
  # Without the extra heads, the same weights give the same inference logits.
  plain = model_lib.UNet(base_features=4, depth=3)
  np.testing.assert_array_equal(model.apply(variables, x),
                                plain.apply({**variables, 'params': plain_params}, x))
  with pytest.raises(ValueError, match='deep_supervision must be in'):
    model_lib.UNet(base_features=4, depth=3, deep_supervision=3).init(jax.random.key(0), x)


def test_flip_tta_averages_the_logits_of_the_image_and_its_mirror():
  model = model_lib.UNet(base_features=4, depth=2)
  x = jax.random.uniform(jax.random.key(2), (2, 16, 16, 1))
  variables = model.init(jax.random.key(0), x)
  plain = model.apply(variables, x)[..., 0]
  mirrored = model.apply(variables, x[:, :, ::-1])[..., 0][:, :, ::-1]
  np.testing.assert_allclose(model_lib.inference_logits(model, variables, x, flip_tta=False),
                             plain, atol=1e-6)
  tta = model_lib.inference_logits(model, variables, x, flip_tta=True)
  np.testing.assert_allclose(tta, (plain + mirrored) / 2, atol=1e-5)
  assert float(jnp.max(jnp.abs(tta - plain))) > 1e-4  # A random net is not mirror-symmetric.
