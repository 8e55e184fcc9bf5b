import { createRequire } from 'module';
const require = createRequire(import.meta.url);
const { pump } = require('/tmp/pump/pump.node');
import { create, globals } from 'webgpu';
Object.assign(globalThis, globals);
const gpu = create([]);
const ad = await gpu.requestAdapter(); const dev = await ad.requestDevice();
function readSync(src, size) {
  const st = dev.createBuffer({size, usage: GPUBufferUsage.MAP_READ|GPUBufferUsage.COPY_DST});
  const enc = dev.createCommandEncoder(); enc.copyBufferToBuffer(src, 0, st, 0, size); dev.queue.submit([enc.finish()]);
  const p = st.mapAsync(GPUMapMode.READ); p.catch(()=>{});
  let n = 0; while (st.mapState !== 'mapped') { pump(); n++; if (n > 100000) throw new Error('stuck ' + st.mapState); }
  const out = new Float32Array(st.getMappedRange().slice(0)); st.unmap(); st.destroy(); return [out, n];
}
const src = dev.createBuffer({size: 16, usage: GPUBufferUsage.STORAGE|GPUBufferUsage.COPY_SRC|GPUBufferUsage.COPY_DST});
dev.queue.writeBuffer(src, 0, new Float32Array([1,2,3,4]));
let timerFired = 0; setTimeout(()=>timerFired++, 0);
console.log(readSync(src, 16), 'timer', timerFired);
console.log(readSync(src, 16));
