"""``tunepp compare``: every uncertainty method on one phantom split, one table.

:mod:`.models` trains or loads the models (checked against the comparison's setup), :mod:`.methods`
wraps each method as whole-volume predictors per backend, :mod:`.evaluate` scores a case,
:mod:`.run` runs and times everything, :mod:`.progress` shows it, :mod:`.report` writes
compare.json / compare.md / compare.png.
"""
