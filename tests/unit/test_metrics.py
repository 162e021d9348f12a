"""The metrics file's format, read back by Prometheus' own parser."""

from prometheus_client.parser import text_string_to_metric_families

from libmgsave import metrics


def test_label_values_are_escaped_as_prometheus_reads_them():
    awkward = 'a "quoted" name\\with a backslash\nand a newline'
    line = metrics._sample("mgsave_guest_ok", {"pass": "boot", "guest": awkward}, 1)
    (family,) = text_string_to_metric_families(f"# TYPE mgsave_guest_ok gauge\n{line}\n")
    (sample,) = family.samples
    assert sample.labels == {"pass": "boot", "guest": awkward}
    assert sample.value == 1


def test_the_other_passs_samples_are_kept_and_unknown_lines_dropped():
    previous = "\n".join([
        "# HELP mgsave_pass_success whatever",
        'mgsave_pass_success{pass="shutdown"} 0',
        'mgsave_pass_success{pass="boot"} 1',
        'mgsave_guest_ok{pass="shutdown",connection="qemu:///system",guest="db"} 0',
        'something_else{pass="shutdown"} 3',
        "not a sample at all",
    ])
    kept = metrics.other_passes_samples(previous, "boot")
    assert kept["mgsave_pass_success"] == ['mgsave_pass_success{pass="shutdown"} 0']
    assert kept["mgsave_guest_ok"] == ['mgsave_guest_ok{pass="shutdown",connection="qemu:///system",guest="db"} 0']
    assert sum(len(lines) for lines in kept.values()) == 2
