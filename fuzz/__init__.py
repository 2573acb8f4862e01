"""Coverage-guided fuzz harnesses (atheris/libFuzzer) for tether's parsers.

Each module is one harness, run from the repository root as
``.venv/bin/python -m fuzz.NAME [libFuzzer flags] [corpus directories]``:

- ``protocol``: the tunnel protocol's frame decoder and connection state machine;
- ``http1``: HTTP/1 request routing on the steal path (``router.route_http``, h11);
- ``http2``: HTTP/2 prior-knowledge detection, the GOAWAY frame splitter and h2 routing;
- ``config``: config files (TOML/YAML/JSON) and TETHER_* variables -> config or ConfigError;
- ``cgroup``: /proc/PID/cgroup and /proc/PID/stat -> the container's main process;
- ``resolv``: resolv.conf text -> ResolvConf.

Every harness checks invariants (fragmentation never changes what is decoded, buffers stay
bounded, only the documented exception types escape, a rejected connection stays dead,
results within documented limits...), not only that nothing crashes. A failed invariant
raises `fuzz.common.InvariantViolation`, which atheris reports like any crash, writing the
input to ``crash-<sha1>`` (``-artifact_prefix=DIR/`` puts it elsewhere).

Seed inputs live in ``fuzz/corpus/NAME/``; a crash input, once fixed, is added there too, so
every later run replays it first. Typical use::

    make fuzz                                 # every harness, FUZZ_RUNS inputs each
    .venv/bin/python -m fuzz.protocol -runs=100000 fuzz/corpus/protocol
    .venv/bin/python -m fuzz.config crash-1234abcd   # replay one input

Pass a scratch directory before the seed one (``-runs=N /tmp/corpus fuzz/corpus/NAME``) to
keep what libFuzzer learns without adding files to the repository. The unit test
tests/unit/test_fuzz_smoke.py runs each harness for a few seconds in CI.
"""
