"""PG-19: adapt online on a whole book, scoring every window (the language-modelling task of SPEC §6)."""
