"""Real services for the test suite, the benchmarks and the soak run: private PostgreSQL
and Redis instances started on free ports. Imported by tests/ and bench/, which never
import each other."""
