"""Development tools, not shipped in the wheel: throwaway servers and the ``make run`` demo.

:mod:`devtools.sandbox` starts real PostgreSQL and Redis servers for the tests, the demo and the
benchmarks; :mod:`devtools.demo` is ``make run``.
"""
