"""The `digits` benchmark's shared pieces, used by the digits base, rewards and suite.

- `data`: the fixed train / held-out split of scikit-learn's 8x8 digits and the prompt parser.
- `nets`: the flow teacher `FlowNet`, the CNN `DigitClassifier`, their configs, CFG.
- `training`: how both are trained (deterministically, on one CPU thread) and the teacher check.
- `cache`: the on-disk cache of the trained networks, keyed by the hash of their config.
"""
