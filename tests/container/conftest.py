"""The test web sites on 127.0.0.1 (egress_harness's fixtures ``certs`` and ``sites``),
for every test in this folder."""

from egress_harness import certs, sites  # noqa: F401 (fixtures)
