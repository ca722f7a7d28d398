"""Ray Tune sweeps of adaptation settings on PG-19's dev books: the space (`space`), one trial (`trial`),
and the driver that runs the trials and keeps their results (`driver`)."""
