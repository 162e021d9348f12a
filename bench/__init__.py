"""mgsave's benchmarks: ``bench/run --help`` (or ``python -m bench --help``). See docs/PERFORMANCE.md."""
