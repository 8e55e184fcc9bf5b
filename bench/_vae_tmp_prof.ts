import * as tf from '@tensorflow/tfjs';
import { selectBackend } from '../src/backend/index.ts';
import { AutoencoderKL, VAE_PRESETS, klDivergence } from '../src/autoencoder/index.ts';
await selectBackend('cpu');
const vae = new AutoencoderKL({ ...VAE_PRESETS.mnist, block_out_channels: [8, 16], down_block_types: ['DownEncoderBlock2D','DownEncoderBlock2D'], up_block_types: ['UpDecoderBlock2D','UpDecoderBlock2D'], norm_num_groups: 4, latent_channels: 2 });
const x = tf.randomUniform([8, 32, 32, 1], -1, 1) as tf.Tensor4D;
let t0 = Date.now();
const d0 = vae.encode(x); const y0 = vae.decode(d0.mean); y0.dataSync(); console.log('fwd', Date.now() - t0);
for (let i = 0; i < 2; i++) {
  t0 = Date.now();
  const prof = await tf.profile(() => {
  const { value, grads } = tf.variableGrads(() => {
    const d = vae.encode(x);
    const y = vae.decode(d.mean);
    return tf.mean(tf.square(tf.sub(y, x))) as tf.Scalar;
  }, vae.parameters());
  value.dataSync(); tf.dispose([value, ...Object.values(grads)]);
  });
  const byK = new Map<string, number>();
  for (const k of prof.kernels) byK.set(k.name, (byK.get(k.name) ?? 0) + (k.kernelTimeMs as number));
  console.log(i, Date.now() - t0, 'ms', [...byK].sort((a,b)=>b[1]-a[1]).slice(0,8));
}
