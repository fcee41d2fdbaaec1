"""``vggtl audit``: what is wrong with the data, from the cached features alone.

Label issues (:mod:`labels`), duplicates and off-topic images (:mod:`similar`),
whether more images would help (:mod:`curve`), the published audit
(:mod:`run`, :mod:`page`) and acting on it with an undo log (:mod:`apply`).
No forward pass: every number comes from the feature store extraction wrote.
"""
