"""Stand-ins that tests and benchmarks both use: real servers started on free loopback ports
(:mod:`testbed.servers`: PostgreSQL, Redis, an S3 API, Orthanc) and a small model whose codes
tell pictures apart (:mod:`testbed.lsh_model`). Nothing in the product imports it; it lives
outside ``tests/`` so that ``bench/`` never imports the tests."""
