"""``tunepp compare``: every method on one phantom split, one table (:mod:`.run`, :mod:`.report`)."""
