"""The `shapes` benchmark's shared pieces: a compositional, GenEval-like base on CPU (issue 15).

- `scenes`: the palette, the three shapes, the deterministic renderer, GenEval-style prompts in
  the six tags with their metadata, and the fixed disjoint train / evaluation prompt split.
- `detect`: the rule-based detector (connected components by colour; shape from the mask) whose
  detections the GenEval rules module (`rtdmd_bench.geneval.rules`) scores, and its measured accuracy.
- `slots`: the base's latent space, object slots, and their differentiable soft renderer ("VAE").
- `nets`: the prompt tokenizer, the flow teacher (on slot latents) and the learned reward proxy.
- `training`: how both networks are trained (deterministically) and the teacher check.
- `cache`: the on-disk cache of the trained networks, keyed by the hash of their config.
"""
