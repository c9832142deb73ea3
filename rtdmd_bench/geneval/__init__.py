"""GenEval's scoring rules and models, shared by the `geneval` suite and the `geneval-partial` reward.

Both score images the way djghosh13/geneval does (PROTOCOLS.md "GenEval"), so the rules
(`rules`: thresholds, include/exclude clauses, colour crops, relative position, the summary
figures) and the models (`models`: the Mask2Former detector and the CLIP colour classifier, with
their tiny stand-ins) live here, below both: the reward must not depend on a suite, and a suite
may use rewards but not the other way round (docs/architecture.md, "Layers").
"""
