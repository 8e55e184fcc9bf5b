/**
 * sdlab's neural-network building blocks (shared by the VAE, the CLIP text encoder and the UNet).
 * They build on the fused ops of src/ops (groupNorm, layerNorm, silu, gelu).
 *
 * MODULES (module.ts)
 *   class M extends Module { ... }        like torch.nn.Module. In the constructor:
 *     this.param(name, shape, init.uniform(b), layout)  → tf.Variable (trainable)
 *     this.module(name, child)                          → child (name may contain dots: 'to_out.0')
 *   Give fields the same names as the registered children (conv_in, down_blocks, to_q, ...),
 *   so code and checkpoint keys read alike. Each module defines its own forward(...).
 *   ModuleList: children named 0, 1, 2 ... (`new ModuleList<ResnetBlock2D>()`, .push, for..of, .at(i)).
 *   model.namedParameters()  → [['encoder.conv_in.weight', {variable, layout}], ...]
 *   model.parameters()       → tf.Variable[] (an optimizer's varList)
 *   model.numParameters()    → number of scalars
 *   model.stateDict()        → Map<name, {shape, data}> in PyTorch layout (copies)
 *   model.loadStateDict(sd, {source, keyMap, allowMissing}) → checks all names/shapes first;
 *       one UsageError lists every missing / unexpected / wrong-shape key
 *   model.dispose()
 *   manualSeed(n)            seeds initialisation (PyTorch default inits: U(±1/√fan_in) for
 *                            conv/linear, ones/zeros for norms, N(0,1) for embeddings)
 *   skipInit(() => new M())  builds with zeros (when weights will be loaded anyway)
 *   shapeOnly(() => new M()) builds with shape-only parameters (nothing allocated: for checks)
 *   buildChecked(() => new M(cfg), source, {check, skip}) refuses models over MAX_MODEL_PARAMS
 *                            (util/limits.ts) and runs `check` on the shape-only build first
 *   Files (checkpoint.ts): loadWeights(model, file, {keyMap}) / saveWeights(model, file) (safetensors);
 *   pretrained.ts: loadPretrained(dir, spec), the one fromPretrained (config.json + weights).
 *   Custom loaders (e.g. an LDM single-file importer): planLoad(model, keys, shapeOf, opts)
 *   validates everything and returns [checkpointKey, paramName] pairs; assignPlanned(model,
 *   plan, read, source) writes them one tensor at a time, refusing NaN/Inf values.
 *
 * LAYOUTS (layout.ts) — activations are channels-last: images NHWC [B, H, W, C], sequences
 *   [B, L, C]. Weights are stored the tfjs way (conv HWIO, linear [in, out]) and converted
 *   from/to PyTorch layout (OIHW, [out, in]) only at the file boundary, by each parameter's
 *   layout tag 'conv' | 'linear' | 'plain'. A 'linear' parameter also accepts a [out, in, 1, 1]
 *   1×1-conv weight from a file.
 *
 * LAYERS (layers.ts)
 *   Conv2d(in, out, k, {stride, padding: n | [top, bottom, left, right], bias})  .forward(x NHWC)
 *   Linear(in, out, {bias})                   .forward(x [..., in]) → [..., out]
 *   GroupNorm(groups, channels, {eps, affine}) channels-last, any rank ≥ 2 (default eps 1e-5)
 *   LayerNorm(dim, {eps, affine})             last axis (default eps 1e-5)
 *   Embedding(num, dim)                       .forward(ids int32) → [..., dim]
 *   geluTanh, quickGelu; getActivation('silu'|'gelu'|'gelu_tanh'|'quick_gelu'|...) → the function
 *   (silu and gelu themselves are ops: src/ops)
 *
 * ATTENTION (attention.ts)
 *   scaledDotProductAttention(q, k, v, heads, {scale, mask, maxScoreElements})  softmax(QKᵀ/√d + mask)·V
 *     per head, q [B, Lq, H·D], k/v [B, Lk, H·D] → [B, Lq, H·D]; additive mask [Lq,Lk] | [B,Lq,Lk] | 4-D
 *     (e.g. CLIP's causal mask). Above attentionSettings.maxScoreElements (2^26) score values
 *     it runs in query-row chunks (same result, bounded memory).
 *   Attention(queryDim, {heads, dimHead, crossAttentionDim, bias, outBias, normNumGroups,
 *     normEps, residualConnection, rescaleOutputFactor})  — diffusers names to_q, to_k, to_v,
 *     to_out.0, group_norm. .forward(x [B,L,C] | [B,H,W,C], context?, mask?)
 *
 * BLOCKS (blocks.ts) — diffusers v0.24 semantics and names
 *   ResnetBlock2D({inChannels, outChannels, tembChannels, groups, groupsOut, eps, outputScaleFactor})
 *     .forward(x, temb?)  (norm1 conv1 time_emb_proj norm2 conv2 conv_shortcut)
 *   Downsample2D(ch, {useConv, outChannels, padding})  padding 0 = VAE's pad (0,1,0,1) then stride-2 conv
 *   Upsample2D(ch, {useConv, outChannels})  .forward(x, outputSize?)  nearest ×2 + 3×3 conv
 *   timestepEmbedding(t, dim, {flipSinToCos, freqShift, scale, maxPeriod}) → [N, dim]
 *   TimestepEmbedding(in, dim)  linear_1 → silu → linear_2
 *   GEGLU, FeedForward(dim, {mult, activation}) (ff.net.0.proj, ff.net.2)
 *   BasicTransformerBlock(dim, heads, dimHead, {crossAttentionDim, attentionBias, normEps})
 *     attn1 self-attention, attn2 cross-attention to the text (where text conditions the UNet), ff
 *   Transformer2DModel(heads, dimHead, inChannels, {numLayers, crossAttentionDim,
 *     normNumGroups, useLinearProjection})  (norm eps 1e-6, proj_in, transformer_blocks, proj_out)
 *
 * Every forward wraps its work in tf.tidy: callers own (and must dispose) only what is returned.
 * Dropout is not implemented (all SD configs use 0).
 */
export * from './module.ts';
export * from './layout.ts';
export * from './layers.ts';
export * from './attention.ts';
export * from './blocks.ts';
export * from './checkpoint.ts';
export * from './pretrained.ts';
